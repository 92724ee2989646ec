"""The leaderboard's statistics, as pure functions of numbers (numpy and scipy only; docs/statistics.md).

Notation: n seeds, m evaluation items, d_s = x_s - b_s the paired difference of seed s (algorithm minus
baseline, same seed = same first rollout batch and same evaluation items), s_d its sample sd (ddof 1).

- t_interval:  mean +- t_{0.975, n-1} s / sqrt(n), the two-sided 95% Student-t interval.
- paired_bootstrap: two-stage percentile bootstrap of mean_s d_s. One resample draws n seeds with
  replacement and, inside every drawn seed, its m items with replacement; an item's draw takes both arms'
  results on that item (the differences d_si), so the pairing is kept at both levels. The interval is the
  2.5% and 97.5% percentiles of the resampled means.
- mde: minimum detectable difference of a two-sided paired t-test at level alpha with the given power,
      MDE = (t_{1-alpha/2, n-1} + t_{power, n-1}) s_d / sqrt(n)
  (the usual approximation: it ignores the chance of rejecting on the wrong side and uses the central t
  for the alternative). mde_noncentral solves the exact condition instead:
      P(|T| > t_{1-alpha/2, n-1}) = power,  T ~ noncentral t(n-1, delta sqrt(n) / s_d).
- item_noise_mde: what evaluation-item noise alone lets a comparison resolve, from the discordant
  fraction q (items one arm solves and the other does not): per item d in {-1, 0, 1} with
  Var(d) = q - delta^2 <= q, so over n seeds x m independent items sd(mean d) <= sqrt(q / (n m)) and
      MDE_items = (z_{1-alpha/2} + z_power) sqrt(q / (n m))      (normal approximation, m large).
  Seed-to-seed variance comes on top of it: this is a floor, not the seed-level MDE.
- lr_window: width in decades of the learning-rate window whose gain is >= 90% of the best gain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats


def t_quantile(q: float, df: int) -> float:
    """The q quantile of Student's t with df degrees of freedom."""
    return float(stats.t.ppf(q, df))


def _clean(values) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the two-sided t-interval over the non-NaN values; no interval from one value."""
    x = _clean(values)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), math.nan, math.nan
    half = t_quantile(0.5 + level / 2, len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return float(x.mean()), float(x.mean()) - half, float(x.mean()) + half


# ------------------------------------------------------------------------------------------------
def bootstrap_means(diffs_by_seed: list[np.ndarray], resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """`resamples` two-stage bootstrap replicates of mean over seeds of mean over items (module docstring).

    Vectorised: resampling a seed's m items with replacement draws each distinct difference value with
    its frequency, so the value counts of one item resample are multinomial; one draw per (replicate,
    seed slot) replaces m index draws, with the same distribution."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not diffs_by_seed or any(len(d) == 0 for d in diffs_by_seed):
        raise ValueError("the bootstrap needs at least one seed, and every seed at least one evaluation item")
    rng = np.random.default_rng(seed)
    n = len(diffs_by_seed)
    picks_RN = rng.integers(0, n, size=(resamples, n))
    item_means_RN = np.empty((resamples, n))
    for s, d in enumerate(diffs_by_seed):
        values, counts = np.unique(np.asarray(d, dtype=float), return_counts=True)
        slots_RN = picks_RN == s
        counts_KV = rng.multinomial(len(d), counts / len(d), size=int(slots_RN.sum()))
        item_means_RN[slots_RN] = counts_KV @ values / len(d)
    return item_means_RN.mean(axis=1)


@dataclass(frozen=True)
class BootstrapInterval:
    mean: float
    """The observed mean over seeds of the mean item difference."""
    low: float
    high: float
    resamples: int


def paired_bootstrap(diffs_by_seed: list[np.ndarray], resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> BootstrapInterval:
    """Percentile interval of the two-stage paired bootstrap (fixed RNG seed: the same data give the same
    interval). `diffs_by_seed[s]` is x_si - b_si over the items i of seed s."""
    means_R = bootstrap_means(diffs_by_seed, resamples, seed)
    low, high = np.quantile(means_R, [0.5 - level / 2, 0.5 + level / 2])
    observed = float(np.mean([np.mean(d) for d in diffs_by_seed]))
    return BootstrapInterval(observed, float(low), float(high), resamples)


# ------------------------------------------------------------------------------------------------
def mde(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """(t_{1-alpha/2, n-1} + t_{power, n-1}) sd_diff / sqrt(n); NaN below two seeds."""
    if n < 2 or math.isnan(sd_diff):
        return math.nan
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd_diff / math.sqrt(n)


def paired_t_power(delta: float, sd_diff: float, n: int, alpha: float = 0.05) -> float:
    """Exact power of the two-sided paired t-test at true mean difference delta (noncentral t)."""
    df, crit = n - 1, t_quantile(1 - alpha / 2, n - 1)
    nc = delta * math.sqrt(n) / sd_diff
    # P(T < -crit) written as the upper tail at -nc: scipy's lower-tail cdf returns NaN far out.
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def mde_noncentral(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The delta > 0 at which paired_t_power reaches `power`; NaN below two seeds."""
    if n < 2 or math.isnan(sd_diff):
        return math.nan
    if sd_diff == 0:
        return 0.0
    upper = 2 * mde(sd_diff, n, alpha, power) + sd_diff
    while paired_t_power(upper, sd_diff, n, alpha) < power:
        upper *= 2
    return float(optimize.brentq(lambda d: paired_t_power(d, sd_diff, n, alpha) - power, 0.0, upper, xtol=1e-12))


def item_noise_mde(n_items: int, discordant: float, n_seeds: int = 1, alpha: float = 0.05,
                   power: float = 0.8) -> float:
    """(z_{1-alpha/2} + z_power) sqrt(q / (n_seeds n_items)): the difference evaluation-item noise alone
    lets a paired comparison resolve (seed variance not included; module docstring)."""
    if n_items < 1 or n_seeds < 1 or not 0 <= discordant <= 1:
        raise ValueError(f"need n_items >= 1, n_seeds >= 1 and 0 <= discordant <= 1, got {n_items}, {n_seeds}, "
                         f"{discordant}")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(z * math.sqrt(discordant / (n_seeds * n_items)))


# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LrWindow:
    width_decades: float
    """log10(right crossing) - log10(left crossing); NaN when the best gain is not positive."""
    lower_bound: bool
    """The window reaches a grid edge or a grid point without a result: the true width may be larger."""
    best_lr: float
    """The grid learning rate with the highest gain."""


def lr_window(lrs, gains, fraction: float = 0.9) -> LrWindow:
    """On the lr grid (any order; NaN gain = no result there), the contiguous run of grid points around
    the best lr with gain >= fraction x best gain, extended to the crossings by linear interpolation in
    log10(lr) to the neighbouring grid point on each side. Where the run ends at a grid edge or beside a
    point without a result there is nothing to interpolate to: the window stops at the last point inside
    and is flagged as a lower bound."""
    order = np.argsort(np.asarray(lrs, dtype=float))
    grid = np.asarray(lrs, dtype=float)[order]
    x, g = np.log10(grid), np.asarray(gains, dtype=float)[order]
    if len(x) == 0 or np.isnan(g).all():
        return LrWindow(math.nan, False, math.nan)
    best = int(np.nanargmax(g))
    best_lr = float(grid[best])
    if not g[best] > 0:
        return LrWindow(math.nan, False, best_lr)
    level = fraction * g[best]
    inside = lambda i: 0 <= i < len(g) and not np.isnan(g[i]) and g[i] >= level  # noqa: E731
    edges, bounded = [], True
    for step in (-1, 1):
        i = best
        while inside(i + step):
            i += step
        j = i + step  # the first point outside the window
        if not 0 <= j < len(g) or np.isnan(g[j]):
            edges.append(x[i])
            bounded = False
        else:  # g[j] < level <= g[i]: the crossing lies between them
            edges.append(x[j] + (level - g[j]) / (g[i] - g[j]) * (x[i] - x[j]))
    return LrWindow(float(edges[1] - edges[0]), not bounded, best_lr)


def at_grid_edge(lr: float, grid) -> bool:
    """Whether lr is the smallest or the largest of the grid (an optimum there is not bracketed)."""
    values = [v for v in grid if not math.isnan(v)]
    return bool(values) and not math.isnan(lr) and lr in (min(values), max(values))
