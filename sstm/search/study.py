"""The optuna studies of `sstm search`: one trial (:func:`objective`: draw, merge, read with pruning, set the
constraints c = (r_min − r, o − o_max)), one study per method in RDB storage (created, or resumed when made with the
same settings), every finished trial as a :class:`TrialRecord`, and the selection (:func:`select`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from sstm.errors import SSTMError
from sstm.merge.space import Range
from sstm.search.scoring import Scorer, read
from sstm.stats import pareto_front
from sstm.ui import info


# --------------------------------------------------------------------------- one trial


def objective(trial, method: str, space: dict[str, Range], scorer: Scorer, targets: tuple[float, float],
              prune: bool = True) -> float:
    """One trial: draw, merge, read the refusal blocks (pruned as soon as r >= r_min is excluded), the
    over-refusal blocks (pruned once o <= o_max is excluded), then ROUGE-L on calibration: the value.
    User attrs: the scores, prompts evaluated, the merge id; constraints c = (r_min − r, o − o_max)."""
    import optuna

    r_min, o_max = targets
    params = {name: rng.suggest(trial, name) for name, rng in space.items()}
    model = scorer.merge(method, params)
    trial.set_user_attr("model", model)
    r, out = read(scorer.refusal(model), (lambda lo, hi: hi < r_min) if prune else None)
    trial.set_user_attr("refusal", r.value)
    trial.set_user_attr("n_refusal", r.n)
    if out:
        set_constraints(trial, r_min - r.value, 0.0)
        trial.set_user_attr("prompts", r.n)
        raise optuna.TrialPruned(f"refusal {r.value:.3f} on {r.n} prompts: cannot reach {r_min:g}")
    o, out = read(scorer.overrefusal(model), (lambda lo, hi: lo > o_max) if prune else None)
    trial.set_user_attr("overrefusal", o.value)
    trial.set_user_attr("n_overrefusal", o.n)
    if out:
        set_constraints(trial, r_min - r.value, o.value - o_max)
        trial.set_user_attr("prompts", r.n + o.n)
        raise optuna.TrialPruned(f"over-refusal {o.value:.3f} on {o.n} prompts: cannot stay under {o_max:g}")
    u = scorer.rouge(model)
    trial.set_user_attr("rouge_l", u.value)
    trial.set_user_attr("n_rouge_l", u.n)
    set_constraints(trial, r_min - r.value, o.value - o_max)
    trial.set_user_attr("prompts", r.n + o.n + u.n)
    return u.value


def set_constraints(trial, refusal: float, overrefusal: float) -> None:
    """c = (r_min − r, o − o_max), read by optuna's constrained TPE (feasible iff every c <= 0)."""
    trial.set_constraint("refusal", refusal)
    trial.set_constraint("overrefusal", overrefusal)


def constraints(trial) -> tuple[float, float]:
    c = trial.constraints
    return (c.get("refusal", 1.0), c.get("overrefusal", 1.0))


# --------------------------------------------------------------------------- the studies


@dataclass(frozen=True)
class TrialRecord:
    method: str
    number: int
    state: str  # complete | pruned
    params: dict
    refusal: float | None
    overrefusal: float | None
    rouge_l: float | None
    prompts: int
    model: str
    constraints: tuple[float, float]
    attrs: dict = field(default_factory=dict, repr=False)

    @property
    def feasible(self) -> bool:
        return self.state == "complete" and all(c <= 0 for c in self.constraints)

    @property
    def violation(self) -> float:
        return sum(max(c, 0.0) for c in self.constraints)

    def brief(self) -> dict:
        return {"method": self.method, "trial": self.number, "state": self.state, "params": self.params,
                "refusal": self.refusal, "overrefusal": self.overrefusal, "rouge_l": self.rouge_l,
                "prompts": self.prompts, "model": self.model}


@dataclass
class SearchResult:
    study: str
    targets: tuple[float, float]
    trials: list[TrialRecord]
    selected: TrialRecord | None
    feasible: bool  # the selection meets both constraints
    seconds: float
    pareto: list[bool] = field(default_factory=list)  # per complete trial, in `complete` order

    @property
    def complete(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state == "complete"]

    @property
    def pruned(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state == "pruned"]

    def best(self, method: str) -> TrialRecord | None:
        return select([t for t in self.complete if t.method == method])


def select(complete: list[TrialRecord]) -> TrialRecord | None:
    """Highest ROUGE-L among feasible trials; none feasible: the smallest total violation (then ROUGE-L)."""
    if not complete:
        return None
    feasible = [t for t in complete if t.feasible]
    if feasible:
        return max(feasible, key=lambda t: (t.rouge_l, -t.number))
    return min(complete, key=lambda t: (t.violation, -t.rouge_l, t.number))


def _record(method: str, t) -> TrialRecord:
    from optuna.trial import TrialState

    a = t.user_attrs
    return TrialRecord(method, t.number, "complete" if t.state == TrialState.COMPLETE else "pruned", dict(t.params),
                       a.get("refusal"), a.get("overrefusal"), a.get("rouge_l"), int(a.get("prompts", 0)),
                       a.get("model", ""), tuple(constraints(t)), dict(a))


CLOSEST = "closest_of_pruned"  # user attr of the trial that finish_closest ran in full


def finish_closest(studies: dict, spaces_: dict[str, dict[str, Range]], scorer: Scorer,
                   targets: tuple[float, float], pruned: list[TrialRecord]) -> TrialRecord:
    """Every trial was pruned, so none has all three scores to select on: the pruned trial closest to the
    constraints on what it read (its total violation; a split it did not read counts 0, so this is a lower
    bound) is run once more in full, without pruning, as one extra trial of its study (its params enqueued;
    its merge and evals are cache hits where already built). It is then a complete, infeasible trial and
    :func:`select` picks it as the closest; the output says it was the closest of pruned trials."""
    closest = min(pruned, key=lambda t: (t.violation, t.method, t.number))
    info(f"search: every trial was pruned; running the closest ({closest.method} trial {closest.number}, "
         f"violation ≥ {closest.violation:.3f} on what it read) in full")
    study = studies[closest.method]
    study.enqueue_trial(closest.params, user_attrs={CLOSEST: closest.number})
    space = spaces_[closest.method]
    study.optimize(lambda t: objective(t, closest.method, space, scorer, targets, prune=False), n_trials=1,
                   gc_after_trial=False)
    return _record(closest.method, study.trials[-1])


def open_storage(home: Path, storage: str | None):
    """optuna's RDB storage at `storage` (default: ``sqlite:///<home>/search.db``), opened (and its schema
    made) before any work, so a bad URL is one line at once."""
    import optuna

    url = storage or f"sqlite:///{Path(home).resolve() / 'search.db'}"
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as e:  # noqa: BLE001 -- sqlalchemy's errors for a bad URL, a missing driver, an unreachable server
        raise SSTMError(f"--storage {url}: {str(e).splitlines()[0] or type(e).__name__}") from None


def open_study(name: str, storage: str, seed: int, key: dict):
    """Create or load the study `name`; a loaded study must have been made with the same settings (`key`).
    Its TPE sampler (constrained: each trial sets its constraints) is seeded by (seed, trials already in the
    study), so a resumed study draws new points, not its first ones again."""
    import numpy as np
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    stored = study.user_attrs.get("sstm")
    if stored is None:
        study.set_user_attr("sstm", key)
    elif stored != key:
        diff = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
        raise SSTMError(f"study {name} was made with other settings ({', '.join(diff)}); use another --study")
    have = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=int(np.random.SeedSequence([seed, have]).generate_state(1)[0]))
    return study


def run_studies(name: str, storage: str, spaces_: dict[str, dict[str, Range]], scorer: Scorer,
                targets: tuple[float, float], trials: int | None, timeout: float | None = None, seed: int = 0,
                prune: bool = True, key: dict | None = None) -> SearchResult:
    """One study ``name:method`` per method, each run to `trials` finished (complete or pruned) trials or for
    `timeout` seconds; returns every finished trial and the selection (:func:`select`)."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done_states = (TrialState.COMPLETE, TrialState.PRUNED)
    t0, records, studies = time.time(), [], {}
    for method, space in spaces_.items():
        study = studies[method] = open_study(f"{name}:{method}", storage, seed, (key or {}) | {"method": method})
        have = len(study.get_trials(deepcopy=False, states=done_states))
        left = None if trials is None else trials - have
        if left is None or left > 0:
            info(f"search {method}: {have} trials done, running " + (f"{left} more" if left else f"{timeout:.0f} s"))
            study.optimize(lambda t, method=method, space=space: objective(t, method, space, scorer, targets, prune),
                           n_trials=left, timeout=timeout, gc_after_trial=False,
                           callbacks=[MaxTrialsCallback(trials, states=done_states)] if trials else None)
        records += [_record(method, t) for t in study.get_trials(deepcopy=False, states=done_states)]
    if records and not any(t.state == "complete" for t in records):
        records.append(finish_closest(studies, spaces_, scorer, targets, records))
    sel = select([t for t in records if t.state == "complete"])
    result = SearchResult(name, targets, records, sel, sel is not None and sel.feasible, time.time() - t0)
    result.pareto = pareto_front([[t.rouge_l, t.refusal, -t.overrefusal] for t in result.complete])
    return result
