"""SafeMERGE (Djuhera et al. 2025, "SafeMERGE: Preserving Safety Alignment in Fine-Tuned Large Language
Models via Selective Layer-Wise Model Merging", arXiv:2503.17239; reference code aladinD/SafeMERGE),
docs/method.md §13.

Safe LoRA's gate (:mod:`sstm.merge.safe_lora`: ρ_m = cos(C·ΔW_u, ΔW_u), same alignment V, same
number and threshold modes) picks the modules where the utility update strays from the aligned
subspace; those are merged with the safety adapter, the others keep the utility update:

    ΔW_m = (1 − α)·ΔW_u + α·w·ℓ(m)·ΔW_s   if m is gated (threshold mode, the default: ρ ≤ τ = 0.35)
    ΔW_m = ΔW_u                             otherwise

(τ = 0.35 and α = 0.2 are the reference's cos_threshold and default_merge_ratio, its weights [0.8, 0.2];
the reference gates ρ < τ, the same but at equality; w = ℓ = 1 is the paper).
The reference combines the factors with PEFT's ``add_weighted_adapter`` ("linear"), which adds cross
terms B_u·A_s (PEFT issue #3004); here the combination is exact, one LoRA of rank r_u + r_s:
B = [c_u·s_u·B_u, c_s·s_s·B_s], A = [A_u; A_s] with (c_u, c_s) = (1 − α, α·w·ℓ) or (1, 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sstm.adapters import write_lora
from sstm.merge.peers import finish, merges
from sstm.merge.safe_lora import GATE, SafeLoRAConfig, gated_projection
from sstm.merge.storage import strength
from sstm.registry import Artifact, Registry, code_fingerprint


@dataclass
class SafeMergeConfig(SafeLoRAConfig):
    """`sstm merge safemerge`: Safe LoRA's gate settings (with the reference's defaults) and α."""

    METHOD = "safemerge"
    select: str = "threshold"
    threshold: float = 0.35  # the reference's cos_threshold
    alpha: float = 0.2  # the reference's default_merge_ratio


def safemerge_merge(reg: Registry, cfg: SafeMergeConfig) -> list[Artifact]:
    """One `merged` artifact per w (built or reused), rank r_u + r_s."""
    x = cfg.load(reg)
    fu, fs = x.fu, x.fs
    _, rho, gated, models = gated_projection(reg, cfg, x)

    def build_for(w: float):
        def build(out: Path) -> dict:
            B, A, diag = {}, {}, {}
            for m in fu.modules:
                c_u, c_s = (1 - cfg.alpha, cfg.alpha * x.weight(w, m)) if m in gated else (1.0, 0.0)
                B_u, B_s = fu.scale * fu.B[m].double(), fs.scale * fs.B[m].double()
                B[m] = torch.cat([c_u * B_u, c_s * B_s], dim=1)
                A[m] = torch.cat([fu.A[m].double(), fs.A[m].double()], dim=0)
                added = (torch.cat([(c_u - 1) * B_u, c_s * B_s], dim=1), A[m])
                diag[m] = {"rho": rho[m], "gated": m in gated, "strength": strength(added, fs, m)}
            write_lora(out, fu.config, A, B, fu.rank + fs.rank, x.dtype)
            doc = {"method": "safemerge", "w": w, "alpha": cfg.alpha, "gated": len(gated),
                   "alignment": "models" if models else "safety"}
            return finish(out, "lora", doc, diag, x.ell) | {"gated_modules": float(len(gated))}

        return build

    params = {**cfg.gate_params(), "alpha": cfg.alpha, **{k: a.id for k, a in models.items()}, "layer_weights": x.ell,
              "rank": fu.rank + fs.rank, "format": "lora"}
    return merges(reg, "safemerge", cfg.w, params, x.artifacts | models, code_fingerprint(__name__), build_for,
                  GATE + ("alpha",))
