"""SST-Merge's controls (--basis random|safety|utility-null) and projectors (--projector fisher|euclidean),
against direct formulas on small matrices, and one merge on the tiny model (docs/method.md §10)."""

import json

import numpy as np
import pytest
import torch
from adapters import make_adapter
from cli_checks import assert_user_error
from typer.testing import CliRunner

from sstm.adapters import module_type, read_lora
from sstm.cli import app
from sstm.errors import SSTMError
from sstm.fisher import core_basis, load_fisher
from sstm.merge import METHODS
from sstm.merge.gevp import BASES, PROJECTORS, project, projector, solve_gevp
from sstm.merge.layer_weights import DEFAULT_LAYER_WEIGHTS
from sstm.merge.methods.sst import SSTConfig
from sstm.merge.param import module_seed

sst_merge = METHODS["sst"].merge
SST_BASES, SST_PROJECTORS = METHODS["sst"].params["basis"].choices, METHODS["sst"].params["projector"].choices

N = 16  # r² of r = 4
DAMPING = 1e-3


def fishers(rows_u: int = 5, rows_s: int = 7, seed: int = 0):
    """Rank-deficient Fishers like those of few rows, the damped metric F_u + δI, and a core vector."""
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((N, rows_u)), rng.standard_normal((N, rows_s))
    F_u, F_s = X @ X.T / rows_u, Y @ Y.T / rows_s
    metric = F_u + DAMPING * np.trace(F_u) / N * np.eye(N)
    return F_u, F_s, metric, rng.standard_normal(N)


def basis(name: str, F_u, F_s, seed: int = 0, module: str = "m"):
    return BASES[name].build(F_u, F_s, DAMPING, np.random.default_rng(module_seed(seed, module)), module)


def metric_projector(Z, metric):
    """The metric-orthogonal projector onto span(Z): Z (Zᵀ M Z)⁻¹ Zᵀ M."""
    return Z @ np.linalg.solve(Z.T @ metric @ Z, Z.T @ metric)


def euclidean_projector(Z):
    """The Euclidean orthogonal projector onto span(Z): Z (ZᵀZ)⁻¹ Zᵀ."""
    return Z @ np.linalg.solve(Z.T @ Z, Z.T)


def same(a, b, tol=1e-9):
    return np.linalg.norm(a - b) <= tol * max(np.linalg.norm(b), 1.0)


def test_names_match_the_registry():
    assert tuple(BASES) == SST_BASES and tuple(PROJECTORS) == SST_PROJECTORS
    params = METHODS["sst"].params
    assert params["basis"].choices == SST_BASES and params["projector"].choices == SST_PROJECTORS
    for bad, message in ((dict(basis="pca"), "--basis pca"), (dict(projector="oblique"), "--projector oblique")):
        with pytest.raises(SSTMError, match=message):
            SSTConfig("u", "s", **bad)


@pytest.mark.parametrize("name", SST_BASES)
def test_every_basis_is_metric_orthonormal(name):
    F_u, F_s, metric, _ = fishers()
    b = basis(name, F_u, F_s)
    assert np.allclose(b.V.T @ metric @ b.V, np.eye(N), atol=1e-8)
    assert np.allclose(b.metric, metric) and (b.lam is None) == (name in ("random", "utility-null"))


def test_projectors_equal_direct_formulas():
    """fisher: Z(ZᵀMZ)⁻¹ZᵀM; euclidean: Z(ZᵀZ)⁻¹Zᵀ and numpy's least squares, for every basis and k."""
    F_u, F_s, metric, x = fishers()
    m = x.reshape(4, 4)
    for name in SST_BASES:
        b = basis(name, F_u, F_s)
        for k in (1, 3, 7, N):
            Z = b.V[:, :k] @ np.random.default_rng(k).standard_normal((k, k))  # any basis of the span
            assert same(projector(b, k, "fisher"), metric_projector(Z, metric), 1e-8)
            assert same(projector(b, k, "euclidean"), euclidean_projector(Z), 1e-8)
            lstsq = Z @ np.linalg.lstsq(Z, x, rcond=None)[0]
            assert same(project(b, m, k, "euclidean").reshape(-1), lstsq)
            assert same(project(b, m, k, "fisher").reshape(-1), metric_projector(Z, metric) @ x, 1e-8)
    assert same(projector(b, N, "euclidean"), np.eye(N)) and same(projector(b, N, "fisher"), np.eye(N), 1e-8)


def test_euclidean_never_enlarges_the_update_and_fisher_can():
    gains = {p: [] for p in SST_PROJECTORS}
    for seed in range(20):
        F_u, F_s, _, x = fishers(rows_u=4, rows_s=6, seed=seed)
        m = x.reshape(4, 4)
        for name in SST_BASES:
            b = basis(name, F_u, F_s, seed=seed)
            for k in range(N + 1):
                for p in SST_PROJECTORS:
                    gains[p].append(np.linalg.norm(project(b, m, k, p)) / np.linalg.norm(m))
    assert max(gains["euclidean"]) <= 1 + 1e-12
    assert max(gains["fisher"]) > 1.5  # the metric projector is oblique: it can grow M_s (issue 13 measured 2-38×)


def test_random_basis_is_the_seeded_gaussian_span():
    F_u, F_s, metric, _ = fishers()
    b = basis("random", F_u, F_s, seed=3, module="model.layers.0.mlp.up_proj")
    G = np.random.default_rng(module_seed(3, "model.layers.0.mlp.up_proj")).standard_normal((N, N))
    for k in (2, 9):
        assert same(projector(b, k), metric_projector(G[:, :k], metric), 1e-8)  # nested: span of G's first k
    assert b.separated_k(9) == 9 and b.separated_k(100) == N  # no spectrum: k is taken as asked
    again, other = basis("random", F_u, F_s, seed=3, module="model.layers.0.mlp.up_proj"), basis("random", F_u, F_s, seed=4)
    assert np.array_equal(again.V, b.V) and not same(projector(other, 9), projector(b, 9), 1e-3)


def test_safety_basis_is_top_k_of_F_s_cut_at_gaps():
    F_u, F_s, metric, _ = fishers(rows_s=7)
    mu, U = np.linalg.eigh(F_s)  # numpy's solver, ascending
    top = U[:, ::-1]
    b = basis("safety", F_u, F_s)
    assert np.allclose(b.lam, mu[::-1], atol=1e-10)
    for k in (1, 4, 7):
        assert b.separated_k(k) == k
        assert same(projector(b, k, "euclidean"), top[:, :k] @ top[:, :k].T, 1e-8)
        assert same(projector(b, k, "fisher"), metric_projector(top[:, :k], metric), 1e-8)
    assert b.separated_k(12) == 7  # F_s of 7 rows: the zero eigenvalues are tied, the cut stays at the gap


def test_utility_null_basis_least_F_u_deterministic_inside_the_tie():
    F_u, F_s, _, x = fishers(rows_u=5)
    null = np.linalg.svd(F_u)[2][5:].T  # an orthonormal basis of null(F_u), dimension 11
    U = np.linalg.eigh(F_u)[1]  # numpy's solver, ascending: 11 zero eigenvalues, then 5 positive
    b = basis("utility-null", F_u, F_s)
    # k = the null dimension: the whole null space; above it, the least nonzero eigenvectors are added in order
    assert same(projector(b, 11, "euclidean"), null @ null.T, 1e-8)
    assert same(projector(b, 13, "euclidean"), euclidean_projector(np.hstack([null, U[:, 11:13]])), 1e-8)
    # k inside the tied block: a seeded subspace of null(F_u) ...
    Vk = b.V[:, :4]
    assert np.abs(F_u @ Vk).max() < 1e-8 and np.linalg.matrix_rank(Vk) == 4
    # ... that depends on the block, not on the solver's basis of it: the same Fisher summed in another row
    # order, or with last-bit noise, gets another eigh basis of the block and gives the same projection
    X = np.random.default_rng(0).standard_normal((N, 5))[:, ::-1]
    noise = np.random.default_rng(9).standard_normal((N, N)) * 1e-14
    for G in (X @ X.T / 5, F_u + (noise + noise.T) / 2):
        other = basis("utility-null", G, F_s)
        assert same(project(other, x.reshape(4, 4), 4), project(b, x.reshape(4, 4), 4), 1e-6)
    assert not same(projector(basis("utility-null", F_u, F_s, seed=1), 4), projector(b, 4), 1e-3)


def test_gevp_basis_is_solve_gevp():
    F_u, F_s, _, _ = fishers()
    b, g = basis("gevp", F_u, F_s), solve_gevp(F_u, F_s, DAMPING)
    assert np.array_equal(b.V, g.V) and np.array_equal(b.lam, g.lam)


# --------------------------------------------------------------------------- on the tiny model


R = 4
FAST = dict(samples=5, batch_size=3, max_len=256, dtype="float64")


def test_control_merge_is_exact_and_recorded(reg, tiny_base):
    """--basis random --projector euclidean: the stored adapter is ΔW_u + w·ℓ·Q_B unvec(P vec M_s) Q_Aᵀ with
    P the Euclidean projector onto the seeded Gaussian span, computed here from scratch."""
    u, s = make_adapter(reg, tiny_base, "utility", rank=R, seed=0), make_adapter(reg, tiny_base, "safety", rank=R, seed=1)
    art = sst_merge(reg, SSTConfig(u.id, s.id, k=6, w=0.5, basis="random", projector="euclidean", basis_seed=2,
                                   **FAST))[0]
    gevp = sst_merge(reg, SSTConfig(u.id, s.id, k=6, w=0.5, **FAST))[0]
    assert art.params["basis"] == "random" and art.params["projector"] == "euclidean" and art.params["basis_seed"] == 2
    assert gevp.params["basis"] == "gevp" and gevp.params["projector"] == "fisher" and "basis_seed" not in gevp.params
    assert art.id != gevp.id and art.label == "sst random euclidean k=6 w=0.5 basis_seed=2" and gevp.label == "sst k=6 w=0.5"
    assert art.inputs["fisher_utility"] == gevp.inputs["fisher_utility"]  # same Fishers
    diag = json.loads((art.path / "diagnostics.json").read_text())
    assert (diag["basis"], diag["projector"]) == ("random", "euclidean")
    fu, fs, merged = read_lora(u), read_lora(s), read_lora(art)
    for m in fs.modules:
        QB, QA = core_basis(fs.B[m], fs.A[m])
        Ms = (QB.T @ fs.delta(m) @ QA).numpy()
        Z = np.random.default_rng(module_seed(2, m)).standard_normal((R * R, R * R))[:, :6]
        Mp = torch.from_numpy((euclidean_projector(Z) @ Ms.reshape(-1)).reshape(R, R))
        want = fu.delta(m) + 0.5 * DEFAULT_LAYER_WEIGHTS[module_type(m)] * QB @ Mp @ QA.T
        assert float((merged.B[m] @ merged.A[m] - want).norm()) <= 1e-8 * float(want.norm())
        assert diag["modules"][m]["k_effective"] == 6 and diag["modules"][m]["norm_kept"] <= 1 + 1e-12
        assert "lambda_max" not in diag["modules"][m]  # no spectrum orders a random basis
    F_u = load_fisher(reg.get(art.inputs["fisher_utility"]))
    assert set(F_u) == set(fs.modules)
    again = sst_merge(reg, SSTConfig(u.id, s.id, k=6, w=0.5, basis="random", projector="euclidean", basis_seed=2,
                                     **FAST))[0]
    assert again.id == art.id  # a rerun is a cache hit


def test_merge_cli_basis_choices(reg, tiny_base):
    u, s = make_adapter(reg, tiny_base, "utility", rank=R, seed=0), make_adapter(reg, tiny_base, "safety", rank=R, seed=1)
    runner = CliRunner()
    res = runner.invoke(app, ["merge", "sst", "--help"])
    assert "--basis" in res.output and "utility-null" in res.output and "--projector" in res.output
    res = runner.invoke(app, ["merge", "sst", "--utility", u.short, "--safety", s.short, "--basis", "pca"])
    assert_user_error(res, "--basis pca: expected gevp, random, safety or utility-null")
    res = runner.invoke(app, ["merge", "sst", "--utility", u.short, "--safety", s.short, "--projector", "x"])
    assert_user_error(res, "--projector x")
    assert reg.list("fisher") == []
