"""The statistics `sstm compare` reports (docs/method.md, "Statistics").

A metric is the mean of per-sample scores x_1..x_n (see :mod:`sstm.evaluate.record`).

* Rate (scores 0/1, k = sum x_i): the Wilson score interval,
  (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n), z = Φ⁻¹(1 − (1 − level)/2),
  via ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``. Never (0–0) at p̂ = 0.
* Other means (ROUGE-L): the percentile bootstrap of the mean, ``scipy.stats.bootstrap``
  with B = 2000 resamples drawn by ``numpy.random.default_rng(seed)`` (seed 0), in batches
  of at most ``_CHUNK`` indices (the same stream as one draw); no interval from one sample.
* Paired difference on the same prompts, d_i = x_i − y_i: the mean of d with the paired
  percentile bootstrap (the same index vector resamples x and y); for rates also McNemar's
  exact p = binomtest(b, b + c, 1/2), b = #{x_i = 1, y_i = 0}, c = #{x_i = 0, y_i = 1}.
* Power line: the smallest rate difference two models of n prompts each are likely to show,
  δ(n) = (z_{1−α/2} + z_{power})·√(2·p(1−p)/n) at p = 1/2 (the worst case), α = 0.05,
  power 0.8: δ ≈ 2.80·√(0.5/n), 24.8 points at n = 64 and 14.0 at n = 200. A paired test on
  the same prompts can detect less when the two models agree on most prompts. A rate difference is
  at most 1, so δ is capped at 1 (100 points): at n <= 3 no difference is reliably detected.
* Pareto: a point is optimal when no other point is >= in every coordinate and > in one
  (all maximised; negate a lower-is-better one); points with a missing coordinate never are.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

N_BOOT = 2000
SEED = 0
LEVEL = 0.95
ALPHA = 0.05  # power line: two-sided test level
POWER = 0.8  # power line: probability of detecting the difference
_CHUNK = 1 << 22  # resample indices drawn per batch (32 MiB of int64)


def _array(scores: Sequence[float]) -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("need at least one score")
    return x


def _bootstrap(data: tuple[np.ndarray, ...], statistic, n_boot: int, seed: int, level: float):
    """(lo, hi) of scipy's percentile bootstrap; the samples of `data` are resampled together."""
    res = stats.bootstrap(data, statistic, n_resamples=n_boot, batch=max(1, _CHUNK // data[0].size),
                          vectorized=True, paired=len(data) > 1, confidence_level=level, method="percentile",
                          rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_ci(scores: Sequence[float], n: int = N_BOOT, seed: int = SEED, level: float = LEVEL):
    """Percentile bootstrap of the mean: (mean(x), lo, hi); lo = hi = None for a single score."""
    x = _array(scores)
    if x.size == 1:
        return float(x[0]), None, None
    return (float(x.mean()), *_bootstrap((x,), lambda s, axis: s.mean(axis=axis), n, seed, level))


def is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0) | (x == 1)))


def wilson_ci(scores: Sequence[float], level: float = LEVEL):
    """Wilson score interval of a proportion of 0/1 scores: (k/n, lo, hi)."""
    x = _array(scores)
    if not is_binary(x):
        raise ValueError("a rate needs scores of 0 or 1")
    k = int(x.sum())
    ci = stats.binomtest(k, x.size).proportion_ci(confidence_level=level, method="wilson")
    return k / x.size, float(ci.low), float(ci.high)


def interval(scores: Sequence[float], rate: bool, n: int = N_BOOT, seed: int = SEED, level: float = LEVEL):
    """(mean, lo, hi): Wilson for a rate, the percentile bootstrap otherwise."""
    return wilson_ci(scores, level) if rate else bootstrap_ci(scores, n, seed, level)


def paired_diff(x: Sequence[float], y: Sequence[float], rate: bool, n: int = N_BOOT, seed: int = SEED,
                level: float = LEVEL):
    """Mean of x_i − y_i on the same prompts with its paired percentile-bootstrap interval, and for a
    rate McNemar's exact p: (delta, lo, hi, p); lo = hi = None for one pair, p None for non-rates."""
    a, b = _array(x), _array(y)
    if a.shape != b.shape:
        raise ValueError("paired scores need the same length")
    delta = float((a - b).mean())
    lo = hi = None
    if a.size > 1:
        lo, hi = _bootstrap((a, b), lambda s, t, axis: (s - t).mean(axis=axis), n, seed, level)
    return delta, lo, hi, (mcnemar_p(a, b) if rate else None)


def mcnemar_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Exact McNemar p (two-sided): binomtest(b, b + c, 1/2) on the discordant pairs; 1 when there are none."""
    a, b = _array(x), _array(y)
    if not (is_binary(a) and is_binary(b)):
        raise ValueError("McNemar needs scores of 0 or 1")
    up, down = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    return float(stats.binomtest(up, up + down, 0.5).pvalue) if up + down else 1.0


def detectable_difference(n: int, alpha: float = ALPHA, power: float = POWER, p: float = 0.5) -> float:
    """δ(n) = min(1, (z_{1−α/2} + z_power)·√(2·p(1−p)/n)): the rate difference a two-sided level-α test of two
    groups of n detects with probability `power` (p = 1/2 is the worst case). 1 (no difference of two rates
    is larger) means n is too small to detect any difference reliably."""
    if n < 1:
        raise ValueError("need at least one sample per group")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return min(1.0, float(z * math.sqrt(2 * p * (1 - p) / n)))


def pareto_front(points: Sequence[Sequence[float | None]]) -> list[bool]:
    """Point i is optimal iff no j is >= in every coordinate and > in one (all maximised).

    Points with a missing (None or NaN) coordinate are never optimal; duplicates are all optimal.
    """
    dim = len(points[0]) if points else 0
    if dim == 0:
        return [False] * len(points)  # nothing to be optimal on
    ok = [all(v is not None and not math.isnan(v) for v in p) for p in points]
    pts = np.array([p if good else [np.nan] * dim for p, good in zip(points, ok)], dtype=float).reshape(-1, dim)
    out = []
    for i, good in enumerate(ok):
        ge = np.all(pts >= pts[i], axis=1)  # NaN rows compare False: they dominate nothing
        gt = np.any(pts > pts[i], axis=1)
        out.append(good and not bool(np.any(ge & gt)))
    return out
