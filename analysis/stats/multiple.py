"""Multiple-testing control for per-route and per-service breakdowns."""

from __future__ import annotations

import math
from collections.abc import Sequence


def _clean(p: float) -> float:
    """p-values outside [0, 1] are clamped; NaN counts as 1 (no evidence)."""
    if not isinstance(p, int | float) or math.isnan(p):
        return 1.0
    return min(1.0, max(0.0, float(p)))


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order.

    Benjamini & Hochberg 1995 (JRSS B 57:289), step-up procedure; as adjusted values
    (Yekutieli & Benjamini 1999; R's ``p.adjust(method = "BH")``):
      q_(i) = min_{j >= i} min(1, m p_(j) / j)   for sorted p_(1) <= ... <= p_(m).
    Rejecting every q <= alpha controls the false discovery rate at alpha for
    independent (or positively dependent) tests. Monotone in p, capped at 1.
    """
    cleaned = [_clean(p) for p in p_values]
    m = len(cleaned)
    order = sorted(range(m), key=lambda i: cleaned[i])
    adjusted = [1.0] * m
    running = 1.0
    for rank in range(m, 0, -1):  # from the largest p down: the running minimum
        index = order[rank - 1]
        running = min(running, m * cleaned[index] / rank)
        adjusted[index] = max(running, cleaned[index])  # q >= p; guards 1-ulp rounding
    return adjusted


def weighted_benjamini_hochberg(p_values: Sequence[float], weights: Sequence[float]) -> list[float]:
    """Weighted Benjamini–Hochberg adjusted p-values, in the input order.

    Genovese, Roeder & Wasserman 2006 (Biometrika 93:509): with weights w_i > 0 that
    average 1, apply the step-up procedure to p_i / w_i; FDR stays at most alpha for
    independent tests (and positively dependent ones, Blanchard & Roquain 2008). Under
    the global null every discovery is false, so FDR is the probability of any false
    discovery: one weighted family over all the tests that decide a verdict bounds the
    A/A false-alarm rate by alpha, while a heavier weight keeps the tests that matter
    most (the overall ones) powerful. Equal weights give :func:`benjamini_hochberg`.
    """
    if len(weights) != len(p_values):
        raise ValueError("one weight per p-value")
    mean = math.fsum(weights) / len(weights) if weights else 1.0
    scaled = [
        _clean(p) / (w / mean) if w > 0 else 1.0 for p, w in zip(p_values, weights, strict=True)
    ]
    # (a heavier-than-average weight may give q < p: that is the point of the weight)
    return benjamini_hochberg([min(1.0, s) for s in scaled])
