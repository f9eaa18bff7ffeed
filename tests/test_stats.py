"""The statistics of `sstm compare` (sstm.stats) against direct formulas, numpy and scipy."""

import math

import numpy as np
import pytest
from scipy import stats as st

from sstm.stats import (bootstrap_ci, detectable_difference, interval, mcnemar_p, paired_diff, pareto_front,
                        wilson_ci)


def binary(k, n):
    return [1.0] * k + [0.0] * (n - k)


def wilson_by_hand(k, n, level=0.95):
    """Wilson (1927): (p + z²/2n ± z·√(p(1−p)/n + z²/4n²)) / (1 + z²/n)."""
    z = st.norm.ppf(1 - (1 - level) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 64), (64, 64), (3, 64), (32, 64), (16, 20), (1, 1), (7, 250)])
def test_wilson_matches_the_formula_and_scipy(k, n):
    p, lo, hi = wilson_ci(binary(k, n))
    assert p == k / n
    assert (lo, hi) == pytest.approx(wilson_by_hand(k, n), abs=1e-12)
    ci = st.binomtest(k, n).proportion_ci(method="wilson")
    assert (lo, hi) == (ci.low, ci.high)
    assert interval(binary(k, n), rate=True) == (p, lo, hi)


def test_wilson_never_collapses_at_the_ends():
    """The issue: "0.0 (0–0)" and "100.0 (100–100)" at n = 64 from the bootstrap."""
    _, lo, hi = wilson_ci(binary(0, 64))
    assert lo == 0 and hi == pytest.approx(0.0566, abs=1e-4)
    _, lo, hi = wilson_ci(binary(64, 64))
    assert hi == pytest.approx(1) and lo == pytest.approx(1 - 0.0566, abs=1e-4)
    assert bootstrap_ci(binary(0, 64))[1:] == (0.0, 0.0)  # what the bootstrap gave
    with pytest.raises(ValueError, match="0 or 1"):
        wilson_ci([0.5, 1.0])


def test_bootstrap_matches_direct_numpy_and_scipy():
    x = np.random.default_rng(7).random(50)
    mean, lo, hi = bootstrap_ci(x, n=2000, seed=0)
    assert lo < mean < hi and mean == pytest.approx(x.mean())
    idx = np.random.default_rng(0).integers(0, 50, size=(2000, 50))
    assert (lo, hi) == pytest.approx(tuple(np.percentile(x[idx].mean(axis=1), [2.5, 97.5])), abs=1e-15)
    ref = st.bootstrap((x,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(0))
    assert (lo, hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), abs=1e-15)
    assert bootstrap_ci(x, 2000, 0) == bootstrap_ci(x, 2000, 0)
    assert bootstrap_ci(x, 2000, 1) != bootstrap_ci(x, 2000, 0)
    assert interval(x, rate=False) == (mean, lo, hi)


def test_bootstrap_batched_draw_equals_one_draw():
    """n = 3000 samples x 2000 resamples exceeds one batch: same numbers as one big draw."""
    x = (np.random.default_rng(3).random(3000) < 0.3).astype(float)
    mean, lo, hi = bootstrap_ci(x)
    idx = np.random.default_rng(0).integers(0, 3000, size=(2000, 3000))
    assert (lo, hi) == pytest.approx(tuple(np.percentile(x[idx].mean(axis=1), [2.5, 97.5])), abs=1e-15)


def test_bootstrap_shrinks_with_more_samples_and_needs_two():
    widths = []
    for n in (40, 400, 4000):
        mean, lo, hi = bootstrap_ci(binary(n // 2, n))
        assert lo <= mean <= hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2] > 0
    assert widths[1] == pytest.approx(2 * 1.96 * np.sqrt(0.25 / 400), rel=0.15)  # binomial width
    assert bootstrap_ci([0.3]) == (0.3, None, None)  # no interval from one sample
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_paired_difference_matches_direct_resampling_of_the_pairs():
    rng = np.random.default_rng(11)
    x = rng.random(40)
    y = np.clip(x - 0.05 + 0.02 * rng.standard_normal(40), 0, 1)  # y tracks x closely
    delta, lo, hi, p = paired_diff(x, y, rate=False)
    assert delta == pytest.approx((x - y).mean()) and p is None
    idx = np.random.default_rng(0).integers(0, 40, size=(2000, 40))  # one index vector per resample, both samples
    direct = np.percentile(x[idx].mean(axis=1) - y[idx].mean(axis=1), [2.5, 97.5])
    assert (lo, hi) == pytest.approx(tuple(direct), abs=1e-12)
    # pairing is what separates them: the unpaired intervals overlap, the paired one excludes 0
    _, xlo, xhi = bootstrap_ci(x)
    _, ylo, yhi = bootstrap_ci(y)
    assert xlo < yhi and 0 < lo < hi
    with pytest.raises(ValueError, match="same length"):
        paired_diff(x, y[:-1], rate=False)
    assert paired_diff([1.0], [0.0], rate=True) == (1.0, None, None, 1.0)


def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs():
    # b = 7 pairs (1, 0), c = 1 pair (0, 1), 12 concordant: p = 2 * P(Bin(8, 1/2) <= 1) = 2 * 9 / 256
    x = [1.0] * 7 + [0.0] * 1 + [1.0] * 6 + [0.0] * 6
    y = [0.0] * 7 + [1.0] * 1 + [1.0] * 6 + [0.0] * 6
    assert mcnemar_p(x, y) == pytest.approx(2 * (math.comb(8, 0) + math.comb(8, 1)) / 2 ** 8)
    assert mcnemar_p(y, x) == mcnemar_p(x, y)
    assert paired_diff(x, y, rate=True)[3] == mcnemar_p(x, y)
    assert mcnemar_p(x, x) == 1.0  # no discordant pair
    assert mcnemar_p([1.0] * 6, [0.0] * 6) == pytest.approx(2 / 2 ** 6)
    with pytest.raises(ValueError, match="0 or 1"):
        mcnemar_p([0.5], [1.0])


def test_power_line_formula_and_simulated_power():
    z = 1.959963984540054 + 0.8416212335729143
    assert detectable_difference(64) == pytest.approx(z * math.sqrt(0.5 / 64), rel=1e-12)
    assert 100 * detectable_difference(64) == pytest.approx(24.76, abs=0.01)
    assert 100 * detectable_difference(200) == pytest.approx(14.01, abs=0.01)
    # two groups of n = 200 whose rates differ by δ(200) around 1/2: a two-sided 5 % z-test rejects ~80 %
    n, d = 200, detectable_difference(200)
    rng = np.random.default_rng(0)
    a, b = rng.binomial(n, 0.5 - d / 2, 20000) / n, rng.binomial(n, 0.5 + d / 2, 20000) / n
    pooled = (a + b) / 2
    zs = (b - a) / np.sqrt(2 * pooled * (1 - pooled) / n)
    assert np.mean(np.abs(zs) > 1.96) == pytest.approx(0.80, abs=0.02)


def test_pareto_front_2d_and_3d():
    pts = [(0.5, 0.8), (0.45, 0.7), (0.6, 0.1), (0.1, 0.9), (0.5, 0.8), (None, 1.0), (0.2, None), (0.5, 0.75)]
    assert pareto_front(pts) == [True, False, True, True, True, False, False, False]
    assert pareto_front([]) == []
    # (0.45, 0.7) is dominated in the plane but has the least over-refusal (third coordinate: -over-refusal)
    three = [(0.5, 0.8, -0.15), (0.45, 0.7, -0.0), (0.6, 0.1, -0.4), (0.4, 0.6, -0.05), (0.5, 0.8, float("nan"))]
    assert pareto_front(three) == [True, True, True, False, False]


def test_power_line_never_exceeds_100_points():
    """The issue: "under 140.1 points" at n = 2. A difference of two rates is at most 1: δ is capped there,
    and the footer says the n is too small instead of printing a number."""
    z = 1.959963984540054 + 0.8416212335729143
    assert z * math.sqrt(0.5 / 2) == pytest.approx(1.401, abs=1e-3)  # the uncapped value the issue saw
    assert [detectable_difference(n) for n in (1, 2, 3)] == [1.0, 1.0, 1.0]
    assert detectable_difference(4) == pytest.approx(z * math.sqrt(0.5 / 4), rel=1e-12) and detectable_difference(4) < 1
    with pytest.raises(ValueError):
        detectable_difference(0)
