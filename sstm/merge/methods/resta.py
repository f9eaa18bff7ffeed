"""RESTA (Bhardwaj et al. 2024, "Language Models are Homer Simpson! Safety Re-Alignment of Fine-tuned
Language Models through Task Arithmetic", arXiv:2402.11746; reference code declare-lab/resta),
docs/method.md §13: add a safety vector to the fine-tuned model, after DARE on the fine-tuned delta.

Per target module m, with weights [1, w·ℓ(m)] (γ = w·ℓ is the paper's safety-vector weight):

    ΔW = DARE(ΔW_u) + γ·ΔW_s,    DARE(X) = (M ⊙ X)/p,  M_ij ~ Bernoulli(p)

with density p = ``--density`` (p = 1: plain RESTA, i.e. task arithmetic). Unlike ``dare``, the
safety vector is added whole: only the fine-tuned delta is sparsified (the paper's RESTA_d). The mask
is PEFT's ``merge_utils.prune(..., "random", rescale=True)``, seeded per module like every stochastic
method (:mod:`sstm.merge.per_module`). The result is not low-rank; it is stored dense.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sstm.merge.method import MergeConfig, MergeMethod, register
from sstm.merge.param import density_param
from sstm.merge.per_module import merge_modules
from sstm.merge.point import Built, Inputs


@dataclass
class RESTAConfig(MergeConfig):
    """`sstm merge resta`."""

    SEEDED: ClassVar[bool] = True
    density: float = density_param()


def resta(deltas, weights, density: float):
    """DARE on the utility update only (keep density, rescale 1/density), then add w·ΔW_s whole."""
    from peft.utils import merge_utils

    return weights[0] * merge_utils.prune(deltas[0], density, "random", rescale=True) + weights[1] * deltas[1]


def build(cfg: RESTAConfig, x: Inputs, point: dict) -> Built:
    return merge_modules(x, point["w"], lambda d, w: resta(d, w, cfg.density), cfg.seed)


RESTA = register(MergeMethod("resta", "RESTA: DARE on the utility update only (keep density, rescale 1/density), then "
                             "add w·ΔW_s whole.", RESTAConfig, build, format="dense", stochastic=True,
                             shown=("density",)))
