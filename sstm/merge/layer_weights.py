"""Layer weights ℓ: one per module type, multiplying the safety weight w of every merge (docs/method.md §11).

Every method merges the task tensors of module m with weights [1, w·ℓ(m)]: SST-Merge scales its
projected safety update by w·ℓ(m), task arithmetic, TIES, DARE and the others scale ΔW_s by it. The
default policy is :data:`DEFAULT_LAYER_WEIGHTS` for every method; ``uniform`` (ℓ = 1 everywhere)
turns layer weighting off; a JSON/YAML file {module_type: weight} updates the defaults key by key.
A merge records the weights it used for the module types present (:func:`used_weights`) as its
``layer_weights`` param, so its id says what was applied.

Import-light (no torch): the CLI reads it.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import MappingProxyType

from sstm.adapters import module_type
from sstm.errors import SSTMError, read_yaml

DEFAULT_LAYER_WEIGHTS = MappingProxyType({
    "lm_head": 5.0,
    "q_proj": 2.0, "k_proj": 2.0, "v_proj": 2.0, "o_proj": 2.0,
    "gate_proj": 1.5, "up_proj": 1.5, "down_proj": 1.5,
    "default": 1.0,  # any other module type
})
# The module-type groups `sstm search` weighs as one (a mapping {module_type: ℓ} over them is a valid
# `layer_weights`): the output head, the attention projections, the MLP projections.
GROUPS = MappingProxyType({
    "lm_head": ("lm_head",),
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
})


def group_weights(weights: dict[str, float]) -> dict[str, float]:
    """{module_type: ℓ} from {group: ℓ} (:data:`GROUPS`), e.g. {"attention": 2} -> {"q_proj": 2, ..., "o_proj": 2}."""
    unknown = sorted(set(weights) - set(GROUPS))
    if unknown:
        raise SSTMError(f"layer-weight group {unknown[0]}: expected one of {', '.join(GROUPS)}")
    return {t: float(v) for g, v in weights.items() for t in GROUPS[g]}


# Named policies (`--layer-weights NAME`); None (no option) is "default", for every method.
POLICIES = MappingProxyType({"default": DEFAULT_LAYER_WEIGHTS, "uniform": MappingProxyType({"default": 1.0})})


def load_layer_weights(spec: str | dict | None) -> dict[str, float]:
    """The weights {module_type: ℓ, "default": ℓ of any other type} of a policy name (None: "default"),
    or DEFAULT_LAYER_WEIGHTS updated by a mapping or a JSON/YAML file {module_type: weight}."""
    if spec is None or (isinstance(spec, str) and spec in POLICIES):
        return dict(POLICIES[spec or "default"])
    if isinstance(spec, dict):
        given, where = spec, "layer weights"
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise SSTMError(f"--layer-weights {spec}: no such file (or a policy: {', '.join(POLICIES)})")
        given = read_yaml(path, "--layer-weights", "JSON/YAML")
        where = f"--layer-weights {spec}"
    if not isinstance(given, dict):
        raise SSTMError(f"{where}: expected a mapping module_type -> weight (e.g. q_proj: 2.0)")
    out = dict(DEFAULT_LAYER_WEIGHTS)
    unknown = [str(k) for k in given if str(k) not in DEFAULT_LAYER_WEIGHTS]
    if unknown:  # a typo would otherwise fall back to the default weight silently
        raise SSTMError(f"{where}: unknown module type {unknown[0]!r} (known: {', '.join(DEFAULT_LAYER_WEIGHTS)}; "
                        "'default' weighs any other type)")
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise SSTMError(f"{where}: weight of {key} must be a number >= 0, got {value!r}")
        out[str(key)] = float(value)
    return out


def used_weights(weights: dict[str, float], modules) -> dict[str, float]:
    """ℓ of each module type present in `modules` (names like ``model.layers.3.self_attn.q_proj``)."""
    types = sorted({module_type(m) for m in modules})
    return {t: weights.get(t, weights["default"]) for t in types}


def policy_name(used: dict) -> str:
    """"uniform", "default" or "custom": the policy a merge's recorded `layer_weights` param corresponds to."""
    if all(v == 1.0 for v in used.values()):
        return "uniform"
    if all(v == DEFAULT_LAYER_WEIGHTS.get(t, DEFAULT_LAYER_WEIGHTS["default"]) for t, v in used.items()):
        return "default"
    return "custom"
