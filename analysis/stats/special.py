"""Special functions needed for p-values, in the standard library only."""

from __future__ import annotations

import math

_MAX_ITERATIONS = 10_000
_EPS = 1e-15
_TINY = 1e-300


def _series_p(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) by its series (x < a + 1).

    Press, Teukolsky, Vetterling & Flannery, Numerical Recipes (3rd ed. 2007), §6.2,
    eq. 6.2.5: P(a, x) = e^-x x^a / Gamma(a + 1) * sum_n x^n / ((a + 1)...(a + n)).
    """
    term = total = 1.0 / a
    ap = a
    for _ in range(_MAX_ITERATIONS):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * _EPS:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _continued_fraction_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) by its continued fraction (x >= a + 1).

    Numerical Recipes (3rd ed.), §6.2, eq. 6.2.7, evaluated with the modified Lentz
    method (§5.2). Computes Q directly, so tiny upper-tail probabilities keep full
    relative precision instead of being 1 - P.
    """
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITERATIONS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def regularized_gamma_q(a: float, x: float) -> float:
    """Q(a, x) = Gamma(a, x) / Gamma(a), for a > 0 and x >= 0 (NR 3rd ed. §6.2 ``gammq``).

    Returns 1.0 for x <= 0 and clamps the result to [0, 1].
    """
    if x <= 0.0:
        return 1.0
    if not math.isfinite(x):
        return 0.0
    q = 1.0 - _series_p(a, x) if x < a + 1.0 else _continued_fraction_q(a, x)
    return min(1.0, max(0.0, q))


def chi2_sf(statistic: float, df: int) -> float:
    """Upper tail P(Chi^2_df >= statistic) = Q(df / 2, statistic / 2)
    (Abramowitz & Stegun 1964, 26.4.19)."""
    return regularized_gamma_q(df / 2.0, statistic / 2.0)
