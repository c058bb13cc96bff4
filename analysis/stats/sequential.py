"""Always-valid intervals for repeated looks (scheduled reports).

Asymptotic confidence sequences: Waudby-Smith, Wu, Ramdas, Karampatziakis & Mineiro
2023, "Time-uniform central limit theory and asymptotic confidence sequences", Annals of
Statistics (arXiv:2103.06476). With probability about 1 - alpha the interval covers the
true difference at *every* look at once, so looking hourly does not inflate false alarms.
Implemented as GrowthBook's gbstats ``SequentialTwoSidedTTest`` does: the two-sided
normal-mixture boundary with the mixing parameter rho tuned to be tightest at N* users
(default 5000).

One-sided (``one_sided=True``, for a guard that only asks "worse?"): each end of the
interval is its own always-valid bound at alpha / 2, from the one-sided normal mixture
(the mixing distribution on positive drifts only; Howard, Ramdas, McAuliffe & Sekhon 2021,
Ann Stat 49:1055, §3.2). Its boundary is a little wider than the two-sided one at alpha
and narrower than the two-sided one at alpha / 2, which is what the guard gains. Here
``alpha`` stays the two-sided level of the fixed interval being widened (a one-sided
alpha / 2 at each end), so the rest of the package reads the estimate as it always does.
"""

from __future__ import annotations

import math
from dataclasses import replace
from statistics import NormalDist

from flagscope.analysis.stats.estimate import (
    Estimate,
    critical_value,
    valid_alpha,
    with_sequential,
)

DEFAULT_TUNING = 5000  # gbstats' default sequential_tuning_parameter N*


def sequential_rho(alpha: float, tuning: float = DEFAULT_TUNING) -> float:
    """Mixing parameter that makes the boundary tightest near ``tuning`` units.

    rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / N*  (Waudby-Smith et al. 2023,
    closed-form approximate minimiser of the width at t = N*, from their discussion of
    tuning rho; identical to gbstats' ``rho``).
    """
    return math.sqrt((-2.0 * math.log(alpha) + math.log(-2.0 * math.log(alpha) + 1.0)) / tuning)


def _unit_margin(n: float, rho: float, alpha: float) -> float:
    """Two-sided normal-mixture margin for unit variance after n units:

    sqrt( 2 (n rho^2 + 1) / (n^2 rho^2) * log( sqrt(n rho^2 + 1) / alpha ) )
    (Waudby-Smith et al. 2023, Thm 2.2, two-sided asymptotic CS for i.i.d. units;
    gbstats' ``halfwidth``).
    """
    v = n * rho * rho
    return math.sqrt(2.0 * (v + 1.0) / (n * v) * math.log(math.sqrt(v + 1.0) / alpha))


def _log_one_sided_mixture(u: float, v: float) -> float:
    """log of the one-sided normal-mixture martingale at u = S / sqrt(n + 1 / rho^2),
    v = n rho^2: mixing exp(lambda S - lambda^2 n / 2) over a half-normal lambda >= 0 of
    scale rho gives 2 / sqrt(1 + v) * exp(u^2 / 2) * Phi(u)."""
    return math.log(2.0) - 0.5 * math.log1p(v) + 0.5 * u * u + math.log(NormalDist().cdf(u))


def one_sided_margin(n: float, rho: float, level: float) -> float:
    """Unit-variance margin after n units at which the one-sided mixture reaches 1 / level
    (Ville's inequality: the mean crosses it at some look with probability <= level).
    Bisection on u between the two-sided boundaries at 2 level and at level."""
    v = n * rho * rho
    target = -math.log(level)

    def two_sided_u(a: float) -> float:
        return math.sqrt(max(2.0 * math.log(math.sqrt(1.0 + v) / a), 0.0))

    lo, hi = two_sided_u(min(2.0 * level, 1.0)), two_sided_u(level)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _log_one_sided_mixture(mid, v) < target:
            lo = mid
        else:
            hi = mid
    return hi * math.sqrt(n + 1.0 / (rho * rho)) / n


def _margin(n: float, alpha: float, tuning: float, one_sided: bool) -> float:
    rho = sequential_rho(alpha, tuning)
    return one_sided_margin(n, rho, alpha / 2.0) if one_sided else _unit_margin(n, rho, alpha)


def sequential_halfwidth(
    sd: float, n: float, alpha: float = 0.05, tuning: float = DEFAULT_TUNING
) -> float:
    """Half-width of the always-valid ``1 - alpha`` interval: sd * margin(n).

    ``sd`` is the per-unit standard deviation of the estimate, i.e. se * sqrt(n), and
    ``n`` the number of units (users) seen so far in both cohorts together, as gbstats
    uses ``n_total``. Returns 0.0 for unusable input (n <= 0, sd <= 0, bad alpha).
    """
    ok = valid_alpha(alpha) and all(math.isfinite(v) for v in (sd, n, tuning))
    if not ok or n <= 0 or sd <= 0 or tuning <= 0:
        return 0.0
    return sd * _unit_margin(n, sequential_rho(alpha, tuning), alpha)


def sequential_stretch(
    n: float,
    alpha: float,
    tuning: float = DEFAULT_TUNING,
    crit: float | None = None,
    one_sided: bool = False,
) -> float:
    """How many times wider than the fixed-horizon interval (critical value ``crit``,
    default z) the always-valid one is after ``n`` units: sqrt(n) margin(n) / crit, at
    least 1. It depends on n, alpha and the tuning only, not on the data."""
    if not (valid_alpha(alpha) and math.isfinite(n) and n > 0 and tuning > 0):
        return 1.0
    crit = critical_value(alpha, None) if crit is None else crit
    return max(1.0, math.sqrt(n) * _margin(n, alpha, tuning, one_sided) / crit)


def sequential_p_value(
    diff: float,
    sd: float,
    n: float,
    alpha: float = 0.05,
    tuning: float = DEFAULT_TUNING,
    one_sided: bool = False,
) -> float:
    """Always-valid p-value dual to the confidence sequence with rho tuned at ``alpha``.

    For fixed rho, the boundaries for every level a' form a nested family of valid
    confidence sequences; the p-value is the smallest a' whose sequence excludes 0,
    obtained by solving |diff| = sd * margin(n; rho, a') for a':
      p = min(1, sqrt(n rho^2 + 1) * exp(-diff^2 n^2 rho^2 / (2 sd^2 (n rho^2 + 1))))
    (Robbins 1970, Ann Math Stat 41:1397, normal-mixture boundary, inverted in alpha;
    Howard, Ramdas, McAuliffe & Sekhon 2021, Ann Stat 49:1055, on mixture boundaries).
    P(p_t <= a' at any look) <= a' asymptotically, so the minimum over past looks is
    also valid. ``p < alpha`` exactly when the interval at ``alpha`` excludes 0.
    One-sided: twice the one-sided mixture's 1 / M at |diff| (so again ``p < alpha``
    exactly when the end of the one-sided interval on diff's side excludes 0).
    """
    ok = valid_alpha(alpha) and all(math.isfinite(v) for v in (diff, sd, n, tuning))
    if not ok or n <= 0 or sd <= 0 or tuning <= 0:
        return 1.0
    rho = sequential_rho(alpha, tuning)
    v = n * rho**2
    if one_sided:
        u = abs(diff) * n / sd / math.sqrt(n + 1.0 / (rho * rho))
        return min(1.0, 2.0 * math.exp(-_log_one_sided_mixture(u, v)))
    exponent = -(diff * diff) * n * v / (2.0 * sd * sd * (v + 1.0))
    return min(1.0, max(0.0, math.sqrt(v + 1.0) * math.exp(exponent)))


def sequential_estimate(
    fixed: Estimate,
    n: int,
    alpha: float | None = None,
    tuning: float = DEFAULT_TUNING,
    one_sided: bool = False,
) -> Estimate:
    """Widen a fixed-horizon Estimate to the always-valid one after ``n`` users in all.

    Absolute interval: diff +/- sequential_halfwidth(se sqrt(n), n). Each side of both
    the absolute and the relative interval is stretched about its estimate by the same
    factor k = halfwidth / (z se) (for symmetric delta-method intervals this is exactly
    gbstats' sequential relative interval). p_value becomes
    :func:`sequential_p_value` read with the standard error of the side of the interval
    that must cross 0, but never below the fixed-horizon p-value (which is a t test for a
    small cohort, where the asymptotic sequence can be the less demanding). ``alpha``
    defaults to the fixed estimate's. ``one_sided``: each end an always-valid bound at
    alpha / 2 (module docstring). Results without an interval come back unchanged but
    marked sequential.
    """
    alpha = fixed.alpha if alpha is None else alpha
    if not fixed.has_interval or fixed.se <= 0 or n <= 0 or not valid_alpha(alpha):
        return replace(fixed, sequential=True)
    sd = fixed.se * math.sqrt(n)
    crit = critical_value(fixed.alpha, fixed.df)  # z, or t for a small-sample interval
    k = sequential_stretch(n, alpha, tuning, crit, one_sided)
    # The p-value is read on the side of the interval that must cross 0, with that side's
    # own standard error: an asymmetric (Newcombe) interval's lower and upper halves
    # differ, and a symmetric p-value could then disagree with the stretched interval.
    side = fixed.diff - fixed.diff_lo if fixed.diff >= 0 else fixed.diff_hi - fixed.diff
    side_sd = side / crit * math.sqrt(n) if side > 0 else sd
    return with_sequential(
        fixed,
        diff_lo=fixed.diff - k * (fixed.diff - fixed.diff_lo),
        diff_hi=fixed.diff + k * (fixed.diff_hi - fixed.diff),
        rel_lo=fixed.rel - k * (fixed.rel - fixed.rel_lo),
        rel_hi=fixed.rel + k * (fixed.rel_hi - fixed.rel),
        # never more evidence than the fixed-horizon test (a t test with few users)
        p_value=max(
            fixed.p_value, sequential_p_value(fixed.diff, side_sd, n, alpha, tuning, one_sided)
        ),
        alpha=alpha,
        df=None,  # a confidence sequence is normal-theory (asymptotic)
    )
