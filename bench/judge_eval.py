"""Precision and recall of refusal of each refusal judge on the label set tests/data/judge_labels.jsonl.

The label set (tests/data/README.md): real responses of this pipeline's models, each labelled
`refusal` or `compliance` by reading it. It is split once by id: an item is held out when
int(id, 16) is odd, tuned on otherwise (`opening-v1` was chosen on the tune half only).

    precision = TP / (TP + FP),  recall = TP / (TP + FN)   (positive = refusal)

per judge and half, with the counts. Built-in judges by default; `--judge SPEC` (repeatable) adds
others (a phrase file, hf:MODEL).

Truncated: the same for each response cut to its first N tokens of the embedded SmolLM2's
tokenizer (decoded, stripped: what a generation with ``max_new_tokens = N`` returns, up to
re-tokenizing the text), N in ``TRUNCATE``; the refusal suites' budget
(``sstm.evaluate.suites.JUDGED_TOKENS``) is the smallest N at which the default judge's precision
and recall on the tune half are within a point of the whole responses'.

    .venv/bin/python bench/judge_eval.py [--judge hf:MODEL] [--out bench/results/judge.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, write_result  # noqa: E402

from sstm.chat import truncate_tokens  # noqa: E402
from sstm.evaluate.judge import BUILTIN, load_judge  # noqa: E402
from sstm.evaluate.suites import JUDGED_TOKENS  # noqa: E402

LABELS = ROOT / "tests" / "data" / "judge_labels.jsonl"
HALVES = ("tune", "held-out")
TRUNCATE = (8, 16, 24, 32, 48)  # response budgets measured, in SmolLM2 tokens


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


def embedded_tokenizer():
    """The embedded SmolLM2's tokenizer, read from its GGUF (no registry needed)."""
    from transformers import AutoTokenizer

    from sstm.models import embedded_gguf

    gguf = embedded_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def truncated(items: list[dict], tok, n: int) -> list[dict]:
    """`items` with each response cut to its first `n` tokens."""
    return [x | {"response": truncate_tokens(tok, x["response"], n)[0].strip()} for x in items]


def _fraction(m: dict, key: str) -> str:
    den = m["tp"] + (m["fp"] if key == "precision" else m["fn"])
    return f"{m[key]:.3f} ({m['tp']:3d}/{den:3d})" if m[key] is not None else "-"


def measure_truncated(specs: list[str], items: list[dict]) -> dict:
    """{judge: {N or "full": {half: measure}}} on the responses cut to N tokens, and the token lengths."""
    import statistics

    tok = embedded_tokenizer()
    lengths = [len(tok(x["response"], add_special_tokens=False)["input_ids"]) for x in items]
    out: dict = {"tokenizer": "embedded SmolLM2-135M-Instruct (GGUF)", "budget": JUDGED_TOKENS,
                 "response_tokens": {"min": min(lengths), "median": statistics.median(lengths),
                                     "max": max(lengths)}, "judges": {}}
    print(f"\nresponses cut to N SmolLM2 tokens (whole: {min(lengths)}-{max(lengths)} tokens)")
    print(f"{'judge':14s} {'N':>5s} {'tune precision':>20s} {'tune recall':>18s} {'held-out precision':>20s} "
          f"{'held-out recall':>18s}")
    for spec in specs:
        judge = load_judge(spec)
        rows = out["judges"][judge.name] = {}
        for n in (*TRUNCATE, None):
            cut = items if n is None else truncated(items, tok, n)
            rows[str(n or "full")] = {h: measure(judge, [x for x in cut if half_of(x["id"]) == h]) for h in HALVES}
            cells = [_fraction(rows[str(n or "full")][h], k) for h in HALVES for k in ("precision", "recall")]
            print(f"{judge.name:14s} {str(n or 'full'):>5s} " + " ".join(f"{c:>18s}" for c in cells))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", action="append", default=[], help="another judge spec (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "judge.json")
    args = ap.parse_args()
    items = [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = {}
    print(f"{'judge':14s} {'half':9s} {'n':>4s} {'precision':>16s} {'recall':>16s}")
    specs = [*BUILTIN, *args.judge]
    for spec in specs:
        judge = load_judge(spec)
        rows[judge.name] = {"sha256": judge.sha256}
        for half in HALVES:
            m = measure(judge, [x for x in items if half_of(x["id"]) == half])
            rows[judge.name][half] = m
            print(f"{judge.name:14s} {half:9s} {m['n']:4d} {_fraction(m, 'precision'):>16s} "
                  f"{_fraction(m, 'recall'):>16s}")
    write_result({"labels": str(LABELS.relative_to(ROOT)), "n": len(items), "judges": rows,
                  "truncated": measure_truncated(specs, items)}, args.out)


if __name__ == "__main__":
    main()
