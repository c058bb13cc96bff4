"""The one-sided always-valid bound the guard watches with (stats.sequential, one_sided):
its boundary against an independent oracle (the mixture integrated numerically by scipy,
its root found by brentq), its p-value against its boundary, and a seeded simulation of
10,000 looks at a null random walk, in which the bound may be crossed at some look with
probability at most its level."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from flagscope.analysis.stats import Estimate, Method, Status
from flagscope.analysis.stats.sequential import (
    _unit_margin,
    one_sided_margin,
    sequential_estimate,
    sequential_p_value,
    sequential_rho,
    sequential_stretch,
)

TUNING = 1000


def _mixture(s: float, n: float, rho: float) -> float:
    """E over a half-normal lambda >= 0 of scale rho of exp(lambda S - lambda^2 n / 2)."""
    density = stats.halfnorm(scale=rho).pdf
    value, _ = integrate.quad(
        lambda lam: math.exp(lam * s - lam * lam * n / 2) * density(lam), 0, math.inf
    )
    return value


@pytest.mark.parametrize("n", [10, 200, 1000, 20_000])
@pytest.mark.parametrize("level", [0.05, 0.025, 0.001])
def test_the_boundary_is_where_the_integrated_mixture_reaches_one_over_the_level(
    n: int, level: float
) -> None:
    rho = sequential_rho(0.05, TUNING)
    bracket = 2 * n * _unit_margin(n, rho, level)  # two-sided at the level: wider
    root = optimize.brentq(lambda s: _mixture(s, n, rho) - 1 / level, 0, bracket, xtol=1e-12)
    assert one_sided_margin(n, rho, level) == pytest.approx(root / n, rel=1e-7)


@pytest.mark.parametrize("n", [50, 1000, 20_000])
def test_one_sided_bound_lies_between_the_two_sided_ones(n: int) -> None:
    """At alpha/2 each end: no narrower than two-sided at alpha, narrower than at alpha/2;
    so the guard, asking alpha = 2 x its level, is narrower than a two-sided sequence at
    its level."""
    rho = sequential_rho(0.10, TUNING)
    one = one_sided_margin(n, rho, 0.05)
    assert _unit_margin(n, rho, 0.10) <= one < _unit_margin(n, rho, 0.05)


def test_p_value_is_the_level_at_the_boundary_and_below_it_beyond() -> None:
    rho = sequential_rho(0.10, TUNING)
    for n in (30, 400, 5000):
        edge = one_sided_margin(n, rho, 0.05)
        assert sequential_p_value(edge, 1.0, n, 0.10, TUNING, True) == pytest.approx(0.10)
        assert sequential_p_value(-edge, 1.0, n, 0.10, TUNING, True) == pytest.approx(0.10)
        assert sequential_p_value(1.01 * edge, 1.0, n, 0.10, TUNING, True) < 0.10
        assert sequential_p_value(0.99 * edge, 1.0, n, 0.10, TUNING, True) > 0.10


def test_a_one_sided_estimate_has_ends_at_the_one_sided_margin() -> None:
    se, n = 0.5, 800
    z = stats.norm.isf(0.05)
    fixed = Estimate(
        Status.OK, 10.0, 11.0, 1.0, 1.0 - z * se, 1.0 + z * se,
        0.1, 0.1 - z * se / 10, 0.1 + z * se / 10, se, 2 * stats.norm.sf(1 / se), 0.10,
        Method.DELTA, False, None,
    )  # fmt: skip
    got = sequential_estimate(fixed, n, 0.10, TUNING, one_sided=True)
    half = se * math.sqrt(n) * one_sided_margin(n, sequential_rho(0.10, TUNING), 0.05)
    assert (got.diff_lo, got.diff_hi) == pytest.approx((1.0 - half, 1.0 + half), rel=1e-12)
    assert sequential_stretch(n, 0.10, TUNING, z, True) == pytest.approx(half / (z * se))
    assert got.sequential and (got.p_value < 0.10) == (got.diff_lo > 0)


@pytest.mark.simulation
def test_a_null_walk_crosses_the_bound_at_some_of_10000_looks_at_most_at_its_level() -> None:
    """2,000 null walks of 10,000 unit-variance users, a look after every user: the
    running mean above its one-sided bound at some look in at most 5 % of walks (beyond
    chance: the 99.9 % binomial quantile), and for the two-sided sequence at the same
    total level, each side is crossed less often than the one-sided bound's side."""
    rng = np.random.default_rng(20261202)
    walks, looks, level = 2000, 10_000, 0.05
    n = np.arange(1, looks + 1, dtype=float)
    rho = sequential_rho(2 * level, TUNING)
    bound = np.array([one_sided_margin(k, rho, level) for k in n])
    crossed = 0
    for chunk in range(0, walks, 250):
        sums = np.cumsum(rng.standard_normal((min(250, walks - chunk), looks)), axis=1)
        crossed += int(np.count_nonzero((sums / n > bound).any(axis=1)))
    share = crossed / walks
    print(f"\none-sided bound crossed at some of {looks} looks in {share:.4f} of walks")
    assert crossed <= stats.binom.ppf(0.999, walks, level)
    assert share > 0.005  # the bound is not vacuous either: it is reached sometimes
