"""Exact storage of merges (dense ΔW or exact LoRA), layer weights for every method, effective strength.

The reference for every per-module method is PEFT's own merge function applied to the dense
deltas s·B·A read from the adapters' safetensors, with weights [1, w·ℓ(m)]; the weights checked
are those the evaluator loads (sstm.evaluate.stage's loader, LoRA folded as in an eval).
"""

import json
import statistics

import pytest
import torch
from adapters import make_adapter
from peft.utils import merge_utils
from safetensors.torch import load_file
from typer.testing import CliRunner

from sstm.adapters import module_type
from sstm.cli import app
from sstm.errors import SSTMError
from sstm.evaluate import EvalConfig, stage
from sstm.merge import METHODS
from sstm.adapters import read_deltas
from sstm.merge.layer_weights import DEFAULT_LAYER_WEIGHTS, load_layer_weights, policy_name
from sstm.merge.methods.resta import resta
from sstm.merge.param import module_seed
from sstm.storage import lora_at_rank, lowrank_norm, storage_format, strength
from sstm.models import load_base, load_with_adapter
from sstm.rebuild import verify_rebuild

R, W, DENSITY = 4, 0.8, 0.6
PER_MODULE = [name for name, m in METHODS.items() if m.data is None and m.prepare is None]  # ΔW_m from ΔW_u, ΔW_s
# independent references: PEFT's functions with the method's parameters (methods added later: their own fn)
REFERENCE = {
    "ta": lambda d, w: merge_utils.task_arithmetic(d, w),
    "ties": lambda d, w: merge_utils.ties(d, w, DENSITY, "total"),
    "dare": lambda d, w: merge_utils.dare_linear(d, w, DENSITY),
    "dare_ties": lambda d, w: merge_utils.dare_ties(d, w, DENSITY, "total"),
    "resta": lambda d, w: resta(d, w, DENSITY),
}


def baseline_merge(reg, method, u, s, w=1.0, params=None, seed=None, layer_weights=None):
    m = METHODS[method]
    return m.merge(reg, m.make_config(u, s, w=w, seed=seed, layer_weights=layer_weights, **(params or {})))


@pytest.fixture
def pair(reg, tiny_base):
    return make_adapter(reg, tiny_base, "utility", rank=R, seed=0), make_adapter(reg, tiny_base, "safety", rank=R, seed=1)


def adapter_deltas(art) -> dict:
    """s·B·A per module straight from the adapter's files (not through sstm.adapters)."""
    cfg = json.loads((art.path / "adapter_config.json").read_text())
    t = load_file(str(art.path / "adapter_model.safetensors"))
    s = cfg["lora_alpha"] / cfg["r"]
    names = {k.removeprefix("base_model.model.").removesuffix(".lora_A.weight") for k in t if k.endswith("lora_A.weight")}
    return {m: s * t[f"base_model.model.{m}.lora_B.weight"] @ t[f"base_model.model.{m}.lora_A.weight"] for m in names}


def reference(method: str, du: dict, ds: dict, ell: dict, seed: int | None) -> dict:
    out = {}
    fn = REFERENCE[method]
    for m in du:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(module_seed(seed, m))
            out[m] = fn([du[m], ds[m]], torch.tensor([1.0, W * ell[module_type(m)]], dtype=torch.float64))
    return out


def close(a, b, tol=1e-10):
    return float((a - b).norm()) <= tol * max(float(b.norm()), 1e-30)


@pytest.mark.parametrize("method", PER_MODULE)
def test_evaluated_weights_are_base_plus_exact_delta(reg, pair, tiny_base, method):
    """The evaluator's weights = W₀ + the method's ΔW for every target module, untouched elsewhere; format,
    rel_error, layer weights and the per-module strength recorded."""
    u, s = pair
    stochastic = METHODS[method].stochastic
    params = {"density": DENSITY} if "density" in METHODS[method].params else {}
    art = baseline_merge(reg, method, u.id, s.id, w=W, params=params, seed=3 if stochastic else None)[0]
    ell = dict(DEFAULT_LAYER_WEIGHTS)
    du, ds = adapter_deltas(u), adapter_deltas(s)
    ref = reference(method, du, ds, ell, 3 if stochastic else None)

    fmt = METHODS[method].format
    assert art.params["format"] == storage_format(art) == fmt and art.metrics["rel_error"] == 0.0
    assert art.params["layer_weights"] == {module_type(m): ell[module_type(m)] for m in du}
    assert policy_name(art.params["layer_weights"]) == "default" and "ℓ=" not in art.label

    cfg = EvalConfig(model=art, suites=("repliqa",), device="cpu", dtype="float64")
    model, _ = stage._loader(reg, stage.resolve_target(reg, cfg), cfg)()
    base, _ = load_base(tiny_base, dtype="float64")
    weight = lambda net, m: net.get_submodule(m).weight.detach()  # noqa: E731 (named_parameters skips tied ones)
    for m in du:
        assert close(weight(model, m) - weight(base, m), ref[m]), m
    embed = "model.embed_tokens"
    assert torch.equal(weight(model, embed), weight(base, embed))  # lm_head, tied to it, got its own copy
    assert not model.config.tie_word_embeddings
    assert all(close(read_deltas(art)[m], ref[m]) for m in du)

    diag = json.loads((art.path / "diagnostics.json").read_text())["modules"]
    want = {m: float((ref[m] - du[m]).norm() / ds[m].norm()) for m in du}  # ‖ΔW − ΔW_u‖ / ‖ΔW_s‖
    assert all(diag[m]["strength"] == pytest.approx(want[m], rel=1e-9) for m in du)
    assert art.metrics["strength_median"] == pytest.approx(statistics.median(want.values()), rel=1e-9)
    assert art.metrics["strength_max"] == pytest.approx(max(want.values()), rel=1e-9)
    if method == "ta":  # exactly w·ℓ(m)
        assert all(diag[m]["strength"] == pytest.approx(W * ell[module_type(m)], rel=1e-9) for m in du)


def test_dense_merge_rebuilds_and_refuses_training(reg, pair):
    u, s = pair
    art = baseline_merge(reg, "dare", u.id, s.id, w=0.5, params={"density": 0.5}, seed=1)[0]
    other = baseline_merge(reg, "dare", u.id, s.id, w=0.5, params={"density": 0.5}, seed=2)[0]
    again = baseline_merge(reg, "dare", u.id, s.id, w=[0.5], params={"density": 0.5}, seed=1)[0]
    assert again.id == art.id and other.id != art.id and not torch.equal(read_deltas(art)["lm_head"], read_deltas(other)["lm_head"])
    report = verify_rebuild(reg, art.id)
    assert report.reproduced and report.max_error == 0.0, report
    with pytest.raises(SSTMError, match="dense merge"):
        load_with_adapter(reg, art, dtype="float64", trainable=True)


def test_layer_weight_policies(reg, pair, tmp_path):
    u, s = pair
    default = baseline_merge(reg, "ta", u.id, s.id, w=W)[0]
    uniform = baseline_merge(reg, "ta", u.id, s.id, w=W, layer_weights="uniform")[0]
    path = tmp_path / "lw.yaml"
    path.write_text("q_proj: 3\nlm_head: 0\n")
    custom = baseline_merge(reg, "ta", u.id, s.id, w=W, layer_weights=str(path))[0]
    assert len({default.id, uniform.id, custom.id}) == 3
    assert set(uniform.params["layer_weights"].values()) == {1.0} and uniform.label.endswith("ℓ=uniform")
    assert custom.params["layer_weights"]["q_proj"] == 3.0 and custom.params["layer_weights"]["v_proj"] == 2.0
    assert policy_name(custom.params["layer_weights"]) == "custom"
    du, ds = adapter_deltas(u), adapter_deltas(s)
    got = read_deltas(uniform)
    assert all(close(got[m], du[m] + W * ds[m]) for m in du)  # uniform: plain task arithmetic
    got = read_deltas(custom)
    assert close(got["lm_head"], du["lm_head"]) and close(got["model.layers.0.self_attn.q_proj"],
                                                           du["model.layers.0.self_attn.q_proj"]
                                                           + 3 * W * ds["model.layers.0.self_attn.q_proj"])
    assert load_layer_weights(None) == dict(DEFAULT_LAYER_WEIGHTS)
    with pytest.raises(SSTMError, match="no such file"):
        METHODS["ties"].make_config(u.id, s.id, layer_weights=str(tmp_path / "missing.yaml"))


def test_cli_layer_weights_and_show_format(reg, pair):
    u, s = pair
    runner = CliRunner()
    assert "--layer-weights" in runner.invoke(app, ["merge", "ties", "--help"]).output
    res = runner.invoke(app, ["merge", "ties", "--utility", u.short, "--safety", s.short, "--w", "0.5",
                              "--layer-weights", "uniform"])
    assert res.exit_code == 0, res.output
    art = reg.list("merged")[-1]
    assert set(art.params["layer_weights"].values()) == {1.0}
    shown = json.loads(runner.invoke(app, ["show", art.short, "--json"]).output)
    assert shown["params"]["format"] == "dense" and shown["metrics"]["rel_error"] == 0.0
    res = runner.invoke(app, ["merge", "ta", "--utility", u.short, "--safety", s.short, "--layer-weights", "nope"])
    assert res.exit_code == 2 and "--layer-weights nope" in res.output


def test_lora_at_rank_and_lowrank_norm():
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(12, 9, generator=gen, dtype=torch.float64)
    for rank in (1, 4, 9, 11):
        B, A, err = lora_at_rank(delta, rank)
        assert B.shape == (12, rank) and A.shape == (rank, 9)
        assert err == pytest.approx(float((delta - B @ A).norm() / delta.norm()), abs=1e-12)
        if rank >= 9:
            assert err < 1e-12
    low = torch.randn(12, 2, generator=gen, dtype=torch.float64) @ torch.randn(2, 9, generator=gen, dtype=torch.float64)
    assert lora_at_rank(low, 2)[2] < 1e-12 and lora_at_rank(low, 1)[2] > 0.01
    with pytest.raises(SSTMError, match="at least 1"):
        lora_at_rank(delta, 0)
    B, A = torch.randn(300, 7, generator=gen), torch.randn(7, 200, generator=gen)
    assert lowrank_norm(B, A) == pytest.approx(float((B.double() @ A.double()).norm()), rel=1e-12)


def test_strength_from_factors_matches_dense():
    from sstm.adapters import LoraFactors

    gen = torch.Generator().manual_seed(1)
    Bs, As = torch.randn(20, 3, generator=gen, dtype=torch.float64), torch.randn(3, 15, generator=gen, dtype=torch.float64)
    s = LoraFactors(config={}, A={"m": As}, B={"m": Bs}, scale=2.0, rank=3)
    Bx, Ax = torch.randn(20, 5, generator=gen, dtype=torch.float64), torch.randn(5, 15, generator=gen, dtype=torch.float64)
    want = float((Bx @ Ax).norm() / (2.0 * Bs @ As).norm())
    assert strength((Bx, Ax), s, "m") == pytest.approx(want, rel=1e-12)
    assert strength(Bx @ Ax, s, "m") == pytest.approx(want, rel=1e-12)
    zero = LoraFactors(config={}, A={"m": As}, B={"m": torch.zeros_like(Bs)}, scale=2.0, rank=3)
    assert strength((Bx, Ax), zero, "m") is None


def test_compare_shows_layer_weights_and_strength(reg, pair):
    from sstm.compare import _model_row
    from sstm.render import render_table, to_csv
    from rich.console import Console

    u, s = pair
    ta = baseline_merge(reg, "ta", u.id, s.id, w=0.5)[0]
    ties = baseline_merge(reg, "ties", u.id, s.id, w=0.5, layer_weights="uniform")[0]
    rows = [_model_row(reg, a) for a in (ta, ties)]
    assert [r.layer_weights for r in rows] == ["default", "uniform"]
    assert rows[0].strength == pytest.approx(ta.metrics["strength_median"]) and rows[0].strength > 0.5  # w·ℓ, ℓ ≥ 1
    assert rows[0].setting() == "ta w=0.5" and rows[1].setting() == "ties w=0.5 d=0.5 ℓ=uniform"
    console = Console(width=400, record=True)
    console.print(render_table(rows))
    text = console.export_text()
    assert "strength" in text and f"{rows[0].strength:.2f}" in text and "ℓ=default" in text
    narrow = Console(width=60, record=True)
    narrow.print(render_table(rows, width=60))
    assert "rl_ans, strength" in " ".join(narrow.export_text().split())  # hidden like the other optional columns
    assert "layer_weights,strength" in to_csv(rows).splitlines()[0]
