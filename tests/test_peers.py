"""The published peers (docs/method.md §13) against direct implementations: Safe LoRA and SafeMERGE with dense
d×d projectors and the reference's gate, RESTA with its own DARE mask, RegMean with explicit inverses and
Gram matrices gathered one unpadded example at a time, Fisher merging with autograd per-sample gradients.
Every merged result is checked as the model evaluates it: W_eval − W₀."""

import pytest
import torch
from adapters import make_adapter
from cli_checks import assert_user_error
from tiny import save_tiny
from typer.testing import CliRunner

from sstm.adapters import module_type, read_lora
from sstm.chat import encode_rows
from sstm.cli import app
from sstm.data import load_rows, sample_indices
from sstm.errors import SSTMError
from sstm.merge import METHODS
from sstm.merge.layer_weights import DEFAULT_LAYER_WEIGHTS
from sstm.merge.methods.regmean import regmean_factors, shrink
from sstm.merge.methods.safe_lora import Alignment, gate, similarity
from sstm.merge.param import module_seed
from sstm.models import base_of, load_base, load_with_adapter
from sstm.pipeline import RunConfig
from sstm.presets import QUICK, STANDARD
from sstm.weight_stats import StatsConfig, load_stats, weight_stats

R = 4
PEERS = ("resta", "safe-lora", "safemerge", "regmean", "fisher-avg")
DATA = dict(samples=5, batch_size=3, max_len=256, dtype="float64")


@pytest.fixture
def pair(reg, tiny_base):
    return (make_adapter(reg, tiny_base, "utility", rank=R, seed=0),
            make_adapter(reg, tiny_base, "safety", rank=R, seed=1))


def ell(m: str) -> float:
    return DEFAULT_LAYER_WEIGHTS.get(module_type(m), DEFAULT_LAYER_WEIGHTS["default"])


def evaluated(reg, art) -> dict[str, torch.Tensor]:
    """W_eval − W₀ per target module, as the evaluation loads the merged artifact (PEFT LoRA or dense)."""
    model, _ = load_with_adapter(reg, art, dtype="float64")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    base, _ = load_base(base_of(reg, art), dtype="float64")
    mods = read_lora(reg.get(art.inputs["utility"])).modules
    return {m: model.get_submodule(m).weight.detach() - base.get_submodule(m).weight.detach() for m in mods}


def assert_close(got: dict, want: dict, tol: float = 1e-9) -> None:
    assert set(got) == set(want)
    for m in want:
        assert float((got[m] - want[m]).norm()) <= tol * max(float(want[m].norm()), 1e-30), m


def merge(reg, name, u, s, **kw):
    method = METHODS[name]
    return method.merge(reg, method.make_config(u.id, s.id, **kw))


# --------------------------------------------------------------------------- Safe LoRA, SafeMERGE


def direct_rho(V: torch.Tensor, B: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(C, cos(C·B·A, B·A)) as the reference (peft/utils/safelora.py project_weights) computes them: dense C."""
    C = V @ V.T / torch.linalg.norm(V)
    cos = torch.nn.functional.cosine_similarity((C @ B @ A).reshape(1, -1), (B @ A).reshape(1, -1))
    return C, float(cos)


def test_alignment_and_similarity_match_dense_formulas():
    g = torch.Generator().manual_seed(0)
    L, Rf = torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randn(3, 9, generator=g, dtype=torch.float64)
    B, A = torch.randn(12, 2, generator=g, dtype=torch.float64), torch.randn(2, 9, generator=g, dtype=torch.float64)
    V = L @ Rf
    C, cos = direct_rho(V, B, A)
    for align in (Alignment(L, Rf), Alignment(V)):
        assert align.norm == pytest.approx(float(torch.linalg.norm(V)), rel=1e-12)
        assert torch.allclose(align.apply(B), C @ B, rtol=1e-10, atol=1e-12)
        assert similarity(align, B, A) == pytest.approx(cos, rel=1e-9)
    assert similarity(Alignment(torch.zeros(12, 9, dtype=torch.float64)), B, A) is None


def test_gate_is_the_references_selection():
    rho = {f"m{i}": r for i, r in enumerate([0.9, -0.2, 0.4, 0.1, 0.7, 0.3, 0.8, 0.6, 0.5, 0.05])} | {"zero": None}
    thrs = sorted(r for r in rho.values() if r is not None)[:3][-1]  # the reference: sort(cos)[:n][-1], cos <= thrs
    assert gate(rho, "number", 3 / 11, 0.0) == {m for m, r in rho.items() if r is not None and r <= thrs}
    assert gate(rho, "threshold", 0.1, 0.35) == {"m1", "m3", "m5", "m9"}
    assert gate({"a": None}, "number", 0.5, 0.0) == set()


def safe_lora_direct(fu, fs, w, V, select, share, threshold, alpha=None):
    """Safe LoRA (alpha None) or SafeMERGE (alpha), every module with a dense d×d C of V_m = w·ℓ·V[m]."""
    rho, C = {}, {}
    for m in fu.modules:
        B, A = fu.B[m].double(), fu.A[m].double()
        C[m], rho[m] = direct_rho(w * ell(m) * V[m], B, A)
    if select == "number":
        threshold = sorted(rho.values())[: max(1, round(share * len(rho)))][-1]
    out = {}
    for m in fu.modules:
        d_u = fu.scale * fu.B[m].double() @ fu.A[m].double()
        if rho[m] > threshold:
            out[m] = d_u
        elif alpha is None:
            out[m] = C[m] @ d_u
        else:
            out[m] = (1 - alpha) * d_u + alpha * w * ell(m) * fs.delta(m, torch.float64)
    return out, {m for m in rho if rho[m] <= threshold}


def test_safe_lora_from_the_safety_adapter_is_exact(reg, pair):
    u, s = pair
    fu, fs = read_lora(u), read_lora(s)
    V = {m: fs.delta(m, torch.float64) for m in fs.modules}
    for w in (0.5, 1.0):
        want, gated = safe_lora_direct(fu, fs, w, V, "number", 0.2, None)
        (art,) = merge(reg, "safe-lora", u, s, w=w, share=0.2)
        assert 0 < len(gated) < len(fu.modules) and art.metrics["gated_modules"] == len(gated)
        assert art.params["format"] == "lora" and art.params["rank"] == R and art.metrics["rel_error"] == 0.0
        assert_close(evaluated(reg, art), want)


def test_safe_lora_and_safemerge_from_an_aligned_pair(reg, pair, tmp_path):
    from transformers import AutoModelForCausalLM

    u, s = pair
    fu, fs = read_lora(u), read_lora(s)
    a_dir, n_dir = save_tiny(tmp_path / "aligned", seed=11), save_tiny(tmp_path / "unaligned", seed=12)
    a_model, n_model = (AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64) for d in (a_dir, n_dir))
    V = {m: a_model.get_submodule(m).weight.detach() - n_model.get_submodule(m).weight.detach() for m in fu.modules}
    # thresholds between two similarities, so that rounding cannot move a module across one
    _, rho = zip(*(direct_rho(V[m], fu.B[m].double(), fu.A[m].double()) for m in fu.modules))
    ordered = sorted(rho)
    tau = [(ordered[i] + ordered[i + 1]) / 2 for i in (4, 8)]
    want, gated = safe_lora_direct(fu, fs, 1.0, V, "threshold", None, tau[0])
    (art,) = merge(reg, "safe-lora", u, s, w=1.0, select="threshold", threshold=tau[0], aligned=str(a_dir),
                   unaligned=str(n_dir))
    assert len(gated) == 5 and {"aligned", "unaligned"} <= set(art.inputs)
    assert_close(evaluated(reg, art), want)
    want, gated = safe_lora_direct(fu, fs, 0.5, V, "threshold", None, tau[1], alpha=0.3)
    (art,) = merge(reg, "safemerge", u, s, w=0.5, threshold=tau[1], alpha=0.3, aligned=str(a_dir),
                   unaligned=str(n_dir))
    assert len(gated) == 9 and art.params["rank"] == 2 * R
    assert_close(evaluated(reg, art), want)


# --------------------------------------------------------------------------- RESTA


def test_resta_is_dare_on_the_utility_update_plus_the_safety_update(reg, pair):
    u, s = pair
    fu, fs = read_lora(u), read_lora(s)
    (art,) = merge(reg, "resta", u, s, w=0.5, density=0.6, seed=3)
    want = {}
    for m in fu.modules:
        d_u = fu.delta(m, torch.float64)
        torch.manual_seed(module_seed(3, m))
        mask = torch.bernoulli(torch.full_like(d_u, 0.6))
        want[m] = mask * d_u / 0.6 + 0.5 * ell(m) * fs.delta(m, torch.float64)
    assert art.params["format"] == "dense" and art.params["seed"] == 3
    assert_close(evaluated(reg, art), want)
    (plain,) = merge(reg, "resta", u, s, w=0.5, density=1.0)  # no DARE: task arithmetic
    (ta,) = merge(reg, "ta", u, s, w=0.5)
    assert_close(evaluated(reg, plain), evaluated(reg, ta))


# --------------------------------------------------------------------------- RegMean


def direct_grams(reg, adapter) -> dict[str, torch.Tensor]:
    """(1/T) Σ x xᵀ of each target module's inputs, one unpadded example at a time, the rows the stage draws."""
    model, tok = load_with_adapter(reg, adapter, dtype="float64")
    rows = load_rows(reg.get(adapter.inputs["data"]))
    examples, _ = encode_rows(tok, [rows[i] for i in sample_indices(len(rows), DATA["samples"], 0)], DATA["max_len"])
    root, seen = model.base_model.model, {}
    hooks = [root.get_submodule(m).register_forward_hook(
        lambda mod, inp, out, m=m: seen.setdefault(m, []).append(inp[0][0].detach()))
        for m in read_lora(adapter).modules]
    with torch.no_grad():
        for e in examples:
            model(input_ids=torch.tensor([e["input_ids"]]))
    for h in hooks:
        h.remove()
    return {m: torch.cat(xs).T @ torch.cat(xs) / sum(len(e["input_ids"]) for e in examples) for m, xs in seen.items()}


def test_regmean_factors_and_shrink_match_the_formula():
    g = torch.Generator().manual_seed(1)
    X_u, X_s = (torch.randn(n, 8, generator=g, dtype=torch.float64) for n in (30, 20))
    G_u, G_s = shrink(X_u.T @ X_u, 0.3), shrink(X_s.T @ X_s, 0.3)
    assert torch.allclose(G_u, 0.3 * X_u.T @ X_u + 0.7 * torch.diag(torch.diagonal(X_u.T @ X_u)))
    B_u, A_u = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(2, 8, generator=g, dtype=torch.float64)
    B_s, A_s = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(3, 8, generator=g, dtype=torch.float64)
    a_u, a_s = regmean_factors(A_u, A_s, G_u, G_s, 0.7)
    want = (B_u @ A_u @ G_u + 0.7 * B_s @ A_s @ G_s) @ torch.linalg.inv(G_u + 0.7 * G_s)
    assert torch.allclose(B_u @ a_u + B_s @ a_s, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(SSTMError, match="singular"):
        regmean_factors(A_u, A_s, torch.zeros(8, 8, dtype=torch.float64), torch.zeros(8, 8, dtype=torch.float64), 1.0)


def test_regmean_grams_and_merge(reg, pair):
    u, s = pair
    fu, fs = read_lora(u), read_lora(s)
    arts = merge(reg, "regmean", u, s, w=[0.5, 1.0], alpha=0.2, **DATA)
    grams = [reg.get(arts[0].inputs[k]) for k in ("gram_utility", "gram_safety")]
    assert len(reg.list("fisher")) == 2  # one Gram statistic per adapter, shared by the sweep
    G = {}
    for adapter, art in zip((u, s), grams):
        G[adapter.id] = direct_grams(reg, adapter)
        assert_close(load_stats(art, "gram"), G[adapter.id], 1e-10)
    for art, w in zip(arts, (0.5, 1.0)):
        want = {}
        for m in fu.modules:
            G_u, G_s = (0.2 * G[a.id][m] + 0.8 * torch.diag(torch.diagonal(G[a.id][m])) for a in (u, s))
            c = w * ell(m)
            want[m] = ((fu.delta(m, torch.float64) @ G_u + c * fs.delta(m, torch.float64) @ G_s)
                       @ torch.linalg.inv(G_u + c * G_s))
        assert art.params["rank"] == 2 * R and art.params["format"] == "lora"
        assert_close(evaluated(reg, art), want, 1e-8)


# --------------------------------------------------------------------------- Fisher merging


def direct_diagonal_fisher(reg, adapter) -> dict[str, torch.Tensor]:
    """(1/N) Σ_i (∂L_i/∂W)², autograd on each base weight W₀ (∂/∂W₀ = ∂/∂(W₀ + ΔW)), example by example."""
    model, tok = load_with_adapter(reg, adapter, dtype="float64")
    rows = load_rows(reg.get(adapter.inputs["data"]))
    examples, _ = encode_rows(tok, [rows[i] for i in sample_indices(len(rows), DATA["samples"], 0)], DATA["max_len"])
    mods = read_lora(adapter).modules
    weights = [model.base_model.model.get_submodule(m).base_layer.weight for m in mods]
    for p in weights:
        p.requires_grad_(True)
    F = {m: torch.zeros_like(p) for m, p in zip(mods, weights)}
    for e in examples:
        logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(e["labels"][1:]), ignore_index=-100)
        for m, g in zip(mods, torch.autograd.grad(loss, weights)):
            F[m] += g.square() / len(examples)
    return F


def test_fisher_avg_diagonal_fisher_and_merge(reg, tiny_base):
    targets = ["q_proj", "v_proj", "down_proj"]  # not the tied lm_head: autograd on W₀ would add the embedding's use
    u = make_adapter(reg, tiny_base, "utility", rank=R, seed=0, targets=targets)
    s = make_adapter(reg, tiny_base, "safety", rank=R, seed=1, targets=targets)
    fu, fs = read_lora(u), read_lora(s)
    (art,) = merge(reg, "fisher-avg", u, s, w=0.5, **DATA)
    F = {}
    for adapter, key in ((u, "fisher_utility"), (s, "fisher_safety")):
        F[adapter.id] = direct_diagonal_fisher(reg, adapter)
        assert_close(load_stats(reg.get(art.inputs[key]), "diagonal"), F[adapter.id], 1e-9)
    norm = {a: sum(float(f.square().sum()) for f in F[a].values()) ** 0.5 for a in F}
    want = {}
    for m in fu.modules:  # the reference's _merge_with_coeffs: coefficients λ/‖F‖, floor on the target's Fisher
        f_u = F[u.id][m].clamp(min=1e-6) / norm[u.id]
        f_s = 0.5 * ell(m) * F[s.id][m] / norm[s.id]
        want[m] = (f_u * fu.delta(m, torch.float64) + f_s * fs.delta(m, torch.float64)) / (f_u + f_s)
    assert art.params["format"] == "dense" and art.metrics["rel_error"] == 0.0
    assert_close(evaluated(reg, art), want, 1e-9)


def test_weight_stats_checks(reg, pair):
    u, _ = pair
    with pytest.raises(SSTMError, match="expected gram or diagonal"):
        StatsConfig(adapter=u.id, statistic="hessian")
    art = weight_stats(reg, StatsConfig(adapter=u.id, statistic="gram", **DATA))
    with pytest.raises(SSTMError, match="not a diagonal"):
        load_stats(art, "diagonal")


# --------------------------------------------------------------------------- registry, CLI, run


def test_peers_are_registered_and_reach_the_cli_and_run(reg, pair, tiny_model_dir):
    u, s = pair
    runner = CliRunner()
    res = runner.invoke(app, ["merge", "--help"])
    assert res.exit_code == 0 and all(name in res.output for name in PEERS)
    res = runner.invoke(app, ["merge", "safe-lora", "--help"])
    assert "--aligned" in res.output and "--select" in res.output and "--seed" not in res.output
    assert "--seed" in runner.invoke(app, ["merge", "regmean", "--help"]).output
    pairs = ["--utility", u.short, "--safety", s.short]
    same = runner.invoke(app, ["merge", "safemerge", *pairs, "--aligned", str(tiny_model_dir), "--unaligned",
                               str(tiny_model_dir)])  # after the registry's "cache hit" line of the base
    assert same.exit_code == 2 and "are the same model" in same.output and "Traceback" not in same.output
    for args, message in [(["safe-lora", *pairs, "--aligned", "x"], "--aligned and --unaligned go together"),
                          (["safe-lora", *pairs, "--share", "0"], "--share 0"),
                          (["safemerge", *pairs, "--alpha", "1.5"], "--alpha 1.5"),
                          (["safemerge", *pairs, "--select", "top"], "number or threshold"),
                          (["fisher-avg", *pairs, "--normalize", "max"], "l2 or none"),
                          (["regmean", *pairs, "--alpha=-1"], "--alpha -1")]:
        assert_user_error(runner.invoke(app, ["merge", *args]), message)
    assert reg.list("merged") == [] and reg.list("fisher") == []
    assert set(PEERS) <= set(STANDARD.baselines) and not set(PEERS) & set(QUICK.baselines)
    plan = RunConfig(baselines=PEERS, controls=False).plan
    assert [m.name for m, _ in plan.merges] == ["sst", *PEERS]
    with pytest.raises(SSTMError, match="--baselines sst"):
        RunConfig(baselines=("sst",))
