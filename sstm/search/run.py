"""One `sstm search`: resolve the constraints, run (or continue) the studies, register the selected merge with its
search record, and evaluate it once on the test split with paired Δ (:mod:`sstm.paired`) against the best
task-arithmetic trial and each ``--vs`` model; :func:`replay_selection` is its `sstm verify --rebuild`. The
selection's artifact id takes this module's code fingerprint (its import closure: the whole engine, not
:mod:`sstm.search.report`)."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sstm.compare import CompareConfig, compare
from sstm.errors import SSTMError
from sstm.evaluate import evaluate
from sstm.merge import get_method
from sstm.paired import paired_delta
from sstm.registry import RebuildMismatch, artifact_id, code_fingerprint
from sstm.registry.files import link_or_copy
from sstm.search.config import SearchConfig
from sstm.search.scoring import RegistryScorer, Scorer, whole
from sstm.search.space import spaces
from sstm.search.study import SearchResult, TrialRecord, open_storage, run_studies
from sstm.ui import info

SEARCH = "search"  # the param of a selected merge that records its search


@dataclass
class Outcome:
    result: SearchResult
    constraints: dict  # resolved: min_refusal, max_overrefusal, and the references used
    artifact: Any = None  # the registered selection (a `merged` artifact)
    test: dict = field(default_factory=dict)  # test-split metrics: selected, best_ta, vs: {id: metrics | label}
    deltas: dict = field(default_factory=dict)  # metric -> (Δ, lo, hi, n, p) selection − best TA, test split
    vs_deltas: dict = field(default_factory=dict)  # --vs id -> {metric -> (Δ, lo, hi, n, p)} selection − it
    ta: TrialRecord | None = None


def resolve_targets(scorer: Scorer, cfg: SearchConfig) -> dict:
    """The constraints as numbers; `safety` / `utility` read from the adapters' own calibration evals."""
    rmin, omax = cfg.bounds
    ref_r = whole(scorer.refusal(cfg.safety)).value if rmin.of else None
    ref_o = whole(scorer.overrefusal(cfg.utility)).value if omax.of else None
    out = {"min_refusal": rmin.resolve(ref_r), "max_overrefusal": omax.resolve(ref_o)}
    if ref_r is not None:
        out["safety_refusal"] = ref_r
    if ref_o is not None:
        out["utility_overrefusal"] = ref_o
    return out


def register_selection(reg, cfg: SearchConfig, result: SearchResult, resolved: dict):
    """The selected trial's merge registered again with the search record (param ``search``) and input
    ``searched`` (the trial's merge): `sstm show` tells how it was chosen."""
    sel = result.selected
    record = {"study": result.study, "constraints": resolved, "feasible": result.feasible,
              "selected": sel.brief(), "methods": list(cfg.methods), "prune": cfg.prune,
              "trials": len(result.trials), "pruned": len(result.pruned),
              "path": [t.brief() for t in result.trials]}
    return _register(reg, reg.get(sel.model), record)


def _register(reg, point, record: dict, fresh: bool = False):
    """The `merged` artifact of a selection: params = the point's + {search: record}, inputs = the point's +
    {searched: the point}; its files are the point's (hard links), or with `fresh` (a replay) the point built
    again by its method from the recorded params (:meth:`sstm.merge.method.MergeMethod.config_from`)."""
    sel = record["selected"]
    params = {k: v for k, v in point.params.items() if k != SEARCH}
    inputs = {k: v for k, v in point.inputs.items() if k != "searched"}

    def build(out: Path) -> dict:
        if fresh:
            method = get_method(params["method"])
            (planned,) = method.plan(reg, method.config_from(params, inputs))
            ids = {role: getattr(a, "id", a) for role, a in planned.inputs.items()}
            rebuilt = artifact_id("merged", planned.params, ids, planned.code)
            if rebuilt != point.id:  # the point's code or library versions changed since
                raise RebuildMismatch("merged", rebuilt)
            metrics = planned.build(out)
        else:
            shutil.copytree(point.path, out, copy_function=link_or_copy, dirs_exist_ok=True)
            metrics = point.metrics
        return dict(metrics) | {"search_refusal": sel["refusal"], "search_overrefusal": sel["overrefusal"],
                                "search_rouge_l": sel["rouge_l"]}

    return reg.get_or_build("merged", params | {SEARCH: record}, inputs | {"searched": point.id},
                            code_fingerprint(__name__), build, label=f"{point.label} searched".strip())


def replay_selection(reg, art) -> None:
    """`sstm verify --rebuild` of a searched merge: its point (the `searched` input: method, params and inputs)
    built again by its method, then the selection's registration around it; inside
    :func:`sstm.registry.rebuilding` the selection's get_or_build builds into a temporary directory.

    The optuna study itself is not replayed: which points TPE draws depends on the trials already in the
    storage, and with shared storage on process timing, so a replay checks the chosen merge, not the choice."""
    point = reg.get(art.inputs["searched"], kind="merged", check=False)  # its files are the selection's (links)
    _register(reg, point, art.params[SEARCH], fresh=True)


TEST_SUITES = ("jailbreak", "repliqa", "overrefusal")
SHORT = ("jailbreak", "rouge_l", "overrefusal")


def _test(reg, cfg: SearchConfig, selected, ta_model: str | None, vs: list, out: Outcome) -> None:
    """The selection, the best TA trial and the --vs models on the same test rows (the selection's evals once;
    the others' cache hits when already evaluated with these settings); paired Δ selection − each."""
    ev = replace(cfg.eval, suites=TEST_SUITES, samples=cfg.test_samples, data={})
    others = ([reg.get(ta_model)] if ta_model is not None else []) + [v for v in vs if v.id != selected.id]
    ids = [e.id for m in [selected, *others] for e in evaluate(reg, replace(ev, model=m))]
    rows = {r.model_id: r for r in compare(reg, CompareConfig(evals=tuple(dict.fromkeys(ids))))}
    sel_row = rows[selected.id]
    out.test["selected"] = {s: sel_row.value(s) for s in SHORT}

    def deltas(ref) -> dict:
        found = {s: paired_delta(sel_row, ref, s, CompareConfig()) for s in SHORT}
        return {s: asdict(d) for s, d in found.items() if d is not None}

    if ta_model is not None and ta_model in rows:
        out.test["best_ta"] = {s: rows[ta_model].value(s) for s in SHORT}
        out.deltas = deltas(rows[ta_model])
    for v in others[1 if ta_model is not None else 0:]:
        if v.id in rows:
            out.test.setdefault("vs", {})[v.id] = {s: rows[v.id].value(s) for s in SHORT} | {"label": v.label}
            out.vs_deltas[v.id] = deltas(rows[v.id])


def _vs(reg, ref: str):
    try:
        return reg.get(ref, kind="merged")
    except SSTMError as e:
        raise SSTMError(f"--vs {ref}: {e}") from None


def search(reg, cfg: SearchConfig) -> Outcome:
    """Resolve the constraints, run (or continue) the studies, register the selection, test it once."""
    cfg = replace(cfg, utility=reg.get(cfg.utility, kind="adapter").id, safety=reg.get(cfg.safety, kind="adapter").id)
    storage = open_storage(reg.home, cfg.storage)
    vs = [_vs(reg, v) for v in cfg.vs]  # a bad --vs is one line before any work
    scorer = RegistryScorer(reg, cfg)
    resolved = resolve_targets(scorer, cfg)
    info(f"constraints: refusal >= {resolved['min_refusal']:.3f} ({cfg.bounds[0].describe(resolved.get('safety_refusal'))}), "
         f"over-refusal <= {resolved['max_overrefusal']:.3f} "
         f"({cfg.bounds[1].describe(resolved.get('utility_overrefusal'))})")
    targets = (resolved["min_refusal"], resolved["max_overrefusal"])
    result = run_studies(cfg.study_name(), storage, spaces(cfg.methods), scorer,
                         targets, cfg.trials, cfg.timeout, cfg.seed, cfg.prune, cfg.key())
    out = Outcome(result, resolved)
    if result.selected is None:
        return out
    out.artifact = register_selection(reg, cfg, result, resolved)
    if "ta" in cfg.methods:
        out.ta = result.best("ta")
    if cfg.test:
        ta_model = out.ta.model if out.ta is not None and out.ta.model != result.selected.model else None
        _test(reg, cfg, out.artifact, ta_model, vs, out)
    return out

