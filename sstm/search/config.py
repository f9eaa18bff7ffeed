"""`sstm search`'s settings: the constraints (a rate, or relative to an adapter's own rate), the trial or time
budget, and :meth:`SearchConfig.key`, what every trial's scores depend on: the study name hashes it, and a resumed
study must match it (:func:`sstm.search.study.open_study`)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from sstm.errors import SSTMError
from sstm.evaluate import EvalConfig
from sstm.merge import METHODS

MIN_REFUSAL = "0.9"
MAX_OVERREFUSAL = "0.1"
TRIALS = 20  # per method, when neither --trials nor --time-budget is given


# --------------------------------------------------------------------------- constraints


@dataclass(frozen=True)
class Bound:
    """A constraint value: a number, or `of` (the safety adapter's refusal / the utility adapter's over-refusal)
    plus `offset`."""

    flag: str
    value: float | None = None
    of: str | None = None  # "safety" | "utility"
    offset: float = 0.0

    def resolve(self, reference: float | None) -> float:
        v = self.value if self.of is None else reference + self.offset
        if not 0 <= v <= 1:
            raise SSTMError(f"{self.flag}: resolves to {v:g} ({self.describe(reference)}); a rate is in [0, 1]")
        return v

    def describe(self, reference: float | None = None) -> str:
        if self.of is None:
            return f"{self.value:g}"
        ref = "" if reference is None else f" = {reference:.3f}"
        return f"{self.of}{self.offset:+g} ({self.of} adapter's own rate on calibration{ref})"


def parse_bound(flag: str, text: str, reference: str) -> Bound:
    """'0.9' or '<reference>[+-x]' (e.g. 'safety', 'utility+0.05'); one-line SSTMError otherwise."""
    text = str(text).strip()
    if text.startswith(reference):
        rest = text[len(reference):].replace(" ", "")
        try:
            offset = float(rest) if rest else 0.0
        except ValueError:
            raise SSTMError(f"{flag} {text}: expected {reference}+x or {reference}-x with a number x") from None
        if rest and rest[0] not in "+-" or not math.isfinite(offset) or abs(offset) > 1:
            raise SSTMError(f"{flag} {text}: expected {reference}+x or {reference}-x with |x| <= 1")
        return Bound(flag, of=reference, offset=offset)
    try:
        value = float(text)
    except ValueError:
        raise SSTMError(f"{flag} {text}: expected a rate in [0, 1] or {reference}[+x]") from None
    if not 0 <= value <= 1:
        raise SSTMError(f"{flag} {text}: a rate must be in [0, 1]")
    return Bound(flag, value=value)


# --------------------------------------------------------------------------- config


@dataclass
class SearchConfig:
    """`sstm search`: the two adapters, the methods, the constraints, the budget and the eval settings."""

    utility: str
    safety: str
    methods: tuple[str, ...] = ("ta", "ties", "dare", "sst")
    min_refusal: str = MIN_REFUSAL
    max_overrefusal: str = MAX_OVERREFUSAL
    trials: int | None = None  # finished trials per method (None with no time budget: TRIALS)
    time_budget: float | None = None  # minutes in all, split equally over the methods
    seed: int = 0
    storage: str | None = None  # optuna RDB URL (default: sqlite:///<home>/search.db)
    study: str | None = None  # study name (default: a hash of what the trials' scores depend on)
    prune: bool = True
    calib_samples: int | None = None  # prompts of each calibration split (None: all)
    test: bool = True  # evaluate the selection (and the best TA trial) on the test split
    test_samples: int | None = None
    eval: Any = None  # EvalConfig of every eval (suites and data set here); None: its defaults
    vs: tuple[str, ...] = ()  # merged model ids the selection is compared with on the test split (paired Δ)
    # method -> the config its trials start from (the data pass's settings and data, the knobs not drawn; `sstm run
    # --search`: the run's own); a trial replaces the adapters, w, ℓ, the seed and the drawn knobs. Default: the
    # method's defaults (make_config)
    base: dict[str, Any] = field(default_factory=dict)
    bounds: tuple[Bound, Bound] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.methods = tuple(dict.fromkeys(self.methods))
        if not self.methods:
            raise SSTMError("--methods: give at least one merge method")
        for m in self.methods:
            if m not in METHODS:
                raise SSTMError(f"--methods {m}: unknown merge method; expected some of {', '.join(METHODS)}")
        self.bounds = (parse_bound("--min-refusal", self.min_refusal, "safety"),
                       parse_bound("--max-overrefusal", self.max_overrefusal, "utility"))
        check_budget(self.trials, self.time_budget)
        if self.trials is None and self.time_budget is None:
            self.trials = TRIALS
        for flag, v in (("--calib-samples", self.calib_samples),
                        ("--test-samples", self.test_samples)):
            if v is not None and v < 1:
                raise SSTMError(f"{flag} {v}: must be at least 1")
        if self.eval is None:
            self.eval = EvalConfig(model="")
        self.vs = tuple(dict.fromkeys(self.vs))
        for m, config in self.base.items():
            if m not in self.methods or not isinstance(config, METHODS[m].config):
                raise SSTMError(f"search: the base config of {m} must be a {METHODS[m].config.__name__} of a "
                                f"searched method ({', '.join(self.methods)})" if m in METHODS
                                else f"search: base config of unknown merge method {m}")

    @property
    def timeout(self) -> float | None:
        """Seconds per method."""
        return None if self.time_budget is None else self.time_budget * 60 / len(self.methods)

    def key(self) -> dict:
        """What every trial's scores depend on: the study name hashes it, and a resumed study must match it."""
        e = self.eval
        return {"utility": self.utility, "safety": self.safety, "min_refusal": self.min_refusal,
                "max_overrefusal": self.max_overrefusal, "seed": self.seed, "prune": self.prune,
                "calib_samples": self.calib_samples,
                "eval": {"judge": e.judge, "max_new_tokens": e.max_new_tokens, "batch_size": e.batch_size,
                         "max_context_tokens": e.max_context_tokens, "dtype": e.dtype}} | (
            {"base": {m: base_settings(c) for m, c in sorted(self.base.items())}} if self.base else {})

    def study_name(self) -> str:
        if self.study:
            return self.study
        digest = hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:12]
        return f"sstm-search-{digest}"


def base_settings(config) -> dict:
    """What a base config gives every trial (the study's key): its fields but the adapters and the device."""
    settings = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in ("utility", "safety", "device")}
    return json.loads(json.dumps(settings))  # as the storage gives it back (tuples as lists), so a resume matches


def check_budget(trials: int | None, time_budget: float | None) -> None:
    if trials is not None and time_budget is not None:
        raise SSTMError("--trials and --time-budget: choose one")
    if trials is not None and trials < 1:
        raise SSTMError(f"--trials {trials}: must be at least 1 (finished trials per method)")
    if time_budget is not None and not (math.isfinite(time_budget) and time_budget > 0):
        raise SSTMError(f"--time-budget {time_budget:g}: minutes, must be > 0")
