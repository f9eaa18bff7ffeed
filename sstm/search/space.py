"""The space a study of `sstm search` draws from: each method's declared knob ranges plus one layer-weight factor
per module group, and a trial's drawn values as the method's config arguments."""

from __future__ import annotations

from sstm.merge import METHODS
from sstm.merge.layer_weights import GROUPS, group_weights
from sstm.merge.space import Range

GROUP_RANGE = Range(0.25, 4.0, log=True)  # per-group layer-weight factor ℓ_g


def method_space(method) -> dict[str, Range]:
    """The ranges a method's knobs are drawn from, w included: what its parameters declare
    (``MergeMethod.space``, from each ``Param.search``; sstm/merge/param.py)."""
    return dict(method.space)


def spaces(methods) -> dict[str, dict[str, Range]]:
    """Method name -> its full space: the method's knobs plus one factor ``lw_<group>`` per layer group
    (sstm.merge.layer_weights.GROUPS: lm_head, attention, mlp)."""
    groups = {f"lw_{g}": GROUP_RANGE for g in GROUPS}
    return {m: method_space(METHODS[m]) | groups for m in methods}


def merge_settings(method: str, params: dict) -> dict:
    """A trial's drawn values as make_config arguments: w, ℓ per module type from the group factors, and the
    method's params (a sweep parameter such as SST's k as a one-value list)."""
    groups = {k[3:]: float(v) for k, v in params.items() if k.startswith("lw_")}
    declared = METHODS[method].params
    knobs = {k: ([v] if declared[k].sweep else v) for k, v in params.items() if k in declared}
    return {"w": [float(params["w"])], "layer_weights": group_weights(groups) if groups else None, **knobs}
