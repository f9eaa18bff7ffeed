"""Paired statistics of `sstm compare` rows: one model minus another on the same prompts, and matched safety.

docs/method.md §8 ("Statistics": paired differences, seeds, matched safety); the numerics are
:func:`sstm.stats.paired_diff`, the rows :mod:`sstm.compare`'s (which calls :func:`paired_delta` for ``--vs``).

* :func:`paired_scores`: the two rows' per-sample scores x_i (the row) and y_i (the reference) matched by
  sample ``id``; evals of different datasets or different samples are refused (one-line SSTMError);
* :func:`paired_delta`: d̄ = (1/n) Σ (x_i − y_i) with its paired percentile-bootstrap 95 % interval (one index
  vector resamples both rows) and, for a rate, McNemar's exact p = binomtest(b, b + c, 1/2) over the b prompts
  only the row refuses and the c only the reference does; seed-averaged scores are not 0/1: no p;
* :func:`matched_safety`: for each merge setting's w sweep, the first point by increasing w with jailbreak
  refusal ≥ the target and over-refusal ≤ the limit (a sweep point, not interpolated; a calibrated merge
  stands for its sweep), its ROUGE-L, and the paired ROUGE-L difference to task arithmetic at ta's own
  matched point.

Only the rows' scores, settings and sweeps are read (:class:`sstm.compare.Row`), so the row types are imported
for annotations alone and :mod:`sstm.compare` can import this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from sstm.errors import SSTMError
from sstm.evaluate.suites import Metric, all_metrics
from sstm.stats import paired_diff

if TYPE_CHECKING:
    from sstm.compare import CompareConfig, MetricValue, Row

UTILITY, REFUSAL, OVERREFUSAL = "rouge_l", "jailbreak", "overrefusal"  # the matched-safety summary's metrics
MATCH_REFERENCE = "ta"  # the method every matched point is compared with


@dataclass
class Delta:
    """A metric of a row minus the same metric of the reference, on the same prompts."""

    value: float
    lo: float | None  # paired percentile-bootstrap interval
    hi: float | None
    n: int  # prompts paired
    p: float | None = None  # exact McNemar p (rates only)


def _metric(short: str) -> Metric:
    """The suite metric of a row's metric key (:attr:`sstm.compare.Row.metrics` is keyed by short name)."""
    return next(m for m in all_metrics() if m.short == short)


def paired_scores(row: Row, ref: Row, short: str) -> tuple[list[float], list[float]]:
    """The scores of `row` and `ref` on the same prompts (matched by sample id); SSTMError, one line, when
    their evals are not of the same dataset and the same samples."""
    a, b = row.metrics[short], ref.metrics[short]
    suite = _metric(short).suite
    ea, eb = row.evals[suite], ref.evals[suite]
    what = f"{short} of {row.setting()} ({row.model_id[:8]}) vs {ref.setting()} ({ref.model_id[:8]})"
    if ea.data_id != eb.data_id:
        raise SSTMError(f"cannot pair {what}: different datasets ({str(ea.data_id)[:12]}, {str(eb.data_id)[:12]})")
    if a.scores is None or b.scores is None:
        raise SSTMError(f"cannot pair {what}: samples without ids (evals made by an older sstm; evaluate again)")
    if set(a.scores) != set(b.scores):
        raise SSTMError(f"cannot pair {what}: different samples of dataset {str(ea.data_id)[:12]} "
                        f"({len(a.scores)} and {len(b.scores)} rows, {len(set(a.scores) & set(b.scores))} shared)")
    ids = sorted(a.scores)
    return [a.scores[i] for i in ids], [b.scores[i] for i in ids]


def paired_delta(row: Row, ref: Row, short: str, cfg: CompareConfig) -> Delta | None:
    """`row` minus `ref` on metric `short` (None when either lacks per-sample scores of it)."""
    a, b = row.metrics.get(short), ref.metrics.get(short)
    if a is None or b is None or a.status != "ok" or b.status != "ok" or not a.n or not b.n:
        return None
    x, y = paired_scores(row, ref, short)
    binary = _metric(short).rate and not (row.seeds or ref.seeds)  # seed-averaged scores are not 0/1
    value, lo, hi, p = paired_diff(x, y, binary, cfg.n_boot, cfg.seed)
    return Delta(value, lo, hi, len(x), p)


# --------------------------------------------------------------------------- matched safety


@dataclass
class Matched:
    """One merge setting's w sweep at the safety target (see :func:`matched_safety`)."""

    setting: str  # the sweep, e.g. "sst k=128"
    model_id: str | None = None  # the matched point (None: no w reaches the target)
    w: float | None = None
    utility: MetricValue | None = None  # ROUGE-L at the matched point
    refusal: float | None = None
    overrefusal: float | None = None
    vs_id: str | None = None  # the reference's matched point
    delta: Delta | None = None  # ROUGE-L minus the reference's, paired
    note: str | None = None  # why there is no point or no delta


def matched_safety(rows: Sequence[Row], cfg: CompareConfig) -> list[Matched]:
    """For every merge setting with a w (rows of the same method, parameters and inputs but w): the first
    point of its sweep, by increasing w, with jailbreak refusal >= cfg.target_refusal and over-refusal
    <= cfg.max_overrefusal -- the nearest sweep point at or above the target, not interpolated -- with
    its ROUGE-L and the paired ROUGE-L difference to task arithmetic at its own matched point. A setting
    with a calibrated merge (sstm.calibrate: w chosen on the calibration split) is matched at that merge,
    unless its over-refusal on the test split exceeds cfg.max_overrefusal (calibration sees refusal only)."""
    sweeps: dict[str, list[Row]] = {}
    for r in rows:
        if r.kind == "merged" and r.w is not None:
            key = json.dumps([r.method != MATCH_REFERENCE, *r.sweep()], sort_keys=True, default=str)
            sweeps.setdefault(key, []).append(r)
    out, hits = [], []
    for key in sorted(sweeps):  # the reference's sweeps first
        sweep = sorted(sweeps[key], key=lambda r: r.w)
        calibrated = next((r for r in sweep if r.calibration is not None), None)
        if calibrated is not None:  # its w reaches the target on the calibration split; shown on the test split
            hit = calibrated if calibrated.calibration["reached"] else None
            m = Matched(f"{sweep[0].setting(w=False)} calibrated")
        else:
            hit = next((r for r in sweep if (r.value(REFUSAL) or 0) >= cfg.target_refusal
                        and r.value(OVERREFUSAL) is not None and r.value(OVERREFUSAL) <= cfg.max_overrefusal), None)
            m = Matched(sweep[0].setting(w=False))
        over = None if hit is None else hit.value(OVERREFUSAL)  # a sweep point's is <= the limit already
        if over is not None and over > cfg.max_overrefusal:
            m.note = (f"calibrated w = {hit.w:g} reaches the refusal target but over-refuses "
                      f"{100 * over:.1f} % > {100 * cfg.max_overrefusal:g} %")
            hit = None
        elif hit is None and calibrated is not None:
            top = max(step["w"] for step in calibrated.calibration["path"])
            m.note = f"calibration: target not reached at w <= {top:g} (kept w = {calibrated.w:g})"
        elif hit is None:
            m.note = ("no over-refusal eval" if all(r.value(OVERREFUSAL) is None for r in sweep)
                      else "no setting reaches the target")
        else:
            m.model_id, m.w, m.utility = hit.model_id, hit.w, hit.metrics.get(UTILITY)
            m.refusal, m.overrefusal = hit.value(REFUSAL), hit.value(OVERREFUSAL)
        out.append(m)
        hits.append(hit)
    ref = next((h for h, m in zip(hits, out) if h is not None and h.method == MATCH_REFERENCE), None)
    for hit, m in zip(hits, out):
        if hit is None or m.utility is None or hit is ref:
            continue
        if ref is None:
            m.note = f"no {MATCH_REFERENCE} setting reaches the target: no difference"
            continue
        m.vs_id = ref.model_id
        try:
            m.delta = paired_delta(hit, ref, UTILITY, cfg)
        except SSTMError as e:
            m.note = str(e)
    return out


__all__ = ["MATCH_REFERENCE", "OVERREFUSAL", "REFUSAL", "UTILITY", "Delta", "Matched", "matched_safety",
           "paired_delta", "paired_scores"]
