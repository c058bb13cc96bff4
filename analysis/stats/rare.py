"""Differences of rare (or near-certain) event rates, where normal theory fails.

A delta-method z interval needs enough events *and* non-events in each cohort; with a
handful of errors its variance estimate is unstable and with zero errors it is zero —
the failure behind "0 errors in baseline, some in treatment reads as a pass". Here the
interval is Newcombe's hybrid score interval, which never has zero width and excludes 0
when the evidence is strong.
"""

from __future__ import annotations

import math

from flagscope.analysis.stats.estimate import (
    Estimate,
    Method,
    Status,
    checked,
    degenerate,
    valid_alpha,
    z_value,
)
from flagscope.analysis.stats.proportions import (
    mover_ratio,
    newcombe_difference,
    newcombe_p_value,
    wilson_interval,
)

# Below this many events (or non-events) in a cohort the normal approximation is not
# trusted. The usual "n p >= 10 and n (1 - p) >= 10" rule for binomial normality
# (e.g. Brown, Cai & DasGupta 2001, Stat Sci 16:101, discuss why such rules are
# needed at all; 10 is the conservative end of the textbook 5-10 range).
RARE_EVENT_THRESHOLD = 10


def _valid_counts(x: float, n: float) -> bool:
    return all(math.isfinite(v) for v in (x, n)) and 0.0 <= x <= n


def rare_difference(
    x_t: float, n_t: float, x_c: float, n_c: float, alpha: float = 0.05
) -> Estimate:
    """Event-rate difference x_t/n_t - x_c/n_c by Newcombe 1998 method 10.

    Counts may be fractional *effective* counts (see
    :func:`flagscope.analysis.stats.ratio.error_rate_difference`, which divides by a design
    effect so the users, not the requests, are the unit).

    - interval: Newcombe's hybrid score interval (Newcombe 1998b, Stat Med 17:873,
      method 10), built on Wilson (1927) limits;
    - p-value: the dual of that interval (:func:`newcombe_p_value`), so p < alpha
      exactly when the interval excludes 0;
    - relative interval: MOVER-R on the same Wilson limits (Donner & Zou 2012);
      a zero baseline makes the relative change undefined: status ZERO_BASELINE;
    - se: half the interval width over z (the interval may be asymmetric).
    """
    if not valid_alpha(alpha):
        return degenerate(Status.INVALID_INPUT, 0.05, Method.NEWCOMBE)
    if not (_valid_counts(x_t, n_t) and _valid_counts(x_c, n_c)):
        return degenerate(Status.INVALID_INPUT, alpha, Method.NEWCOMBE)
    if n_t <= 0.0 or n_c <= 0.0:
        return degenerate(Status.NO_DATA, alpha, Method.NEWCOMBE)
    p_t, p_c = x_t / n_t, x_c / n_c
    diff, lo, hi = newcombe_difference(x_t, n_t, x_c, n_c, alpha)
    se = (hi - lo) / (2.0 * z_value(alpha))
    p_value = newcombe_p_value(x_t, n_t, x_c, n_c)
    status, rel, rel_lo, rel_hi = Status.ZERO_BASELINE, 0.0, 0.0, 0.0
    if p_c > 0.0:
        limits_t, limits_c = wilson_interval(x_t, n_t, alpha), wilson_interval(x_c, n_c, alpha)
        ratio_lo, ratio_hi = mover_ratio(p_t, limits_t, p_c, limits_c)
        if math.isfinite(ratio_hi) and math.isfinite(p_t / p_c):
            status, rel = Status.OK, p_t / p_c - 1.0
            rel_lo, rel_hi = min(ratio_lo - 1.0, rel), max(ratio_hi - 1.0, rel)
    est = Estimate(
        status, p_c, p_t, diff, min(lo, diff), max(hi, diff),
        rel, rel_lo, rel_hi, se, p_value, alpha, Method.NEWCOMBE,
    )  # fmt: skip
    return checked(est)


def is_rare(events: float, trials: float) -> bool:
    """True when events or non-events fall below :data:`RARE_EVENT_THRESHOLD`."""
    return events < RARE_EVENT_THRESHOLD or trials - events < RARE_EVENT_THRESHOLD
