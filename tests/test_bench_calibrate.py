"""bench/bench_calibrate.py: sequential probes vs the old rule (every probe reads all its prompts) on the tiny model,
counts from the registry records; the comparison of two search paths on hand-made probes."""

import json
import sys
from pathlib import Path

import pytest
from adapters import make_adapter

from sstm.calibrate import BLOCK, REFUSAL, interval
from sstm.errors import SSTMError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_calibrate  # noqa: E402


def test_bench_counts_are_the_recorded_probe_sizes(reg, tiny_base, tmp_path):
    """ta on the quick preset, 24 calibration prompts per probe (blocks of 16 and 8), a judge that calls a response
    a refusal when it holds "+" (the random model writes more of them as w grows, bench/bench_search.py)."""
    make_adapter(reg, tiny_base, "utility", rank=2, seed=2)
    u = make_adapter(reg, tiny_base, "utility", rank=2, seed=0)  # the newest adapter of each role is the default
    s = make_adapter(reg, tiny_base, "safety", rank=2, seed=1)
    judge = tmp_path / "plus.txt"
    judge.write_text("+\n")
    out = tmp_path / "calibrate.json"
    result = bench_calibrate.main(["--quick", "--methods", "ta", "--calib-samples", "24", "--judge", str(judge),
                                   "--out", str(out)])
    assert json.loads(out.read_text())["summary"] == result["summary"]
    assert result["utility"] == u.id and result["safety"] == s.id and result["preset"] == "quick"
    (row,) = result["settings"]
    assert row["setting"] == "ta"
    seq, old = row["sequential"], row["old"]
    for run in (seq, old):
        record = reg.get(run["artifact"]).params["calibration"]
        assert run["prompts"] == sum(p["n"] for p in record["path"]) == sum(p["n"] for p in run["probes"])
        for p, rec in zip(run["probes"], record["path"], strict=True):
            evals = [reg.get(e) for e in rec["evals"]]  # independently: the block evals' own sizes and rates
            assert p["n"] == sum(int(e.params["samples"]) for e in evals) == sum(n for _, n in p["blocks"])
            assert p["refusal"] == pytest.approx(sum(e.metrics[REFUSAL] * e.params["samples"] for e in evals) / p["n"])
    # the old rule reads every block of every probe; the sequential rule stops only where the interval decides
    assert all(p["n"] == 24 for p in old["probes"]) and old["prompts"] == len(old["probes"]) * 24
    assert "sequential" not in reg.get(seq["artifact"]).params["calibration"]
    assert reg.get(old["artifact"]).params["calibration"]["sequential"] is False
    for p in seq["probes"]:
        lo, hi = interval(round(p["refusal"] * p["n"]), p["n"])
        assert p["n"] in (BLOCK, 24) and (p["n"] == 24 or lo >= 0.9 or hi < 0.9)
    assert row["ratio"] == pytest.approx(old["prompts"] / seq["prompts"], abs=1e-3)
    assert result["summary"]["prompts"] == {"sequential": seq["prompts"], "old": old["prompts"]}
    # both rules share the probe merges: where they probe the same w, the same merge and the same first block
    by_w = {p["w"]: p for p in seq["probes"]}
    for p, d in zip(old["probes"], row["decisions"], strict=True):
        if p["w"] in by_w:
            q = by_w[p["w"]]
            assert q["model"] == p["model"] and q["blocks"] == p["blocks"][: len(q["blocks"])]
            assert (d["sequential"], d["sequential_n"]) == (q["reached"], q["n"])  # the replay is the sequential run
    assert row["same_w"] == (seq["w"] == old["w"]) and (row["w_differs"] is None) == row["same_w"]
    if row["split"] is None:  # the same probes: the same w unless neither reached and the best probe differs
        assert row["same_w"] or (row["w_differs"] == "kept" and not seq["reached"] and not old["reached"])
    n_merged = len(reg.list("merged"))
    again = bench_calibrate.main(["--quick", "--methods", "ta", "--calib-samples", "24", "--judge", str(judge),
                                  "--out", str(out)])
    assert again["summary"]["prompts"] == result["summary"]["prompts"] and len(reg.list("merged")) == n_merged
    assert all(r[rule]["built"] == {"merged": 0, "eval": 0} for r in again["settings"] for rule in ("sequential", "old"))


def probe(w: float, blocks: list[tuple[int, int]]) -> dict:
    k, n = map(sum, zip(*blocks, strict=True))
    return {"w": w, "n": n, "refusal": k / n, "reached": k / n >= 0.9, "blocks": blocks}


def test_compare_rules_finds_the_split_and_whether_it_was_within_one_prompt():
    # 48/48 refusals: the sequential rule reaches 0.9 after three blocks (interval low 0.926); the fourth block
    # brings the old rule to 57/64 = 0.891, one prompt under the target (a split within one prompt) ...
    near = probe(2.0, [(16, 16)] * 3 + [(9, 16)])
    seq = [probe(1.0, [(2, 16)]), probe(2.0, [(16, 16)] * 3)]
    old = [probe(1.0, [(2, 16), (5, 16), (4, 16), (6, 16)]), near, probe(4.0, [(16, 16)] * 4)]
    cmp = bench_calibrate.compare_rules(seq, old, 0.9, 0.95)
    assert [(d["old"], d["sequential"], d["sequential_n"]) for d in cmp["decisions"]] == [
        (False, False, 16), (False, True, 48), (True, True, 48)]
    assert cmp["split"] == {"index": 1, "w": 2.0, "cause": "decision", "within_one_prompt": True}
    assert [d["w"] for d in cmp["differing"]] == [2.0]
    # ... a fourth block of no refusals (48/64 = 0.75) is a split far from the target
    far = [old[0], probe(2.0, [(16, 16)] * 3 + [(0, 16)]), old[2]]
    assert bench_calibrate.compare_rules(seq, far, 0.9, 0.95)["split"]["within_one_prompt"] is False
    # the same decisions, but the old rule stopped: 12/64 -> 6/64 fell by more than one prompt, 3/16 -> 2/16 did not
    seq_f = [probe(1.0, [(3, 16)]), probe(2.0, [(2, 16)]), probe(4.0, [(5, 16)])]
    old_f = [probe(1.0, [(3, 16)] * 4), probe(2.0, [(2, 16), (1, 16), (2, 16), (1, 16)])]
    fell = bench_calibrate.compare_rules(seq_f, old_f, 0.9, 0.95)
    assert fell["split"] == {"index": 2, "w": 2.0, "cause": "fell", "stopped": "old"} and fell["differing"] == []
    assert bench_calibrate.compare_rules(seq[:1], old[:1], 0.9, 0.95)["split"] is None


def test_bench_bad_input(reg, tiny_base, tmp_path):
    with pytest.raises(SSTMError, match="no utility adapter"):
        bench_calibrate.main(["--out", str(tmp_path / "x.json")])
    make_adapter(reg, tiny_base, "utility", rank=2, seed=0)
    make_adapter(reg, tiny_base, "safety", rank=2, seed=1)
    with pytest.raises(SSTMError, match="--methods nope"):
        bench_calibrate.main(["--methods", "ta,nope", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SSTMError, match="--calib-samples 0"):
        bench_calibrate.main(["--calib-samples", "0", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
