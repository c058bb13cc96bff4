"""A small cohort beside a large one, on production-shaped users (tests/production_sim.py:
heavy-tailed request counts, per-user latency levels, several routes): 20 % exposure, A/A.

With its own variance the small cohort's interval leans: a heavy, slow user raises both
its p95 (or mean) and its variance, a sample without one has both low, so "treatment is
faster" came out far more often than "slower" (p95: 6.1 % against 1.4 % of 1,000 seeded
draws, coverage 0.925). `stats.estimate.pooled_floor` raises each cohort's variance to its
share of the pooled one; a quantile's interval, longer above than below, then still
leaned when the cohorts' SEs were combined linearly, and `quantile_difference` combines
them on the log scale. These checks hold the package to a Monte-Carlo bound on each side.
The engine steps (quantile of a cohort, per-user sums) are numpy here; the inference is
the package's, as `flagscope diff` calls it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from flagscope.analysis.stats import (
    Method,
    RatioStats,
    pooled_rank_halfwidths,
    quantile_difference,
    quantile_rank_halfwidth,
    quantile_rank_interval,
    ratio_difference,
)
from flagscope.analysis.stats.estimate import normal_estimate, welch_df
from flagscope.analysis.stats.quantiles import rank_critical_value
from tests.production_sim import Traffic, draw_requests, draw_users

pytestmark = pytest.mark.simulation

REPS = 2000
ALPHA = 0.05


def _side_bound(reps: int) -> float:
    """99.9 % quantile of the share of draws left out on one side by a correct interval."""
    return float(stats.binom.ppf(0.999, reps, ALPHA / 2)) / reps


def _cohort(user: np.ndarray, ms: np.ndarray, p: float) -> tuple[float, RatioStats, RatioStats]:
    """The cohort's p-quantile, its per-user below-counts and latency sums."""
    q = float(np.quantile(ms, p))
    _, index = np.unique(user, return_inverse=True)
    n = np.bincount(index).astype(float).tolist()
    below = np.bincount(index, weights=(ms <= q).astype(float)).tolist()
    latency = np.bincount(index, weights=ms).tolist()
    return q, RatioStats.from_users(below, n), RatioStats.from_users(latency, n)


def _quantile_estimate(ms_t, t, ms_c, c, p: float, floor: bool, linear: bool = False):
    (q_t, below_t, _), (q_c, below_c, _) = t, c
    if floor:
        halves = pooled_rank_halfwidths(p, below_t, below_c, ALPHA)
    else:
        halves = tuple(quantile_rank_halfwidth(p, b, ALPHA) for b in (below_t, below_c))
    ends = []
    for ms, q, below, half in ((ms_t, q_t, below_t, halves[0]), (ms_c, q_c, below_c, halves[1])):
        p_lo, p_hi = quantile_rank_interval(p, below, ALPHA, half)
        ends.append((min(float(np.quantile(ms, p_lo)), q), max(float(np.quantile(ms, p_hi)), q)))
    (t_lo, t_hi), (c_lo, c_hi) = ends
    if linear:  # the SEs read off the widths, combined as before the log scale
        crit_t, crit_c = (rank_critical_value(ALPHA, b.n) for b in (below_t, below_c))
        var_t, var_c = ((t_hi - t_lo) / (2 * crit_t)) ** 2, ((c_hi - c_lo) / (2 * crit_c)) ** 2
        df = welch_df(var_t, below_t.n, var_c, below_c.n)
        return normal_estimate(q_c, q_t, var_c, var_t, ALPHA, Method.QUANTILE, df)
    return quantile_difference(p, q_t, t_lo, t_hi, q_c, c_lo, c_hi, ALPHA, below_t.n, below_c.n)


@pytest.fixture(scope="module")
def misses() -> dict[str, list[int]]:
    """Per interval: draws whose relative interval lay wholly below 0 / wholly above."""
    traffic = Traffic(users=2000, hours=24, exposure=0.2)
    out: dict[str, list[int]] = {}
    for rep in range(REPS):
        rng = np.random.default_rng([2026, rep])
        edge = draw_requests(traffic, draw_users(traffic, rng), rng)
        cohorts = {}
        for treated in (True, False):
            chosen = edge["treated"] == treated
            cohorts[treated] = (edge["user"][chosen], edge["ms"][chosen])
        (u_t, ms_t), (u_c, ms_c) = cohorts[True], cohorts[False]
        t, c = _cohort(u_t, ms_t, 0.95), _cohort(u_c, ms_c, 0.95)
        found = {
            "p95 own": _quantile_estimate(ms_t, t, ms_c, c, 0.95, False, linear=True),
            "p95 floored, linear": _quantile_estimate(ms_t, t, ms_c, c, 0.95, True, linear=True),
            "p95 floored": _quantile_estimate(ms_t, t, ms_c, c, 0.95, True),
        }
        for label, floor in (("own", False), ("floored", True)):
            found[f"mean {label}"] = ratio_difference(t[2], c[2], ALPHA, floor=floor)
        for name, est in found.items():
            tally = out.setdefault(name, [0, 0])
            tally[0] += est.rel_hi < 0
            tally[1] += est.rel_lo > 0
    return out


@pytest.mark.parametrize("variant", ["own", "floored, linear"])
def test_without_the_floor_and_the_log_scale_the_p95_leans_to_faster(misses, variant) -> None:
    """The defects the floor and the log scale answer, shown on the same draws: below far
    more often than above, beyond the bound."""
    below, above = misses[f"p95 {variant}"]
    print(f"\np95, {variant}: below 0 in {below / REPS:.3f}, above in {above / REPS:.3f}")
    assert below > _side_bound(REPS) * REPS or variant != "own"
    assert below > 2 * above


@pytest.mark.parametrize("metric", ["p95", "mean"])
def test_with_the_pooled_floor_each_side_misses_at_most_alpha_over_2(misses, metric) -> None:
    below, above = misses[f"{metric} floored"]
    print(f"\n{metric}, floored: below 0 in {below / REPS:.3f}, above in {above / REPS:.3f}")
    assert max(below, above) / REPS <= _side_bound(REPS)
    coverage = 1 - (below + above) / REPS
    assert coverage >= 1 - ALPHA - 3.3 * math.sqrt(ALPHA * (1 - ALPHA) / REPS)
