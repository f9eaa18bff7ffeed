"""A method parameter's search range (`sstm search`, docs/method.md): declared with the parameter.

A :class:`Range` is what optuna's ``trial.suggest_float`` / ``suggest_int`` / ``suggest_categorical``
takes, kept import-light (no optuna at import) so that the method registry stays cheap to load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """Where `sstm search` draws one parameter: [low, high] (``log``: uniform in log space; ``step``: a grid),
    or one of ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    kind: str = "float"  # float | int | categorical

    def __post_init__(self) -> None:
        if self.choices:
            object.__setattr__(self, "kind", "categorical")
        elif self.low is None or self.high is None or not self.low <= self.high:
            raise TypeError(f"Range: need low <= high, got {self.low}, {self.high}")
        if self.log and self.low is not None and self.low <= 0:
            raise TypeError("Range: a log range needs low > 0")

    def suggest(self, trial: Any, name: str) -> Any:
        """Draw the value of `name` from an optuna trial."""
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log, step=self.step)

    def clamped(self, high: float) -> "Range":
        """This range with its top cut to `high` (SST's k: at most r², known once the adapters are loaded)."""
        if self.kind == "categorical" or self.high <= high:
            return self
        return Range(min(self.low, high), high, log=self.log, step=self.step, kind=self.kind)

    def to_json(self) -> dict:
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        return {"kind": self.kind, "low": self.low, "high": self.high, "log": self.log,
                **({"step": self.step} if self.step else {})}


def int_range(low: int, high: int, log: bool = False, step: int | None = None) -> Range:
    return Range(low, high, log=log, step=step, kind="int")
