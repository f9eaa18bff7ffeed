"""Task arithmetic: ΔW = ΔW_u + w·ℓ(m)·ΔW_s per module m, stored exactly as one LoRA of rank r_u + r_s:

    B = [s_u·B_u, w·ℓ·s_s·B_s],   A = [A_u; A_s]

(PEFT's ``merge_utils.task_arithmetic`` of the dense updates, without forming them). Not
``add_weighted_adapter``: it combines A and B separately, which adds cross terms B_j·A_i (PEFT #3004).
"""

from __future__ import annotations

from dataclasses import dataclass

from sstm.merge.method import MergeConfig, MergeMethod, register
from sstm.merge.point import Built, Inputs
from sstm.storage import lowrank_norm, strength


@dataclass
class TAConfig(MergeConfig):
    """`sstm merge ta`: no parameter besides w and ℓ."""


def build(cfg: TAConfig, x: Inputs, point: dict) -> Built:
    import torch

    lora, modules = {}, {}
    for m in x.fu.modules:
        B_u, A_u = x.fu.scale * x.fu.B[m].to(x.dtype), x.fu.A[m].to(x.dtype)
        B_s, A_s = x.weight(point["w"], m) * x.fs.scale * x.fs.B[m].to(x.dtype), x.fs.A[m].to(x.dtype)
        lora[m] = (torch.cat([B_u, B_s], dim=1), torch.cat([A_u, A_s], dim=0))
        modules[m] = {"norm": lowrank_norm(*lora[m]), "strength": strength((B_s, A_s), x.fs, m)}
    return Built(modules, lora=lora)


TA = register(MergeMethod("ta", "Task arithmetic: ΔW = ΔW_u + w·ΔW_s (exact, a LoRA of rank r_u + r_s).", TAConfig,
                          build, format="lora"))
