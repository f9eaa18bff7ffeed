"""Kronecker-factored Fishers and their GEVP (`--structure kfac`, docs/method.md §12, docs/scale.md).

The full Fisher of a module is r²×r² (row-major vec of the core gradient G_i, r×r;
see :mod:`sstm.fisher`). K-FAC (Martens & Grosse 2015) keeps one r×r factor per side
instead. Here both come from the same per-sample core gradients as the full Fisher:

    F_B = (1/N) Σ_i G_i G_iᵀ  (Q_B side),   F_A = (1/N) Σ_i G_iᵀ G_i  (Q_A side),
    F ≈ F_B ⊗ F_A / c,   c = tr F_B = tr F_A = (1/N) Σ_i ‖G_i‖²_F = tr F.

F_B and F_A are the partial traces of F, so the approximation is exact whenever F is a
Kronecker product (F = B⊗A gives F_B = tr(A)·B, F_A = tr(B)·A, c = tr(A)tr(B)), and it
keeps tr F. For one token and G_i = b aᵀ these are M&G's E[bbᵀ], E[aaᵀ] weighted by
‖a‖², ‖b‖².

GEVP. Write F_u = X⊗Y with X = U_B/√c_u, Y = U_A/√c_u (tr X = tr Y = √c_u). F_u + δI is
not a Kronecker product; M&G's π-damping replaces it with (X + π√δ·I)⊗(Y + √δ/π·I),
π = √(tr X / tr Y) = 1 here, i.e. each factor damped by √δ (δ = damping·tr F_u/r², as
for the full Fisher):

    (X + √δI)⊗(Y + √δI) = F_u + δI + √δ(X⊗I + I⊗Y)  ⪰ F_u + δI.

With S_B x = μ (X + √δI) x and S_A y = ν (Y + √δI) y (two r×r `eigh`), the pairs
(x_p⊗y_q, μ_p ν_q / c_s) solve the r²×r² GEVP of (F_s, damped metric), with the same
normalisation Vᵀ·metric·V = I. The top k are the k largest products, cut down to a gap
of the product spectrum by the same rule as the full GEVP (:func:`sstm.merge.gevp.separated_k`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.linalg

from sstm.errors import SSTMError
from sstm.merge.gevp import SEPARATION_RTOL, separated_k


@dataclass(frozen=True)
class Kron:
    """F = (B ⊗ A)/c in row-major vec, c = tr B (= tr A); stored as the stack [B, A] (2×r×r).

    Acts like the r²×r² matrix under ``@`` with vectors ((B⊗A)·vec(M) = vec(B M Aᵀ)),
    so quadratic forms vᵀFv cost O(r³) and the dense matrix is never formed.
    """

    B: np.ndarray
    A: np.ndarray

    __array_ufunc__ = None  # numpy defers `v @ kron` to __rmatmul__

    @classmethod
    def of(cls, stacked: np.ndarray) -> "Kron":
        if stacked.ndim != 3 or stacked.shape[0] != 2 or stacked.shape[1] != stacked.shape[2]:
            raise SSTMError(f"a K-FAC Fisher is stored as 2×r×r factors, got shape {tuple(stacked.shape)}")
        return cls(np.asarray(stacked[0], np.float64), np.asarray(stacked[1], np.float64))

    @property
    def r(self) -> int:
        return self.B.shape[0]

    @property
    def c(self) -> float:
        return float(np.trace(self.B))

    @property
    def inv_c(self) -> float:
        return 1.0 / self.c if self.c > 0 else 0.0

    def dense(self) -> np.ndarray:
        """The r²×r² matrix (tests and small r only)."""
        return np.kron(self.B, self.A) * self.inv_c

    def __matmul__(self, v: np.ndarray) -> np.ndarray:
        M = np.asarray(v).reshape(self.r, self.r)
        return (self.B @ M @ self.A.T).reshape(-1) * self.inv_c

    __rmatmul__ = __matmul__  # B, A symmetric: vᵀF = (Fv)ᵀ


@dataclass(frozen=True)
class KronGevp:
    """F_s v = λ·(X + √δI)⊗(Y + √δI)·v solved factor by factor; eigenpairs sorted by decreasing λ."""

    mu: np.ndarray  # (r,) Q_B-side eigenvalues
    X: np.ndarray  # (r, r) their eigenvectors, Xᵀ(X_u + √δI)X = I
    nu: np.ndarray  # (r,) Q_A-side eigenvalues
    Y: np.ndarray  # (r, r)
    metric_B: np.ndarray  # X_u + √δI
    metric_A: np.ndarray  # Y_u + √δI
    scale: float  # 1/c_s
    delta: float  # δ of the full GEVP; each factor is damped by √δ

    @cached_property
    def order(self) -> np.ndarray:
        """Flat indices p·r + q of the products μ_p ν_q, largest first (stable for ties)."""
        return np.argsort(-self.products, kind="stable")

    @cached_property
    def products(self) -> np.ndarray:
        return np.outer(self.mu, self.nu).reshape(-1) * self.scale

    @cached_property
    def lam(self) -> np.ndarray:
        """All r² eigenvalues μ_p ν_q / c_s, decreasing."""
        return self.products[self.order]

    @property
    def tie_tol(self) -> float:
        return SEPARATION_RTOL * float(np.abs(self.lam).max(initial=0.0))

    def separated_k(self, k: int) -> int:
        return separated_k(self.lam, k, self.tie_tol)

    def project(self, m: np.ndarray, k: int) -> np.ndarray:
        """unvec(P·vec(M)), P = V_k V_kᵀ·metric, V's columns vec(x_p y_qᵀ): X·(C∘mask)·Yᵀ with
        C = Xᵀ (metric_B M metric_A) Y, mask = the top-k pairs (p, q). O(r³)."""
        C = self.X.T @ (self.metric_B @ m @ self.metric_A) @ self.Y
        mask = np.zeros(C.size)
        mask[self.order[:k]] = 1.0
        return self.X @ (C * mask.reshape(C.shape)) @ self.Y.T


def damped_factors(F_u: Kron, damping: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(X + √δI, Y + √δI, δ): π-damped factors of F_u = X⊗Y (π = 1 as tr X = tr Y), δ = damping·tr F_u/r²."""
    r, c = F_u.r, F_u.c
    delta = damping * c / r**2 if c > 0 else damping
    root = 1.0 / np.sqrt(c) if c > 0 else 0.0
    eye = np.sqrt(delta) * np.eye(r)
    return F_u.B * root + eye, F_u.A * root + eye, delta


def solve_kron_gevp(F_u: Kron, F_s: Kron, damping: float, where: str = "") -> KronGevp:
    """The GEVP of (F_s, π-damped F_u) as two r×r problems (module docstring)."""
    if F_u.r != F_s.r:
        raise SSTMError(f"the K-FAC Fishers{' of ' + where if where else ''} have ranks {F_u.r} and {F_s.r}")
    mB, mA, delta = damped_factors(F_u, damping)
    try:
        mu, X = scipy.linalg.eigh(F_s.B, mB)
        nu, Y = scipy.linalg.eigh(F_s.A, mA)
    except (np.linalg.LinAlgError, ValueError) as e:
        raise SSTMError(f"GEVP failed{' for ' + where if where else ''}: {e}") from None
    return KronGevp(mu, X, nu, Y, mB, mA, F_s.inv_c, delta)
