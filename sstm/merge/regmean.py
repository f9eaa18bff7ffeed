"""RegMean (Jin et al. 2023, "Dataless Knowledge Fusion by Merging Weights of Language Models",
arXiv:2212.09849; reference code bloomberg/dataless-model-merging, as in yule-BUAA/MergeLM's
``merging_with_regmean_weights``), docs/method.md §13.

For a linear module y = W x, the merge minimizes Σ_i λ_i ‖X_i Wᵀ − X_i W_iᵀ‖²_F over the inputs X_i
of each model on its own data: W = (Σ_i λ_i W_i G_i)(Σ_i λ_i G_i)⁻¹ with G_i = X_iᵀ X_i. With
W_i = W₀ + ΔW_i, W₀ cancels, and with λ = [1, w·ℓ(m)] (λ = [1, 1] is the paper):

    ΔW = (ΔW_u G̃_u + w·ℓ·ΔW_s G̃_s)(G̃_u + w·ℓ·G̃_s)⁻¹,    G̃ = α·G + (1 − α)·diag(G)

where α shrinks the off-diagonal entries (the paper's α, the reference's reduce_non_diagonal_ratio;
default 0.1) and G is each adapter's input Gram matrix on its own data (:mod:`sstm.weight_stats`, a
per-token mean). With M = (G̃_u + w·ℓ·G̃_s)⁻¹ this is exactly one LoRA of rank r_u + r_s:

    B = [s_u·B_u, s_s·B_s],    A = [A_u G̃_u M;  w·ℓ·A_s G̃_s M]

(each block of A solved as M·G̃·Aᵀ, n×r; M is never formed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sstm.adapters import write_lora
from sstm.errors import SSTMError
from sstm.merge.peers import DataConfig, finish, merges
from sstm.merge.storage import strength
from sstm.registry import Artifact, Registry, code_fingerprint


@dataclass
class RegMeanConfig(DataConfig):
    """`sstm merge regmean`."""

    METHOD = "regmean"
    alpha: float = 0.1  # G̃ = α·G + (1 − α)·diag(G)


def shrink(G: torch.Tensor, alpha: float) -> torch.Tensor:
    """G̃ = α·G + (1 − α)·diag(G)."""
    return alpha * G + (1 - alpha) * torch.diag(torch.diagonal(G))


def regmean_factors(A_u, A_s, G_u, G_s, c: float, where: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(A_u G_u M, c·A_s G_s M) with M = (G_u + c·G_s)⁻¹, by one solve (float64)."""
    S = G_u + c * G_s
    rhs = torch.cat([G_u @ A_u.T, c * (G_s @ A_s.T)], dim=1)  # n×(r_u + r_s)
    try:
        X = torch.linalg.solve(S, rhs)
    except RuntimeError:  # torch.linalg.LinAlgError
        X = None
    if X is None or not torch.isfinite(X).all():
        raise SSTMError(f"RegMean: G_u + w·ℓ·G_s of module {where} is singular (an input dimension never active? "
                        "use --alpha < 1 or more rows)")
    return X[:, : A_u.shape[0]].T, X[:, A_u.shape[0]:].T


def regmean_merge(reg: Registry, cfg: RegMeanConfig) -> list[Artifact]:
    """One `merged` artifact per w (built or reused); the two Gram statistics built or reused once."""
    x = cfg.load(reg)
    fu, fs = x.fu, x.fs
    stats, grams = cfg.stats(reg, "gram")

    def build_for(w: float):
        def build(out: Path) -> dict:
            B, A, diag = {}, {}, {}
            for m in fu.modules:
                G_u, G_s = (shrink(g[m].double(), cfg.alpha) for g in grams())
                A_u, A_s = regmean_factors(fu.A[m].double(), fs.A[m].double(), G_u, G_s, x.weight(w, m), m)
                B_u, B_s = fu.scale * fu.B[m].double(), fs.scale * fs.B[m].double()
                B[m], A[m] = torch.cat([B_u, B_s], dim=1), torch.cat([A_u, A_s], dim=0)
                added = (torch.cat([B_u, B_s, -B_u], dim=1), torch.cat([A_u, A_s, fu.A[m].double()], dim=0))
                diag[m] = {"strength": strength(added, fs, m)}
            write_lora(out, fu.config, A, B, fu.rank + fs.rank, x.dtype)
            return finish(out, "lora", {"method": "regmean", "w": w, "alpha": cfg.alpha}, diag, x.ell)

        return build

    params = {"alpha": cfg.alpha, **cfg.data_params(stats), "layer_weights": x.ell, "rank": fu.rank + fs.rank,
              "format": "lora"}
    inputs = x.artifacts | {"gram_utility": stats[0], "gram_safety": stats[1]}
    return merges(reg, "regmean", cfg.w, params, inputs, code_fingerprint(__name__), build_for, ("alpha",), cfg.seed)
