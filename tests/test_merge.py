"""SST-Merge math (GEVP, projector, exact LoRA output), sweeps, baseline config errors, CLI errors."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from adapters import make_adapter
from typer.testing import CliRunner

import sstm.fisher
from sstm.cli import app
from sstm.errors import SSTMError
from sstm.fisher import core_basis, load_fisher
from sstm.merge import METHODS, get_method
from sstm.adapters import module_type, read_lora
from sstm.merge.gevp import projector, solve_gevp
from sstm.merge.layer_weights import DEFAULT_LAYER_WEIGHTS, load_layer_weights
from sstm.merge.methods.sst import SSTConfig
from sstm.models import load_with_adapter

sst_merge = METHODS["sst"].merge
R = 4  # rank of both test adapters: r² = 16 core dimensions
FAST = dict(samples=5, batch_size=3, max_len=256, dtype="float64")
EIGH = scipy.linalg.eigh  # unpatched, for the test's own reference computations


@pytest.fixture
def pair(reg, tiny_base):
    return make_adapter(reg, tiny_base, "utility", rank=R, seed=0), make_adapter(reg, tiny_base, "safety", rank=R, seed=1)


@pytest.fixture
def counters(monkeypatch):
    """Count Fisher computations and GEVP solves."""
    n = {"fisher": 0, "eigh": 0}
    acc, eigh = sstm.fisher.accumulate_fisher, scipy.linalg.eigh

    def counting_acc(*a, **k):
        n["fisher"] += 1
        return acc(*a, **k)

    def counting_eigh(*a, **k):
        n["eigh"] += 1
        return eigh(*a, **k)

    monkeypatch.setattr(sstm.fisher, "accumulate_fisher", counting_acc)
    monkeypatch.setattr(scipy.linalg, "eigh", counting_eigh)
    return n


def peft_deltas(reg, art) -> dict:
    """ΔW of every module of a merged artifact, as PEFT applies it."""
    model, _ = load_with_adapter(reg, art, dtype="float64")
    root = model.base_model.model
    out = {}
    for m in read_lora(art).modules:
        mod = root.get_submodule(m)
        assert mod.scaling["default"] == 1.0
        out[m] = mod.get_delta_weight("default")
    return out


def close(a, b, tol):
    return float((a - b).norm()) <= tol * max(float(b.norm()), 1e-30)


# --------------------------------------------------------------------------- GEVP


def test_gevp_properties():
    rng = np.random.default_rng(0)
    n = 16
    X, Y = rng.standard_normal((n, 5)), rng.standard_normal((n, 7))  # rank-deficient like few-sample Fishers
    F_u, F_s = X @ X.T / 5, Y @ Y.T / 7
    g = solve_gevp(F_u, F_s, 1e-3)
    assert g.delta == pytest.approx(1e-3 * np.trace(F_u) / n)
    assert np.allclose(g.metric, F_u + g.delta * np.eye(n))
    assert np.all(np.diff(g.lam) <= 1e-12)  # sorted by decreasing λ
    assert np.allclose(g.V.T @ g.metric @ g.V, np.eye(n), atol=1e-8)
    assert np.allclose(F_s @ g.V, g.metric @ g.V @ np.diag(g.lam), atol=1e-8 * np.abs(g.lam).max())
    for k in (1, 5, 12):
        P = projector(g, k)
        assert np.allclose(P @ P, P, atol=1e-8) and np.linalg.matrix_rank(P) == k
    assert np.allclose(projector(g, n), np.eye(n), atol=1e-8)


# --------------------------------------------------------------------------- SST


def expected_sst(fu, fs, F_u, F_s, m, k, w, ell, damping=1e-3):
    """ΔW_u + w·ℓ·Q_B unvec(P vec(Q_Bᵀ ΔW_s Q_A)) Q_Aᵀ, computed from scratch."""
    QB, QA = core_basis(fs.B[m], fs.A[m])
    Ms = QB.T @ fs.delta(m) @ QA
    metric = F_u[m].numpy() + damping * np.trace(F_u[m].numpy()) / R**2 * np.eye(R**2)
    lam, V = EIGH(F_s[m].numpy(), metric)
    Vk = V[:, np.argsort(lam)[::-1][:k]]
    Mp = torch.from_numpy(Vk @ Vk.T @ metric @ Ms.reshape(-1).numpy()).reshape(R, R)
    return fu.delta(m) + w * ell * QB @ Mp @ QA.T


def test_sst_sweep_exact_and_fishers_once(reg, tiny_base, pair, counters):
    u, s = pair
    arts = sst_merge(reg, SSTConfig(u.id, s.id, k=[1, 5, 16], w=[0.0, 0.7], **FAST))
    fu, fs = read_lora(u), read_lora(s)
    assert len(arts) == 6 and len({a.id for a in arts}) == 6
    assert counters["fisher"] == 2  # F_u and F_s once for the whole sweep
    assert counters["eigh"] == len(fs.modules)  # one GEVP per module for the whole sweep
    F_u, F_s = load_fisher(reg.get(arts[0].inputs["fisher_utility"])), load_fisher(reg.get(arts[0].inputs["fisher_safety"]))
    for art in arts:
        k, w = art.params["k"], art.params["w"]
        assert art.params["method"] == "sst" and art.params["rank"] == 2 * R and art.params["samples"] == 5
        assert art.params["samples_used"] == {"utility": 5, "safety": 5}
        assert set(art.inputs) == {"base", "utility", "safety", "fisher_utility", "fisher_safety"}
        assert art.inputs["base"] == tiny_base.id
        diag = json.loads((art.path / "diagnostics.json").read_text())
        assert set(diag["modules"]) == set(fs.modules) and {"norm_kept_mean", "norm_kept_min"} <= set(art.metrics)
        deltas = peft_deltas(reg, art)
        for m in fs.modules:
            ell = DEFAULT_LAYER_WEIGHTS[module_type(m)]
            # F_s of 5 rows has 5 nonzero eigenvalues: k = 5 keeps them all, k = 16 = r² is uncut
            assert diag["modules"][m]["k_effective"] == k
            assert close(deltas[m], expected_sst(fu, fs, F_u, F_s, m, k, w, ell), 1e-8), (k, w, m)
            if w == 0:  # the utility adapter, exactly
                assert close(deltas[m], fu.delta(m), 1e-12)
            if k == 16:  # P = I: layer-weighted task arithmetic
                assert close(deltas[m], fu.delta(m) + w * ell * fs.delta(m), 1e-8)
                assert diag["modules"][m]["norm_kept"] == pytest.approx(1.0, abs=1e-8)
        if k < 16 and w > 0:
            assert art.metrics["norm_kept_mean"] < 1.0
    # a second merge with another k reuses both Fishers; a repeated point is a cache hit that solves nothing
    again = sst_merge(reg, SSTConfig(u.id, s.id, k=[3, 5], w=0.7, **FAST))
    assert counters["fisher"] == 2 and counters["eigh"] == 2 * len(fs.modules)
    assert again[1].id == arts[3].id
    assert set(again[0].inputs.values()) == set(arts[0].inputs.values())


def test_sst_k_clamped_to_r2_and_layer_weights(reg, pair, tmp_path, capsys):
    u, s = pair
    top = sst_merge(reg, SSTConfig(u.id, s.id, k=16, w=1.0, **FAST))[0]
    clamped = sst_merge(reg, SSTConfig(u.id, s.id, k=100, w=1.0, **FAST))[0]
    assert clamped.id == top.id and clamped.params["k"] == 16
    assert "clamped" in capsys.readouterr().err
    path = tmp_path / "lw.yaml"
    path.write_text("q_proj: 3.0\nlm_head: 0\n")
    art = sst_merge(reg, SSTConfig(u.id, s.id, k=16, w=1.0, layer_weights=str(path), **FAST))[0]
    assert art.params["layer_weights"]["q_proj"] == 3.0 and art.params["layer_weights"]["lm_head"] == 0.0
    assert art.params["layer_weights"]["down_proj"] == 1.5 and art.id != top.id
    fu, fs = read_lora(u), read_lora(s)
    deltas = peft_deltas(reg, art)
    assert close(deltas["lm_head"], fu.delta("lm_head"), 1e-12)
    m = "model.layers.1.self_attn.q_proj"
    assert close(deltas[m], fu.delta(m) + 3.0 * fs.delta(m), 1e-8)
    (tmp_path / "lw.json").write_text(json.dumps({"q_proj": 3.0, "lm_head": 0}))
    assert load_layer_weights(str(tmp_path / "lw.json")) == load_layer_weights(str(path))


def test_sst_config_validates_and_normalises_itself():
    cfg = SSTConfig("u", "s", k=[np.int64(5), 3, 5], w=1)
    assert cfg.k == [5, 3] and all(type(k) is int for k in cfg.k) and cfg.w == [1.0]  # ints: artifact params
    for bad, message in ((dict(k=True), "--k True"), (dict(k=[]), "at least one"), (dict(k=0), "--k 0"),
                         (dict(damping=0.0), "--damping"), (dict(samples=0), "--samples"), (dict(w=-1.0), "--w -1")):
        with pytest.raises(SSTMError, match=message):
            SSTConfig("u", "s", **bad)


def test_sst_k_against_fisher_rows_checked_in_one_place():
    """SSTConfig.check_request is the one check of k against the Fisher rows: the library call, `sstm merge sst`
    and `sstm calibrate sst` all say the same line, naming k and the maximum."""
    SSTConfig("u", "s", k=[3, 4], samples=4).check_request()  # k = the rows: fine
    METHODS["ta"].make_config("u", "s").check_request()  # a method without such a limit: nothing to check
    with pytest.raises(SSTMError, match=r"^--k 8: more directions than the 4 Fisher rows per role can rank; "
                                        r"use --k <= 4 "):
        SSTConfig("u", "s", k=[3, 8], samples=4).check_request()
    for command in (["merge", "sst"], ["calibrate", "sst"]):  # refused before any adapter is looked up
        res = CliRunner().invoke(app, [*command, "--utility", "nope", "--safety", "nope", "--k", "3,8",
                                       "--samples", "4"])
        assert res.exit_code == 2 and "--k 8: more directions than the 4 Fisher rows" in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("text, message", [("q_proj: -1\n", "must be a number >= 0"), ("- 1\n- 2\n", "expected a mapping"),
                                           ("q_proj: [1\n", "not valid JSON/YAML")])
def test_bad_layer_weights(tmp_path, text, message):
    path = tmp_path / "lw.yaml"
    path.write_text(text)
    with pytest.raises(SSTMError, match=message):
        load_layer_weights(str(path))
    with pytest.raises(SSTMError, match="no such file"):
        load_layer_weights(str(tmp_path / "missing.yaml"))


# --------------------------------------------------------------------------- baselines
# (exactness against PEFT's merge_utils, layer weights, seeds: tests/test_storage.py)


@pytest.mark.parametrize("cfg, message", [
    (dict(method="ta", params={"density": 0.5}), "has no parameter density"),
    (dict(method="ties", params={"density": 0.0}), r"\(0, 1\]"),
    (dict(method="ties", params={"density": 1.5}), r"\(0, 1\]"),
    (dict(method="ties", params={"majority_sign_method": "max"}), "total or frequency"),
    (dict(method="ties", seed=3), "deterministic"),
    (dict(method="ties", w=-0.5), "must be >= 0"),
    (dict(method="magic"), "magic is not registered"),
])
def test_baseline_bad_config(reg, pair, cfg, message):
    u, s = pair
    with pytest.raises(SSTMError, match=message):
        method = get_method(cfg.pop("method"))
        method.merge(reg, method.make_config(u.id, s.id, **cfg.pop("params", {}), **cfg))


# --------------------------------------------------------------------------- CLI


def test_merge_cli(reg, pair):
    u, s = pair
    runner = CliRunner()
    res = runner.invoke(app, ["merge", "--help"])
    assert res.exit_code == 0 and all(name in res.output for name in ["sst", *METHODS])
    res = runner.invoke(app, ["merge", "sst", "--utility", u.short, "--safety", s.short, "--k", "2,3", "--w", "0.5",
                              "--samples", "3", "--max-len", "256"])
    assert res.exit_code == 0, res.output
    assert len(reg.list("merged")) == 2 and len(reg.list("fisher")) == 2
    assert all(a.short in res.output for a in reg.list("merged"))
    res = runner.invoke(app, ["merge", "dare_ties", "--utility", u.short, "--safety", s.short, "--w", "0.5,1",
                              "--density", "0.7", "--seed", "5"])
    assert res.exit_code == 0, res.output
    dt = [a for a in reg.list("merged") if a.params["method"] == "dare_ties"]
    assert sorted(a.params["w"] for a in dt) == [0.5, 1.0] and all(a.params["seed"] == 5 for a in dt)


def test_merge_cli_bad_inputs(reg, tiny_base, pair, tmp_path):
    from tiny import save_tiny

    from sstm.models import resolve_base

    u, s = pair
    other = make_adapter(reg, resolve_base(reg, str(save_tiny(tmp_path / "other", seed=1))), "safety", rank=R, seed=1)
    fewer = make_adapter(reg, tiny_base, "safety", rank=R, seed=2, targets=["q_proj", "v_proj"])
    pairs = ["--utility", u.short, "--safety", s.short]
    cases = [
        (["sst", "--utility", u.short, "--safety", other.short], "different base models"),
        (["sst", "--utility", u.short, "--safety", fewer.short], "different target modules"),
        (["sst", *pairs, "--k", "0"], "--k 0"),
        (["sst", *pairs, "--k", "2,x"], "comma-separated"),
        (["sst", *pairs, "--w=-1"], "--w -1"),
        (["sst", *pairs, "--damping", "0"], "--damping"),
        (["sst", "--utility", "abcdef012345", "--safety", s.short], "no artifact"),
        (["ties", *pairs, "--density", "0"], "(0, 1]"),
        (["ties", *pairs, "--density", "1.5"], "(0, 1]"),
        (["dare", *pairs, "--w=-0.1"], "--w -0.1"),
        (["ta", "--utility", u.short, "--safety", u.short], "same adapter"),
        (["ta", "--utility", tiny_base.short, "--safety", s.short], "expected adapter"),
    ]
    runner = CliRunner()
    for args, message in cases:
        res = runner.invoke(app, ["merge", *args])
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and len(res.output.strip().splitlines()) == 1, (args, res.output)
    assert reg.list("merged") == [] and reg.list("fisher") == []  # nothing computed for bad input
