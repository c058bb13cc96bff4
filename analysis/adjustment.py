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
from flagscope.analysis.stats.mix import (
    Linearization,
    Totals,
    jackknife_variance,
    linearize,
    pooled_weights,
)
from flagscope.collector.lake.narrow import NAME_COLUMNS, keys_sql, same_names

METRICS = ("error_rate", "mean_latency")  # the adjusted metrics: err / req and lat / req


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
# [first exposure - look-back, first exposure), per stratum (the edge's service and route,
# as `cohorts` forms it) so that the covariate is re-weighted to the same route mix as the
# metric. Flagged traffic never enters: it is after.
_EXPOSURE_SQL = """
CREATE OR REPLACE TEMP TABLE fs_exposure AS
WITH compared AS (SELECT unit, min(time) AS first FROM fs_labelled WHERE NOT no_user GROUP BY 1)
SELECT c.unit, least(c.first, coalesce(e.first, c.first)) AS first
FROM compared c LEFT JOIN (
    SELECT hash(user_id) AS unit, min(time) AS first FROM events_raw
    WHERE map_contains(flags, $flag) AND user_id IS NOT NULL GROUP BY 1
) e USING (unit)
"""
_NAMES = ", ".join(f"r.{c}" for c in NAME_COLUMNS)
_PRE_SQL = f"""
CREATE OR REPLACE TEMP TABLE fs_pre AS
WITH pre AS MATERIALIZED (
    SELECT x.unit, {_NAMES}, count(*) AS req, sum(r.is_error::INTEGER) AS err,
           sum(r.duration_ms) AS lat
    FROM events_raw r JOIN fs_exposure x ON hash(r.user_id) = x.unit
    WHERE r.is_entry AND coalesce(r.parent_span_id, '') = '' AND r.duration_ms IS NOT NULL
      AND r.time >= $from AND r.time < $to
      AND r.time >= x.first - to_microseconds($lookback) AND r.time < x.first
    GROUP BY ALL)
SELECT p.unit, k.stratum, sum(p.req)::BIGINT AS req, sum(p.err)::BIGINT AS err, sum(p.lat) AS lat
FROM pre p JOIN ({keys_sql("pre")}) k ON {same_names("p", "k")}
GROUP BY ALL
"""


def collect_pre_exposure(con: duckdb.DuckDBPyConnection, flag: str, lookback: timedelta) -> None:
    """`fs_pre`: per unit, its pre-exposure requests, errors and latency."""
    con.execute(_EXPOSURE_SQL, {"flag": flag})
    first, last = con.execute("SELECT min(first), max(first) FROM fs_exposure").fetchall()[0]
    span = int(lookback.total_seconds() * 1_000_000)
    if first is None:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE fs_pre "
            "(unit UBIGINT, stratum UBIGINT, req BIGINT, err BIGINT, lat DOUBLE)"
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
    weights, lins = {}, {}
    for metric in METRICS:
        t, c = by_cohort[treatment][metric], by_cohort[baseline][metric]
        weights[metric] = pooled_weights(t, c)
        for cohort, own in ((treatment, t), (baseline, c)):
            lins[metric, cohort] = linearize(own, weights[metric])
    estimates = {key: lin.estimate for key, lin in lins.items()}
    # φ: each unit's leave-one-out change of its cohort's estimate, its strata together
    _influence(
        con,
        "fs_phi",
        "SELECT cohort, stratum, unit, eerr AS err, elat AS lat, ereq AS req FROM fs_per_unit "
        "WHERE ereq > 0",
        lins,
    )
    if not pre_exposure:
        out: dict[str, dict[int, AdjustedMoments]] = {}
        sums = ", ".join(f"sum({m}), sum({m} * {m})" for m in METRICS)
        for cohort, units, *moments in con.execute(
            f"SELECT cohort, count(*), {sums} FROM fs_phi GROUP BY cohort"
        ).fetchall():
            for metric, phi, phi2 in zip(METRICS, moments[::2], moments[1::2], strict=True):
                variance = jackknife_variance(int(units), float(phi), float(phi2))
                estimate = estimates[metric, cohort]
                out.setdefault(metric, {})[cohort] = AdjustedMoments(
                    estimate, variance, int(units), estimate
                )
        return out
    return _regression_adjusted(con, estimates, weights, treatment, baseline)


def _influence(
    con: duckdb.DuckDBPyConnection,
    table: str,
    rows: str,
    lins: dict[tuple[str, int], Linearization[int]],
) -> None:
    """`table` (cohort, unit, and a column per metric): each unit's leave-one-out change
    of its cohort's post-stratified ratio of that metric
    (`stats.mix.Linearization.influence` in SQL), from `rows` = (cohort, stratum, unit,
    err, lat, req) per unit and stratum. (A column per metric, not a row: a row per metric
    and unit doubled the rows grouped, 1.6-2.0 s of a 100 M diff; bench/RESULTS.md.)"""
    arms = sorted({cohort for _, cohort in lins})
    # (both metrics are linearised over the same rows, so over the same strata)
    strata = [
        (cohort, k, *(v for metric in METRICS for v in lins[metric, cohort].strata[k]))
        for cohort in arms
        for k in lins[METRICS[0], cohort].strata
    ]
    cohorts = []
    for cohort in arms:
        row: list[float] = [cohort]
        for metric in METRICS:
            lin = lins[metric, cohort]
            row += [lin.missing, lin.overall, lin.total_y]
        cohorts.append(tuple(row))
    per_metric = ", ".join(
        f"{x}_{metric} DOUBLE" for metric in METRICS for x in ("w", "ratio", "total")
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {table}_strata (cohort UTINYINT, stratum UBIGINT, "
        f"{per_metric})"
    )
    if strata:
        con.executemany(f"INSERT INTO {table}_strata VALUES (?, ?, ?, ?, ?, ?, ?, ?)", strata)
    per_cohort = ", ".join(
        f"{x}_{metric} DOUBLE" for metric in METRICS for x in ("missing", "overall", "total_y")
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table}_cohorts (cohort UTINYINT, {per_cohort})")
    if cohorts:
        con.executemany(f"INSERT INTO {table}_cohorts VALUES (?, ?, ?, ?, ?, ?, ?)", cohorts)
    values = ", ".join(
        f"sum(k.w_{metric} * (u.{x} - k.ratio_{metric} * u.req) / CASE WHEN k.total_{metric} "
        f"> u.req THEN k.total_{metric} - u.req ELSE k.total_{metric} END) "
        f"+ any_value(c.missing_{metric}) * (sum(u.{x}) - any_value(c.overall_{metric}) "
        f"* sum(u.req)) / CASE WHEN any_value(c.total_y_{metric}) > sum(u.req) "
        f"THEN any_value(c.total_y_{metric}) - sum(u.req) ELSE any_value(c.total_y_{metric}) "
        f"END AS {metric}"
        for metric, x in zip(METRICS, ("err", "lat"), strict=True)
    )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        SELECT u.cohort, u.unit, {values}
        FROM ({rows}) u JOIN {table}_strata k USING (cohort, stratum)
        JOIN {table}_cohorts c USING (cohort)
        GROUP BY u.cohort, u.unit""")


def _regression_adjusted(
    con: duckdb.DuckDBPyConnection,
    estimates: dict[tuple[str, int], float],
    weights: dict[str, dict[int, float]],
    treatment: int,
    baseline: int,
) -> dict[str, dict[int, AdjustedMoments]]:
    """CUPED on the post-stratified estimates; the covariate is each cohort's
    pre-exposure ratio re-weighted to the same route mix (ψ its leave-one-out changes)."""
    pre_rows = (
        "SELECT u.cohort, p.stratum, p.unit, p.err, p.lat, p.req "
        "FROM fs_phi u JOIN fs_pre p USING (unit)"
    )
    own: dict[tuple[str, int], dict[int, Totals]] = {}
    for cohort, stratum, err, lat, req in con.execute(
        f"SELECT cohort, stratum, sum(err), sum(lat), sum(req) FROM ({pre_rows}) GROUP BY ALL"
    ).fetchall():
        own.setdefault(("error_rate", cohort), {})[stratum] = Totals(float(err), float(req))
        own.setdefault(("mean_latency", cohort), {})[stratum] = Totals(float(lat), float(req))
    lins = {
        (metric, cohort): linearize(own.get((metric, cohort), {}), weights[metric])
        for metric in METRICS
        for cohort in (treatment, baseline)
    }
    _influence(con, "fs_psi", pre_rows, lins)
    # per metric: Σφ, Σψ, Σφ², Σφψ, Σψ² (a unit without pre-exposure requests: ψ = 0)
    sums = ", ".join(
        f"sum(f.{m}), sum(coalesce(p.{m}, 0)), sum(f.{m} * f.{m}), "
        f"sum(f.{m} * coalesce(p.{m}, 0)), sum(coalesce(p.{m}, 0) ** 2)"
        for m in METRICS
    )
    moments: dict[tuple[str, int], tuple[int, float, float, float, float, float]] = {}
    for cohort, n, *values in con.execute(
        f"SELECT f.cohort, count(*), {sums} FROM fs_phi f LEFT JOIN fs_psi p "
        "USING (cohort, unit) GROUP BY f.cohort"
    ).fetchall():
        for i, metric in enumerate(METRICS):
            phi, psi, phi2, cross, psi2 = (float(v) for v in values[5 * i : 5 * i + 5])
            moments[metric, cohort] = (int(n), phi, psi, phi2, cross, psi2)
    out: dict[str, dict[int, AdjustedMoments]] = {}
    for metric in METRICS:
        req = {c: lins[metric, c].total_y for c in (treatment, baseline)}
        covariate = {c: lins[metric, c].estimate for c in (treatment, baseline)}
        total = req[treatment] + req[baseline]
        pooled = sum(covariate[c] * req[c] for c in req) / total if total > 0 else 0.0
        cov = {
            cohort: CovariateMoments(
                int(moments[metric, cohort][0]),
                estimates[metric, cohort],
                covariate[cohort],
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
