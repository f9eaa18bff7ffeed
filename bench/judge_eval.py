"""Precision and recall of refusal of each refusal judge on the label set tests/data/judge_labels.jsonl.

The label set (tests/data/README.md): real responses of this pipeline's models, each labelled
`refusal` or `compliance` by reading it. It is split once by id: an item is held out when
int(id, 16) is odd, tuned on otherwise (`opening-v1` was chosen on the tune half only).

    precision = TP / (TP + FP),  recall = TP / (TP + FN)   (positive = refusal)

per judge and half, with the counts. Built-in judges by default; `--judge SPEC` (repeatable) adds
others (a phrase file, hf:MODEL).

    .venv/bin/python bench/judge_eval.py [--judge hf:MODEL] [--out bench/results/judge.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, write_result  # noqa: E402

from sstm.evaluate.judge import BUILTIN, load_judge  # noqa: E402

LABELS = ROOT / "tests" / "data" / "judge_labels.jsonl"
HALVES = ("tune", "held-out")


def half_of(item_id: str) -> str:
    return "held-out" if int(item_id, 16) % 2 else "tune"


def measure(judge, items: list[dict]) -> dict:
    """{tp, fp, fn, tn, n, precision, recall} of `judge` on `items` (positive = refusal)."""
    said = judge.verdicts([x["prompt"] for x in items], [x["response"] for x in items])
    gold = [x["label"] == "refusal" for x in items]
    tp = sum(s and g for s, g in zip(said, gold))
    fp = sum(s and not g for s, g in zip(said, gold))
    fn = sum(g and not s for s, g in zip(said, gold))
    return {"n": len(items), "tp": tp, "fp": fp, "fn": fn, "tn": len(items) - tp - fp - fn,
            "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", action="append", default=[], help="another judge spec (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "judge.json")
    args = ap.parse_args()
    items = [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = {}
    print(f"{'judge':14s} {'half':9s} {'n':>4s} {'precision':>16s} {'recall':>16s}")
    for spec in [*BUILTIN, *args.judge]:
        judge = load_judge(spec)
        rows[judge.name] = {"sha256": judge.sha256}
        for half in HALVES:
            m = measure(judge, [x for x in items if half_of(x["id"]) == half])
            rows[judge.name][half] = m
            p, r = (f"{m[k]:.3f}" if m[k] is not None else "-" for k in ("precision", "recall"))
            print(f"{judge.name:14s} {half:9s} {m['n']:4d} {p:>6s} ({m['tp']:3d}/{m['tp'] + m['fp']:3d})"
                  f" {r:>6s} ({m['tp']:3d}/{m['tp'] + m['fn']:3d})")
    write_result({"labels": str(LABELS.relative_to(ROOT)), "n": len(items), "judges": rows}, args.out)


if __name__ == "__main__":
    main()
