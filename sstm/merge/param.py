"""A method parameter, declared once on its config field: default, help, bounds, choices and search range.

A method's config is a dataclass (:class:`sstm.merge.method.MergeConfig`); each of its fields made
with :func:`param` carries a :class:`Param` in its metadata, from which the CLI generates the
method's options (``sstm merge|calibrate NAME``), the config checks its values, and ``sstm search``
reads the search range (:class:`sstm.merge.space.Range`). Import-light: the CLI reads it at start-up.
"""

from __future__ import annotations

import builtins
import hashlib
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from sstm.errors import SSTMError
from sstm.merge.space import Range

PARAM = "sstm.param"  # the dataclass field metadata key


@dataclass(frozen=True)
class Param:
    """One method parameter. `name` is its config field's (filled in by :func:`params_of`)."""

    help: str
    gt: float | None = None  # value > gt
    ge: float | None = None  # value >= ge
    le: float | None = None  # value <= le
    sweep: bool = False  # a comma-separated list on the command line, a list in the config
    name: str = ""
    type: type = float
    default: Any = None
    choices: tuple = ()
    search: Range | None = None  # where `sstm search` draws it; None: not searched

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def bounds(self) -> str:
        """The allowed range: "in (0, 1]", "> 0", ">= 1"."""
        lo = self.gt if self.gt is not None else self.ge
        if lo is not None and self.le is not None:
            return f"in {'(' if self.gt is not None else '['}{lo:g}, {self.le:g}]"
        return f"> {lo:g}" if self.gt is not None else f">= {lo:g}" if lo is not None else f"<= {self.le:g}"

    def check(self, value: Any) -> Any:
        """`value` typed like the parameter (so density=1 and density=1.0 are the same artifact) and checked;
        a sweep parameter gives a list (duplicates dropped)."""
        if self.sweep:
            values = [self._check_one(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
            if not values:
                raise SSTMError(f"{self.flag}: give at least one value")
            return list(dict.fromkeys(values))
        return self._check_one(value)

    def _check_one(self, value: Any) -> Any:
        if value is None:
            return None
        if self.type in (int, float) and isinstance(value, bool):
            raise SSTMError(f"{self.flag} {value}: expected a {self.type.__name__}")
        try:
            v = self.type(value)
        except (TypeError, ValueError, OverflowError):
            raise SSTMError(f"{self.flag} {value}: expected a {self.type.__name__}") from None
        if self.type is int and isinstance(value, float) and value != v:
            raise SSTMError(f"{self.flag} {value}: expected an integer")
        if self.type is float and not math.isfinite(v):
            raise SSTMError(f"{self.flag} {value}: expected a finite number")
        if self.choices and v not in self.choices:
            names = [str(c) for c in self.choices]
            raise SSTMError(f"{self.flag} {v}: expected {', '.join(names[:-1])} or {names[-1]}" if len(names) > 1
                            else f"{self.flag} {v}: expected {names[0]}")
        lo_ok = (self.gt is None or v > self.gt) and (self.ge is None or v >= self.ge)
        if not (lo_ok and (self.le is None or v <= self.le)):
            raise SSTMError(f"{self.flag} {v:g}: must be {self.bounds}")
        return v


def param(default: Any, help: str, *, type: builtins.type | None = None, gt: float | None = None,
          ge: float | None = None, le: float | None = None, choices: tuple = (), sweep: bool = False,
          search: Range | None = None) -> Any:
    """A config field declaring its :class:`Param` (type: the default's, unless given)."""
    p = Param(help, gt=gt, ge=ge, le=le, sweep=sweep, type=type or builtins.type(default), default=default,
              choices=tuple(choices), search=search)
    return field(default=default, metadata={PARAM: p})


def params_of(config: builtins.type) -> dict[str, Param]:
    """The parameters a config dataclass declares, by field name, in field order."""
    return {f.name: replace(f.metadata[PARAM], name=f.name) for f in fields(config) if PARAM in f.metadata}


# Parameters several methods share: declared once.
W_SEARCH = Range(0.125, 8.0, log=True)  # every method's safety weight (docs/method.md §10: calibrated w ∈ [1, 8])


def w_param(default: float = 1.0) -> Any:
    return param(default, "Safety weight (>= 0); a comma list runs a sweep.", ge=0, sweep=True, search=W_SEARCH)


def density_param(default: float = 0.5) -> Any:
    return param(default, "Share of entries kept, in (0, 1].", gt=0, le=1, search=Range(0.1, 1.0))


def sign_param() -> Any:
    return param("total", "Sign election: total (sum of values) or frequency (count).",
                 choices=("total", "frequency"), search=Range(choices=("total", "frequency")))


def layer_weights_param() -> Any:
    """Every method's: module m is merged with weights [1, w·ℓ(m)] (sstm.merge.layer_weights); `sstm search`
    searches them as a mapping over sstm.merge.layer_weights.GROUPS, not through this parameter."""
    return param(None, "Layer weights ℓ: w·ℓ(module type) weighs the safety update. default (every method: lm_head 5, "
                 "q/k/v/o 2, gate/up/down 1.5), uniform (all 1), or a JSON/YAML file {module_type: weight} "
                 "over the defaults (docs/method.md §11).", type=str)


def check_weights(ws) -> list[float]:
    """The safety weights w of a sweep (a number or a list), each a finite number >= 0, duplicates dropped."""
    ws = [ws] if isinstance(ws, (int, float)) else list(ws)
    out = []
    for w in ws:
        if isinstance(w, bool):
            raise SSTMError(f"--w {w}: expected a number")
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise SSTMError(f"--w {w}: expected a number") from None
        if not (math.isfinite(w) and w >= 0):
            raise SSTMError(f"--w {w:g}: the safety weight must be >= 0 and finite")
        out.append(w)
    if not out:
        raise SSTMError("--w: give at least one weight")
    return list(dict.fromkeys(out))


def module_seed(seed: int, module: str) -> int:
    """The seed of module `module`'s random draws: a hash of (seed, module name), so a result does not depend
    on the order modules are visited in."""
    return int(hashlib.sha256(f"{seed}/{module}".encode()).hexdigest()[:15], 16)
