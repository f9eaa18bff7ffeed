"""DARE (Yu et al. 2024): drop entries of each task tensor at random (keep a share `density`, rescale by
1/density), then add them (``dare``, PEFT's ``merge_utils.dare_linear``) or merge them by TIES's sign
election (``dare_ties``, ``merge_utils.dare_ties``); weights [1, w·ℓ(m)]. The masks are seeded per module
(:mod:`sstm.merge.per_module`), so the seed is a param. Stored dense.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sstm.merge.method import MergeConfig, MergeMethod, register
from sstm.merge.param import density_param, sign_param
from sstm.merge.per_module import merge_modules
from sstm.merge.point import Built, Inputs


@dataclass
class DAREConfig(MergeConfig):
    """`sstm merge dare`."""

    SEEDED: ClassVar[bool] = True
    density: float = density_param()


@dataclass
class DARETiesConfig(DAREConfig):
    """`sstm merge dare_ties`."""

    majority_sign_method: str = sign_param()


def build_linear(cfg: DAREConfig, x: Inputs, point: dict) -> Built:
    from peft.utils import merge_utils

    return merge_modules(x, point["w"], lambda d, w: merge_utils.dare_linear(d, w, cfg.density), cfg.seed)


def build_ties(cfg: DARETiesConfig, x: Inputs, point: dict) -> Built:
    from peft.utils import merge_utils

    return merge_modules(x, point["w"], lambda d, w: merge_utils.dare_ties(d, w, cfg.density,
                                                                          cfg.majority_sign_method), cfg.seed)


DARE = register(MergeMethod("dare", "DARE linear: drop entries at random (keep density, rescale 1/density), then add "
                            "(merge_utils.dare_linear).", DAREConfig, build_linear, format="dense", stochastic=True,
                            shown=("density",)))
DARE_TIES = register(MergeMethod("dare_ties", "DARE-TIES: random drop with rescaling, then TIES sign election and "
                                 "disjoint mean (merge_utils.dare_ties).", DARETiesConfig, build_ties, format="dense",
                                 stochastic=True, shown=("density",)))
