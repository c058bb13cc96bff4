"""Regression adjustment with a pre-exposure covariate (CUPED), on influence functions.

Deng, Xu, Kohavi & Walker 2013, "Improving the sensitivity of online controlled
experiments by utilizing pre-experiment data" (WSDM): Y_cv = Y - θ (X - E X) with
θ = Cov(Y, X) / Var(X) keeps the estimate unbiased (X is measured before exposure, so the
flag cannot move it) and cuts its variance by the share ρ² that X explains. For ratio
metrics and other smooth estimators the same holds on their linearisations (Deng,
Knoblich & Lu 2018 §3.3; GrowthBook and Statsig do this): with φ_i a unit's influence on
the cohort's estimate and ψ_i its influence on the cohort's pre-exposure ratio
R' = Σ x'_i / Σ y'_i, i.e. ψ_i = (x'_i - R' y'_i) / Σ y'_i,

    θ = (C_t + C_c) / (V'_t + V'_c),   C_g = n/(n-1) Σ φψ,  V'_g = n/(n-1) Σ ψ²,

which minimises the variance of the difference, and each cohort's adjusted estimate is
m_g - θ (R'_g - R'_pooled), with variance n/(n-1) (Σφ² - 2θ Σφψ + θ² Σψ²). Units without
pre-exposure requests have x' = y' = 0, hence ψ = 0: they keep their unadjusted influence.
One θ for both cohorts, as gbstats pools it; estimating it costs O(1/n) bias, negligible
next to the standard error at any sample size a verdict is given at.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CovariateMoments:
    """One cohort's influence sums for an estimate (φ) and its pre-exposure covariate (ψ)."""

    units: int
    estimate: float  # the cohort's estimate m_g (before adjustment)
    covariate: float  # the cohort's pre-exposure ratio R'_g
    sum_phi2: float
    sum_phi_psi: float
    sum_psi2: float

    def scale(self) -> float:
        return self.units / (self.units - 1) if self.units > 1 else 0.0


@dataclass(frozen=True)
class Adjusted:
    """Both cohorts' regression-adjusted (estimate, variance), θ and the variance cut."""

    treatment: tuple[float, float]
    control: tuple[float, float]
    theta: float
    variance_reduction: float  # 1 - Var(adjusted difference) / Var(unadjusted difference)


def regression_adjusted(
    treatment: CovariateMoments, control: CovariateMoments, pooled_covariate: float
) -> Adjusted:
    """CUPED on both cohorts with one pooled θ (see the module doc)."""
    c = treatment.scale() * treatment.sum_phi_psi + control.scale() * control.sum_phi_psi
    v = treatment.scale() * treatment.sum_psi2 + control.scale() * control.sum_psi2
    theta = c / v if v > 0 else 0.0

    def one(m: CovariateMoments) -> tuple[float, float]:
        variance = m.scale() * (m.sum_phi2 - 2 * theta * m.sum_phi_psi + theta**2 * m.sum_psi2)
        return m.estimate - theta * (m.covariate - pooled_covariate), max(variance, 0.0)

    t, k = one(treatment), one(control)
    before = treatment.scale() * treatment.sum_phi2 + control.scale() * control.sum_phi2
    reduction = 1 - (t[1] + k[1]) / before if before > 0 else 0.0
    return Adjusted(t, k, theta, reduction)
