"""K-FAC Fishers (`--structure kfac`): exact on Kronecker-structured Fishers, partial traces of the full Fisher on
the tiny model, the factored GEVP against scipy's eigh of the dense Kronecker matrices, the merge end to end."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from adapters import make_adapter
from typer.testing import CliRunner

import sstm.fisher
from sstm.adapters import module_type, read_lora
from sstm.cli import app
from sstm.errors import SSTMError
from sstm.fisher import STRUCTURES, FisherConfig, core_basis, fisher, load_fisher
from sstm.merge.kfac import Kron, solve_kron_gevp
from sstm.merge import METHODS
from sstm.merge.gevp import separated_k
from sstm.merge.methods.sst import SSTConfig

sst_merge = METHODS["sst"].merge
from sstm.models import load_with_adapter

R = 4
FAST = dict(samples=5, batch_size=3, max_len=256, dtype="float64")


def accumulate(structure: str, G: torch.Tensor) -> torch.Tensor:
    """The structure's sums over per-sample core gradients G (N, r, r), divided by N (one module)."""
    r = G.shape[-1]
    S = torch.zeros(1, *STRUCTURES[structure].shape(r), dtype=torch.float64)
    STRUCTURES[structure].add(S, G[None])
    return S[0] / G.shape[0]


def psd(rng, r, rows):
    X = rng.standard_normal((r, rows))
    return X @ X.T / rows


def kron_of(B, A) -> Kron:
    """The Kron holding F = B ⊗ A: its stored factors are the partial traces tr(A)·B and tr(B)·A."""
    return Kron(B * np.trace(A), A * np.trace(B))


# --------------------------------------------------------------------------- factors


def test_kfac_equals_full_fisher_when_it_is_kronecker():
    """G_pq = b_p a_qᵀ over every pair (p, q): F = (1/PQ) Σ vec(G)vec(G)ᵀ = E[bbᵀ] ⊗ E[aaᵀ] exactly."""
    rng = np.random.default_rng(0)
    r, P, Q = 3, 4, 5
    b, a = rng.standard_normal((P, r)), rng.standard_normal((Q, r))
    G = torch.from_numpy(np.einsum("pi,qj->pqij", b, a).reshape(P * Q, r, r))
    full = accumulate("full", G).numpy()
    assert np.allclose(full, np.kron(b.T @ b / P, a.T @ a / Q), atol=1e-12)  # the direct formula
    kron = Kron.of(accumulate("kfac", G).numpy())
    assert np.allclose(kron.dense(), full, atol=1e-12)
    # a Fisher that is not a Kronecker product is not reproduced, but its partial traces and trace are
    G = torch.from_numpy(rng.standard_normal((7, r, r)))
    full, kron = accumulate("full", G).numpy(), Kron.of(accumulate("kfac", G).numpy())
    assert not np.allclose(kron.dense(), full, atol=1e-3)
    F4 = full.reshape(r, r, r, r)
    assert np.allclose(kron.B, np.einsum("ijkj->ik", F4)) and np.allclose(kron.A, np.einsum("ijil->jl", F4))
    assert np.trace(kron.dense()) == pytest.approx(np.trace(full))
    v = rng.standard_normal(r * r)
    assert v @ kron @ v == pytest.approx(v @ kron.dense() @ v) and np.allclose(kron @ v, kron.dense() @ v)


@pytest.fixture
def pair(reg, tiny_base):
    return make_adapter(reg, tiny_base, "utility", rank=R, seed=0), make_adapter(reg, tiny_base, "safety", rank=R, seed=1)


def test_kfac_fisher_is_the_partial_traces_of_the_full_one(reg, pair):
    """On the tiny model: the stored K-FAC factors of F_u are the partial traces of the stored full F_u."""
    u, s = pair
    cfg = dict(adapter=u.id, role="utility", basis=s.id, samples=5, batch_size=3, dtype="float64")
    full_art, kfac_art = fisher(reg, FisherConfig(**cfg)), fisher(reg, FisherConfig(**cfg, structure="kfac"))
    assert full_art.id != kfac_art.id and kfac_art.params["structure"] == "kfac"
    full, kfac = load_fisher(full_art), load_fisher(kfac_art)
    assert set(full) == set(kfac) == set(read_lora(s).modules)
    for m in full:
        F4 = full[m].reshape(R, R, R, R)
        assert kfac[m].shape == (2, R, R)
        assert torch.allclose(kfac[m][0], torch.einsum("ijkj->ik", F4), rtol=1e-9, atol=1e-14)
        assert torch.allclose(kfac[m][1], torch.einsum("ijil->jl", F4), rtol=1e-9, atol=1e-14)
    assert kfac_art.metrics["trace_mean"] == pytest.approx(full_art.metrics["trace_mean"], rel=1e-9)
    with pytest.raises(SSTMError, match="--structure dense: expected full or kfac"):
        FisherConfig(**cfg, structure="dense")


# --------------------------------------------------------------------------- GEVP


def test_factored_gevp_equals_eigh_of_the_dense_kronecker_matrices():
    rng = np.random.default_rng(1)
    r, damping = 5, 1e-2
    U_B, U_A = psd(rng, r, 3), psd(rng, r, 4)  # rank-deficient factors, like few-row Fishers
    F_u, F_s = kron_of(U_B, U_A), kron_of(psd(rng, r, 2), psd(rng, r, 5))
    assert np.allclose(F_u.dense(), np.kron(U_B, U_A))
    g = solve_kron_gevp(F_u, F_s, damping)
    c = np.trace(F_u.B)
    assert g.delta == pytest.approx(damping * np.trace(U_B) * np.trace(U_A) / r**2)  # δ = damping·tr F_u / r²
    metric = np.kron(g.metric_B, g.metric_A)
    # π-damping: the metric is F_u + δI plus √δ(X⊗I + I⊗Y) ⪰ 0, so it dominates the full GEVP's metric
    X, Y = F_u.B / np.sqrt(c), F_u.A / np.sqrt(c)
    assert np.allclose(metric, F_u.dense() + g.delta * np.eye(r * r) + np.sqrt(g.delta) *
                       (np.kron(X, np.eye(r)) + np.kron(np.eye(r), Y)))
    lam, V = scipy.linalg.eigh(F_s.dense(), metric)
    lam, V = lam[::-1], V[:, ::-1]
    assert np.allclose(g.lam, lam, atol=1e-10 * lam.max())
    M = rng.standard_normal((r, r))
    for k in (1, 3, 7, 10, 12):  # F_s has rank 2·5 = 10: beyond k = 10 the products are tied at 0
        k_eff = g.separated_k(k)
        assert k_eff == separated_k(lam, k, g.tie_tol) and k_eff <= min(k, 10)
        Vk = V[:, :k_eff]
        dense = (Vk @ Vk.T @ metric @ M.reshape(-1)).reshape(r, r)
        assert np.allclose(g.project(M, k_eff), dense, atol=1e-9 * np.abs(M).max()), k
    assert np.allclose(g.project(M, r * r), M)  # k = r²: P = I


# --------------------------------------------------------------------------- merge and CLI


def test_kfac_merge_end_to_end(reg, pair):
    """`merge sst --structure kfac` on the tiny model: built from K-FAC Fishers, ΔW = ΔW_u + w·ℓ·Q_B M_proj Q_Aᵀ with
    M_proj from the factored GEVP; at k = r² (P = I) it equals the full-structure merge."""
    u, s = pair
    k, w = 3, 0.5
    art = sst_merge(reg, SSTConfig(u.id, s.id, k=[k, R * R], w=w, structure="kfac", **FAST))
    full_top = sst_merge(reg, SSTConfig(u.id, s.id, k=R * R, w=w, **FAST))[0]
    F_u, F_s = (reg.get(art[0].inputs[f"fisher_{role}"]) for role in ("utility", "safety"))
    assert F_u.params["structure"] == F_s.params["structure"] == "kfac"
    assert art[0].params["structure"] == "kfac" and full_top.params["structure"] == "full"
    fu, fs = read_lora(u), read_lora(s)
    F_u, F_s = load_fisher(F_u), load_fisher(F_s)
    model, _ = load_with_adapter(reg, art[0], dtype="float64")
    full_model, _ = load_with_adapter(reg, full_top, dtype="float64")
    top_model, _ = load_with_adapter(reg, art[1], dtype="float64")
    diag = json.loads((art[0].path / "diagnostics.json").read_text())["modules"]
    for m in fs.modules:
        QB, QA = core_basis(fs.B[m], fs.A[m])
        g = solve_kron_gevp(Kron.of(F_u[m].numpy()), Kron.of(F_s[m].numpy()), 1e-3)
        k_eff = g.separated_k(k)
        assert diag[m]["k_effective"] == k_eff >= 1
        Mp = torch.from_numpy(g.project((QB.T @ fs.delta(m) @ QA).numpy(), k_eff))
        ell = json.loads((art[0].path / "diagnostics.json").read_text())["layer_weights"][module_type(m)]
        want = fu.delta(m) + w * ell * QB @ Mp @ QA.T
        got = model.base_model.model.get_submodule(m).get_delta_weight("default")
        assert torch.allclose(got, want, atol=1e-10 * float(want.abs().max()))
        top = top_model.base_model.model.get_submodule(m).get_delta_weight("default")
        assert torch.allclose(top, full_model.base_model.model.get_submodule(m).get_delta_weight("default"),
                              atol=1e-10 * float(top.abs().max()))
        assert 0 <= diag[m]["safety_fisher_kept"] <= 1 + 1e-9


def test_fisher_cli_structure_and_memory_warning(reg, pair, monkeypatch):
    u, s = pair
    runner = CliRunner()
    monkeypatch.setattr(sstm.fisher, "available_bytes", lambda device: 1000)
    res = runner.invoke(app, ["fisher", "--adapter", s.short, "--role", "safety", "--samples", "2", "--structure", "kfac"])
    assert res.exit_code == 0, res.output
    warned = [line for line in res.output.splitlines() if "GiB" in line]
    assert len(warned) == 1 and "kfac Fisher" in warned[0]
    assert reg.list("fisher")[0].params["structure"] == "kfac"
    bad = runner.invoke(app, ["fisher", "--adapter", s.short, "--role", "safety", "--structure", "dense"])
    assert bad.exit_code == 2 and "--structure dense" in bad.output and len(bad.output.strip().splitlines()) == 1
