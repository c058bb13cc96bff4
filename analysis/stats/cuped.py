"""Regression adjustment with a pre-exposure covariate (CUPED), on influence functions.

Deng, Xu, Kohavi & Walker 2013, "Improving the sensitivity of online controlled
experiments by utilizing pre-experiment data" (WSDM): Y_cv = Y - θ (X - E X) with
θ = Cov(Y, X) / Var(X) keeps the estimate unbiased (X is measured before exposure, so the
flag cannot move it) and cuts its variance by the share ρ² that X explains. For ratio
metrics and other smooth estimators the same holds on their linearisations (Deng,
Knoblich & Lu 2018 §3.3; GrowthBook and Statsig do this): with φ_i a unit's influence on
the cohort's estimate and ψ_i its influence on the cohort's pre-exposure ratio
R' = Σ x'_i / Σ y'_i, i.e. ψ_i = (x'_i - R' y'_i) / (Σ y' - y'_i) — both as jackknife
leave-one-out changes (the variance the intervals use, `stats.ratio`) —

    θ = (C_t + C_c) / (V'_t + V'_c),   C_g = Cov_jk(φ, ψ),  V'_g = Var_jk(ψ),

which minimises the variance of the difference, and each cohort's adjusted estimate is
m_g - θ (R'_g - R'_pooled), with variance Var_jk(φ) - 2θ C_g + θ² V'_g (jackknife
moments: (n - 1)/n Σ (a - ā)(b - b̄)). Units without pre-exposure requests have
x' = y' = 0, hence ψ = 0: they keep their unadjusted influence.
One θ for both cohorts, as gbstats pools it; estimating it costs O(1/n) bias, negligible
next to the standard error at any sample size a verdict is given at.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CovariateMoments:
    """One cohort's sums over units of φ (each unit's leave-one-out change of the estimate)
    and ψ (of the pre-exposure ratio), for jackknife (co)variances."""

    units: int
    estimate: float  # the cohort's estimate m_g (before adjustment)
    covariate: float  # the cohort's pre-exposure ratio R'_g
    sum_phi: float
    sum_psi: float
    sum_phi2: float
    sum_phi_psi: float
    sum_psi2: float

    def _centred(self, a: float, b: float, ab: float) -> float:
        """(n - 1) / n Σ (a_i - ā)(b_i - b̄), the jackknife (co)variance."""
        n = self.units
        return (n - 1) / n * (ab - a * b / n) if n > 1 else 0.0

    def var_phi(self) -> float:
        return self._centred(self.sum_phi, self.sum_phi, self.sum_phi2)

    def cov(self) -> float:
        return self._centred(self.sum_phi, self.sum_psi, self.sum_phi_psi)

    def var_psi(self) -> float:
        return self._centred(self.sum_psi, self.sum_psi, self.sum_psi2)


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
    v = treatment.var_psi() + control.var_psi()
    theta = (treatment.cov() + control.cov()) / v if v > 0 else 0.0

    def one(m: CovariateMoments) -> tuple[float, float]:
        variance = m.var_phi() - 2 * theta * m.cov() + theta**2 * m.var_psi()
        return m.estimate - theta * (m.covariate - pooled_covariate), max(variance, 0.0)

    t, k = one(treatment), one(control)
    before = treatment.var_phi() + control.var_phi()
    reduction = 1 - (t[1] + k[1]) / before if before > 0 else 0.0
    return Adjusted(t, k, theta, reduction)
