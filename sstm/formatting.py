"""How values are shown: parameters, the safety weight, layer weights, judges, differences and p-values.

Text only (no statistics, no registry reads), shared by the comparison (:mod:`sstm.compare`: row names and
protocols), its output (:mod:`sstm.render`), the export and the merge commands' tables.
"""

from __future__ import annotations

import hashlib

from sstm.merge.layer_weights import policy_name
from sstm.registry import canonical_json


def num(v) -> str:
    """A parameter value as shown: floats in %g (0.75, 1), the rest as text."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def w_text(w: float | None, calibration: dict | None = None) -> str | None:
    """The safety weight as shown: "0.75"; a calibrated merge's (`calibration`: the record :mod:`sstm.calibrate`
    stores in its params) says so, "2 (calibrated)" or, when no w up to the search's cap reached the target,
    "1 (calibrated, target not reached)"."""
    if w is None or calibration is None:
        return None if w is None else num(w)
    return f"{num(w)} (calibrated{'' if calibration['reached'] else ', target not reached'})"


def layer_weights_text(params: dict) -> str | None:
    """A merge's layer weights ℓ as shown (None: none recorded): the policy, "default" or "uniform", or for
    other weights "custom:" and the first 8 hex digits of the SHA-256 of the recorded weights, so two
    different custom ℓ are told apart."""
    if "layer_weights" not in params:
        return None
    used = params["layer_weights"]
    name = policy_name(used)
    return name if name != "custom" else f"{name}:{hashlib.sha256(canonical_json(used).encode()).hexdigest()[:8]}"


def judge_text(name: str | None, sha256: str | None) -> str | None:
    """A judge as shown: its name and the first 8 hex digits of its phrase list's SHA-256."""
    return None if name is None else f"{name}#{(sha256 or '?')[:8]}"


def signed(x: float) -> str:
    """A difference in percentage points with its sign: +3.1, −12.5."""
    return f"{100 * x:+.1f}".replace("-", "−")


def p_text(p: float) -> str:
    """A p-value as shown after "p": "=0.04", "<0.001"."""
    return "<0.001" if p < 0.001 else f"={p:.2g}"
