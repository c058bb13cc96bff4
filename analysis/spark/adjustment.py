"""The route-mix adjusted moments of `flagscope.analysis.adjustment` over the Spark stage's
`fs_per_unit`: the stratum totals come to Python (a row per cohort and stratum), the pure
`stats.mix` linearises them, and one Spark pass evaluates each unit's influence φ and the
jackknife moments per cohort. (CUPED's regression adjustment is DuckDB's only, for now.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flagscope.analysis.adjustment import METRICS, AdjustedMoments
from flagscope.analysis.cohorts import BASELINE, TREATMENT
from flagscope.analysis.spark.session import rows, values_view
from flagscope.analysis.stats.mix import (
    Linearization,
    Totals,
    jackknife_variance,
    linearize,
    pooled_weights,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_NAMES = {TREATMENT: "treatment", BASELINE: "baseline"}
# `adjustment._influence` in Spark SQL: Σ_s w_s (x - R_s y) / (Y_s - y) + W (x - R y) / (Y - y)
# per unit (stats.mix.Linearization.influence), then its count, sum and square per cohort.
_PHI_SQL = """
SELECT metric, cohort, count(*), sum(value), sum(value * value) FROM (
    SELECT metric, cohort, unit,
           sum(w * (x - ratio * y) / CASE WHEN total > y THEN total - y ELSE total END)
           + first(missing) * (sum(x) - first(overall) * sum(y))
             / CASE WHEN first(total_y) > sum(y) THEN first(total_y) - sum(y)
                    ELSE first(total_y) END AS value
    FROM (
        SELECT k.metric, u.cohort, u.unit, u.ereq AS y, k.w, k.ratio, k.total,
               CASE k.metric WHEN 'error_rate' THEN u.eerr ELSE u.elat END AS x,
               c.missing, c.overall, c.total_y
        FROM fs_per_unit u JOIN fs_phi_strata k ON k.cohort = u.cohort AND k.stratum = u.stratum
        JOIN fs_phi_cohorts c ON c.metric = k.metric AND c.cohort = u.cohort
        WHERE u.ereq > 0)
    GROUP BY metric, cohort, unit)
GROUP BY metric, cohort
"""


def adjusted_moments(spark: SparkSession) -> dict[str, dict[str, AdjustedMoments]]:
    """Per metric and cohort name: the post-stratified estimate and its linearised
    variance (empty unless both cohorts have edge requests)."""
    found = rows(
        spark,
        "SELECT cohort, stratum, sum(eerr), sum(elat), sum(ereq) FROM fs_per_unit "
        "WHERE ereq > 0 GROUP BY cohort, stratum",
    )
    by_cohort: dict[int, dict[str, dict[int, Totals]]] = {}
    for cohort, stratum, err, lat, req in found:
        cells = by_cohort.setdefault(cohort, {})
        cells.setdefault("error_rate", {})[stratum] = Totals(float(err), float(req))
        cells.setdefault("mean_latency", {})[stratum] = Totals(float(lat), float(req))
    if set(by_cohort) != {TREATMENT, BASELINE}:
        return {}
    lins: dict[tuple[str, int], Linearization[int]] = {}
    for metric in METRICS:
        t, c = by_cohort[TREATMENT][metric], by_cohort[BASELINE][metric]
        weights = pooled_weights(t, c)
        for cohort, own in ((TREATMENT, t), (BASELINE, c)):
            lins[metric, cohort] = linearize(own, weights)
    strata = [(m, c, k, *p) for (m, c), lin in lins.items() for k, p in lin.strata.items()]
    cohorts = [(m, c, lin.missing, lin.overall, lin.total_y) for (m, c), lin in lins.items()]
    values_view(
        spark,
        "fs_phi_strata",
        "metric STRING, cohort INT, stratum BIGINT, w DOUBLE, ratio DOUBLE, total DOUBLE",
        strata,
    )
    values_view(
        spark,
        "fs_phi_cohorts",
        "metric STRING, cohort INT, missing DOUBLE, overall DOUBLE, total_y DOUBLE",
        cohorts,
    )
    out: dict[str, dict[str, AdjustedMoments]] = {}
    for metric, cohort, units, phi, phi2 in rows(spark, _PHI_SQL):
        variance = jackknife_variance(int(units), float(phi), float(phi2))
        estimate = lins[metric, cohort].estimate
        out.setdefault(metric, {})[_NAMES[cohort]] = AdjustedMoments(
            estimate, variance, int(units), estimate
        )
    return out
