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
from typing import TYPE_CHECKING

from sstm.errors import SSTMError
from sstm.merge.method import DataPassConfig, MergeMethod, register
from sstm.merge.param import param
from sstm.merge.point import Built, Inputs
from sstm.merge.space import Range
from sstm.storage import strength

if TYPE_CHECKING:
    import torch


@dataclass
class RegMeanConfig(DataPassConfig):
    """`sstm merge regmean`."""

    alpha: float = param(0.1, "Off-diagonal shrink: G ← α·G + (1−α)·diag(G).", ge=0, le=1,
                         search=Range(0.0, 1.0))  # the paper's α


def shrink(G: torch.Tensor, alpha: float) -> torch.Tensor:
    """G̃ = α·G + (1 − α)·diag(G)."""
    import torch

    return alpha * G + (1 - alpha) * torch.diag(torch.diagonal(G))


def regmean_factors(A_u, A_s, G_u, G_s, c: float, where: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(A_u G_u M, c·A_s G_s M) with M = (G_u + c·G_s)⁻¹, by one solve (float64)."""
    import torch

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


def build(cfg: RegMeanConfig, x: Inputs, point: dict) -> Built:
    """One LoRA of rank r_u + r_s per w, from both adapters' Gram matrices (the data pass)."""
    import torch

    fu, fs = x.fu, x.fs
    grams = x.data
    lora, modules = {}, {}
    for m in fu.modules:
        G_u, G_s = (shrink(g[m].double(), cfg.alpha) for g in grams)
        A_u, A_s = regmean_factors(fu.A[m].double(), fs.A[m].double(), G_u, G_s, x.weight(point["w"], m), m)
        B_u, B_s = fu.scale * fu.B[m].double(), fs.scale * fs.B[m].double()
        lora[m] = (torch.cat([B_u, B_s], dim=1), torch.cat([A_u, A_s], dim=0))
        added = (torch.cat([B_u, B_s, -B_u], dim=1), torch.cat([A_u, A_s, fu.A[m].double()], dim=0))
        modules[m] = {"strength": strength(added, fs, m)}
    return Built(modules, lora=lora, doc={"alpha": cfg.alpha})


REGMEAN = register(MergeMethod(
    "regmean", "RegMean (Jin et al. 2023): per module, the least-squares merge on both adapters' input Gram matrices.",
    RegMeanConfig, build, format="lora", data="gram", shown=("alpha",)))
