"""Sequential calibration probes vs the rule before them: prompt evaluations per calibrated method, same w?

For every calibration of the standard run (``sstm run``'s plan without ``--w``: SST-Merge at each k, its
controls, every baseline; ``--quick``: the quick preset's) on two registered adapters, the calibration
(:mod:`sstm.calibrate`) is run twice on the same home:

  sequential  today's probes: seeded blocks of 16 prompts, stop once the exact (Clopper–Pearson) 95 %
              interval of k/n lies above or below the target, else read the next block;
  old rule    every probe reads all its prompts, then decides k/n >= target (``CalibrateConfig.sequential =
              False``, recorded in the calibrated artifact's params).

Both rules share the probe merges and the blocks' evals (cache hits); only the number of blocks read
differs. Per calibration the bench records, from the registry records (so the counts do not depend on the
machine's load): each rule's probes (w, n, refusal, decision), total prompt evaluations and their ratio,
the chosen w of each and whether they agree; and, for every probe of the old rule, the decision the
sequential rule makes on the same blocks (replayed from the block evals' refusal counts, the same ``sequential``
function), and where the two differ whether the old rule's refusal was within one prompt (1/n) of the
target. The paths of the two searches part at the first differing decision (or where the doubling's
"refusal fell" test, which allows one prompt of the smaller n, judges differently); the chosen w may differ
only after such a split. Wall seconds of each rule, the artifacts it built and the load average are
recorded too (a rule whose probes were cached by an earlier run builds nothing).

    SSTM_HOME=~/.sstm .venv/bin/python bench/bench_calibrate.py [--utility ID --safety ID]
        [--methods sst,ta,...] [--calib-samples 64] [--quick] [--out bench/results/calibrate.json]

Default adapters: the newest registered adapter of each role; default methods: the preset's (SST-Merge,
its controls where the preset runs them, the baselines); default calibration prompts: the preset's.
Writes bench/results/calibrate.json. Uses $SSTM_HOME, or bench/.home, as registry home.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _common import run_main, write_result  # noqa: E402

from sstm.calibrate import BLOCK, REFUSAL, CalibrateConfig, calibrate, sequential, settings  # noqa: E402
from sstm.errors import SSTMError  # noqa: E402
from sstm.merge import METHODS  # noqa: E402
from sstm.pipeline import SUBJECT, RunConfig, _merge_inputs  # noqa: E402
from sstm.registry import Artifact, Registry  # noqa: E402

RULES = {"sequential": True, "old": False}  # the bench's name -> CalibrateConfig.sequential


def newest(reg: Registry, role: str) -> Artifact:
    """The most recently registered adapter trained (or registered) for `role`."""
    adapters = [a for a in reg.list("adapter") if a.params.get("role") == role]
    if not adapters:
        raise SSTMError(f"no {role} adapter registered in {reg.home}: train one or pass --{role} ID")
    return adapters[-1]


def block_counts(reg: Registry, evals: Sequence[str]) -> list[tuple[int, int]]:
    """(refusals, prompts) of each block eval of a probe, from its record (as the calibration counts them)."""
    out = []
    for eid in evals:
        ev = reg.get(eid)
        n = int(ev.params["samples"])
        out.append((round(float(ev.metrics[REFUSAL]) * n), n))
    return out


def probes(reg: Registry, record: dict) -> list[dict]:
    """A calibrated artifact's search path: per probe w, n, refusal, decision (refusal >= target), its blocks."""
    return [{"w": p["w"], "n": p["n"], "refusal": p["refusal"], "reached": p["refusal"] >= record["target"],
             "model": p["model"], "blocks": block_counts(reg, p["evals"])} for p in record["path"]]


def compare_rules(seq: list[dict], old: list[dict], target: float, confidence: float) -> dict:
    """The two searches' paths side by side (:func:`probes` lists).

    Every old-rule probe gets the sequential rule's decision on its blocks (`sequential` replayed on the
    block counts); a differing decision says whether the old refusal r was within one prompt of the target
    (|r - target| <= 1/n). `split`: where the paths part -- the first differing decision, or, with the same
    decisions, the probe after which one search stopped because refusal "fell" by more than one prompt of
    the smaller n (:func:`sstm.calibrate.fell`) -- None where both probed the same w's (then a different
    chosen w means neither reached the target and the highest refusal probed differs)."""
    replayed = []
    for p in old:
        k, n = sequential(iter(p["blocks"]), target, confidence)
        reached = k / n >= target
        row = {"w": p["w"], "old": p["reached"], "sequential": reached, "sequential_n": n, "old_n": p["n"]}
        if reached != p["reached"]:
            row["within_one_prompt"] = abs(p["refusal"] - target) <= 1 / p["n"] + 1e-9
        replayed.append(row)
    split = None
    common = min(len(seq), len(old))  # with the same decisions so far both searches probe the same next w
    for i in range(common):
        if seq[i]["reached"] != old[i]["reached"]:
            split = {"index": i, "w": old[i]["w"], "cause": "decision",
                     "within_one_prompt": replayed[i].get("within_one_prompt", False)}
            break
    else:
        if len(seq) != len(old):  # same decisions, one search stopped: refusal "fell" by more than one prompt
            split = {"index": common, "w": old[common - 1]["w"], "cause": "fell",
                     "stopped": "old" if len(old) == common else "sequential"}
    return {"decisions": replayed, "differing": [r for r in replayed if r["old"] != r["sequential"]], "split": split}


def plan(reg: Registry, args: argparse.Namespace) -> tuple[list[tuple[str, CalibrateConfig]], Artifact, Artifact]:
    """(label, calibration) of every calibrated setting of the run's plan on the two adapters, as `sstm run`
    builds them (sstm.pipeline: the preset's calibration settings, the Fisher data of each adapter)."""
    u = reg.get(args.utility, kind="adapter") if args.utility else newest(reg, "utility")
    s = reg.get(args.safety, kind="adapter") if args.safety else newest(reg, "safety")
    methods = tuple(dict.fromkeys(m.strip() for m in args.methods.split(","))) if args.methods else None
    for name in methods or ():
        if name not in METHODS:
            raise SSTMError(f"--methods {name}: expected some of {', '.join(METHODS)}")
    run = RunConfig(quick=args.quick, skip_training=True, utility_adapter=u.id, safety_adapter=s.id,
                    judge=args.judge, baselines=None if methods is None else tuple(m for m in methods if m != SUBJECT))
    out = []
    for (method, mcfg), ccfg in zip(run.plan.merges, run.plan.calibrations, strict=True):
        if methods is not None and method.name not in methods:
            continue
        inputs = _merge_inputs(reg, run, method, u, s)
        ccfg = replace(ccfg, eval=replace(ccfg.eval, samples=args.calib_samples or ccfg.eval.samples))
        if args.target is not None:
            ccfg = replace(ccfg, target=args.target)
        for config in settings(method, replace(mcfg, **inputs)):
            shown = {n: getattr(config, n) for n in method.params if getattr(config, n) is not None}
            shown |= {n: shown[n][0] for n in method.sweeps}  # one value each after `settings`
            out.append((method.label(shown, keys=method.sweeps), replace(ccfg, config=config)))
    return out, u, s


def run_rule(reg: Registry, ccfg: CalibrateConfig, rule: str) -> dict:
    """One calibration under `rule`: its probes and chosen w from the registry, seconds, artifacts built."""
    before = {k: len(reg.list(k)) for k in ("merged", "eval")}
    load, t0 = os.getloadavg(), time.perf_counter()
    (cal,) = calibrate(reg, replace(ccfg, sequential=RULES[rule]))
    seconds = time.perf_counter() - t0
    record = cal.artifact.params["calibration"]
    path = probes(reg, record)
    return {"artifact": cal.artifact.id, "w": cal.artifact.params["w"], "reached": record["reached"],
            "prompts": sum(p["n"] for p in path), "probes": path, "seconds": round(seconds, 2),
            "built": {k: len(reg.list(k)) - v for k, v in before.items()},
            "loadavg": [round(x, 2) for x in (*load, *os.getloadavg())]}


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utility", help="utility adapter id (default: the newest utility adapter)")
    ap.add_argument("--safety", help="safety adapter id (default: the newest safety adapter)")
    ap.add_argument("--methods", help="comma-separated merge methods (default: the preset's; sst brings its controls)")
    ap.add_argument("--calib-samples", type=int, default=None, help="calibration prompts per probe (default: preset's)")
    ap.add_argument("--quick", action="store_true", help="the quick preset's sizes")
    ap.add_argument("--judge", default=None, help="refusal judge (default: the eval's)")
    ap.add_argument("--target", type=float, default=None, help="target refusal (default: the calibration's)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "calibrate.json")
    args = ap.parse_args(argv)
    if args.calib_samples is not None and args.calib_samples < 1:
        raise SSTMError(f"--calib-samples {args.calib_samples}: must be at least 1")
    home = Path(os.environ.get("SSTM_HOME") or ROOT / "bench" / ".home")
    reg = Registry(home)
    calibrations, u, s = plan(reg, args)
    if not calibrations:
        raise SSTMError(f"--methods {args.methods}: none of them is calibrated by this preset's run")
    rows = []
    for label, ccfg in calibrations:
        runs = {rule: run_rule(reg, ccfg, rule) for rule in RULES}
        seq, old = runs["sequential"], runs["old"]
        rows.append(row := {"setting": label, "method": ccfg.method, **runs,
                            "ratio": round(old["prompts"] / seq["prompts"], 3), "same_w": seq["w"] == old["w"],
                            **compare_rules(seq["probes"], old["probes"], ccfg.target, ccfg.confidence)})
        split = row["split"]
        # why the chosen w differs: "decision" (within one prompt of the target or not), "fell", or "kept" (same
        # probes, not reached, another highest refusal); the target allows only a decision within one prompt
        row["w_differs"] = None if row["same_w"] else split["cause"] if split else "kept"
        row["w_ok"] = row["same_w"] or (row["w_differs"] == "decision" and split["within_one_prompt"])
        print(f"{label:28s} prompts {old['prompts']:5d} -> {seq['prompts']:5d} ({rows[-1]['ratio']:.2f}x); "
              f"w {old['w']:g} -> {seq['w']:g}; {seq['seconds'] + old['seconds']:.0f} s")
    totals = {rule: sum(r[rule]["prompts"] for r in rows) for rule in RULES}
    ratios = [r["ratio"] for r in rows]
    ccfg0 = calibrations[0][1]
    result = {
        "bench": "calibrate", "preset": "quick" if args.quick else "standard",
        "utility": u.id, "safety": s.id, "calib_samples": ccfg0.eval.samples, "target": ccfg0.target,
        "confidence": ccfg0.confidence, "block": BLOCK, "judge": ccfg0.eval.judge, "settings": rows,
        "summary": {"prompts": totals, "ratio": round(totals["old"] / totals["sequential"], 3),
                    "ratio_min": min(ratios), "ratio_median": statistics.median(ratios),
                    "same_w": sum(r["same_w"] for r in rows), "settings": len(rows),
                    "w_differs": {r["setting"]: r["w_differs"] for r in rows if not r["same_w"]},
                    "w_ok": all(r["w_ok"] for r in rows),
                    "seconds": {rule: round(sum(r[rule]["seconds"] for r in rows), 1) for rule in RULES},
                    "target_met": totals["old"] >= 2 * totals["sequential"] and all(r["w_ok"] for r in rows)},
    }
    sm = result["summary"]
    print(f"total prompt evaluations {totals['old']} (old rule) -> {totals['sequential']} (sequential): "
          f"{sm['ratio']:.2f}x (per setting {sm['ratio_min']:.2f}-{max(ratios):.2f}x); "
          f"same w {sm['same_w']}/{len(rows)}; target {'met' if sm['target_met'] else 'missed'}")
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    run_main(main)
