"""Run recipes: the examples round-trip through --print-config, unknown keys are refused, runs record theirs."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import sstm.pipeline
from cli_checks import assert_user_error
from sstm import recipe
from sstm.cli import app
from sstm.pipeline import RunConfig

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def printed(*args: str) -> str:
    result = runner.invoke(app, ["run", *args, "--print-config"])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", ["quick.yaml", "standard.yaml", "own-model.yaml"])
def test_examples_round_trip_through_print_config(name, tmp_path):
    first = printed("--config", str(EXAMPLES / name))
    values = yaml.safe_load(first)
    assert set(values) == set(recipe.KEYS)
    given = yaml.safe_load((EXAMPLES / name).read_text())
    assert all(values[k] == v for k, v in given.items())  # what the file sets is what runs
    saved = tmp_path / "effective.yaml"
    saved.write_text(first)
    assert printed("--config", str(saved)) == first
    assert recipe.config(saved, {}).plan == recipe.config(EXAMPLES / name, {}).plan


@pytest.mark.parametrize("name, flags", [("quick.yaml", ["--quick"]), ("standard.yaml", [])])
def test_preset_examples_are_the_presets(name, flags):
    """Each preset example spells out exactly what the preset runs (a changed default shows up here)."""
    assert yaml.safe_load(printed("--config", str(EXAMPLES / name))) == yaml.safe_load(printed(*flags))
    assert recipe.config(EXAMPLES / name, {}).plan == RunConfig(quick=name == "quick.yaml").plan


def test_effective_values_come_from_the_plan():
    values = recipe.effective(RunConfig(quick=True, skip_training=True, utility_adapter="u", safety_adapter="s"))
    cfg = RunConfig(quick=True)
    sst = next(c for m, c in cfg.plan.merges if "fisher" in m.needs)
    assert values["k"] == sst.k and values["fisher_samples"] == sst.samples
    assert values["eval_samples"] == cfg.plan.eval.samples and values["suites"] == list(cfg.plan.eval.suites)
    assert values["epochs"] is None and values["samples"] is None  # nothing is trained
    assert values["device"] is None  # the stages' own defaults differ (auto, None)


def test_command_line_overrides_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("quick: true\nk: 8\nw: [0.5, 1]\nseeds: [0, 1]\n")
    values = yaml.safe_load(printed("--config", str(path), "--w", "0.25", "--seed", "3"))
    assert values["quick"] is True and values["k"] == [8] and values["w"] == [0.25]
    assert values["seed"] == 3 and values["seeds"] == []  # --seed: one seed, whatever the file says


@pytest.mark.parametrize("text, needle", [
    ("quick: true\nepoch: 2\n", "unknown key 'epoch'"),
    ("k: sixteen\n", "k: expected int"),
    ("quick: 1\n", "quick: expected true or false"),
    ("- k\n", "expected a mapping"),
    ("k: [1, 2\n", "not valid YAML"),
    ("baselines: [ta, nope]\n", "--baselines nope"),
])
def test_bad_recipes_are_one_line_errors(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert_user_error(runner.invoke(app, ["run", "--config", str(path), "--print-config"]), needle)


def test_a_run_records_its_recipe(home, monkeypatch):
    monkeypatch.setattr(sstm.pipeline, "run", lambda reg, cfg: sstm.pipeline.Ran([]))
    result = runner.invoke(app, ["run", "--quick", "--k", "8"])
    assert result.exit_code == 0, result.output
    saved = list((home / recipe.RUNS_DIR).glob("*.yaml"))
    assert len(saved) == 1 and str(saved[0]) in result.output
    assert "# run " in saved[0].read_text()  # when, by which sstm and git commit
    assert yaml.safe_load(saved[0].read_text()) == yaml.safe_load(printed("--quick", "--k", "8"))
