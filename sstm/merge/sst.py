"""SST-Merge (Safety Subspace Task-Merge), docs/method.md §3-4.

Per target module m, with F_u, F_s the utility and safety Fishers in the safety
adapter's core coordinates (see :mod:`sstm.fisher`) and M_s = Q_Bᵀ ΔW_s Q_A:

4. GEVP  F_s v = λ (F_u + δI) v,  δ = damping·tr(F_u)/r²,
   solved by ``scipy.linalg.eigh(F_s, F_u + δI)``: Vᵀ(F_u + δI)V = I.
5. V_k = the k eigenvectors of largest λ (important for safety, unimportant for
   utility); projector in the F_u metric P = V_k V_kᵀ (F_u + δI) (P² = P, k = r²
   gives P = I); M_proj = unvec(P·vec(M_s)) (row-major vec).
   k is cut down to a gap of the spectrum (:func:`separated_k`): P depends only on
   span(V_k), which the spectrum fixes only where λ_k > λ_{k+1}; below the gap the
   eigenvectors of tied eigenvalues (e.g. the ≥ r² − N zero eigenvalues of a Fisher
   of N rows) are whatever the solver's rounding returns.
6. ΔW = ΔW_u + w·ℓ(m)·Q_B M_proj Q_Aᵀ with layer weights ℓ (lm_head 5, q/k/v/o 2,
   gate/up/down 1.5), stored exactly as one LoRA of rank r_u + r_s:
   B = [s_u·B_u, w·ℓ·Q_B·M_proj],  A = [A_u; Q_Aᵀ],  lora_alpha = r (scale 1).

Controls (docs/method.md §10): ``--basis`` replaces the GEVP's V by a seeded random
metric-orthonormal basis, the eigenvectors of F_s alone or those of least F_u alone
(:data:`BASES`); ``--projector euclidean`` replaces P by the Euclidean orthogonal
projector Q Qᵀ onto span(V_k), Q = orth(V_k), which never enlarges M_s (:data:`PROJECTORS`).

Both Fishers come from the registry (same inputs -> cache hit); a sweep over
k and w solves each module's GEVP once and reuses it for every point.
"""

from __future__ import annotations

import contextlib
import json
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.linalg
import torch

from sstm.adapters import load_pair, module_type, write_lora
from sstm.errors import SSTMError
from sstm.fisher import FisherConfig, check_structure, core_bases, core_coords, fisher, load_fisher
from sstm.merge.baselines import module_seed
from sstm.merge.layer_weights import DEFAULT_LAYER_WEIGHTS, load_layer_weights  # noqa: F401 (re-exported)
from sstm.merge import storage
from sstm.merge.methods import SST_BASES, SST_PROJECTORS, check_weights, sst_control
from sstm.registry import Artifact, Registry, code_fingerprint
from sstm.ui import progress, warn

DIAGNOSTICS = "diagnostics.json"
# Two eigenvalues closer than SEPARATION_RTOL·max|λ| are tied (docs/method.md §3, "Ties"). Measured on
# synthetic Fishers of 32 and 128 rows (r² = 256): the solver's rounding is ~1e-15 of λ_max and the zero
# eigenvalues of a float32-stored Fisher stay within 1e-8 of it, while the eigenvalues the rows separate
# are ≥ 3e-5·λ_max with gaps of 1e-6 and more (a smaller gap in a decaying tail moves the cut down a step).
SEPARATION_RTOL = 1e-6
_EIGH_DRIVER: str | None = None  # scipy's default; a seam for tests/test_reproducible.py, not an option


@dataclass
class SSTConfig:
    """`sstm merge sst`: one merged adapter per (k, w); lists run a sweep (normalised to lists, validated)."""

    utility: str
    safety: str
    # defaults from the sweeps on the embedded SmolLM2 (README "Results", docs/method.md): k = r²/2 of r = 16
    k: int | list[int] = 128  # requested; cut to a gap of each module's spectrum (separated_k)
    w: float | list[float] = 0.75
    samples: int = FisherConfig.samples  # Fisher rows per role; the Fisher settings default to FisherConfig's
    damping: float = 1e-3
    layer_weights: str | dict | None = None  # JSON/YAML file or mapping over DEFAULT_LAYER_WEIGHTS
    batch_size: int = FisherConfig.batch_size
    max_len: int = FisherConfig.max_len
    utility_data: str | None = None  # default: each adapter's training data
    safety_data: str | None = None
    seed: int = 0
    device: str | None = None
    dtype: str = FisherConfig.dtype
    basis: str = SST_BASES[0]  # gevp, or a control (docs/method.md §10)
    projector: str = SST_PROJECTORS[0]  # fisher (F_u + δI metric) or euclidean
    basis_seed: int = 0  # the random draws of the random and utility-null bases
    structure: str = FisherConfig.structure  # full, or kfac: Kronecker-factored Fishers (sstm/merge/kfac.py)

    def __post_init__(self) -> None:
        ks = [self.k] if isinstance(self.k, numbers.Integral) else list(self.k)
        if not ks:
            raise SSTMError("--k: give at least one value")
        for k in ks:
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
                raise SSTMError(f"--k {k}: must be an integer >= 1")
        if not self.damping > 0:
            raise SSTMError(f"--damping {self.damping}: must be > 0")
        if self.samples < 1:
            raise SSTMError(f"--samples {self.samples}: must be at least 1")
        for flag, value, names in (("--basis", self.basis, BASES), ("--projector", self.projector, PROJECTORS)):
            if value not in names:
                raise SSTMError(f"{flag} {value}: expected one of {', '.join(names)}")
        if check_structure(self.structure) == "kfac" and sst_control(vars(self)):
            raise SSTMError(f"--structure kfac supports --basis {SST_BASES[0]} --projector {SST_PROJECTORS[0]} only")
        self.k = list(dict.fromkeys(int(k) for k in ks))  # Python ints: they become artifact params
        self.w = check_weights(self.w)


# --------------------------------------------------------------------------- math


@dataclass(frozen=True)
class Basis:
    """A module's candidate directions, most preferred first: V (r²×r², Vᵀ(F_u + δI)V = I), and `lam`, the
    decreasing spectrum that orders them (the GEVP's λ for the default basis; docs/method.md §3, §10).

    With a spectrum, k is cut down to a gap of it (:func:`separated_k`); without one (`lam` None: the
    random and utility-null bases, whose order is seeded inside ties) any k is taken as asked, up to r².
    """

    lam: np.ndarray | None  # (r²,)
    V: np.ndarray  # (r², r²)
    metric: np.ndarray  # F_u + δI
    delta: float

    @property
    def tie_tol(self) -> float:
        """SEPARATION_RTOL·max|λ|: eigenvalues closer than this are tied."""
        return 0.0 if self.lam is None else SEPARATION_RTOL * float(np.abs(self.lam).max(initial=0.0))

    def separated_k(self, k: int) -> int:
        if self.lam is None:
            return min(k, self.V.shape[1])
        return separated_k(self.lam, k, self.tie_tol)


Gevp = Basis  # the default basis: the GEVP's (tests/test_reproducible.py builds one directly)


def damped_metric(F_u: np.ndarray, damping: float) -> tuple[np.ndarray, float]:
    """(F_u + δI, δ) with δ = damping·tr(F_u)/r² (δ = damping if tr(F_u) = 0)."""
    n = F_u.shape[0]
    tr = float(np.trace(F_u))
    delta = damping * tr / n if tr > 0 else damping
    return F_u + delta * np.eye(n), delta


def solve_gevp(F_u: np.ndarray, F_s: np.ndarray, damping: float, where: str = "") -> Basis:
    """F_s v = λ (F_u + δI) v, eigenpairs sorted by decreasing λ."""
    metric, delta = damped_metric(F_u, damping)
    try:
        lam, V = scipy.linalg.eigh(F_s, metric, driver=_EIGH_DRIVER)
    except (np.linalg.LinAlgError, ValueError) as e:
        raise SSTMError(f"GEVP failed{' for ' + where if where else ''}: {e}") from None
    return Basis(lam[::-1].copy(), V[:, ::-1].copy(), metric, delta)


def separated_k(lam: np.ndarray, k: int, tol: float) -> int:
    """The largest k' ≤ k whose cut lies at a gap: λ_k' − λ_{k'+1} > tol (λ decreasing; k' = 0 and r² always do).

    P = V_k V_kᵀ(F_u + δI) is the (F_u + δI)-orthogonal projector onto span(V_k), so it is
    the same for any basis of that span (signs, rotations inside a block of tied λ). The
    span is fixed by the spectrum only when the cut separates λ_k from λ_{k+1}; inside a
    tie (the zero eigenvalues of a rank-deficient F_s above all) it is whatever the
    solver's rounding returns. Cutting down to the nearest gap keeps the merge a function
    of the Fishers alone; cutting up would keep more directions than asked.
    """
    n = lam.size
    if k >= n:
        return n
    gaps = np.flatnonzero((lam[:-1] - lam[1:])[:k] > tol)  # index j: the gap after the (j+1)-th eigenvalue
    return int(gaps[-1]) + 1 if gaps.size else 0


def metric_orthonormal(B: np.ndarray, metric: np.ndarray) -> np.ndarray:
    """V = B·L⁻ᵀ with L Lᵀ = Bᵀ·metric·B (Cholesky): Vᵀ·metric·V = I, and the first j columns of V span
    those of B for every j (metric Gram–Schmidt), so a cut at k keeps span(B[:, :k])."""
    L = scipy.linalg.cholesky(B.T @ metric @ B, lower=True)
    return scipy.linalg.solve_triangular(L, B.T, lower=True).T


def seeded_in_ties(mu: np.ndarray, U: np.ndarray, tol: float, rng: np.random.Generator) -> np.ndarray:
    """U with the columns of every block of tied eigenvalues (neighbours closer than `tol`) replaced by a
    seeded random orthonormal basis of the block: QR of P_block·G, G Gaussian (n × block size) from `rng`.
    P_block = U_b U_bᵀ is fixed by the spectrum (a block ends at a gap) whatever basis U_b the solver
    returned, so the result is a function of the matrix and the seed."""
    U = U.copy()
    starts = np.concatenate([[0], np.flatnonzero(np.diff(mu) > tol) + 1, [mu.size]])
    for a, b in zip(starts[:-1], starts[1:]):
        if b - a > 1:
            Ub = U[:, a:b]
            U[:, a:b] = np.linalg.qr(Ub @ (Ub.T @ rng.standard_normal((U.shape[0], b - a))))[0]
    return U


@dataclass(frozen=True)
class BasisRule:
    """How one `--basis` builds a module's Basis from (F_u, F_s, damping, rng, where)."""

    build: Callable[..., Basis]
    seeded: bool  # draws from rng (a seeded per-module generator): `basis_seed` is an artifact param


def _gevp_basis(F_u, F_s, damping, rng, where) -> Basis:
    """The GEVP (docs/method.md §3): most safety Fisher per unit of damped utility Fisher first."""
    return solve_gevp(F_u, F_s, damping, where)


def _random_basis(F_u, F_s, damping, rng, where) -> Basis:
    """A seeded random subspace: Gaussian columns, orthonormalized in the metric F_u + δI."""
    metric, delta = damped_metric(F_u, damping)
    return Basis(None, metric_orthonormal(rng.standard_normal(metric.shape), metric), metric, delta)


def _safety_basis(F_u, F_s, damping, rng, where) -> Basis:
    """The eigenvectors of F_s alone, largest eigenvalue first; k cut to a gap of that spectrum."""
    metric, delta = damped_metric(F_u, damping)
    mu, U = scipy.linalg.eigh(F_s)
    return Basis(mu[::-1].copy(), metric_orthonormal(U[:, ::-1], metric), metric, delta)


def _utility_null_basis(F_u, F_s, damping, rng, where) -> Basis:
    """The eigenvectors of F_u alone, smallest eigenvalue first, in a seeded order inside ties (the ≥ r² − N_u
    zero eigenvalues): all of them are equally "least F_u", so k is taken as asked."""
    metric, delta = damped_metric(F_u, damping)
    mu, U = scipy.linalg.eigh(F_u)
    tol = SEPARATION_RTOL * float(np.abs(mu).max(initial=0.0))
    return Basis(None, metric_orthonormal(seeded_in_ties(mu, U, tol, rng), metric), metric, delta)


# `--basis`: the GEVP and the controls of docs/method.md §10; names and order as SST_BASES (the CLI's choices)
BASES = {"gevp": BasisRule(_gevp_basis, seeded=False), "random": BasisRule(_random_basis, seeded=True),
         "safety": BasisRule(_safety_basis, seeded=False),
         "utility-null": BasisRule(_utility_null_basis, seeded=True)}


def _fisher_projection(Vk: np.ndarray, metric: np.ndarray, x: np.ndarray) -> np.ndarray:
    """V_k V_kᵀ(F_u + δI)·x: orthogonal in the F_u + δI metric (Vᵀ(F_u+δI)V = I); can enlarge ‖x‖."""
    return Vk @ (Vk.T @ (metric @ x))


def _euclidean_projection(Vk: np.ndarray, metric: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Q Qᵀ·x with Q = orth(V_k) (QR): the Euclidean orthogonal projector V(VᵀV)⁻¹Vᵀ, ‖Q Qᵀ x‖ ≤ ‖x‖."""
    Q = np.linalg.qr(Vk)[0]
    return Q @ (Q.T @ x)


# `--projector`: names and order as SST_PROJECTORS (the CLI's choices)
PROJECTORS = {"fisher": _fisher_projection, "euclidean": _euclidean_projection}


def projector(g: Basis, k: int, kind: str = "fisher") -> np.ndarray:
    """P onto the span of the first k directions: V_k V_kᵀ (F_u + δI) ("fisher") or Q Qᵀ ("euclidean")."""
    return PROJECTORS[kind](g.V[:, :k], g.metric, np.eye(g.V.shape[0]))


def project(g: Basis, m: np.ndarray, k: int, kind: str = "fisher") -> np.ndarray:
    """unvec(P·vec(M)) for an r×r core matrix M (row-major vec), without forming P."""
    if not isinstance(g, Basis):  # a factored GEVP (sstm.merge.kfac.KronGevp) projects itself in O(r³)
        return g.project(m, k)
    return PROJECTORS[kind](g.V[:, :k], g.metric, m.reshape(-1)).reshape(m.shape)


# --------------------------------------------------------------------------- stage


@contextlib.contextmanager
def single_threaded():
    """One BLAS and one torch thread for the many small per-module problems (r²×r² GEVPs, r×r products).

    Multi-threaded OpenBLAS/OpenMP spin-wait on matrices this small: on a busy
    2-core machine a 256×256 GEVP took 1.8 s with 2 threads and 10 ms with one.
    """
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(n)


def _prepare(lora_s, F_u: dict, F_s: dict, damping: float, basis: str, seed: int, structure: str = "full") -> dict:
    """Per module: Q_B, Q_A, M_s (float64, numpy), both Fishers and the basis (the GEVP by default, a seeded
    generator per module for the random draws); done once per sweep."""
    bases = core_bases(lora_s)
    if set(F_u) != set(lora_s.modules) or set(F_s) != set(lora_s.modules):
        raise SSTMError("the Fishers do not cover the adapters' target modules")
    prep = {}
    rule = BASES[basis]
    with progress("GEVP" if basis == SST_BASES[0] else f"{basis} basis", total=len(lora_s.modules),
                  unit="modules") as advance:
        for m in lora_s.modules:
            F_u_m, F_s_m = F_u[m].numpy(), F_s[m].numpy()
            if not (np.isfinite(F_u_m).all() and np.isfinite(F_s_m).all()):
                raise SSTMError(f"the Fisher of module {m} has non-finite entries")
            QB, QA = bases[m]
            if structure == "kfac":  # two r×r factors per module: two r×r GEVPs (docs/scale.md)
                from sstm.merge.kfac import Kron, solve_kron_gevp  # lazy: kfac imports this module

                F_u_m, F_s_m = Kron.of(F_u_m), Kron.of(F_s_m)
                g = solve_kron_gevp(F_u_m, F_s_m, damping, m)
            else:
                g = rule.build(F_u_m, F_s_m, damping, np.random.default_rng(module_seed(seed, m)), m)
            prep[m] = {"QB": QB, "QA": QA, "Ms": core_coords(lora_s, m, QB, QA).numpy(), "F_u": F_u_m,
                       "F_s": F_s_m, "basis": g}
            advance()
    return prep


def _share(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _module_diagnostics(p: dict, mp: np.ndarray, k_eff: int) -> dict:
    """Spectrum summary (λ tied with 0 reported as 0; none for a basis without one), the cut, and how much of
    M_s survives the projection."""
    g, ms, v, vp = p["basis"], p["Ms"], p["Ms"].reshape(-1), mp.reshape(-1)
    kept = {
        "delta": g.delta, "k_effective": k_eff,
        "norm_kept": _share(float(np.linalg.norm(mp)), float(np.linalg.norm(ms))),
        "safety_fisher_kept": _share(float(vp @ p["F_s"] @ vp), float(v @ p["F_s"] @ v)),
        "utility_fisher_kept": _share(float(vp @ p["F_u"] @ vp), float(v @ p["F_u"] @ v)),
    }
    if g.lam is None:
        return kept
    lam = np.where(np.abs(g.lam) <= g.tie_tol, 0.0, g.lam)
    return kept | {
        "lambda_max": float(lam[0]), "lambda_k": float(lam[k_eff - 1]) if k_eff else None,
        "lambda_next": float(lam[k_eff]) if k_eff < lam.size else None,
        "lambda_median": float(np.median(lam)), "lambda_min": float(lam[-1]),
        "lambda_top": [float(x) for x in lam[: min(8, lam.size)]],
        "lambda_topk_share": _share(float(np.clip(lam[:k_eff], 0, None).sum()), float(np.clip(lam, 0, None).sum())),
    }


def k_summary(k: int, k_effective: list[int]) -> dict:
    """min / median / max of the per-module effective k and the number of modules cut below the requested k."""
    return {"min": min(k_effective), "median": float(np.median(k_effective)), "max": max(k_effective),
            "capped_modules": sum(ke < k for ke in k_effective)}


def _metrics(diag: dict, ks: dict) -> dict:
    """Registered summaries: the effective k, and mean (and min) over modules of the kept shares
    (modules with M_s = 0 skipped)."""
    out = {f"k_effective_{key}": float(v) for key, v in ks.items() if key != "capped_modules"}
    out["k_capped_modules"] = float(ks["capped_modules"])
    for key in ("norm_kept", "safety_fisher_kept", "utility_fisher_kept"):
        xs = [d[key] for d in diag.values() if d[key] is not None]
        if xs:
            out[f"{key}_mean"] = sum(xs) / len(xs)
            if key == "norm_kept":
                out["norm_kept_min"] = min(xs)
    return out


def sst_merge(reg: Registry, cfg: SSTConfig) -> list[Artifact]:
    """One `merged` artifact per (k, w) (built or reused); both Fishers built or reused once.

    Params record the requested k (clamped to r²), so an id is a function of the request;
    the k each module really uses (:func:`separated_k`) is in the diagnostics and metrics.
    """
    utility, safety, lora_u, lora_s = load_pair(reg, cfg.utility, cfg.safety)
    lw = load_layer_weights(cfg.layer_weights)
    r2 = lora_s.rank ** 2
    if any(k > r2 for k in cfg.k):
        warn(f"--k above r² = {r2} is clamped to {r2}: P = I, i.e. layer-weighted task arithmetic")
    ks = list(dict.fromkeys(min(k, r2) for k in cfg.k))
    types = sorted({module_type(m) for m in lora_s.modules})
    used = {t: lw.get(t, lw["default"]) for t in types}
    common = dict(samples=cfg.samples, batch_size=cfg.batch_size, max_len=cfg.max_len, seed=cfg.seed,
                  device=cfg.device, dtype=cfg.dtype, structure=cfg.structure)
    fisher_u = fisher(reg, FisherConfig(adapter=utility.id, role="utility", basis=safety.id, data=cfg.utility_data,
                                        **common))
    fisher_s = fisher(reg, FisherConfig(adapter=safety.id, role="safety", basis=safety.id, data=cfg.safety_data,
                                        **common))
    rank = lora_u.rank + lora_s.rank
    # rows each Fisher really averaged over (capped at the dataset size, rows without a response token skipped)
    used_rows = {"utility": int(fisher_u.metrics["samples_used"]), "safety": int(fisher_s.metrics["samples_used"])}
    state: dict = {}

    def prepared() -> dict:
        if not state:
            with single_threaded():
                state.update(_prepare(lora_s, load_fisher(fisher_u), load_fisher(fisher_s), cfg.damping, cfg.basis,
                                      cfg.basis_seed, cfg.structure))
        return state

    def build_for(k: int, w: float):
        def build(out: Path) -> dict:
            A, B, diag = {}, {}, {}
            prep = prepared()
            with single_threaded():
                for m, p in prep.items():
                    k_eff = p["basis"].separated_k(k)
                    mp = project(p["basis"], p["Ms"], k_eff, cfg.projector)
                    ell = used[module_type(m)]
                    safety_B = w * ell * (p["QB"] @ torch.from_numpy(mp))
                    B[m] = torch.cat([lora_u.scale * lora_u.B[m].to(torch.float64), safety_B], dim=1)
                    A[m] = torch.cat([lora_u.A[m].to(torch.float64), p["QA"].T], dim=0)
                    diag[m] = {"layer_weight": ell, **_module_diagnostics(p, mp, k_eff),
                               "strength": storage.strength((safety_B, p["QA"].T), lora_s, m)}
            write_lora(out, lora_u.config, A, B, rank, torch.promote_types(lora_u.dtype, torch.float32))
            summary = k_summary(k, [d["k_effective"] for d in diag.values()])
            doc = {"method": "sst", **variant, "k": k, "k_effective": summary, "separation_rtol": SEPARATION_RTOL, "w": w,
                   "r": lora_s.rank, "rank": rank, "damping": cfg.damping, "layer_weights": used, "modules": diag}
            (out / DIAGNOSTICS).write_text(json.dumps(doc, indent=1))
            return _metrics(diag, summary) | exact | storage.strength_metrics(d["strength"] for d in diag.values())

        return build

    # the subspace and projector (docs/method.md §10); the seed only where the basis draws from it
    variant = {"basis": cfg.basis, "projector": cfg.projector, "structure": cfg.structure} | (
        {"basis_seed": cfg.basis_seed} if BASES[cfg.basis].seeded else {})
    named = "".join(f" {v}" for v in sst_control(variant)) + (f" seed={cfg.basis_seed}" if "basis_seed" in variant else "") + (
        f" {cfg.structure}" if cfg.structure != FisherConfig.structure else "")
    fmt, exact = storage.stored("lora")  # SST's result is exactly a LoRA of rank r_u + k'
    arts = []
    inputs = {"base": utility.inputs["base"], "utility": utility, "safety": safety, "fisher_utility": fisher_u,
              "fisher_safety": fisher_s}
    for k in ks:
        for w in cfg.w:
            params = {"method": "sst", **variant, "k": k, "w": w, "damping": cfg.damping, "layer_weights": used,
                      "samples": cfg.samples, "fisher_samples_used": used_rows, "rank": rank} | fmt
            arts.append(reg.get_or_build("merged", params, inputs, code_fingerprint(__name__), build_for(k, w),
                                         label=f"sst{named} k={k} w={w:g} n={cfg.samples}", seed=cfg.seed))
    return arts
