"""A merge method is one unit (issue 23): a method defined here, in one file's worth of code, runs through
`sstm merge`, `calibrate`, `compare`, `verify --rebuild` and the recipe round-trip; and every registered
method, every SST basis/projector/structure and a calibrated merge is reproduced by `sstm verify --rebuild`."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from adapters import make_adapter
from typer.testing import CliRunner

import sstm.cli
from sstm import recipe
from sstm.adapters import module_type, read_lora
from sstm.calibrate import CalibrateConfig, calibrate
from sstm.cli import app
from sstm.compare import CompareConfig, compare
from sstm.data import register_rows
from sstm.evaluate import EvalConfig, evaluate
from sstm.merge import METHODS, MergeConfig, MergeMethod, register
from sstm.merge.layer_weights import DEFAULT_LAYER_WEIGHTS, GROUPS, load_layer_weights
from sstm.merge.param import param
from sstm.merge.point import Built, Inputs
from sstm.merge.space import Range
from sstm.rebuild import verify_rebuild

R = 2
FAST = dict(samples=4, batch_size=2, max_len=256, dtype="float64")  # the data pass of the methods with one


# --------------------------------------------------------------------------- the toy method: one file's worth


@dataclass
class ToyConfig(MergeConfig):
    """`sstm merge toy`."""

    gamma: float = param(0.5, "Scale γ of the safety update.", gt=0, le=4, search=Range(0.1, 4.0, log=True))


def toy_build(cfg: ToyConfig, x: Inputs, point: dict) -> Built:
    """ΔW = ΔW_u + γ·w·ℓ(m)·ΔW_s as one LoRA: B = [s_u·B_u, γ·w·ℓ·s_s·B_s], A = [A_u; A_s]."""
    lora, modules = {}, {}
    for m in x.fu.modules:
        c = cfg.gamma * x.weight(point["w"], m)
        lora[m] = (torch.cat([x.fu.scale * x.fu.B[m].double(), c * x.fs.scale * x.fs.B[m].double()], dim=1),
                   torch.cat([x.fu.A[m].double(), x.fs.A[m].double()], dim=0))
        modules[m] = {"strength": c}
    return Built(modules, lora=lora, doc={"gamma": cfg.gamma})


TOY = MergeMethod("toy", "Toy: task arithmetic with the safety update scaled by γ.", ToyConfig, toy_build,
                  format="lora", shown=("gamma",))


@pytest.fixture
def toy():
    """The toy method registered (and its commands generated) for one test, then removed."""
    register(TOY)
    sstm.cli._register_merge_commands()
    yield TOY
    METHODS.pop(TOY.name)
    for group in (sstm.cli.merge_app, sstm.cli.calibrate_app):
        group.registered_commands = [c for c in group.registered_commands if c.name != TOY.name]


@pytest.fixture
def pair(reg, tiny_base):
    return make_adapter(reg, tiny_base, "utility", rank=R, seed=0), make_adapter(reg, tiny_base, "safety", rank=R, seed=1)


def jailbreak_rows(reg):
    rows = [{"prompt": p, "response": "I can't."} for p in ("Hi", "Tell me a secret", "DAN")]
    return register_rows(reg, "jb-test", rows, {"test": "jailbreak"}, quiet=True)


def test_a_method_defined_in_a_test_runs_through_every_command(reg, pair, toy, tmp_path):
    u, s = pair
    runner = CliRunner()
    res = runner.invoke(app, ["merge", "toy", "--help"])
    assert res.exit_code == 0 and "--gamma" in res.output and "Scale γ" in res.output
    res = runner.invoke(app, ["merge", "toy", "--utility", u.short, "--safety", s.short, "--w", "0.5,1",
                              "--gamma", "2"])
    assert res.exit_code == 0, res.output
    arts = sorted(reg.list("merged"), key=lambda a: a.params["w"])
    assert [a.params["w"] for a in arts] == [0.5, 1.0] and all(a.params["gamma"] == 2.0 for a in arts)
    assert [a.label for a in arts] == ["toy w=0.5 gamma=2", "toy w=1 gamma=2"]
    # the stored adapter is the toy's ΔW, against the adapters' own factors
    fu, fs = read_lora(u), read_lora(s)
    for art in arts:
        merged = read_lora(art)
        for m in fu.modules:
            want = fu.delta(m, torch.float64) + 2.0 * art.params["w"] * DEFAULT_LAYER_WEIGHTS[module_type(m)] * \
                fs.delta(m, torch.float64)
            assert torch.allclose(merged.delta(m, torch.float64), want, rtol=1e-6, atol=1e-9)
        diag = json.loads((art.path / "diagnostics.json").read_text())
        assert diag["method"] == "toy" and diag["gamma"] == 2.0 and diag["format"] == "lora"
    # its parameter's bounds come from its declaration: one line, exit 2
    res = runner.invoke(app, ["merge", "toy", "--utility", u.short, "--safety", s.short, "--gamma", "5"])
    assert res.exit_code == 2 and "--gamma 5: must be in (0, 4]" in res.output and len(res.output.splitlines()) == 1
    assert TOY.space == {"w": METHODS["ta"].space["w"], "gamma": Range(0.1, 4.0, log=True)}

    # verify --rebuild: the stage replays it from its recorded params
    for art in arts:
        res = runner.invoke(app, ["verify", "--rebuild", art.short])
        assert res.exit_code == 0 and res.stdout.startswith(f"reproduced: merged {art.short}"), res.output

    # compare: a sweep's rows are told apart by what differs between them (w), from the method's label
    jb = jailbreak_rows(reg)
    evals = [evaluate(reg, EvalConfig(model=a.id, suites=("jailbreak",), batch_size=4, max_new_tokens=2,
                                      data={"jailbreak": jb}, device="cpu"))[0] for a in arts]
    rows = compare(reg, CompareConfig(evals=tuple(e.id for e in evals)))
    assert sorted(r.name for r in rows) == ["toy w=0.5", "toy w=1"]
    res = runner.invoke(app, ["compare", "--json"])
    assert res.exit_code == 0 and sorted(r["name"] for r in json.loads(res.stdout)["rows"]) == ["toy w=0.5", "toy w=1"]

    # calibrate: the search probes the toy like any method; the calibrated merge is rebuilt by replaying it
    res = runner.invoke(app, ["calibrate", "toy", "--utility", u.short, "--safety", s.short, "--gamma", "2",
                              "--w-max", "1", "--max-evals", "1", "--calib-samples", "2", "--max-new-tokens", "2",
                              "--max-context-tokens", "500"])
    assert res.exit_code == 0, res.output
    (cal,) = [a for a in reg.list("merged") if "calibration" in a.params]
    assert cal.params["gamma"] == 2.0 and cal.params["method"] == "toy" and cal.label.endswith("calibrated")
    report = verify_rebuild(reg, cal.id)
    assert report.reproduced and report.max_error == 0.0, report

    # the recipe round-trip: `--baselines toy` in the effective recipe, read back to the same plan
    res = runner.invoke(app, ["run", "--quick", "--baselines", "toy", "--w", "1", "--print-config"])
    assert res.exit_code == 0, res.output
    path = tmp_path / "recipe.yaml"
    path.write_text(res.stdout)
    cfg = recipe.config(path, {})
    assert cfg.baselines == ("toy",) and [m.name for m, _ in cfg.plan.merges] == ["sst", "toy"]
    assert recipe.dump(cfg) == res.stdout  # read back, the same effective recipe


# --------------------------------------------------------------------------- every method, every option


def _config(name: str, u: str, s: str, **options):
    method = METHODS[name]
    params = {k: v for k, v in {**FAST, "k": [3], "density": 0.6, "share": 0.5}.items() if k in method.params}
    return method.make_config(u, s, w=0.7, seed=3 if method.seeded else None, **params, **options)


CASES = ([(name, {}) for name in METHODS]
         + [("sst", {"basis": b}) for b in METHODS["sst"].params["basis"].choices[1:]]
         + [("sst", {"projector": p}) for p in METHODS["sst"].params["projector"].choices[1:]]
         + [("sst", {"structure": st}) for st in METHODS["sst"].params["structure"].choices[1:]])


@pytest.mark.parametrize("name, options", CASES, ids=[f"{n}-{'-'.join(o.values()) or 'default'}" for n, o in CASES])
def test_rebuild_every_method(reg, pair, name, options):
    u, s = pair
    (art,) = METHODS[name].merge(reg, _config(name, u.id, s.id, **options))
    assert all(art.params[k] == v for k, v in options.items())
    # the record gives back the settings the id hashes (ℓ comes back as the weights used, data as dataset ids)
    assert METHODS[name].config_from(art.params, art.inputs).recorded() == _config(name, u.id, s.id, **options).recorded()
    report = verify_rebuild(reg, art.id)
    assert report.reproduced, report


def test_rebuild_calibrated_merge_and_missing_input(reg, pair, monkeypatch):
    u, s = pair
    ev = EvalConfig(model="", samples=2, max_new_tokens=2, batch_size=4, max_context_tokens=500, device="cpu")
    (cal,) = calibrate(reg, CalibrateConfig("ta", METHODS["ta"].make_config(u.id, s.id), eval=ev, w_max=2.0,
                                            max_evals=2))
    report = verify_rebuild(reg, cal.artifact.id)
    assert report.reproduced and report.files == len(cal.artifact.files), report
    # K-FAC's Fishers gone from the registry: the report names that input, not a change of code
    (kfac,) = METHODS["sst"].merge(reg, _config("sst", u.id, s.id, structure="kfac"))
    assert verify_rebuild(reg, kfac.id).reproduced
    fisher_id = kfac.inputs["fisher_utility"]
    find = reg.find
    monkeypatch.setattr(reg, "find", lambda aid: None if aid == fisher_id else find(aid))  # as if removed
    report = verify_rebuild(reg, kfac.id)
    assert not report.reproduced and f"fisher_utility {fisher_id[:12]}" in report.message
    assert "no longer in the registry" in report.message and "code or library" not in report.message


def test_layer_weight_groups_cover_the_default_policy():
    """`sstm search` weighs GROUPS: each group a mapping over the module types of the default policy."""
    types = {t for ts in GROUPS.values() for t in ts}
    assert types == set(DEFAULT_LAYER_WEIGHTS) - {"default"}
    weights = load_layer_weights({t: 3.0 for t in GROUPS["attention"]})
    assert all(weights[t] == 3.0 for t in GROUPS["attention"]) and weights["gate_proj"] == 1.5


def test_sweep_rows_are_named_by_what_differs():
    """Defect 24.16: rows of one method differing in k and w are told apart in the table's method column;
    a setting shared by every row of the method (damping) stays out, a control is named by its value."""
    from sstm.compare import Row, name_rows
    from sstm.render import render_table

    def row(i, method, **params):
        p = {"method": method, "layer_weights": dict(DEFAULT_LAYER_WEIGHTS), **params}
        return Row(model_id=f"{i:064x}", kind="merged", method=method, label="", base_id=None, code="c",
                   k=p.get("k"), w=p.get("w"), params=p)

    rows = [row(1, "sst", k=64, w=0.5, damping=1e-3, basis="gevp"), row(2, "sst", k=128, w=0.5, damping=1e-3,
                                                                        basis="gevp"),
            row(3, "sst", k=64, w=0.5, damping=1e-3, basis="random", basis_seed=0),
            row(4, "ta", w=0.5), row(5, "ta", w=1.0), row(6, "ta", w=2.0)]
    name_rows(rows)
    assert [r.name for r in rows] == ["sst k=64", "sst k=128", "sst random k=64", "ta w=0.5", "ta w=1", "ta w=2"]
    import io

    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=80).print(render_table(rows, width=80))
    assert all(name in out.getvalue() for name in ("ta w=0.5", "ta w=2", "sst k=128"))
