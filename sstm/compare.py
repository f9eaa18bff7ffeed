"""`sstm compare`: one row per evaluated model, every metric with a 95 % interval.

Reads the registry only; builds nothing. For every `eval` artifact (one per
(model, suite), inputs ``model``/``base``/``data``) it reads the eval record
(:mod:`sstm.evaluate.record`: status and per-sample scores) and groups them by the
evaluated model (a ``base``, an ``adapter`` or a ``merged`` artifact). When several
evals exist for the same (model, suite) -- e.g. different sample counts -- the newest
is used (the newest with status "ok" when there is one, so an "unavailable" run
never hides a result) and the others are listed as ``superseded``.

One table holds evals of one protocol: per suite the same dataset, the same n and the
same judge; otherwise :func:`compare` refuses (``--mixed`` allows it). The metrics are
those the suites declare (:mod:`sstm.evaluate.suites`); intervals and the Pareto front are
computed in :mod:`sstm.stats`, paired differences and matched safety in :mod:`sstm.paired`
(docs/method.md, "Statistics"):

* with ``vs`` (a model id), every row gets each metric's paired difference against that
  model on the same prompts (samples matched by their ``id``, :func:`sstm.paired.paired_delta`);
* a row is Pareto-optimal when no other row shown is at least as good on every
  objective of ``PARETO`` that some row has (jailbreak refusal ↑, ROUGE-L ↑,
  over-refusal ↓) and better on one; rows missing one of them are never optimal;
* the rows of one merge setting that differ only in w are a sweep (:meth:`Row.sweep`), which
  :func:`sstm.paired.matched_safety` reads at the weakest w that meets the safety target;
* with ``average`` (`sstm run --seeds`), the models of one setting trained with different
  seeds are one row: each metric's mean over the seeds and its across-seed spread.

Output (table, JSON, CSV) is :mod:`sstm.render`, the plot :mod:`sstm.plot`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from statistics import fmean, stdev
from typing import Iterable, Sequence

from sstm.errors import SSTMError
from sstm.evaluate import record
from sstm.evaluate.suites import SUITES, Metric, all_metrics
from sstm.formatting import judge_text, layer_weights_text, num, w_text
from sstm.merge import METHODS
from sstm.merge.layer_weights import policy_name
from sstm.paired import Delta, paired_delta
from sstm.registry import Artifact, Registry
from sstm.stats import N_BOOT, SEED, interval, pareto_front
from sstm.ui import warn

PARETO_X, PARETO_Y = "rouge_l", "jailbreak"  # the plane of the plot
PARETO = ("jailbreak", "rouge_l", "overrefusal")  # the front's objectives (directions: the suites' metrics)
CALIBRATION = "calibration"  # the param of a calibrated merge (sstm.calibrate); its inputs add these roles:
CALIBRATION_INPUTS = ("calibrated", "calibration_data")
WHERE_KEYS = ("method", "kind", "role", "k", "w", "samples", "density", "seed", "layer_weights", "model", "base",
              "label", "code")
EVAL_KEYS = ("n", "judge")  # --where keys that select evals (n: rows scored; judge: name), not models


@dataclass
class CompareConfig:
    metric: str = "rouge_l"  # sort key: short or full metric name
    where: tuple[str, ...] = ()  # "key=value" filters, all must hold
    base: str | None = None  # only models on this base (id or prefix)
    evals: tuple[str, ...] = ()  # only these eval artifacts (full ids), e.g. those of one `sstm run`
    vs: str | None = None  # reference model (id or prefix): paired differences against it
    mixed: bool = False  # allow evals of different data, n or judge in one table
    # groups of model ids, one model per seed (`sstm run --seeds`), each shown as one row: the mean and spread
    average: tuple[tuple[str, ...], ...] = ()
    seeds: tuple[int, ...] = ()  # the seed of each position in a group of `average`
    target_refusal: float = 0.90  # matched safety: jailbreak refusal at least this ...
    max_overrefusal: float = 0.10  # ... with over-refusal at most this
    n_boot: int = N_BOOT
    seed: int = SEED

    def __post_init__(self) -> None:
        for flag, v in (("--target-refusal", self.target_refusal), ("--max-overrefusal", self.max_overrefusal)):
            if not 0 <= v <= 1:
                raise SSTMError(f"{flag} {v:g}: a rate between 0 and 1")


@dataclass
class MetricValue:
    name: str  # full registered name, e.g. "repliqa.rouge_l"
    status: str  # "ok" | "unavailable" (absent from Row.metrics when missing)
    value: float | None = None  # mean of per-sample scores (or the registered value if no samples)
    lo: float | None = None
    hi: float | None = None
    n: int = 0  # samples behind value/lo/hi
    registered: float | None = None  # value stored in the registry by the evaluator
    reason: str | None = None  # why unavailable
    interval: str | None = None  # "wilson" | "bootstrap" (None: no interval)
    scores: dict | None = field(default=None, repr=False)  # sample id -> score (None: samples carry no id)
    spread: float | None = None  # over seeds: the sample standard deviation of the per-seed values
    per_seed: list[float] = field(default_factory=list)  # over seeds: the value of each seed


@dataclass
class EvalRef:
    suite: str
    eval_id: str
    data_id: str | None
    samples: int | None  # eval param "samples"
    created: str
    superseded: list[str] = field(default_factory=list)  # older eval ids for this (model, suite)
    status: str = "ok"
    n: int | None = None  # rows scored (metrics.json "n")
    judge: str | None = None  # judge name (judged suites)
    judge_sha256: str | None = None

    def protocol(self) -> dict:
        """What must agree between evals of one suite in one table."""
        return {"data": self.data_id and self.data_id[:12], "n": self.n,
                "judge": judge_text(self.judge, self.judge_sha256)}


@dataclass
class Row:
    model_id: str
    kind: str  # base | adapter | merged
    method: str  # base | utility | safety | sst | ta | ties | dare | dare_ties
    label: str  # the artifact's
    base_id: str | None
    code: str  # code fingerprint of the model artifact
    role: str | None = None
    k: int | None = None
    w: float | None = None
    samples: int | None = None  # Fisher samples (SST)
    density: float | None = None
    seed: int | None = None
    layer_weights: str | None = None  # merges: the policy of their ℓ, "default", "uniform" or "custom"
    strength: float | None = None  # merges: median over modules of ‖ΔW − ΔW_u‖_F / ‖ΔW_s‖_F (docs/method.md §11)
    params: dict = field(default_factory=dict)  # the model artifact's params
    inputs: dict = field(default_factory=dict)  # the model artifact's inputs (role -> id)
    evals: dict[str, EvalRef] = field(default_factory=dict)  # suite -> eval used
    metrics: dict[str, MetricValue] = field(default_factory=dict)  # short name -> value
    pareto: bool = False
    reference: bool = False  # the model of `vs`
    seeds: list[int] = field(default_factory=list)  # a row averaged over seeds: the seeds ...
    members: list[str] = field(default_factory=list)  # ... and the model of each
    deltas: dict[str, Delta] = field(default_factory=dict)  # short name -> difference to the reference
    name: str = ""  # as shown in the table: the method and the settings that tell its rows apart (name_rows)

    def value(self, short: str) -> float | None:
        m = self.metrics.get(short)
        return m.value if m is not None and m.status == "ok" else None

    @property
    def calibration(self) -> dict | None:
        """A calibrated merge's calibration record (param ``calibration``, :mod:`sstm.calibrate`: the probes'
        ``path``, whether w ``reached`` the target); None for every other row."""
        return self.params.get(CALIBRATION)

    def w_text(self) -> str | None:
        """w as :func:`sstm.formatting.w_text` shows it: "0.75", or "2 (calibrated)" for a calibrated merge."""
        return w_text(self.w, self.calibration)

    def sweep(self) -> tuple[str, dict, dict]:
        """What the rows of one w sweep share: the setting without w, the params but w and the inputs (a calibrated
        merge's calibration record and calibration inputs left out, so it joins the sweep it was calibrated on)."""
        rest = {k: v for k, v in self.params.items() if k not in ("w", CALIBRATION)}
        inputs = {k: v for k, v in self.inputs.items() if k not in CALIBRATION_INPUTS}
        return self.setting(w=False), rest, inputs

    def setting(self, w: bool = True) -> str:
        """The method and its settings, e.g. "sst k=128 w=0.75" (without w: the sweep it belongs to), a calibrated
        merge's w as :meth:`w_text` writes it, layer weights other than the default policy as
        :func:`~sstm.formatting.layer_weights_text` writes them ("ℓ=uniform", "ℓ=custom:1a2b3c4d"), for every
        method."""
        ell = layer_weights_text(self.params)
        items = (("k", self.k), ("w", self.w_text() if w else None), ("d", self.density),
                 ("ℓ", None if ell == "default" else ell))
        method = METHODS.get(self.method)
        words = method.qualifiers(self.params) if method is not None and self.kind == "merged" else []
        return " ".join([self.method, *words] + [f"{key}={num(v)}" for key, v in items if v is not None])


# --------------------------------------------------------------------------- reading


def find_metric(name: str) -> Metric:
    """Resolve a short name (rouge_l), a full name (repliqa.rouge_l) or a suite name (repliqa: its main metric)."""
    key = name.strip().lower()
    for m in all_metrics():
        if key in (m.short, m.name):
            return m
    if key in SUITES:
        return SUITES[key].metrics[0]
    raise SSTMError(f"--metric {name}: unknown; use {', '.join(s.metrics[0].short for s in SUITES.values())}")


def parse_where(items: Iterable[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not key or not value:
            raise SSTMError(f"--where {item}: expected key=value, e.g. method=sst")
        out.append((key, value))
    return out


def _scores(samples: list[dict], metric: Metric, ev: Artifact) -> tuple[list[float], list]:
    """The `score` and `id` of every sample (of the metric's subset, e.g. answerable ones, when it has one)."""
    scores, ids = [], []
    for i, r in enumerate(samples, 1):
        if metric.subset is not None:
            key, want = metric.subset
            if key not in r:
                return [], []  # samples do not say which subset they belong to
            if r[key] != want:
                continue
        s = r.get("score")
        if s is None:
            continue
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise SSTMError(f"eval {ev.short}: {record.SAMPLES_FILE} sample {i}: score {s!r} is not a finite number")
        if metric.rate and s not in (0, 1):
            raise SSTMError(f"eval {ev.short}: {record.SAMPLES_FILE} sample {i}: score {s!r} of the rate "
                            f"{metric.name} is not 0 or 1")
        scores.append(float(s))
        ids.append(r.get("id"))
    return scores, ids


def _suite_metrics(ev: Artifact, summary: record.Summary, n_boot: int, seed: int) -> dict[str, MetricValue]:
    """Every metric of this eval's suite, with intervals from its per-sample scores."""
    suite = SUITES.get(summary.suite)
    samples = record.read_samples(ev) if suite is not None and summary.status == "ok" else []
    out = {}
    for m in suite.metrics if suite is not None else ():
        registered = ev.metrics.get(m.name)
        if summary.status != "ok":
            out[m.short] = MetricValue(m.name, "unavailable", registered=registered,
                                       reason=summary.reason or f"status {summary.status}")
            continue
        scores, ids = _scores(samples, m, ev)
        if scores:
            mean, lo, hi = interval(scores, m.rate, n_boot, seed)
            if registered is not None and abs(registered - mean) > 1e-6:
                warn(f"eval {ev.short}: registered {m.name}={registered:.6g} differs from the mean of "
                     f"its per-sample scores {mean:.6g}; showing the latter")
            by_id = dict(zip(ids, scores)) if None not in ids and len(set(ids)) == len(ids) else None
            out[m.short] = MetricValue(m.name, "ok", mean, lo, hi, len(scores), registered,
                                       interval=None if lo is None else ("wilson" if m.rate else "bootstrap"),
                                       scores=by_id)
        elif registered is not None:
            out[m.short] = MetricValue(m.name, "ok", registered, registered=registered)
    return out  # a metric with neither samples nor a registered value is absent ("-")


def _model_row(reg: Registry, model: Artifact) -> Row:
    p = model.params
    if model.kind == "base":
        method = "base"
    elif model.kind == "adapter":
        method = p.get("role") or "adapter"
    else:
        method = p.get("method") or model.kind
    samples = p.get("samples") if model.kind == "merged" else None
    if samples is None and model.kind == "merged":  # fall back to the Fisher inputs' sample count
        counts = {reg.get(i).params.get("samples") for r, i in model.inputs.items() if r.startswith("fisher")}
        counts.discard(None)
        samples = counts.pop() if len(counts) == 1 else None
    return Row(
        model_id=model.id,
        kind=model.kind,
        method=str(method),
        label=model.label,
        base_id=model.id if model.kind == "base" else model.inputs.get("base"),
        code=model.code,
        role=p.get("role"),
        k=p.get("k"),
        w=p.get("w"),
        samples=samples,
        density=p.get("density"),
        seed=p.get("seed") if model.kind == "merged" else None,
        layer_weights=policy_name(p["layer_weights"]) if "layer_weights" in p else None,
        strength=model.metrics.get("strength_median"),
        params=p,
        inputs=dict(model.inputs),
    )


def _equal(have, want: str) -> bool:
    try:
        return math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(have).lower() == want.lower()


def _matches(row: Row, key: str, want: str) -> bool:
    if key in ("model", "base", "code"):
        have = {"model": row.model_id, "base": row.base_id, "code": row.code}[key]
        return have is not None and have.startswith(want.lower())
    have = getattr(row, key) if key in WHERE_KEYS else row.params.get(key)
    return have is not None and _equal(have, want)


def _eval_matches(ev: Artifact, summary: record.Summary, key: str, want: str) -> bool:
    """An eval filter holds for evals that have the attribute (n: ok evals; judge: judged suites)."""
    have = summary.n if key == "n" else ev.params.get("judge")
    return have is None or _equal(have, want)


def _newest(evals: list[Artifact], summaries: dict[str, record.Summary]) -> Artifact:
    """The newest eval with status ok (an 'unavailable' one never hides a real result), else the newest."""
    ok = [e for e in evals if summaries[e.id].status == "ok"]
    return (ok or evals)[-1]


def protocol(rows: Sequence[Row]) -> dict[str, dict]:
    """Per suite: the data, n and judge of the rows' ok evals -- one value each, or the sorted list when mixed."""
    out: dict[str, dict] = {}
    for suite in sorted({s for r in rows for s in r.evals}):
        refs = [r.evals[suite].protocol() for r in rows if suite in r.evals and r.evals[suite].status == "ok"]
        if refs:
            seen = {k: sorted({p[k] for p in refs}, key=str) for k in ("data", "n", "judge")}
            out[suite] = {k: v[0] if len(v) == 1 else v for k, v in seen.items()}
    return out


def check_protocol(rows: Sequence[Row]) -> None:
    """One line naming the first difference when the ok evals of one suite differ in data, n or judge."""
    for suite, p in protocol(rows).items():
        for key, seen in p.items():
            if isinstance(seen, list):
                hint = f", or narrow with --where {key}={str(seen[0]).partition('#')[0]}" if key in EVAL_KEYS else ""
                raise SSTMError(f"compare: the {suite} evals differ in {key} ({', '.join(map(str, seen))}); add "
                                f"--mixed to show them in one table{hint}")


def calibration_probes(reg: Registry) -> set[str]:
    """The evals of calibration searches (on the calibration split; `sstm show` of a calibrated merge lists
    them): left out of the comparison, which reports the test split, unless named in `evals`."""
    calib_data = {d.id for d in reg.list("dataset") if d.label.endswith("/calib")}  # also `sstm search`'s trials
    return {step["eval"] for m in reg.list("merged") if CALIBRATION in m.params
            for step in m.params[CALIBRATION]["path"]} | {e.id for e in reg.list("eval")
                                                           if e.inputs.get("data") in calib_data}


def compare(reg: Registry, cfg: CompareConfig) -> list[Row]:
    """Rows of evaluated models (filtered by cfg.where/cfg.base), Pareto-marked, sorted by cfg.metric;
    with cfg.vs every row carries its paired differences against that model."""
    spec = find_metric(cfg.metric)
    where = parse_where(cfg.where)
    eval_where = [(k, v) for k, v in where if k in EVAL_KEYS]
    where = [(k, v) for k, v in where if k not in EVAL_KEYS]
    base = reg.get(cfg.base, kind="base") if cfg.base else None
    ref_id = _resolve_vs(reg, cfg.vs)
    groups: dict[tuple[str, str], list[Artifact]] = {}
    summaries: dict[str, record.Summary] = {}
    only = set(cfg.evals)
    probes = calibration_probes(reg)
    for ev in reg.list("eval"):  # oldest first
        if (only and ev.id not in only) or (not only and ev.id in probes):
            continue
        model_id = ev.inputs.get("model")
        if model_id is None:
            warn(f"eval {ev.short} has no 'model' input; skipped")
            continue
        summaries[ev.id] = record.read_summary(ev)
        if all(_eval_matches(ev, summaries[ev.id], k, v) for k, v in eval_where):
            groups.setdefault((model_id, summaries[ev.id].suite), []).append(ev)
    rows: dict[str, Row] = {}
    for (model_id, suite), evs in groups.items():
        ev = _newest(evs, summaries)
        if model_id not in rows:
            rows[model_id] = _model_row(reg, reg.get(model_id))
        row = rows[model_id]
        row.base_id = row.base_id or ev.inputs.get("base")
        summary = summaries[ev.id]
        row.evals[suite] = EvalRef(suite, ev.id, ev.inputs.get("data"), ev.params.get("samples"),
                                   ev.created.isoformat(timespec="seconds"),
                                   [e.id for e in reversed(evs) if e.id != ev.id], summary.status, summary.n,
                                   ev.params.get("judge"), ev.params.get("judge_sha256"))
        row.metrics.update(_suite_metrics(ev, summary, cfg.n_boot, cfg.seed))
    for group in cfg.average:
        _average_seeds(rows, group, cfg.seeds)
    if ref_id is not None and ref_id not in rows:
        raise SSTMError(f"--vs {cfg.vs}: model {ref_id[:12]} has no evaluation here (run `sstm eval` on it)")
    ref = rows.get(ref_id)
    out = list(rows.values())
    known = set(WHERE_KEYS) | set(EVAL_KEYS) | {k for r in out for k in r.params}
    for key, _ in where:
        if out and key not in known:
            raise SSTMError(f"--where {key}: unknown key; try method, k, w, role, kind, samples, n, judge")
    out = [r for r in out if all(_matches(r, k, v) for k, v in where)]
    if base is not None:
        out = [r for r in out if r.base_id == base.id]
    if not cfg.mixed:
        check_protocol(out + ([ref] if ref is not None else []))
    if ref is not None:
        ref.reference = True
        for row in out:
            if row is not ref:
                row.deltas = {s: d for s in row.metrics if (d := paired_delta(row, ref, s, cfg)) is not None}
    mark_pareto(out)
    name_rows(out)
    sign = -1.0 if spec.higher_better else 1.0
    out.sort(key=lambda r: (r.value(spec.short) is None, sign * (r.value(spec.short) or 0.0), r.method, r.model_id))
    return out


def name_rows(rows: Sequence[Row]) -> None:
    """Each row's `name`: a merge's method label (:meth:`sstm.merge.method.MergeMethod.label`) with the settings
    that differ between the rows of its method (w, k, density, ...; a calibrated w as :meth:`Row.w_text` writes
    it), so the rows of a sweep are told apart; other rows their method (base, utility, safety)."""
    by_method: dict[str, list[Row]] = {}
    for r in rows:
        if r.kind == "merged" and r.method in METHODS:
            by_method.setdefault(r.method, []).append(r)
        else:
            r.name = r.method
    for name, group in by_method.items():
        method = METHODS[name]
        keys = method.differing([r.params for r in group])
        for r in group:
            r.name = method.label(r.params, tuple(k for k in keys if k != "w"))
            if "w" in keys and r.w is not None:
                r.name += f" w={r.w_text()}"


def _average_seeds(rows: dict[str, Row], group: Sequence[str], seeds: Sequence[int]) -> None:
    """Replace the rows of `group` (the same model trained with each of `seeds`) by one row: every metric the
    mean over seeds with its across-seed standard deviation (`spread`); per-sample scores the mean per sample id
    (when every seed scored the same samples), so paired differences compare seed-averaged prompts."""
    members = [(seed, rows[i]) for seed, i in zip(seeds, group) if i in rows]
    if len({r.model_id for _, r in members}) < 2:
        return  # one model for every seed (the base) or a single evaluated seed: nothing to average
    first = members[0][1]
    row = replace(first, seed=None, seeds=[seed for seed, _ in members], members=[r.model_id for _, r in members],
                  metrics={})
    for short, m in first.metrics.items():
        each = [r.metrics.get(short) for _, r in members]
        if m.status != "ok" or any(e is None or e.status != "ok" or e.value is None for e in each):
            row.metrics[short] = m
            continue
        values = [e.value for e in each]
        scores = None
        if all(e.scores is not None and set(e.scores) == set(m.scores) for e in each):
            scores = {i: fmean(e.scores[i] for e in each) for i in m.scores}
        row.metrics[short] = MetricValue(m.name, "ok", fmean(values), n=m.n, scores=scores, spread=stdev(values),
                                         per_seed=values)
    for _, r in members:
        del rows[r.model_id]
    rows[row.model_id] = row


def _resolve_vs(reg: Registry, vs: str | None) -> str | None:
    if vs is None:
        return None
    art = reg.get(vs)
    if art.kind not in ("base", "adapter", "merged"):
        raise SSTMError(f"--vs {vs}: {art.short} is a {art.kind}; expected a model (base, adapter or merged)")
    return art.id


def mark_pareto(rows: Sequence[Row]) -> None:
    """Set Row.pareto over the objectives of PARETO that some row has."""
    objectives = [s for s in PARETO if any(r.value(s) is not None for r in rows)]
    signs = {s: 1.0 if find_metric(s).higher_better else -1.0 for s in objectives}
    points = [[None if r.value(s) is None else signs[s] * r.value(s) for s in objectives] for r in rows]
    for row, opt in zip(rows, pareto_front(points)):
        row.pareto = opt
