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


@dataclass(frozen=True)
class SrmResult:
    """Pearson chi-square goodness of fit of users per variant."""

    chi2: float
    df: int
    p_value: float
    status: Status

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
