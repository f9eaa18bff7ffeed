"""What pruning saves in `sstm search`, and what it costs: the same trials scored both ways.

On the tiny Llama of the tests (random weights, rank-2 random adapters: no real refusals), a phrase judge
that calls a response a refusal when it contains "+" (the random model writes more of them as w grows) makes the refusal rates
vary with the merge's knobs, so the interval test has something to decide. The search is run twice, each
in a fresh home (no shared cache): with pruning and with ``--no-prune``. optuna's TPE draws its first 10
trials of a study at random from its seed, so with at most 10 trials per method both runs score the same
merges; for every trial pruned in the first run the second run's full scores tell whether it would have been
feasible (a false prune). Reported: trials, pruned, prompt evaluations and wall time of each run, the
selections, and the false prunes.

    .venv/bin/python bench/bench_search.py [--trials 5] [--methods ta,ties] [--calib-samples 32]

This measures the mechanics (prompts read, agreement of the selection), not what a real model reaches.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import write_result  # noqa: E402

PHRASES = ("+",)  # a response "refuses" when its text contains one of these (more often at larger w)


def one_run(home: Path, args, prune: bool, judge: Path) -> dict:
    from adapters import make_adapter
    from tiny import save_tiny

    from sstm.evaluate import EvalConfig
    from sstm.models import resolve_base
    from sstm.registry import Registry
    from sstm.search import SearchConfig, search

    home.mkdir()
    reg = Registry(home)
    base = resolve_base(reg, str(save_tiny(home / "tiny")))
    u = make_adapter(reg, base, "utility", rank=2, seed=0)
    s = make_adapter(reg, base, "safety", rank=2, seed=1)
    cfg = SearchConfig(u.id, s.id, tuple(args.methods.split(",")), args.min_refusal, args.max_overrefusal,
                       trials=args.trials, seed=args.seed, prune=prune, calib_samples=args.calib_samples,
                       test=False, eval=EvalConfig(model="", max_new_tokens=args.max_new_tokens,
                                                   max_context_tokens=500, judge=str(judge), device="cpu"))
    t0 = time.time()
    out = search(reg, cfg)
    seconds = time.time() - t0
    r = out.result
    return {"prune": prune, "seconds": round(seconds, 1), "trials": len(r.trials), "pruned": len(r.pruned),
            "prompts": sum(t.prompts for t in r.trials), "constraints": out.constraints,
            "feasible": sum(t.feasible for t in r.complete),
            "selected": None if r.selected is None else r.selected.brief() | {"feasible": r.feasible},
            "trial_list": [t.brief() | {"feasible": t.feasible} for t in r.trials]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5, help="trials per method (<= 10: the same trials both ways)")
    ap.add_argument("--methods", default="ta,ties")
    ap.add_argument("--calib-samples", type=int, default=32, help="prompts per refusal split (blocks of 16)")
    ap.add_argument("--max-new-tokens", type=int, default=6)
    ap.add_argument("--min-refusal", default="0.5")
    ap.add_argument("--max-overrefusal", default="0.5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "search.json")
    args = ap.parse_args()
    if args.trials > 10:
        ap.error("--trials: at most 10, so that both runs score the same (randomly drawn) trials")
    with tempfile.TemporaryDirectory() as tmp:
        judge = Path(tmp) / "judge.txt"
        judge.write_text("\n".join(PHRASES) + "\n")
        runs = [one_run(Path(tmp) / name, args, prune, judge) for name, prune in (("on", True), ("off", False))]
    on, off = runs
    same = [a["params"] for a in on["trial_list"]] == [b["params"] for b in off["trial_list"]]
    full = {(t["method"], t["trial"]): t for t in off["trial_list"]}
    false_prunes = [t["method"] + f" #{t['trial']}" for t in on["trial_list"]
                    if t["state"] == "pruned" and full[(t["method"], t["trial"])]["feasible"]]
    result = {"setup": {"model": "tiny Llama (tests/tiny.py), rank-2 random adapters", "judge_phrases": PHRASES,
                        **{k: v for k, v in vars(args).items() if k != "out"}},
              "same_trials": same, "prune": on, "no_prune": off,
              "prompts_saved": off["prompts"] - on["prompts"],
              "prompts_saved_share": round(1 - on["prompts"] / off["prompts"], 3) if off["prompts"] else None,
              "false_prunes": false_prunes,
              "same_selection": (on["selected"] or {}).get("params") == (off["selected"] or {}).get("params")}
    print(f"same trials both ways: {same}; pruned {on['pruned']}/{on['trials']}; prompt evaluations "
          f"{on['prompts']} vs {off['prompts']} ({result['prompts_saved_share']:.0%} saved); wall {on['seconds']} s vs "
          f"{off['seconds']} s; false prunes: {false_prunes or 'none'}; same selection: {result['same_selection']}")
    write_result(result, args.out)


if __name__ == "__main__":
    main()
