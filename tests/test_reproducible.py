"""Same id, same content: SST under ties, solver drivers, thread counts and Fisher rounding; `sstm verify --rebuild`.

Which conditions really change rounding here (measured): scipy's generalized `eigh` drivers
differ once r² > 25 (LAPACK's divide and conquer 'gvd' takes over from QL/QR 'gv'/'gvx'): the
eigenvectors of a tied (zero) block then differ by O(1). BLAS threads 1 vs 2 change nothing at
these sizes, and SST solves its GEVPs single-threaded anyway; they are varied for the Fisher
pass. The other source the merge sees is the Fisher's last bits, perturbed directly below.
"""

import json
import os

import numpy as np
import pytest
import torch
from adapters import damage_lora_b, make_adapter
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

import sstm.merge.gevp as gevp
import sstm.merge.stage as stage
from sstm.adapters import read_lora
from sstm.cli import app
from sstm.data import register_rows
from sstm.evaluate import EvalConfig, evaluate
from sstm.fisher import load_fisher
from sstm.fisher import core_bases, core_coords
from sstm.merge import METHODS
from sstm.merge.gevp import project, separated_k, solve_gevp
from sstm.merge.methods.sst import SSTConfig
from sstm.rebuild import TOLERANCE, verify_rebuild

DRIVERS = ("gv", "gvd", "gvx")
sst_merge = METHODS["sst"].merge
R = 6  # r² = 36 > 25, so the drivers take different LAPACK paths
ROWS = 4  # Fisher rows: F_s has rank ≤ 4 in 36 dimensions
K = 12  # asks for 8 directions more than the Fishers separate
FAST = dict(samples=ROWS, batch_size=2, max_len=256, dtype="float64")


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# --------------------------------------------------------------------------- the cut


def test_separated_k_cuts_only_at_gaps():
    lam = np.array([5.0, 3.0, 3.0 + 1e-9, 1.0, 1e-17, -1e-17, 0.0])[[0, 2, 1, 3, 4, 6, 5]]  # decreasing
    tol = 1e-6 * 5.0
    assert [separated_k(lam, k, tol) for k in range(1, 8)] == [1, 1, 3, 4, 4, 4, 7]  # 2 ties 3, 5-6 tie 4
    assert separated_k(lam, 100, tol) == 7  # k ≥ r²: P = I, no cut needed
    assert separated_k(np.zeros(5), 3, 0.0) == 0  # F_s = 0: nothing is separated


def synthetic(seed=0, n=R * R, rows=ROWS):
    """F_u, F_s of `rows` Gaussian gradients each (rank-deficient), Y (F_s = Y Yᵀ/rows) and a core update."""
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, rows)), rng.standard_normal((n, rows))
    return X @ X.T / rows, Y @ Y.T / rows, Y, rng.standard_normal((R, R))


def range_projection(F_u, Y, damping, m):
    """Independent of any eigensolver: span(V_N) = M⁻¹·range(F_s) for the N nonzero λ (F_s v = λMv ⇒
    v = M⁻¹F_s v/λ), and the M-orthogonal projector onto span(Z), Z = M⁻¹Y, is Z(ZᵀMZ)⁻¹ZᵀM."""
    n = F_u.shape[0]
    M = F_u + damping * np.trace(F_u) / n * np.eye(n)
    Z = np.linalg.solve(M, Y)
    return (Z @ np.linalg.solve(Y.T @ Z, Y.T @ m.reshape(-1))).reshape(m.shape)


def test_rank_deficient_projection_is_the_same_for_every_driver_rotation_and_last_bit(monkeypatch):
    F_u, F_s, Y, Ms = synthetic()
    expected = range_projection(F_u, Y, 1e-3, Ms)
    raw, capped = {}, {}
    for driver in DRIVERS:
        monkeypatch.setattr(gevp, "_EIGH_DRIVER", driver)
        g = solve_gevp(F_u, F_s, 1e-3)
        assert g.separated_k(K) == ROWS  # the tied zero block is never cut into
        raw[driver], capped[driver] = project(g, Ms, K), project(g, Ms, ROWS)
        assert rel(capped[driver], expected) < 1e-9
        # a random orthogonal rotation inside the null block, and one inside the kept block
        Q = np.linalg.qr(np.random.default_rng(1).standard_normal((R * R - ROWS,) * 2))[0]
        V = g.V.copy()
        V[:, ROWS:] = V[:, ROWS:] @ Q
        V[:, :ROWS] = V[:, :ROWS] @ np.linalg.qr(np.random.default_rng(2).standard_normal((ROWS, ROWS)))[0]
        turned = gevp.Gevp(g.lam, V, g.metric, g.delta)
        assert rel(project(turned, Ms, turned.separated_k(K)), expected) < 1e-9
        assert rel(project(turned, Ms, K), raw[driver]) > 1e-2  # what k = 12 would have kept is arbitrary
    # before the cut: the drivers disagree on what k = 12 keeps (the test case really has ties)
    assert max(rel(raw[d], raw["gvd"]) for d in DRIVERS) > 1e-2
    # the last bits of the Fishers (another machine's rounding): the cut result moves by rounding only
    noise = np.random.default_rng(3).standard_normal(F_s.shape) * 1e-15 * np.abs(F_s).max()
    g = solve_gevp(F_u, F_s + (noise + noise.T) / 2, 1e-3)
    assert rel(project(g, Ms, g.separated_k(K)), expected) < 1e-9


# --------------------------------------------------------------------------- the tied-spectrum merge


@pytest.fixture
def pair(reg, tiny_base):
    return (make_adapter(reg, tiny_base, "utility", rank=R, seed=0),
            make_adapter(reg, tiny_base, "safety", rank=R, seed=1))


def test_tied_spectrum_merge_is_identical_across_drivers_and_threads(reg, pair, monkeypatch):
    u, s = pair
    torch.set_num_threads(1)
    (art,) = sst_merge(reg, SSTConfig(u.id, s.id, k=K, w=1.0, **FAST))
    diag = json.loads((art.path / "diagnostics.json").read_text())
    n_modules = len(diag["modules"])
    assert art.params["k"] == K and isinstance(art.params["k"], int)
    assert all(d["k_effective"] <= ROWS for d in diag["modules"].values())
    assert diag["k"] == K and diag["k_effective"]["max"] <= ROWS and diag["k_effective"]["capped_modules"] == n_modules
    assert art.metrics["k_capped_modules"] == n_modules and art.metrics["k_effective_max"] <= ROWS
    # the CLI refuses k beyond the Fisher rows up front (SSTConfig.check_request); the library cuts it
    res = CliRunner().invoke(app, ["merge", "sst", "--utility", u.short, "--safety", s.short, "--k", str(K), "--w", "1",
                                   "--samples", str(ROWS), "--batch-size", "2", "--max-len", "256", "--dtype", "float64"])
    assert res.exit_code == 2 and f"--k {K}: more directions than the {ROWS} Fisher rows" in res.output, res.output
    # without the cut, the drivers would disagree on this very merge
    F_u, F_s = (load_fisher(reg.get(art.inputs[r])) for r in ("fisher_utility", "fisher_safety"))
    m = sorted(F_s)[0]
    lora_s = read_lora(s)
    QB, QA = core_bases(lora_s)[m]
    Ms = core_coords(lora_s, m, QB, QA).numpy()
    uncut = {}
    for driver in DRIVERS:
        monkeypatch.setattr(gevp, "_EIGH_DRIVER", driver)
        uncut[driver] = project(solve_gevp(F_u[m].numpy(), F_s[m].numpy(), 1e-3), Ms, K)
    assert max(rel(uncut[d], uncut["gvd"]) for d in DRIVERS) > 1e-2
    # with it, the rebuild under every driver and 2 threads reproduces the stored adapter
    for driver, threads in (("gv", 2), ("gvx", 1), ("gvd", 2)):
        monkeypatch.setattr(gevp, "_EIGH_DRIVER", driver)
        torch.set_num_threads(threads)
        with threadpool_limits(threads):
            report = verify_rebuild(reg, art.id)
        assert report.reproduced, (driver, report.differences)
        assert report.max_error < 1e-9  # the float32 storage makes rounding of the GEVP invisible
    # the Fisher itself, rebuilt with 2 threads
    report = verify_rebuild(reg, art.inputs["fisher_safety"])
    assert report.reproduced and report.max_error <= TOLERANCE["fisher"]
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- sstm verify --rebuild


def test_verify_rebuild_merged_fisher_eval_then_tampered(reg, pair):
    u, s = pair
    (merged,) = sst_merge(reg, SSTConfig(u.id, s.id, k=3, w=0.5, **FAST))
    (ta,) = METHODS["ta"].merge(reg, METHODS["ta"].make_config(u.id, s.id, w=0.5))
    jb = register_rows(reg, "jb-test", [{"prompt": p, "response": "I can't."} for p in ("Hi", "Tell me a secret", "DAN")],
                       {"test": "jailbreak"}, quiet=True)
    (ev,) = evaluate(reg, EvalConfig(model=merged.id, suites=("jailbreak",), batch_size=2, max_new_tokens=4,
                                     data={"jailbreak": jb}, device="cpu"))
    runner = CliRunner()
    for art in (merged, ta, reg.get(merged.inputs["fisher_utility"]), ev):
        res = runner.invoke(app, ["verify", "--rebuild", art.short, "--json"])
        assert res.exit_code == 0, res.output
        report = json.loads(res.stdout)
        assert report["status"] == "reproduced" and report["differences"] == [], (art.kind, report)
    res = runner.invoke(app, ["verify", "--rebuild", ta.short])
    assert res.exit_code == 0 and res.stdout.startswith("reproduced: merged")
    assert len(reg.list("merged")) == 2 and len(reg.list("eval")) == 1  # a rebuild registers nothing

    # tamper with one stored tensor: the module it belongs to is reported, exit 1
    weights = merged.path / "adapter_model.safetensors"
    original = weights.read_bytes()
    module = damage_lora_b(merged)
    res = runner.invoke(app, ["verify", "--rebuild", merged.short, "--json"])
    assert res.exit_code == 1, res.output
    report = json.loads(res.stdout)
    assert report["status"] == "differs"
    assert [(d["file"], d["item"]) for d in report["differences"]] == [("adapter_model.safetensors", module)]
    assert report["differences"][0]["error"] == pytest.approx(1e-3, rel=0.05)
    res = runner.invoke(app, ["verify", "--rebuild", merged.short])
    assert res.exit_code == 1 and "differs" in res.output and module in res.output
    weights.write_bytes(original)  # the eval below loads this merge, which must be intact (sstm.registry)

    # an eval whose stored response was changed
    samples = ev.path / "samples.jsonl"
    lines = samples.read_text().splitlines()
    lines[1] = json.dumps(json.loads(lines[1]) | {"response": "changed"})
    os.chmod(samples, 0o644)
    samples.write_text("\n".join(lines) + "\n")
    report = verify_rebuild(reg, ev.id)
    assert not report.reproduced and [d.item for d in report.differences] == ["line 2.response"]


def test_verify_rebuild_id_changed_and_bad_input(reg, pair, monkeypatch):
    u, s = pair
    (merged,) = sst_merge(reg, SSTConfig(u.id, s.id, k=3, w=0.5, **FAST))
    monkeypatch.setattr(stage, "method_code", lambda method: "changed")  # as if the code had changed: another id
    res = CliRunner().invoke(app, ["verify", "--rebuild", merged.short])
    assert res.exit_code == 1 and "not the stored" in res.output and "not compared" in res.output
    assert len(reg.list("merged")) == 1  # nothing was built
    for args, message in ((["verify", "--rebuild", "0123abcd"], "no artifact"),
                          (["verify", "--rebuild", u.short], "training is not reproducible")):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1, res.output
