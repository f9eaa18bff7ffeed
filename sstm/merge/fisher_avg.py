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
result is not low-rank; it is stored exactly, dense (:mod:`sstm.merge.storage`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from sstm.errors import SSTMError
from sstm.merge.peers import DataConfig, finish, merges
from sstm.merge.storage import strength, write_dense
from sstm.registry import Artifact, Registry, code_fingerprint


@dataclass
class FisherAvgConfig(DataConfig):
    """`sstm merge fisher-avg`."""

    METHOD = "fisher-avg"
    floor: float = 1e-6  # ε on F_u
    normalize: str = "l2"  # c_i = λ_i/‖F_i‖ ("l2") or λ_i ("none")


def fisher_average(d_u: torch.Tensor, d_s: torch.Tensor, F_u: torch.Tensor, F_s: torch.Tensor,
                   c_u: float, c_s: float, floor: float) -> torch.Tensor:
    """(c_u F̃_u ⊙ ΔW_u + c_s F_s ⊙ ΔW_s) / (c_u F̃_u + c_s F_s), F̃_u = max(F_u, floor)."""
    f_u, f_s = c_u * F_u.clamp(min=floor), c_s * F_s
    return (f_u * d_u + f_s * d_s) / (f_u + f_s)


def fisher_avg_merge(reg: Registry, cfg: FisherAvgConfig) -> list[Artifact]:
    """One dense `merged` artifact per w (built or reused); the two diagonal Fishers built or reused once."""
    x = cfg.load(reg)
    fu, fs = x.fu, x.fs
    stats, fishers = cfg.stats(reg, "diagonal")

    def build_for(w: float):
        def build(out: Path) -> dict:
            F_u, F_s = fishers()
            norm = [math.sqrt(sum(float(f.double().square().sum()) for f in F.values())) if cfg.normalize == "l2"
                    else 1.0 for F in (F_u, F_s)]
            if not min(norm) > 0:
                raise SSTMError("fisher-avg: a diagonal Fisher is zero everywhere (no gradient reached the modules)")
            deltas, diag = {}, {}
            for m in fu.modules:
                d_u = fu.delta(m, torch.float64)
                merged = fisher_average(d_u, fs.delta(m, torch.float64), F_u[m].double(), F_s[m].double(),
                                        1 / norm[0], x.weight(w, m) / norm[1], cfg.floor)
                diag[m] = {"strength": strength(merged - d_u, fs, m)}
                deltas[m] = merged.to(x.dtype)
            write_dense(out, deltas, x.dtype)
            doc = {"method": "fisher-avg", "w": w, "floor": cfg.floor, "normalize": cfg.normalize, "fisher_norm": norm}
            return finish(out, "dense", doc, diag, x.ell)

        return build

    params = {"floor": cfg.floor, "normalize": cfg.normalize, **cfg.data_params(stats), "layer_weights": x.ell,
              "format": "dense"}
    inputs = x.artifacts | {"fisher_utility": stats[0], "fisher_safety": stats[1]}
    return merges(reg, "fisher-avg", cfg.w, params, inputs, code_fingerprint(__name__), build_for, ("normalize",),
                  cfg.seed)
