"""bench/gpu_check.sh: valid bash, its CPU dry run, the reference it compares with, and the comparison itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


def test_script_is_valid_bash():
    res = subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_cpu_dry_run_plans_three_configurations_against_the_committed_reference():
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu", "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    plans = [line for line in res.stdout.splitlines() if "would run" in line]
    assert len(plans) == 3
    assert all("--device cpu" in p and "HF_HUB_OFFLINE=1" in p for p in plans)
    assert ["--dtype float32" in p for p in plans] == [True, False, True]
    assert "--dtype bf16" in plans[1] and "torchrun --nproc_per_node=1" in plans[2]
    assert "== gpu_check: 0 of 3 configurations failed" in res.stdout
    ref = gpu_check.check_reference(gpu_check.REFERENCE)
    assert ref["stage_seconds"]["total"] > 0 and "cpu float32" == ref["config"]
    assert {"base/jailbreak", "base/overrefusal", "base/repliqa"} <= set(ref["evals"])
    assert all(len(e["verdicts"]) == 8 for k, e in ref["evals"].items() if k.startswith("base/"))


def test_unknown_option_is_refused():
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--nope"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown option --nope" in res.stderr


def _result(verdicts, datasets=("d1", "d2"), merged=("m1",)):
    return {"ids": {"base": ["b"], "dataset": list(datasets), "merged": list(merged)},
            "evals": {"base/jailbreak": {"verdicts": list(verdicts), "metrics": {"jailbreak.refusal_rate": 0.5},
                                         "tokens_per_s": 10.0},
                      "merged:sst/jailbreak": {"verdicts": [True, True], "metrics": {"jailbreak.refusal_rate": 1.0},
                                               "tokens_per_s": None}}}


def test_comparison_requires_equal_data_ids_and_agreeing_base_verdicts():
    ref = _result([True, False] * 5)
    ok, lines = gpu_check.compare(_result([True, False] * 5, merged=("m2",)), ref, "float32")
    assert ok and "dataset ids: equal (2)" in lines and "merged ids: 0 of 1 equal to the reference's" in lines
    one_off = [True, False] * 4 + [False, False]  # 9 of 10 agree: enough in float32 (0.85)
    assert gpu_check.compare(_result(one_off), ref, "float32")[0]
    two_off = [True, False] * 3 + [False, True, False, False]  # 7 of 10
    assert gpu_check.BASE_AGREEMENT > 0.7 and gpu_check.BASE_AGREEMENT_BF16 > 0.7
    assert not gpu_check.compare(_result(two_off), ref, "float32")[0]
    assert not gpu_check.compare(_result(two_off), ref, "bf16")[0]  # 0.7 < 0.75
    assert gpu_check.compare(_result([True, False] * 4 + [False, True]), ref, "bf16")[0]  # 0.8
    off = _result([True, False] * 5)
    off["evals"]["base/jailbreak"]["metrics"]["jailbreak.refusal_rate"] = 0.58  # 0.08 from the reference
    assert not gpu_check.compare(off, ref, "float32")[0] and gpu_check.compare(off, ref, "bf16")[0]
    ok, lines = gpu_check.compare(_result([True, False] * 5, datasets=("d1", "dX")), ref, "float32")
    assert not ok and "dataset ids: DIFFER (2)" in lines


def test_stage_times_are_read_from_the_building_lines(tmp_path):
    script = ("import time\n"
              "print('building dataset aaaaaaaaaaaa x', flush=True); time.sleep(0.3)\n"
              "print('building eval bbbbbbbbbbbb y', flush=True); time.sleep(0.2)\n"
              "print('done')\n")
    code, per_kind, stages, out = gpu_check.run([sys.executable, "-c", script], tmp_path)
    assert code == 0 and [(k, i) for k, i, _ in stages] == [("dataset", "aaaaaaaaaaaa"), ("eval", "bbbbbbbbbbbb")]
    assert per_kind["dataset"] == pytest.approx(0.3, abs=0.25) and per_kind["eval"] == pytest.approx(0.2, abs=0.25)
    assert per_kind["total"] >= per_kind["dataset"] + per_kind["eval"] and "done" in out
    json.dumps(per_kind)
