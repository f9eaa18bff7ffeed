"""`sstm run`: the whole pipeline on the tiny model, then again as pure cache hits."""

import json

from typer.testing import CliRunner

from sstm.cli import app
from sstm.registry import Registry

runner = CliRunner()

SMALL = ["--quick", "--samples", "8", "--fisher-samples", "8", "--eval-samples", "4", "--k", "4,300", "--w", "1.0"]


def test_run_quick_end_to_end_then_all_cache_hits(home, tiny_model_dir):
    args = ["run", "--model", str(tiny_model_dir), *SMALL, "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    rows = json.loads(first.stdout)["rows"]
    methods = sorted(r["method"] for r in rows)
    assert methods == sorted(["base", "utility", "safety", "sst", "sst", "ta", "ties", "dare"]), methods
    for r in rows:
        assert r["metrics"]["jailbreak"]["n"] == 4
        assert 0.0 <= r["metrics"]["rouge_l"]["value"] <= 1.0
    # k = 300 > r^2 = 256 is clamped with a warning: it equals layer-weighted task arithmetic
    assert "clamped" in first.stderr and "task arithmetic" in first.stderr

    reg = Registry(home)
    n_before = len(reg.list())
    kinds = {a.kind for a in reg.list()}
    assert kinds == {"base", "dataset", "adapter", "fisher", "merged", "eval"}
    assert len(reg.list("fisher")) == 2, "one Fisher per role for the whole k sweep"

    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert len(Registry(home).list()) == n_before, "second identical run must build nothing"
    assert "building" not in second.stderr
    assert "cache hit" in second.stderr
    assert json.loads(second.stdout)["rows"] == rows


def test_run_bad_inputs(home):
    r = runner.invoke(app, ["run", "--skip-training", "--utility-adapter", "x"])
    assert r.exit_code == 2 and "needs both" in r.output
    r = runner.invoke(app, ["run", "--k", "a,b"])
    assert r.exit_code == 2 and "--k" in r.output
    r = runner.invoke(app, ["run", "--baselines", "ta,magic"])
    assert r.exit_code == 2 and "magic" in r.output
