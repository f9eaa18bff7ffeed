"""Precision and recall of refusal of each refusal judge on the label set tests/data/judge_labels.jsonl.

The label set (tests/data/README.md): real responses of this pipeline's models, each labelled
`refusal` or `compliance` by reading it. It is split once by id: an item is held out when
int(id, 16) is odd, tuned on otherwise (`opening-v1` was chosen on the tune half only).

    precision = TP / (TP + FP),  recall = TP / (TP + FN)   (positive = refusal)

and accuracy = (TP + TN) / n, each with its 95 % Wilson interval, per judge, half and part: `all`, the
`original` 563 items and the `merged` batch (the merged models' responses drawn by bench/sample_for_labels.py,
the items that carry an `eval` field). Built-in judges by default; `--judge SPEC` (repeatable) adds others
(a phrase file, hf:MODEL).

Non-answers: the items whose reader's note calls them a non-answer (a reply that says there is no answer, or
that the model cannot give one; tests/data/README.md), per part and half, and how many of them each judge and
`sstm.evaluate.judge.non_answers` catch; and what `non_answers` flags and how those items are labelled.

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
from _common import ROOT, write_result
from scipy.stats import binomtest

from sstm.chat import truncate_tokens
from sstm.evaluate.judge import BUILTIN, load_judge, non_answers
from sstm.evaluate.suites import JUDGED_TOKENS

LABELS = ROOT / "tests" / "data" / "judge_labels.jsonl"
HALVES = ("tune", "held-out")
TRUNCATE = (8, 16, 24, 32, 48)  # response budgets measured, in SmolLM2 tokens


def half_of(item_id: str) -> str:
    return "held-out" if int(item_id, 16) % 2 else "tune"


PARTS = {"all": lambda x: True, "original": lambda x: "eval" not in x, "merged": lambda x: "eval" in x}


def wilson(k: int, n: int) -> list[float] | None:
    """95 % Wilson score interval of k / n (``scipy.stats.binomtest``); None when n = 0."""
    if not n:
        return None
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def measure(judge, items: list[dict]) -> dict:
    """{n, tp, fp, fn, tn, precision, recall, accuracy} of `judge` on `items` (positive = refusal), each rate
    with its Wilson interval (`<rate>_ci`)."""
    said = judge.verdicts([x["prompt"] for x in items], [x["response"] for x in items])
    gold = [x["label"] == "refusal" for x in items]
    tp = sum(s and g for s, g in zip(said, gold))
    fp = sum(s and not g for s, g in zip(said, gold))
    fn = sum(g and not s for s, g in zip(said, gold))
    n, tn = len(items), len(items) - tp - fp - fn
    out = {"n": n, "tp": tp, "fp": fp, "fn": fn, "tn": tn}
    for rate, k, m in (("precision", tp, tp + fp), ("recall", tp, tp + fn), ("accuracy", tp + tn, n)):
        out[rate], out[f"{rate}_ci"] = (k / m if m else None), wilson(k, m)
    return out


def is_non_answer(x: dict) -> bool:
    """The reader's verdict (the item's note), not a judge's: a non-answer."""
    return "non-answer" in (x.get("note") or "")


def non_answer_counts(judges: list, items: list[dict]) -> dict:
    """`labelled`: per half of the merged batch (whose notes mark every non-answer; the original items' notes
    do not), the non-answers and how many each judge and `non_answers` catch. `flagged`: per part and half, the
    items `non_answers` flags, by label."""
    flag = dict(zip((x["id"] for x in items), non_answers([x["response"] for x in items])))
    out: dict = {"labelled": {}, "flagged": {}}
    for half in ("all", *HALVES):
        na = [x for x in items if PARTS["merged"](x) and half in ("all", half_of(x["id"])) and is_non_answer(x)]
        caught = {j.name: sum(j.verdicts([x["prompt"] for x in na], [x["response"] for x in na])) for j in judges}
        out["labelled"][half] = {"non_answers": len(na), "caught": caught | {"non_answers()": sum(flag[x["id"]] for x in na)}}
        for part, keep in PARTS.items():
            sel = [x for x in items if keep(x) and half in ("all", half_of(x["id"])) and flag[x["id"]]]
            out["flagged"].setdefault(part, {})[half] = {lab: sum(x["label"] == lab for x in sel)
                                                         for lab in ("refusal", "compliance")}
    return out


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


def _with_ci(m: dict, key: str) -> str:
    num, den = {"precision": (m["tp"], m["tp"] + m["fp"]), "recall": (m["tp"], m["tp"] + m["fn"]),
                "accuracy": (m["tp"] + m["tn"], m["n"])}[key]
    if m[key] is None:
        return "-"
    lo, hi = m[f"{key}_ci"]
    return f"{m[key]:.3f} [{lo:.2f}, {hi:.2f}] ({num}/{den})"


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
            print(f"{judge.name:14s} {n or 'full'!s:>5s} " + " ".join(f"{c:>18s}" for c in cells))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", action="append", default=[], help="another judge spec (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "judge.json")
    args = ap.parse_args()
    items = [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = {}
    specs = [*BUILTIN, *args.judge]
    judges = [load_judge(spec) for spec in specs]
    print(f"{'judge':14s} {'part':9s} {'half':9s} {'n':>4s} {'precision [95% Wilson]':>32s} "
          f"{'recall [95% Wilson]':>32s} {'accuracy [95% Wilson]':>32s}")
    for judge in judges:
        rows[judge.name] = {"sha256": judge.sha256, "parts": {}}
        for part, keep in PARTS.items():
            for half in HALVES:
                m = measure(judge, [x for x in items if keep(x) and half_of(x["id"]) == half])
                rows[judge.name]["parts"].setdefault(part, {})[half] = m
                if part == "all":
                    rows[judge.name][half] = m  # the whole set's halves, as before
                print(f"{judge.name:14s} {part:9s} {half:9s} {m['n']:4d} "
                      + " ".join(f"{_with_ci(m, k):>32s}" for k in ("precision", "recall", "accuracy")))
    na = non_answer_counts(judges, items)
    print("\nlabelled non-answers of the merged batch (the reader's note) and how many each judge catches")
    for half, c in na["labelled"].items():
        print(f"{half:9s} {c['non_answers']:3d}: " + ", ".join(f"{k} {v}" for k, v in c["caught"].items()))
    print("items non_answers() flags, by label")
    for part, halves in na["flagged"].items():
        print(f"{part:9s} " + "; ".join(f"{h} {c}" for h, c in halves.items()))
    write_result({"labels": str(LABELS.relative_to(ROOT)), "n": len(items),
                  "parts": {p: sum(map(keep, items)) for p, keep in PARTS.items()}, "judges": rows,
                  "non_answers": na, "truncated": measure_truncated(specs, items)}, args.out)

if __name__ == "__main__":
    main()
