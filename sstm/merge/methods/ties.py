"""TIES (Yadav et al. 2023): keep the top-density magnitudes of each task tensor, elect a sign per entry,
average the agreeing entries; PEFT's ``merge_utils.ties`` on [ΔW_u, ΔW_s] with weights [1, w·ℓ(m)].
The result is not low-rank; it is stored dense (:mod:`sstm.storage`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sstm.merge.method import MergeConfig, MergeMethod, register
from sstm.merge.param import density_param, sign_param
from sstm.merge.per_module import merge_modules
from sstm.merge.point import Built, Inputs


@dataclass
class TIESConfig(MergeConfig):
    """`sstm merge ties`."""

    density: float = density_param()
    majority_sign_method: str = sign_param()


def build(cfg: TIESConfig, x: Inputs, point: dict) -> Built:
    from peft.utils import merge_utils

    return merge_modules(x, point["w"], lambda d, w: merge_utils.ties(d, w, cfg.density, cfg.majority_sign_method))


TIES = register(MergeMethod("ties", "TIES: keep the top-density magnitudes, elect a sign, average the agreeing "
                            "entries (peft merge_utils.ties).", TIESConfig, build, format="dense",
                            shown=("density",)))
