"""Stage 3 of the Spark cohort stage: `fs_requests` → `UnitSums`, as
`cohorts.LabelledRequests.unit_sums` computes them in DuckDB (its doc has the passes).

The quantile grid is read as DuckDB's `quantile_cont` reads it, to the last bit, not with
Spark's `percentile` (`exact_quantiles.read_grid`): Spark ranks the requests; the two
values around each grid point are fetched and interpolated here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flagscope.analysis.cohorts import (
    BASELINE,
    QUANTILES,
    TREATMENT,
    CohortSums,
    UnitSums,
    quantile_grid,
    ratio_stats,
)
from flagscope.analysis.exact_quantiles import Group, positions, read_grid
from flagscope.analysis.spark.adjustment import adjusted_moments
from flagscope.analysis.spark.session import cache, rows, values_view

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_KS = range(len(QUANTILES))
NAMES = {TREATMENT: "treatment", BASELINE: "baseline"}

_COUNTS_SQL = """
SELECT cohort, false, stratum, count(*), first(service_name), first(route)
FROM fs_requests GROUP BY cohort, stratum
UNION ALL
SELECT cohort, true, 0, count(*), NULL, NULL FROM fs_requests WHERE edge GROUP BY cohort
"""
_RANKED_SQL = """
SELECT r.cohort, r.whole, r.stratum, r.pos, r.duration_ms FROM (
    SELECT cohort, false AS whole, stratum, duration_ms,
           row_number() OVER (PARTITION BY cohort, stratum ORDER BY duration_ms) - 1 AS pos
    FROM fs_requests
    UNION ALL
    SELECT cohort, true, 0, duration_ms,
           row_number() OVER (PARTITION BY cohort ORDER BY duration_ms) - 1
    FROM fs_requests WHERE edge) r
JOIN fs_wanted w ON w.cohort = r.cohort AND w.whole = r.whole AND w.stratum = r.stratum
  AND w.pos = r.pos
"""


def _grids(
    spark: SparkSession, grid: list[float]
) -> tuple[dict[Group, list[float]], dict[tuple[int, int], tuple[str, str | None]]]:
    """The empirical quantile function of each group at `grid`, and each stratum's
    (service, route)."""
    counts = rows(spark, _COUNTS_SQL)
    wanted = {
        ((cohort, whole, stratum), pos)
        for cohort, whole, stratum, n, _, _ in counts
        for _, lo, hi in positions(n, grid)
        for pos in (lo, hi)
    }
    values_view(
        spark,
        "fs_wanted",
        "cohort INT, whole BOOLEAN, stratum BIGINT, pos BIGINT",
        [(*g, pos) for g, pos in sorted(wanted)],
    )
    values: dict[Group, dict[int, float]] = {}
    for c, w, s, pos, v in rows(spark, _RANKED_SQL):
        values.setdefault((c, w, s), {})[pos] = v
    grids = {
        (cohort, whole, stratum): read_grid(n, grid, values[cohort, whole, stratum].__getitem__)
        for cohort, whole, stratum, n, _, _ in counts
    }
    names = {(c, s): (service, route) for c, w, s, _, service, route in counts if not w}
    return grids, names


def _cuts(spark: SparkSession, grids: dict[Group, list[float]], grid: list[float]) -> None:
    """`fs_cuts`: per stratum, its own and its cohort's estimate of each quantile."""
    at = [grid.index(p) for p in QUANTILES]
    out = []
    for (cohort, whole, stratum), read in grids.items():
        if whole:
            continue
        overall = grids.get((cohort, True, 0))
        cuts = [read[i] for i in at]
        ocuts = [None if overall is None else overall[i] for i in at]
        out.append((cohort, stratum, *cuts, *ocuts))
    columns = ", ".join(f"{p}{k} DOUBLE" for p in ("cut", "ocut") for k in _KS)
    values_view(spark, "fs_cuts", f"cohort INT, stratum BIGINT, {columns}", out)


def _per_unit_sql() -> str:
    below = ", ".join(
        f"count_if(r.duration_ms <= c.cut{k}) AS b{k}, "
        f"count_if(r.edge AND r.duration_ms <= c.ocut{k}) AS o{k}"
        for k in _KS
    )
    return f"""
    SELECT r.cohort, r.stratum, r.unit, count(*) AS req, sum(r.err) AS err,
           sum(r.duration_ms) AS lat, count_if(r.edge) AS ereq,
           coalesce(sum(r.err) FILTER (WHERE r.edge), 0) AS eerr,
           coalesce(sum(r.duration_ms) FILTER (WHERE r.edge), 0) AS elat, {below}
    FROM fs_requests r JOIN fs_cuts c ON c.cohort = r.cohort AND c.stratum = r.stratum
    GROUP BY r.cohort, r.stratum, r.unit"""


_PER_COHORT_UNIT_SQL = f"""
SELECT cohort, unit, sum(ereq) AS req, sum(eerr) AS err, sum(elat) AS lat,
       {", ".join(f"sum(o{k}) AS o{k}" for k in _KS)}
FROM fs_per_unit GROUP BY cohort, unit HAVING sum(ereq) > 0
"""
_XS = ("err", "lat", *(f"b{k}" for k in _KS))


def _sums(below: str) -> str:
    """Across units: count, sums, squares and cross products with requests."""
    columns = ["count(*) AS n", "sum(req) AS req", "sum(req * req) AS req2"]
    for k, x in enumerate(("err", "lat", *(f"{below}{k}" for k in _KS))):
        name = _XS[k]
        columns += [f"sum({x}) AS {name}", f"sum({x} * {x}) AS {name}_2"]
        columns.append(f"sum({x} * req) AS {name}_req")
    return ", ".join(columns)


_TOTALS_SQL = f"""
SELECT cohort, false AS whole, stratum, {_sums("b")} FROM fs_per_unit GROUP BY cohort, stratum
UNION ALL
SELECT cohort, true, 0, {_sums("o")} FROM fs_per_cohort_unit GROUP BY cohort
"""
# each unit's leave-one-out change of each ratio, r = (x - R req) / (Y - req), for the
# jackknife variance (stats.ratio)
_LOO = ", ".join(
    f"sum((u.{x} - t.{x} / t.req * u.req) / (t.req - u.req)) AS {x}_loo, "
    f"sum(pow((u.{x} - t.{x} / t.req * u.req) / (t.req - u.req), 2)) AS {x}_loo2"
    for x in _XS
)
_LOO_SQL = f"""
SELECT u.cohort, u.whole, u.stratum, {_LOO} FROM (
    SELECT cohort, false AS whole, stratum, req, err, lat, {", ".join(f"b{k}" for k in _KS)}
    FROM fs_per_unit
    UNION ALL
    SELECT cohort, true, 0, req, err, lat, {", ".join(f"o{k}" for k in _KS)}
    FROM fs_per_cohort_unit) u
JOIN fs_totals t ON t.cohort = u.cohort AND t.whole = u.whole AND t.stratum = u.stratum
WHERE t.n > 1
GROUP BY u.cohort, u.whole, u.stratum
"""


def _keyed(spark: SparkSession, sql: str) -> dict[Group, dict[str, Any]]:
    return {(r["cohort"], r["whole"], r["stratum"]): r.asDict() for r in spark.sql(sql).collect()}


def unit_sums(spark: SparkSession) -> UnitSums:
    """Per cohort (edge requests) and per cohort and stratum (every entry span): the
    delta method's and the quantile intervals' sums, and the route-mix adjusted moments."""
    grid = list(quantile_grid())
    grids, names = _grids(spark, grid)
    _cuts(spark, grids, grid)
    cache(spark, "fs_per_unit", _per_unit_sql())
    cache(spark, "fs_per_cohort_unit", _PER_COHORT_UNIT_SQL)
    cache(spark, "fs_totals", _TOTALS_SQL)
    totals, loo = _keyed(spark, "SELECT * FROM fs_totals"), _keyed(spark, _LOO_SQL)
    overall: dict[str, CohortSums] = {}
    strata: list[CohortSums] = []
    for g, row in totals.items():
        cohort, whole, stratum = g
        service, route = (None, None) if whole else names[cohort, stratum]
        row = {**row, **loo.get(g, {})}  # the leave-one-out sums beside the totals
        sums = CohortSums(
            cohort=NAMES[cohort],
            service_name=service,
            route=route,
            errors=ratio_stats(row, "err"),
            latency=ratio_stats(row, "lat"),
            below_quantile=tuple(ratio_stats(row, f"b{k}") for k in _KS),
            grid=dict(zip(grid, grids[g], strict=True)),
        )
        if whole:
            overall[sums.cohort] = sums
        else:
            strata.append(sums)
    # as DuckDB orders them: by service, route (NULL last), then cohort (baseline first)
    strata.sort(
        key=lambda s: (
            s.service_name is None,
            s.service_name or "",
            s.route is None,
            s.route or "",
            s.cohort != "baseline",
        )
    )
    return UnitSums(overall, tuple(strata), adjusted_moments(spark))
