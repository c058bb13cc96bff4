"""Post-stratification: a difference of two ratio metrics with each cohort re-weighted to
the pooled mix of strata (here the edge request's (service, route)), so a flag that moves
traffic between routes cannot fake a change of the overall (Simpson's paradox).

Miratrix, Sekhon & Yu 2013, "Adjusting treatment effect estimates by post-stratification
in randomized experiments": m = Σ_s w_s X_s / Y_s, with w_s the pooled share of the
denominator (requests) in stratum s (treated as fixed, as they do).

The variance is *not* Σ_s w_s² Var(X_s / Y_s): that treats the strata as independent, but
one user calls several routes, so the strata share units and their estimates are
correlated (an outside audit measured 77 % coverage of a nominal 95 % interval). With the
user as the unit, the estimator is a smooth function of per-user sums and its delta-method
(linearisation) variance is

    Var(m) ≈ n / (n - 1) · Σ_i φ_i²,   φ_i = Σ_s A_s x_is - B_s y_is,

where x_is, y_is are user i's numerator and requests in stratum s and A_s = w_s / Y_s,
B_s = w_s R_s / Y_s, R_s = X_s / Y_s (Deng, Knoblich & Lu 2018 §2 applied to the whole
vector of stratum sums; Σ_i φ_i = 0). For one stratum this is exactly
`RatioStats.variance`.

A stratum seen in only one cohort (a route only the treatment calls — new code paths
behind a flag are where new routes appear) keeps its weight; the other cohort's value
there is imputed by that cohort's overall ratio X / Y, whose linearisation adds
W_missing · (x_i - R y_i) / Y to every unit's φ_i. So a new route that fails more often
than the baseline as a whole counts against the treatment instead of vanishing.

The SQL engine evaluates φ_i per unit from :func:`linearize`'s coefficients (one pass over
per-unit rows); :func:`post_stratified_from_units` does the same on Python data and is the
reference the tests hold both to.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from flagscope.analysis.stats.estimate import Estimate, Method, normal_estimate
from flagscope.analysis.stats.rare import rare_difference
from flagscope.analysis.stats.ratio import RatioStats, choose_error_method, design_effect


@dataclass(frozen=True)
class Totals:
    """One cohort's numerator and denominator sums in one stratum (or overall)."""

    sum_x: float
    sum_y: float


K = TypeVar("K", bound=Hashable)  # a stratum's key


@dataclass(frozen=True)
class Linearization(Generic[K]):
    """One cohort's post-stratified estimate and its influence-function coefficients:
    unit i contributes φ_i = Σ_s (coefficients[s][0] · x_is - coefficients[s][1] · y_is)."""

    estimate: float
    coefficients: dict[K, tuple[float, float]]


def pooled_weights(treatment: Mapping[K, Totals], control: Mapping[K, Totals]) -> dict[K, float]:
    """w_s: the share of both cohorts' requests (denominators) in stratum s."""
    keys = set(treatment) | set(control)
    per = {
        k: (treatment[k].sum_y if k in treatment else 0.0)
        + (control[k].sum_y if k in control else 0.0)
        for k in keys
    }
    total = math.fsum(per.values())
    return {k: v / total for k, v in per.items()} if total > 0 else {}


def linearize(own: Mapping[K, Totals], weights: Mapping[K, float]) -> Linearization[K]:
    """The cohort's re-weighted ratio Σ_s w_s R_s, imputing its overall ratio in strata it
    has no requests in, with the coefficients of each unit's φ_i (see the module doc)."""
    present = {k: t for k, t in own.items() if t.sum_y > 0}
    x = math.fsum(t.sum_x for t in present.values())
    y = math.fsum(t.sum_y for t in present.values())
    if y <= 0:
        return Linearization(0.0, {})
    overall = x / y
    missing = math.fsum(w for k, w in weights.items() if k not in present)
    estimate = missing * overall
    coefficients: dict[K, tuple[float, float]] = {}
    for k, t in present.items():
        w = weights.get(k, 0.0)
        ratio = t.sum_x / t.sum_y
        estimate += w * ratio
        coefficients[k] = (
            w / t.sum_y + missing / y,
            w * ratio / t.sum_y + missing * overall / y,
        )
    return Linearization(estimate, coefficients)


def linearized_variance(units: int, sum_phi_squared: float) -> float:
    """n / (n - 1) · Σ φ_i² (0 below two units: no variance can be estimated)."""
    if units < 2:
        return 0.0
    return units / (units - 1) * sum_phi_squared


def post_stratified_difference(
    treatment: tuple[float, float], control: tuple[float, float], alpha: float
) -> Estimate:
    """Treatment minus control from each cohort's (estimate, variance); method DELTA."""
    (m_t, v_t), (m_c, v_c) = treatment, control
    return normal_estimate(m_c, m_t, v_c, v_t, alpha, Method.DELTA)


Unit = Mapping[Hashable, tuple[float, float]]  # stratum -> (x, y) of one user (reference path)


def stratum_totals(units: Sequence[Unit]) -> dict[Hashable, Totals]:
    """Each stratum's numerator and request totals over the units."""
    out: dict[Hashable, list[float]] = {}
    for unit in units:
        for k, (x, y) in unit.items():
            sums = out.setdefault(k, [0.0, 0.0])
            sums[0] += x
            sums[1] += y
    return {k: Totals(x, y) for k, (x, y) in out.items()}


def cohort_from_units(
    units: Sequence[Unit], weights: Mapping[Hashable, float]
) -> tuple[float, float, Linearization[Hashable]]:
    """(estimate, variance, linearisation) of one cohort from per-unit stratum sums."""
    lin = linearize(stratum_totals(units), weights)
    phis = [
        math.fsum(
            lin.coefficients[k][0] * x - lin.coefficients[k][1] * y for k, (x, y) in u.items()
        )
        for u in units
        if any(y > 0 for _, y in u.values())
    ]
    return lin.estimate, linearized_variance(len(phis), math.fsum(p * p for p in phis)), lin


def post_stratified_from_units(
    treatment: Sequence[Unit], control: Sequence[Unit], alpha: float = 0.05
) -> Estimate:
    """The whole computation on Python data: pooled weights, each cohort's estimate and
    linearised variance, their difference (the reference for the SQL path)."""
    weights = pooled_weights(stratum_totals(treatment), stratum_totals(control))
    m_t, v_t, _ = cohort_from_units(treatment, weights)
    m_c, v_c, _ = cohort_from_units(control, weights)
    return post_stratified_difference((m_t, v_t), (m_c, v_c), alpha)


def post_stratified_rate_difference(
    treatment: tuple[float, float],
    control: tuple[float, float],
    treatment_events: RatioStats,
    control_events: RatioStats,
    alpha: float,
    rates: tuple[float, float] | None = None,
) -> Estimate:
    """An event rate (errors per request) re-weighted to the pooled mix, with the same
    rare-event fallback as the plain rate (:func:`error_rate_difference`): when a cohort
    has too few effective events for normal theory, Newcombe's interval on effective
    counts — each cohort's adjusted rate times its effective requests Y / deff, deff the
    pooled design effect of the unadjusted rates (Korn & Graubard 1998). `rates`: the
    (treatment, control) re-weighted rates to count there, when the estimates are also
    regression-adjusted (CUPED shifts a rate; counts need the rate itself)."""
    deff = design_effect(treatment_events.merged(control_events))
    if choose_error_method(treatment_events, control_events, deff) is Method.DELTA:
        return post_stratified_difference(treatment, control, alpha)
    n_t, n_c = treatment_events.sum_y / deff, control_events.sum_y / deff
    rate_t, rate_c = rates if rates is not None else (treatment[0], control[0])
    return rare_difference(rate_t * n_t, n_t, rate_c * n_c, n_c, alpha)
