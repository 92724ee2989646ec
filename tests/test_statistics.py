"""isopo_bench.statistics against independent references: scipy's own interval, values computed by hand
from printed t tables, a brute-force enumeration of the bootstrap distribution, and simulation."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from isopo_bench import statistics as S


def test_t_interval_equals_scipys():
    x = [0.41, 0.52, 0.47, 0.61, 0.39]
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert S.t_interval(x) == pytest.approx((np.mean(x), lo, hi), abs=1e-12)
    assert S.t_interval([*x, math.nan, None]) == pytest.approx(S.t_interval(x))  # missing values are left out
    one = S.t_interval([0.3])
    assert one[0] == 0.3 and math.isnan(one[1]) and math.isnan(one[2])
    assert all(math.isnan(v) for v in S.t_interval([]))


def test_mde_by_hand_from_t_tables():
    # n = 3: t_{0.975, 2} = 4.302653, t_{0.80, 2} = 1.060660; (4.302653 + 1.060660) x 0.1 / sqrt(3)
    assert S.mde(0.1, 3) == pytest.approx(0.309651, abs=1e-6)
    # n = 10: t_{0.975, 9} = 2.262157, t_{0.80, 9} = 0.883404; (3.145561) x 0.05 / sqrt(10)
    assert S.mde(0.05, 10) == pytest.approx(0.049736, abs=1e-6)
    # 90% power, alpha 0.01, n = 5: t_{0.995, 4} = 4.604095, t_{0.90, 4} = 1.533206; x 0.2 / sqrt(5)
    assert S.mde(0.2, 5, alpha=0.01, power=0.9) == pytest.approx(6.137301 * 0.2 / math.sqrt(5), abs=1e-6)
    assert math.isnan(S.mde(0.1, 1)) and math.isnan(S.mde(math.nan, 4))


def test_noncentral_mde_has_the_stated_power_in_simulation():
    """At delta = mde_noncentral the two-sided paired t-test rejects 80% of the time (200k simulated
    experiments of n = 5 seeds: binomial sd of the rate 0.0009)."""
    n, sd = 5, 1.0
    delta = S.mde_noncentral(sd, n)
    rng = np.random.default_rng(7)
    d = rng.normal(delta, sd, size=(200_000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    assert np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1)) == pytest.approx(0.8, abs=0.004)
    # many seeds: both forms approach the normal value (z_0.975 + z_0.8) sd / sqrt(n) = 2.801585 sd / sqrt(n)
    # (at n = 400 the t quantiles still add 0.27%)
    assert S.mde_noncentral(1.0, 400) == pytest.approx(2.801585 / 20, rel=4e-3)
    assert S.mde(1.0, 400) == pytest.approx(2.801585 / 20, rel=4e-3)
    assert S.mde_noncentral(1.0, 400) == pytest.approx(S.mde(1.0, 400), rel=1e-3)


def test_item_noise_mde_by_hand():
    # (1.959964 + 0.841621) sqrt(q / (n m)): q = 0.2, m = 1319 items, one seed
    assert S.item_noise_mde(1319, 0.2) == pytest.approx(2.801585 * math.sqrt(0.2 / 1319), rel=1e-6)
    assert S.item_noise_mde(1319, 0.2) == pytest.approx(0.034498, abs=1e-6)
    assert S.item_noise_mde(512, 0.1, n_seeds=3) == pytest.approx(2.801585 * math.sqrt(0.1 / 1536), rel=1e-6)
    with pytest.raises(ValueError, match="discordant"):
        S.item_noise_mde(100, 1.5)


# ------------------------------------------------------------------------------------------------
def exact_bootstrap(diffs_by_seed) -> dict[Fraction, Fraction]:
    """The two-stage bootstrap distribution by enumeration: every ordered draw of seeds, then every
    ordered draw of items inside each drawn seed, all equally likely."""
    n = len(diffs_by_seed)
    item_means = [Counter(Fraction(int(sum(draw)), len(d)) for draw in itertools.product(d, repeat=len(d)))
                  for d in diffs_by_seed]
    dist: Counter = Counter()
    for seeds in itertools.product(range(n), repeat=n):
        for means in itertools.product(*(item_means[s].items() for s in seeds)):
            weight = math.prod(Fraction(c, len(diffs_by_seed[s]) ** len(diffs_by_seed[s]))
                               for (_, c), s in zip(means, seeds))
            dist[sum(m for m, _ in means) / n] += weight * Fraction(1, n ** n)
    return dict(dist)


def exact_quantile(dist, q: float) -> Fraction:
    """The value where the CDF crosses q, checked to lie strictly inside a jump (so any large sample's
    empirical quantile lands on it)."""
    cdf = Fraction(0)
    for value in sorted(dist):
        below, cdf = cdf, cdf + dist[value]
        if cdf > q:
            assert below < q, "q sits on a CDF step: pick data whose quantile is unambiguous"
            return value
    raise AssertionError


def test_bootstrap_distribution_matches_enumeration():
    diffs = [np.array([1.0, 0.0]), np.array([1.0, -1.0, 0.0])]  # 2 seeds, 2 and 3 items
    exact = exact_bootstrap(diffs)
    assert sum(exact.values()) == 1
    draws = S.bootstrap_means(diffs, resamples=200_000, seed=3)
    in_twelfths = np.round(draws * 12)  # every attainable mean is a multiple of 1/12 (item means /2, /3; 2 seeds)
    assert np.allclose(in_twelfths, draws * 12)
    empirical = {Fraction(int(v), 12): c for v, c in zip(*np.unique(in_twelfths, return_counts=True))}
    assert set(empirical) <= set(exact)
    for value, p in exact.items():
        assert empirical.get(value, 0) / len(draws) == pytest.approx(float(p), abs=0.004)
    interval = S.paired_bootstrap(diffs, resamples=200_000, seed=3)
    assert (interval.low, interval.high) == pytest.approx((float(exact_quantile(exact, 0.025)),
                                                          float(exact_quantile(exact, 0.975))))
    assert interval.mean == pytest.approx((0.5 + 0.0) / 2)


def test_bootstrap_of_one_seed_is_the_normal_interval_of_the_item_mean():
    """One seed: only items are resampled; with m = 4000 items the resampled mean is normal with
    sd = population sd / sqrt(m), so the percentile interval is mean +- 1.96 sd."""
    rng = np.random.default_rng(11)
    d = rng.choice([-1.0, 0.0, 1.0], p=[0.1, 0.75, 0.15], size=4000)
    half = 1.959964 * d.std(ddof=0) / math.sqrt(len(d))
    interval = S.paired_bootstrap([d], resamples=20_000, seed=5)
    assert interval.low == pytest.approx(d.mean() - half, abs=0.08 * half)
    assert interval.high == pytest.approx(d.mean() + half, abs=0.08 * half)


def test_bootstrap_is_reproducible_and_refuses_empty_input():
    diffs = [np.array([1.0, 0.0, 0.0, -1.0, 1.0]), np.array([0.0, 1.0, 1.0, 0.0, 0.0])]
    assert S.paired_bootstrap(diffs) == S.paired_bootstrap(diffs)
    assert S.paired_bootstrap(diffs).resamples == 2000
    with pytest.raises(ValueError, match="at least one seed"):
        S.paired_bootstrap([])
    with pytest.raises(ValueError, match="at least one evaluation item"):
        S.paired_bootstrap([np.array([1.0]), np.array([])])
    with pytest.raises(ValueError, match="resamples"):
        S.bootstrap_means(diffs, resamples=0)


# ------------------------------------------------------------------------------------------------
GRID = (1e-5, 1e-4, 1e-3, 1e-2)  # log10: -5, -4, -3, -2


@pytest.mark.parametrize("gains,width,lower", [
    # interior window: crossings at -4 + (0.9 - 0.5) / (1 - 0.5) = -3.2 and -2 - (0.9 - 0.2) / (1 - 0.2) = -2.875
    ((0.0, 0.5, 1.0, 0.2), 0.325, False),
    # the run covers two grid points: crossings at -5 + 0.8 / 0.85 and -2 - 0.4 / 0.5 = -2.8
    ((0.1, 0.95, 1.0, 0.5), -2.8 - (-5 + 0.8 / 0.85), False),
    # the window reaches the top edge -2: from -4 + 0.7 / 0.75 to -2, a lower bound
    ((0.0, 0.2, 0.95, 1.0), -2 - (-4 + 0.7 / 0.75), True),
])
def test_lr_window_on_synthetic_curves(gains, width, lower):
    window = S.lr_window(GRID, gains)
    assert (window.width_decades, window.lower_bound) == (pytest.approx(width), lower)
    assert window.best_lr == GRID[int(np.argmax(gains))]


def test_lr_window_edge_cases():
    # a good point beyond a dip is not part of the contiguous window; the best is at the low edge
    w = S.lr_window([1e-4, 1e-3, 1e-2], [1.0, 0.5, 0.95])
    assert (w.width_decades, w.lower_bound) == (pytest.approx(-3.8 - (-4)), True)
    # the grid order does not matter
    assert S.lr_window([1e-2, 1e-4, 1e-3], [0.95, 1.0, 0.5]) == w
    # one grid point: width 0, a lower bound
    assert S.lr_window([3e-5], [0.2]) == S.LrWindow(0.0, True, 3e-5)
    # a neighbour without a result (a diverged lr): stop at the last point inside, a lower bound
    w = S.lr_window([1e-4, 1e-3, 1e-2], [0.5, 1.0, math.nan])
    assert (w.width_decades, w.lower_bound) == (pytest.approx(-3 - (-4 + 0.4 / 0.5)), True)
    # nothing improved: "within 90% of the best gain" has no meaning
    w = S.lr_window([1e-4, 1e-3], [-0.1, -0.2])
    assert math.isnan(w.width_decades) and w.best_lr == 1e-4


def test_best_lr_at_grid_edge():
    grid = [1e-4, 3e-4, 1e-3]
    assert S.at_grid_edge(1e-4, grid) and S.at_grid_edge(1e-3, grid) and not S.at_grid_edge(3e-4, grid)
    assert S.at_grid_edge(2e-6, [2e-6])  # a one-point grid brackets nothing
    assert not S.at_grid_edge(math.nan, grid)
