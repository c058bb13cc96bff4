"""The overall metrics that decide a verdict, adjusted twice (DESIGN "Statistics"):

1. for the route mix — post-stratified on the edge request's (service, route), with a
   user-level linearised variance (`stats.mix`: a user's routes are correlated, so this is
   not a sum of per-stratum variances);
2. optionally for each user's own past — CUPED (`stats.cuped`) with the user's requests in
   a look-back before their first exposure to the flag as the covariate.

Both run in DuckDB over `fs_per_unit` (per cohort, stratum and unit: edge requests, errors,
latency; built by `cohorts.LabelledRequests.unit_sums`); Python sees a row per stratum.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import duckdb

from flagscope.analysis.stats.cuped import CovariateMoments, regression_adjusted
from flagscope.analysis.stats.mix import Totals, jackknife_variance, linearize, pooled_weights

METRICS = {"error_rate": "eerr", "mean_latency": "elat"}  # metric → fs_per_unit column
PRE_COLUMN = {"error_rate": "err", "mean_latency": "lat"}  # … and its fs_pre column


@dataclass(frozen=True)
class AdjustedMoments:
    """One cohort's adjusted ratio with its variance, over the edge requests of `units`
    users; `stratified` is the estimate before CUPED (the same without a covariate),
    `theta` and `variance_reduction` are CUPED's (0 without a covariate)."""

    estimate: float
    variance: float
    units: int
    stratified: float
    theta: float = 0.0
    variance_reduction: float = 0.0


# A user's first exposure: their first evaluation of the flag anywhere in the lake (an
# earlier one outside the window would make "before the window" post-exposure data), or
# the first compared request of theirs. Their pre-exposure requests: root entry spans
# (what the user experienced, as the edge requests) carrying their user id in
# [first exposure - look-back, first exposure). Flagged traffic never enters: it is after.
_EXPOSURE_SQL = """
CREATE OR REPLACE TEMP TABLE fs_exposure AS
SELECT unit, min(first) AS first FROM (
    SELECT hash(user_id) AS unit, min(time) AS first FROM events_raw
    WHERE map_contains(flags, $flag) AND user_id IS NOT NULL GROUP BY 1
    UNION ALL
    SELECT unit, min(time) FROM fs_labelled WHERE NOT no_user GROUP BY 1
) WHERE unit IN (SELECT unit FROM fs_labelled WHERE NOT no_user) GROUP BY 1
"""
_PRE_SQL = """
CREATE OR REPLACE TEMP TABLE fs_pre AS
SELECT x.unit, count(*) AS req, sum(r.is_error::INTEGER) AS err, sum(r.duration_ms) AS lat
FROM events_raw r JOIN fs_exposure x ON hash(r.user_id) = x.unit
WHERE r.is_entry AND coalesce(r.parent_span_id, '') = '' AND r.duration_ms IS NOT NULL
  AND r.time >= $from AND r.time < $to
  AND r.time >= x.first - to_microseconds($lookback) AND r.time < x.first
GROUP BY 1
"""


def collect_pre_exposure(con: duckdb.DuckDBPyConnection, flag: str, lookback: timedelta) -> None:
    """`fs_pre`: per unit, its pre-exposure requests, errors and latency."""
    con.execute(_EXPOSURE_SQL, {"flag": flag})
    first, last = con.execute("SELECT min(first), max(first) FROM fs_exposure").fetchall()[0]
    span = int(lookback.total_seconds() * 1_000_000)
    if first is None:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE fs_pre (unit UBIGINT, req BIGINT, err BIGINT, lat DOUBLE)"
        )
        return
    # constant bounds let DuckDB skip files and row groups outside every look-back
    con.execute(_PRE_SQL, {"from": first - lookback, "to": last, "lookback": span})


def adjusted_moments(
    con: duckdb.DuckDBPyConnection, treatment: int, baseline: int, pre_exposure: bool
) -> dict[str, dict[int, AdjustedMoments]]:
    """Per metric and cohort (arm): the post-stratified estimate and its linearised
    variance, regression-adjusted on `fs_pre` when `pre_exposure`.

    The stratum totals give each stratum's weight, ratio and requests
    (`stats.mix.linearize`); one pass over `fs_per_unit` evaluates every unit's φ (its
    leave-one-out change of the estimate, its strata together) and, with a covariate, its
    ψ, and the jackknife moments per cohort."""
    rows = con.execute(
        "SELECT cohort, stratum, sum(eerr), sum(elat), sum(ereq) FROM fs_per_unit "
        "WHERE ereq > 0 GROUP BY ALL"
    ).fetchall()
    by_cohort: dict[int, dict[str, dict[int, Totals]]] = {}
    for cohort, stratum, err, lat, req in rows:
        cells = by_cohort.setdefault(cohort, {})
        cells.setdefault("error_rate", {})[stratum] = Totals(float(err), float(req))
        cells.setdefault("mean_latency", {})[stratum] = Totals(float(lat), float(req))
    if set(by_cohort) != {treatment, baseline}:
        return {}
    strata, cohorts, estimates = [], [], {}
    for metric in METRICS:
        t, c = by_cohort[treatment][metric], by_cohort[baseline][metric]
        weights = pooled_weights(t, c)
        for cohort, own in ((treatment, t), (baseline, c)):
            lin = linearize(own, weights)
            estimates[metric, cohort] = lin.estimate
            strata += [(metric, cohort, k, *params) for k, params in lin.strata.items()]
            cohorts.append((metric, cohort, lin.missing, lin.overall, lin.total_y))
    con.execute(
        "CREATE OR REPLACE TEMP TABLE fs_mix_strata (metric VARCHAR, cohort UTINYINT, "
        "stratum UBIGINT, w DOUBLE, ratio DOUBLE, total DOUBLE)"
    )
    con.executemany("INSERT INTO fs_mix_strata VALUES (?, ?, ?, ?, ?, ?)", strata)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE fs_mix_cohorts (metric VARCHAR, cohort UTINYINT, "
        "missing DOUBLE, overall DOUBLE, total_y DOUBLE)"
    )
    con.executemany("INSERT INTO fs_mix_cohorts VALUES (?, ?, ?, ?, ?)", cohorts)
    # φ: each unit's leave-one-out change of its cohort's estimate (stats.mix.Linearization
    # .influence), its strata together
    con.execute("""
        CREATE OR REPLACE TEMP TABLE fs_phi AS
        SELECT metric, cohort, unit,
               sum(w * (x - ratio * y) / CASE WHEN total > y THEN total - y ELSE total END)
               + any_value(missing) * (sum(x) - any_value(overall) * sum(y))
                 / CASE WHEN any_value(total_y) > sum(y) THEN any_value(total_y) - sum(y)
                        ELSE any_value(total_y) END AS phi
        FROM (
            SELECT k.metric, u.cohort, u.unit, u.ereq AS y, k.w, k.ratio, k.total,
                   CASE k.metric WHEN 'error_rate' THEN u.eerr ELSE u.elat END AS x,
                   c.missing, c.overall, c.total_y
            FROM fs_per_unit u JOIN fs_mix_strata k USING (cohort, stratum)
            JOIN fs_mix_cohorts c USING (metric, cohort)
            WHERE u.ereq > 0)
        GROUP BY metric, cohort, unit""")
    if not pre_exposure:
        out: dict[str, dict[int, AdjustedMoments]] = {}
        sums = "SELECT metric, cohort, count(*), sum(phi), sum(phi * phi) FROM fs_phi GROUP BY ALL"
        for metric, cohort, units, phi, phi2 in con.execute(sums).fetchall():
            variance = jackknife_variance(int(units), float(phi), float(phi2))
            estimate = estimates[metric, cohort]
            out.setdefault(metric, {})[cohort] = AdjustedMoments(
                estimate, variance, int(units), estimate
            )
        return out
    return _regression_adjusted(con, estimates, treatment, baseline)


def _regression_adjusted(
    con: duckdb.DuckDBPyConnection,
    estimates: dict[tuple[str, int], float],
    treatment: int,
    baseline: int,
) -> dict[str, dict[int, AdjustedMoments]]:
    """CUPED on the post-stratified estimates: ψ from each cohort's pre-exposure ratio."""
    pre = {
        cohort: (float(req or 0), float(err or 0), float(lat or 0))
        for cohort, req, err, lat in con.execute("""
            SELECT u.cohort, sum(p.req), sum(p.err), sum(p.lat)
            FROM (SELECT DISTINCT cohort, unit FROM fs_phi) u JOIN fs_pre p USING (unit)
            GROUP BY 1""").fetchall()
    }
    ratios = []
    for metric in METRICS:
        for cohort in (treatment, baseline):
            req, err, lat = pre.get(cohort, (0.0, 0.0, 0.0))
            x = err if metric == "error_rate" else lat
            ratios.append((metric, cohort, x / req if req else 0.0, req))
    con.execute(
        "CREATE OR REPLACE TEMP TABLE fs_pre_ratios "
        "(metric VARCHAR, cohort UTINYINT, ratio DOUBLE, req DOUBLE)"
    )
    con.executemany("INSERT INTO fs_pre_ratios VALUES (?, ?, ?, ?)", ratios)
    # ψ: each unit's leave-one-out change of its cohort's pre-exposure ratio (0 without
    # pre-exposure requests)
    rows = con.execute("""
        SELECT metric, cohort, count(*), sum(phi), sum(psi), sum(phi * phi), sum(phi * psi),
               sum(psi * psi)
        FROM (
            SELECT f.metric, f.cohort, f.phi, CASE WHEN r.req > 0 THEN coalesce(
                (CASE f.metric WHEN 'error_rate' THEN p.err ELSE p.lat END - r.ratio * p.req)
                / CASE WHEN r.req > p.req THEN r.req - p.req ELSE r.req END, 0)
                ELSE 0 END AS psi
            FROM fs_phi f JOIN fs_pre_ratios r USING (metric, cohort)
            LEFT JOIN fs_pre p USING (unit))
        GROUP BY ALL""").fetchall()
    moments = {
        (metric, cohort): (int(n), *(float(v) for v in sums)) for metric, cohort, n, *sums in rows
    }
    ratio = {(m, c): r for m, c, r, _ in ratios}
    out: dict[str, dict[int, AdjustedMoments]] = {}
    for metric in METRICS:
        req_t, req_c = pre.get(treatment, (0.0,))[0], pre.get(baseline, (0.0,))[0]
        pooled = (
            (ratio[metric, treatment] * req_t + ratio[metric, baseline] * req_c) / (req_t + req_c)
            if req_t + req_c > 0
            else 0.0
        )
        cov = {
            cohort: CovariateMoments(
                int(moments[metric, cohort][0]),
                estimates[metric, cohort],
                ratio[metric, cohort],
                *moments[metric, cohort][1:],
            )
            for cohort in (treatment, baseline)
        }
        adjusted = regression_adjusted(cov[treatment], cov[baseline], pooled)
        for cohort, (estimate, variance) in (
            (treatment, adjusted.treatment),
            (baseline, adjusted.control),
        ):
            out.setdefault(metric, {})[cohort] = AdjustedMoments(
                estimate,
                variance,
                cov[cohort].units,
                estimates[metric, cohort],
                adjusted.theta,
                adjusted.variance_reduction,
            )
    return out
