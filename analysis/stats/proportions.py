"""Intervals for binomial proportions and their differences and ratios.

Counts may be fractional: the rare-event path feeds *effective* counts (counts divided
by a design effect, Korn & Graubard 1998), and the score formulas below are defined
for any real 0 <= x <= n.
"""

from __future__ import annotations

import math

from flagscope.analysis.stats.estimate import z_value


def _wilson_z(successes: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval for a given critical value z.

    Wilson 1927 (JASA 22:209), eq. for the score interval:
      centre = (x + z^2/2) / (n + z^2)
      half   = z / (n + z^2) * sqrt(x (n - x) / n + z^2 / 4)
    (Newcombe 1998a, Stat Med 17:857, method 3.) Clamped to [0, 1]; the bounds are
    exactly 0 at x = 0 and exactly 1 at x = n.
    """
    if n <= 0.0:
        return 0.0, 1.0
    x = min(max(successes, 0.0), n)
    denom = n + z * z
    centre = (x + z * z / 2.0) / denom
    half = z / denom * math.sqrt(max(x * (n - x) / n, 0.0) + z * z / 4.0)
    lo = 0.0 if x == 0.0 else max(0.0, centre - half)
    hi = 1.0 if x == n else min(1.0, centre + half)
    return lo, hi


def wilson_interval(successes: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided ``1 - alpha`` Wilson (1927) score interval for x successes in n.

    n <= 0 carries no information and returns (0, 1).
    """
    return _wilson_z(successes, n, z_value(alpha))


def _newcombe_z(
    x_t: float, n_t: float, x_c: float, n_c: float, z: float
) -> tuple[float, float, float]:
    """Newcombe's hybrid score interval for p_t - p_c at critical value z.

    Newcombe 1998b (Stat Med 17:873), method 10, with l_i, u_i the Wilson limits:
      L = d - sqrt((p_t - l_t)^2 + (u_c - p_c)^2)
      U = d + sqrt((u_t - p_t)^2 + (p_c - l_c)^2)
    """
    p_t, p_c = x_t / n_t, x_c / n_c
    l_t, u_t = _wilson_z(x_t, n_t, z)
    l_c, u_c = _wilson_z(x_c, n_c, z)
    d = p_t - p_c
    lo = d - math.sqrt((p_t - l_t) ** 2 + (u_c - p_c) ** 2)
    hi = d + math.sqrt((u_t - p_t) ** 2 + (p_c - l_c) ** 2)
    return d, max(-1.0, lo), min(1.0, hi)


def newcombe_difference(
    x_t: float, n_t: float, x_c: float, n_c: float, alpha: float = 0.05
) -> tuple[float, float, float]:
    """(diff, lo, hi) for p_t - p_c by Newcombe 1998 method 10 (hybrid score, no CC).

    Requires n_t > 0 and n_c > 0 (callers check; see :func:`rare_difference`).
    """
    return _newcombe_z(x_t, n_t, x_c, n_c, z_value(alpha))


def newcombe_p_value(x_t: float, n_t: float, x_c: float, n_c: float) -> float:
    """Two-sided p-value dual to the Newcombe interval: the smallest alpha at which the
    method-10 interval excludes 0.

    p = 2 (1 - Phi(z*)) where z* solves L(z*) = 0 (or U(z*) = 0 for a negative
    difference); the Wilson limits are monotone in z, so bisection finds z*. By
    construction ``p < alpha`` exactly when the interval excludes 0 — the verdict and
    the p-value cannot disagree — and the test's size is the interval's non-coverage at
    a zero difference, which Newcombe 1998b (Table III) shows is close to nominal even
    for small counts (the reason to prefer it over Fisher's conservative exact test).
    """
    d = x_t / n_t - x_c / n_c
    if d == 0.0:
        return 1.0
    side = 1 if d > 0 else 2  # index of the bound that must cross 0

    def excludes_zero(z: float) -> bool:
        bound = _newcombe_z(x_t, n_t, x_c, n_c, z)[side]
        return bound > 0.0 if d > 0 else bound < 0.0

    lo, hi = 0.0, 40.0
    if excludes_zero(hi):
        return 0.0  # beyond 40 sigma: 2 * Phi(-40) underflows double precision
    for _ in range(80):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if excludes_zero(mid) else (lo, mid)
    return min(1.0, math.erfc(lo / math.sqrt(2.0)))  # 2 (1 - Phi(z*))


def mover_ratio(
    p_t: float,
    limits_t: tuple[float, float],
    p_c: float,
    limits_c: tuple[float, float],
) -> tuple[float, float]:
    """Interval for p_t / p_c from the two single-proportion limits (MOVER-R).

    Donner & Zou 2012 (Stat Methods Med Res 21:347), MOVER-R, eqs. for L and U:
      L = [p_t p_c - sqrt((p_t p_c)^2 - l_t u_c (2 p_t - l_t)(2 p_c - u_c))]
          / [u_c (2 p_c - u_c)]
      U = [p_t p_c + sqrt((p_t p_c)^2 - u_t l_c (2 p_t - u_t)(2 p_c - l_c))]
          / [l_c (2 p_c - l_c)]
    L is written in its rationalised form c / (b + sqrt(b^2 - a c)), which is the same
    root but stays finite when u_c (2 p_c - u_c) is 0 or negative (small counts).
    Needs p_c > 0 and l_c > 0 (true for Wilson limits whenever x_c > 0); otherwise
    the ratio has no finite upper limit and (0, inf) is returned.
    """
    (l_t, u_t), (l_c, u_c) = limits_t, limits_c
    b = p_t * p_c
    c_lo = l_t * (2.0 * p_t - l_t)
    a_lo = u_c * (2.0 * p_c - u_c)
    root_lo = b + math.sqrt(max(b * b - a_lo * c_lo, 0.0))
    lo = c_lo / root_lo if root_lo > 0.0 else 0.0
    a_hi = l_c * (2.0 * p_c - l_c)
    if not a_hi > 0.0:
        return max(0.0, lo), math.inf
    c_hi = u_t * (2.0 * p_t - u_t)
    hi = (b + math.sqrt(max(b * b - a_hi * c_hi, 0.0))) / a_hi
    return max(0.0, lo), hi
