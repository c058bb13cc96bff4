"""Sample-ratio mismatch: are users split across variants as the flag configured?"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from flagscope.analysis.stats.estimate import Status
from flagscope.analysis.stats.special import chi2_sf

# Alert when p < 0.001 (DESIGN.md; GrowthBook's default SRM threshold). Strict because
# the check runs on every flag at every look, and a real SRM is usually gross (Fabijan
# et al. 2019, "Diagnosing Sample Ratio Mismatch in Online Controlled Experiments", KDD).
SRM_ALERT_P_VALUE = 0.001
# The sequential test's Dirichlet mixture: concentration 100 around the configured shares
# (Lindon & Malek 2022's default), most power against the gross mismatches SRM is about.
SEQUENTIAL_CONCENTRATION = 100.0


@dataclass(frozen=True)
class SrmResult:
    """Pearson chi-square goodness of fit of users per variant; with `sequential`, the
    p-value is the anytime-valid one of `sequential_srm_test` (chi2 kept for display)."""

    chi2: float
    df: int
    p_value: float
    status: Status
    sequential: bool = False

    @property
    def alert(self) -> bool:
        """True when the split is implausible under the configured shares."""
        return self.status is Status.OK and self.p_value < SRM_ALERT_P_VALUE


def _invalid() -> SrmResult:
    return SrmResult(0.0, 0, 1.0, Status.INVALID_INPUT)


def _inputs_valid(observed: Mapping[str, int], expected_share: Mapping[str, float]) -> bool:
    if len(expected_share) < 2 or not set(observed) <= set(expected_share):
        return False
    counts_ok = all(isinstance(c, int | float) and 0 <= c < math.inf for c in observed.values())
    shares_ok = all(
        isinstance(s, int | float) and 0 < s < math.inf for s in expected_share.values()
    )
    return counts_ok and shares_ok


def srm_test(observed: Mapping[str, int], expected_share: Mapping[str, float]) -> SrmResult:
    """Chi-square test of observed users per variant against the expected shares.

    Pearson 1900 goodness of fit: chi2 = sum_k (O_k - E_k)^2 / E_k, E_k = N s_k with
    shares normalised to sum to 1; df = K - 1; p = Q((K - 1)/2, chi2/2) from
    :func:`flagscope.analysis.stats.special.chi2_sf`. Variants in ``expected_share`` but absent from
    ``observed`` count 0 users. Statuses: NO_DATA (no users), INVALID_INPUT (fewer than
    two variants, an observed variant without a share, negative counts, shares <= 0).
    """
    if not _inputs_valid(observed, expected_share):
        return _invalid()
    total = math.fsum(observed.values())
    df = len(expected_share) - 1
    if total == 0:
        return SrmResult(0.0, df, 1.0, Status.NO_DATA)
    # Shares are scaled by the largest first: their sum cannot overflow a double.
    largest = max(expected_share.values())
    share_total = math.fsum(share / largest for share in expected_share.values()) * largest
    if not math.isfinite(share_total):
        return _invalid()  # shares too large for doubles
    chi2 = 0.0
    for variant, share in expected_share.items():
        expected = total * (share / share_total)
        if not (expected > 0.0 and math.isfinite(expected)):
            return _invalid()  # a share too small (or shares too large) for doubles
        chi2 += (observed.get(variant, 0) - expected) ** 2 / expected
    if not math.isfinite(chi2):
        return _invalid()
    return SrmResult(chi2, df, chi2_sf(chi2, df), Status.OK)


def sequential_srm_test(
    observed: Mapping[str, int],
    expected_share: Mapping[str, float],
    concentration: float = SEQUENTIAL_CONCENTRATION,
) -> SrmResult:
    """`srm_test` for a split looked at again and again as users arrive (the guard's every
    minute): an anytime-valid p-value, so that the chance of an alert at *any* look of an
    A/A rollout stays below the threshold. Repeating the fixed-horizon χ² test each minute
    alerted in 2.5 % of simulated A/A weeks (bench/guard_watch.py) at a 0.1 % level.

    Lindon & Malek 2022 ("Anytime-Valid Inference for Multinomial Count Data", NeurIPS):
    the Bayes factor of a Dirichlet(concentration · shares) mixture over the split against
    the configured shares is a nonnegative martingale under the null, so by Ville's
    inequality p = min(1, 1/BF) is valid at every look:
    log BF = lnΓ(A) − lnΓ(A + n) + Σ_k [lnΓ(α_k + x_k) − lnΓ(α_k)] − Σ_k x_k ln θ_k,
    α_k = concentration · θ_k, A = Σ α_k = concentration, n = Σ x_k.
    """
    fixed = srm_test(observed, expected_share)
    if fixed.status is not Status.OK:
        return fixed
    share_total = math.fsum(expected_share.values())
    log_bf = math.lgamma(concentration) - math.lgamma(concentration + math.fsum(observed.values()))
    for variant, share in expected_share.items():
        theta = share / share_total
        alpha, x = concentration * theta, observed.get(variant, 0)
        log_bf += math.lgamma(alpha + x) - math.lgamma(alpha) - (x * math.log(theta) if x else 0.0)
    p_value = 1.0 if log_bf <= 0 else math.exp(-log_bf)
    return SrmResult(fixed.chi2, fixed.df, p_value, Status.OK, sequential=True)
