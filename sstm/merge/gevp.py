"""SST-Merge's linear algebra (docs/method.md §3-4, §10): the GEVP, the control bases, the projectors, the tie rule.

Per module, with F_u, F_s the utility and safety Fishers (r²×r²) in the safety adapter's core coordinates:

* GEVP  F_s v = λ (F_u + δI) v,  δ = damping·tr(F_u)/r², by ``scipy.linalg.eigh(F_s, F_u + δI)``:
  Vᵀ(F_u + δI)V = I, λ decreasing (:func:`solve_gevp`);
* P = V_k V_kᵀ (F_u + δI), the F_u-metric projector onto the first k directions (P² = P, k = r² gives
  P = I), or the Euclidean Q Qᵀ, Q = orth(V_k) (:data:`PROJECTORS`);
* the tie rule: k is cut down to a gap of the spectrum (:func:`separated_k`), because P depends only on
  span(V_k), which the spectrum fixes only where λ_k > λ_{k+1}. K-FAC's factored GEVP
  (:mod:`sstm.merge.kfac`) uses the same rule; both import it from here.

Controls (docs/method.md §10, :data:`BASES`): a seeded random metric-orthonormal basis, the eigenvectors
of F_s alone, or those of least F_u alone replace the GEVP's V. numpy/scipy only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.linalg

from sstm.errors import SSTMError

# Two eigenvalues closer than SEPARATION_RTOL·max|λ| are tied (docs/method.md §3, "Ties"). Measured on
# synthetic Fishers of 32 and 128 rows (r² = 256): the solver's rounding is ~1e-15 of λ_max and the zero
# eigenvalues of a float32-stored Fisher stay within 1e-8 of it, while the eigenvalues the rows separate
# are ≥ 3e-5·λ_max with gaps of 1e-6 and more (a smaller gap in a decaying tail moves the cut down a step).
SEPARATION_RTOL = 1e-6
_EIGH_DRIVER: str | None = None  # scipy's default; a seam for tests/test_reproducible.py, not an option


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


# `--basis`: the GEVP and the controls of docs/method.md §10; the first is the default
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


# `--projector`: the first is the default
PROJECTORS = {"fisher": _fisher_projection, "euclidean": _euclidean_projection}


def projector(g: Basis, k: int, kind: str = "fisher") -> np.ndarray:
    """P onto the span of the first k directions: V_k V_kᵀ (F_u + δI) ("fisher") or Q Qᵀ ("euclidean")."""
    return PROJECTORS[kind](g.V[:, :k], g.metric, np.eye(g.V.shape[0]))


def project(g: Basis, m: np.ndarray, k: int, kind: str = "fisher") -> np.ndarray:
    """unvec(P·vec(M)) for an r×r core matrix M (row-major vec), without forming P."""
    if not isinstance(g, Basis):  # a factored GEVP (sstm.merge.kfac.KronGevp) projects itself in O(r³)
        return g.project(m, k)
    return PROJECTORS[kind](g.V[:, :k], g.metric, m.reshape(-1)).reshape(m.shape)


@contextlib.contextmanager
def single_threaded():
    """One BLAS and one torch thread for the many small per-module problems (r²×r² GEVPs, r×r products).

    Multi-threaded OpenBLAS/OpenMP spin-wait on matrices this small: on a busy
    2-core machine a 256×256 GEVP took 1.8 s with 2 threads and 10 ms with one.
    """
    import torch
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(n)
