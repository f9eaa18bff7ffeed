"""A merge computed module by module from the two task tensors ΔW_u, ΔW_s with weights [1, w·ℓ(m)], as PEFT's
``merge_utils`` functions take them (task arithmetic's exact LoRA aside, the result is dense).

A stochastic function (DARE's masks) draws from torch's global RNG, seeded per module from (seed, module
name) (:func:`sstm.merge.param.module_seed`), so the result does not depend on module order.
"""

from __future__ import annotations

import warnings
from typing import Callable

from sstm.merge.param import module_seed
from sstm.merge.point import Built, Inputs
from sstm.storage import strength


def merge_modules(x: Inputs, w: float, fn: Callable, seed: int | None = None) -> Built:
    """Built with ΔW_m = fn([ΔW_u, ΔW_s], tensor([1, w·ℓ(m)])) per module m; diagnostics ‖ΔW‖_F and strength."""
    import torch

    dense, modules = {}, {}
    for m in x.fu.modules:
        deltas = [x.fu.delta(m, x.dtype), x.fs.delta(m, x.dtype)]
        weights = torch.tensor([1.0, x.weight(w, m)], dtype=x.dtype)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The density .* no pruning")
            if seed is not None:
                torch.manual_seed(module_seed(seed, m))
            merged = fn(deltas, weights)
        dense[m] = merged
        modules[m] = {"norm": float(merged.norm()), "strength": strength(merged - deltas[0], x.fs, m)}
    return Built(modules, dense=dense)
