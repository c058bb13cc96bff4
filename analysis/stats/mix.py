"""Post-stratification: a difference of two ratio metrics with each cohort re-weighted to
the pooled mix of strata (here (service, route)), so a flag that moves traffic between
routes cannot fake a change of the overall (Simpson's paradox).

Miratrix, Sekhon & Yu 2013, "Adjusting treatment effect estimates by post-stratification
in randomized experiments": m_adj = Σ_s w_s m_s with w_s the pooled share of the
denominator (requests) in stratum s, and Var(m_adj) = Σ_s w_s² Var(m_s), the strata taken
as independent. Users active in several strata make that slightly optimistic.
"""

from __future__ import annotations

from collections.abc import Sequence

from flagscope.analysis.stats.estimate import Estimate, Method, normal_estimate
from flagscope.analysis.stats.ratio import RatioStats


def post_stratified_difference(
    strata: Sequence[tuple[RatioStats, RatioStats]], alpha: float
) -> Estimate:
    """Treatment minus control of the re-weighted ratio; `strata` holds (treatment,
    control) per-user sums for each stratum."""
    total = sum(t.sum_y + c.sum_y for t, c in strata)
    means = {"t": 0.0, "c": 0.0}
    variances = {"t": 0.0, "c": 0.0}
    for t, c in strata:
        w = (t.sum_y + c.sum_y) / total
        for key, stats in (("t", t), ("c", c)):
            means[key] += w * stats.ratio
            variances[key] += w * w * stats.variance()
    return normal_estimate(
        means["c"], means["t"], variances["c"], variances["t"], alpha, Method.DELTA
    )
