"""SafeMERGE (Djuhera et al. 2025, "SafeMERGE: Preserving Safety Alignment in Fine-Tuned Large Language
Models via Selective Layer-Wise Model Merging", arXiv:2503.17239; reference code aladinD/SafeMERGE),
docs/method.md §13.

Safe LoRA's gate (:mod:`sstm.merge.methods.safe_lora`: ρ_m = cos(C·ΔW_u, ΔW_u), same alignment V, same
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

from sstm.merge.method import MergeMethod, register
from sstm.merge.methods.safe_lora import GATE, SafeLoRAConfig, alignment_doc, gated_projection, prepare
from sstm.merge.param import param
from sstm.merge.point import Built, Inputs
from sstm.merge.space import Range
from sstm.storage import strength


@dataclass
class SafeMergeConfig(SafeLoRAConfig):
    """`sstm merge safemerge`: Safe LoRA's gate settings (with the reference's defaults) and α."""

    select: str = param("threshold", "Modules gated by ρ = cos(C·ΔW_u, ΔW_u): number (the share of lowest ρ) or "
                        "threshold (ρ <= τ).", choices=("number", "threshold"))
    threshold: float = param(0.35, "Threshold mode: τ.", ge=-1, le=1)  # the reference's cos_threshold
    alpha: float = param(0.2, "Share of the safety update in the gated modules.", ge=0, le=1,
                         search=Range(0.05, 1.0))  # the reference's default_merge_ratio


def build(cfg: SafeMergeConfig, x: Inputs, point: dict) -> Built:
    """Rank r_u + r_s: B = [c_u·s_u·B_u, c_s·s_s·B_s], A = [A_u; A_s]."""
    import torch

    fu, fs, w = x.fu, x.fs, point["w"]
    _, rho, gated = gated_projection(cfg, x)
    lora, modules = {}, {}
    for m in fu.modules:
        c_u, c_s = (1 - cfg.alpha, cfg.alpha * x.weight(w, m)) if m in gated else (1.0, 0.0)
        B_u, B_s = fu.scale * fu.B[m].double(), fs.scale * fs.B[m].double()
        A = torch.cat([fu.A[m].double(), fs.A[m].double()], dim=0)
        lora[m] = (torch.cat([c_u * B_u, c_s * B_s], dim=1), A)
        added = (torch.cat([(c_u - 1) * B_u, c_s * B_s], dim=1), A)
        modules[m] = {"rho": rho[m], "gated": m in gated, "strength": strength(added, fs, m)}
    return Built(modules, lora=lora, doc={"alpha": cfg.alpha, **alignment_doc(x, gated)},
                 metrics={"gated_modules": float(len(gated))})


SAFEMERGE = register(MergeMethod(
    "safemerge", "SafeMERGE (Djuhera et al. 2025): Safe LoRA's gate; gated modules get (1−α)·ΔW_u + α·w·ΔW_s.",
    SafeMergeConfig, build, format="lora", prepare=prepare, shown=(*GATE, "alpha")))
