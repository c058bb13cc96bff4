"""Post-stratification: a difference of two ratio metrics with each cohort re-weighted to
the pooled mix of strata (here the edge request's (service, route)), so a flag that moves
traffic between routes cannot fake a change of the overall (Simpson's paradox).

Miratrix, Sekhon & Yu 2013, "Adjusting treatment effect estimates by post-stratification
in randomized experiments": m = Σ_s w_s X_s / Y_s, with w_s the pooled share of the
denominator (requests) in stratum s (treated as fixed, as they do).

The variance is *not* Σ_s w_s² Var(X_s / Y_s): that treats the strata as independent, but
one user calls several routes, so the strata share units and their estimates are
correlated (an outside audit measured 77 % coverage of a nominal 95 % interval). With the
user as the unit it is the delete-one-user jackknife (Efron & Stein 1981) of the whole
estimator, with every stratum the user called losing their sums at once:

    Var(m) ≈ (n - 1) / n · Σ_i (φ_i - φ̄)²,   φ_i = m - m_(i) = Σ_s w_s (x_is - R_s y_is) / (Y_s - y_is),

x_is, y_is user i's numerator and requests in stratum s, R_s = X_s / Y_s. As users grow
many this is the delta-method linearisation n/(n-1) Σ (Σ_s w_s (x_is - R_s y_is) / Y_s)²
(Deng, Knoblich & Lu 2018 §2 on the vector of stratum sums); with a few heavy users the
(Y_s - y_is) keeps their pull, as the jackknife of a plain ratio does (`stats.ratio`).

A stratum seen in only one cohort (a route only the treatment calls — new code paths
behind a flag are where new routes appear) keeps its weight; the other cohort's value
there is imputed by that cohort's overall ratio X / Y, which adds
W_missing · (x_i - R y_i) / (Y - y_i) to every unit's φ_i. So a new route that fails more often
than the baseline as a whole counts against the treatment instead of vanishing.

The SQL engine evaluates φ_i per unit from :func:`linearize`'s per-stratum weights, ratios
and totals (one pass over per-unit rows); :func:`post_stratified_from_units` does the same
on Python data (:meth:`Linearization.influence`) and is the reference the SQL is held to.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from flagscope.analysis.stats.estimate import (
    Estimate,
    Method,
    normal_estimate,
    pooled_floor,
    welch_df,
)
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
    """One cohort's post-stratified estimate and what each unit's influence needs:
    per present stratum (w_s, R_s, Y_s), the weight of the strata it lacks and its overall
    ratio R = X / Y and requests Y, which stand in for them (see the module doc)."""

    estimate: float
    strata: dict[K, tuple[float, float, float]]
    missing: float = 0.0
    overall: float = 0.0
    total_y: float = 0.0

    def influence(self, unit: Mapping[K, tuple[float, float]]) -> float:
        """The unit's leave-one-out change of the estimate (the jackknife pseudo-value's
        core): Σ_s w_s (x_is - R_s y_is) / (Y_s - y_is) + W (x_i - R y_i) / (Y - y_i).
        A unit alone in a stratum has its term divided by Y_s instead (linearised)."""
        phi = 0.0
        for k, (x, y) in unit.items():
            if k in self.strata:
                w, ratio, total = self.strata[k]
                phi += w * (x - ratio * y) / (total - y if total > y else total)
        if self.missing:
            x_i = math.fsum(x for k, (x, _) in unit.items() if k in self.strata)
            y_i = math.fsum(y for k, (_, y) in unit.items() if k in self.strata)
            rest = self.total_y - y_i if self.total_y > y_i else self.total_y
            phi += self.missing * (x_i - self.overall * y_i) / rest
        return phi


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
    has no requests in, with what each unit's influence needs (see the module doc)."""
    present = {k: t for k, t in own.items() if t.sum_y > 0}
    x = math.fsum(t.sum_x for t in present.values())
    y = math.fsum(t.sum_y for t in present.values())
    if y <= 0:
        return Linearization(0.0, {})
    overall = x / y
    missing = math.fsum(w for k, w in weights.items() if k not in present)
    strata = {k: (weights.get(k, 0.0), t.sum_x / t.sum_y, t.sum_y) for k, t in present.items()}
    estimate = missing * overall + math.fsum(w * ratio for w, ratio, _ in strata.values())
    return Linearization(estimate, strata, missing, overall, y)


def jackknife_variance(units: int, sum_phi: float, sum_phi_squared: float) -> float:
    """(n - 1) / n Σ (φ_i - φ̄)² over the units' leave-one-out changes φ_i (Efron &
    Stein 1981); 0 below two units (no variance can be estimated)."""
    if units < 2:
        return 0.0
    return max(0.0, (units - 1) / units * (sum_phi_squared - sum_phi * sum_phi / units))


def post_stratified_difference(
    treatment: tuple[float, float],
    control: tuple[float, float],
    alpha: float,
    units: tuple[int, int] | None = None,
    floor: bool = False,
) -> Estimate:
    """Treatment minus control from each cohort's (estimate, variance); method DELTA.
    With the cohorts' `units`, Student t with Welch–Satterthwaite degrees of freedom;
    ``floor`` (with `units`) raises each variance to the pooled one's share
    (:func:`pooled_floor`)."""
    (m_t, v_t), (m_c, v_c) = treatment, control
    if floor and units is not None:
        v_t, v_c = pooled_floor(v_t, units[0], v_c, units[1])
    df = None if units is None else welch_df(v_t, units[0], v_c, units[1])
    return normal_estimate(m_c, m_t, v_c, v_t, alpha, Method.DELTA, df)


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
    """(estimate, jackknife variance, linearisation) of one cohort from per-unit sums."""
    lin = linearize(stratum_totals(units), weights)
    phis = [lin.influence(u) for u in units if any(y > 0 for _, y in u.values())]
    variance = jackknife_variance(len(phis), math.fsum(phis), math.fsum(p * p for p in phis))
    return lin.estimate, variance, lin


def post_stratified_from_units(
    treatment: Sequence[Unit], control: Sequence[Unit], alpha: float = 0.05
) -> Estimate:
    """The whole computation on Python data: pooled weights, each cohort's estimate and
    linearised variance, their difference (the reference for the SQL path)."""
    weights = pooled_weights(stratum_totals(treatment), stratum_totals(control))
    m_t, v_t, _ = cohort_from_units(treatment, weights)
    m_c, v_c, _ = cohort_from_units(control, weights)
    units = (sum(1 for u in treatment if u), sum(1 for u in control if u))
    return post_stratified_difference((m_t, v_t), (m_c, v_c), alpha, units)


def post_stratified_rate_difference(
    treatment: tuple[float, float],
    control: tuple[float, float],
    treatment_events: RatioStats,
    control_events: RatioStats,
    alpha: float,
    rates: tuple[float, float] | None = None,
    units: tuple[int, int] | None = None,
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
        return post_stratified_difference(treatment, control, alpha, units)
    n_t, n_c = treatment_events.sum_y / deff, control_events.sum_y / deff
    rate_t, rate_c = rates if rates is not None else (treatment[0], control[0])
    return rare_difference(rate_t * n_t, n_t, rate_c * n_c, n_c, alpha)
