"""Fisher merging (Matena & Raffel 2022, "Merging Models with Fisher-Weighted Averaging",
arXiv:2111.09832; reference code mmatena/model_merging, ``merging.py``), docs/method.md §13.

The merged parameters are the Fisher-weighted mean θ* = Σ_i λ_i F_i ⊙ θ_i / Σ_i λ_i F_i, per entry,
with the diagonal Fisher F_i of model i on its own data. Here θ_i = W₀ + ΔW_i, so W₀ cancels, and
λ = [1, w·ℓ(m)] (λ = [1, 1] is the paper's equal weighting):

    ΔW = (c_u F̃_u ⊙ ΔW_u + c_s F_s ⊙ ΔW_s) / (c_u F̃_u + c_s F_s),    F̃_u = max(F_u, ε)

as the reference does it: the floor ε (``fisher_floor``, 1e-6) on the first ("target") model's Fisher
only, so the denominator is positive, and with ``--normalize l2`` (its default ``normalize_fishers``)
c_i = λ_i/‖F_i‖, ‖F_i‖ the L2 norm of model i's Fisher over all merged entries, else c_i = λ_i.
F_i is the diagonal empirical Fisher of the adapted module weight (:mod:`sstm.weight_stats`). The
result is not low-rank; it is stored exactly, dense (:mod:`sstm.storage`).
"""

from __future__ import annotations

import math
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
class FisherAvgConfig(DataPassConfig):
    """`sstm merge fisher-avg`."""

    floor: float = param(1e-6, "ε: F_u ← max(F_u, ε).", gt=0, search=Range(1e-8, 1e-3, log=True))
    normalize: str = param("l2", "Weigh each Fisher by 1/‖F‖ (l2) or not (none).", choices=("l2", "none"))


def fisher_average(d_u: torch.Tensor, d_s: torch.Tensor, F_u: torch.Tensor, F_s: torch.Tensor,
                   c_u: float, c_s: float, floor: float) -> torch.Tensor:
    """(c_u F̃_u ⊙ ΔW_u + c_s F_s ⊙ ΔW_s) / (c_u F̃_u + c_s F_s), F̃_u = max(F_u, floor)."""
    f_u, f_s = c_u * F_u.clamp(min=floor), c_s * F_s
    return (f_u * d_u + f_s * d_s) / (f_u + f_s)


def build(cfg: FisherAvgConfig, x: Inputs, point: dict) -> Built:
    """The dense Fisher-weighted mean per module, from both adapters' diagonal Fishers (the data pass)."""
    import torch

    fu, fs = x.fu, x.fs
    F_u, F_s = x.data
    norm = [math.sqrt(sum(float(f.double().square().sum()) for f in F.values())) if cfg.normalize == "l2" else 1.0
            for F in (F_u, F_s)]
    if not min(norm) > 0:
        raise SSTMError("fisher-avg: a diagonal Fisher is zero everywhere (no gradient reached the modules)")
    dense, modules = {}, {}
    for m in fu.modules:
        d_u = fu.delta(m, torch.float64)
        merged = fisher_average(d_u, fs.delta(m, torch.float64), F_u[m].double(), F_s[m].double(),
                                1 / norm[0], x.weight(point["w"], m) / norm[1], cfg.floor)
        modules[m] = {"strength": strength(merged - d_u, fs, m)}
        dense[m] = merged
    return Built(modules, dense=dense, doc={"floor": cfg.floor, "normalize": cfg.normalize, "fisher_norm": norm})


FISHER_AVG = register(MergeMethod(
    "fisher-avg", "Fisher merging (Matena & Raffel 2022): per entry, the diagonal-Fisher-weighted mean of both "
    "updates (stored dense).", FisherAvgConfig, build, format="dense", data="diagonal", shown=("normalize",)))
