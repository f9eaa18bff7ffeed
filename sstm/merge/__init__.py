"""Merging a utility and a safety LoRA adapter: SST-Merge (`sst.py`) and the baselines (`baselines.py`).

Baseline methods are plain functions over one module's task tensors, registered
by name with :func:`merge_method` (as mergekit's ``easy_define`` does); their
tunable parameters are read from the signature, so adding a method is one
function and the CLI (``sstm merge --help``) lists it with its options::

    @merge_method("ties")
    def ties(deltas, weights, density: float = 0.5, majority_sign_method: str = "total"):
        ...

The first two parameters are always the task tensors [ΔW_u, ΔW_s] and their
weights [1, w]; every further parameter becomes an artifact param and a CLI
option. ``stochastic=True`` adds a ``seed`` param (the torch RNG is seeded per
module before the call). This module stays import-light (no torch) so that the
CLI starts fast; SST-Merge is not in the registry because it needs Fishers, not
just the task tensors.

Stages for the pipeline: ``sst.SSTConfig`` / ``sst.sst_merge`` and
``baselines.BaselineConfig`` / ``baselines.baseline_merge``; each returns one
`merged` artifact per sweep point.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from sstm.errors import SSTMError


@dataclass(frozen=True)
class MergeMethod:
    """A registered per-module merge: ``fn(deltas, weights, **params) -> merged ΔW``."""

    name: str
    fn: Callable
    params: dict  # name -> default, read from the signature after (deltas, weights)
    stochastic: bool
    help: str

    def __call__(self, deltas: list, weights: Any, **params) -> Any:
        return self.fn(deltas, weights, **params)


METHODS: dict[str, MergeMethod] = {}


def merge_method(name: str, *, stochastic: bool = False) -> Callable[[Callable], Callable]:
    """Register `fn(deltas, weights, **params)` as the merge method `name`."""

    def deco(fn: Callable) -> Callable:
        sig = list(inspect.signature(fn).parameters.values())
        if [p.name for p in sig[:2]] != ["deltas", "weights"]:
            raise TypeError(f"merge method {name}: the first parameters must be (deltas, weights)")
        params = {}
        for p in sig[2:]:
            if p.default is inspect.Parameter.empty:
                raise TypeError(f"merge method {name}: parameter {p.name} needs a default")
            params[p.name] = p.default
        doc = inspect.getdoc(fn) or name
        METHODS[name] = MergeMethod(name, fn, params, stochastic, doc.splitlines()[0])
        return fn

    return deco


def check_weights(ws) -> list[float]:
    """The safety weights w of a sweep (a number or a list), each >= 0, duplicates dropped."""
    ws = [float(w) for w in ([ws] if isinstance(ws, (int, float)) else ws)]
    if not ws:
        raise SSTMError("--w: give at least one weight")
    for w in ws:
        if not w >= 0:
            raise SSTMError(f"--w {w:g}: the safety weight must be >= 0")
    return list(dict.fromkeys(ws))


from sstm.merge import baselines as _baselines  # noqa: E402,F401  (registers the baseline methods)
