"""The SQL that forms a flag's cohorts and reduces them to sufficient statistics (DESIGN contract 3).

- A request is an entry span: a SERVER span, or a root span.
- A trace belongs to the variant of the flag's first evaluation anywhere in it (often a
  child span of another service), so the whole request is labelled.
- The unit is the user: the evaluation's targeting key, else the request's own user id,
  else (no user known) the trace itself.
- A user seen in both compared variants (crossover) keeps the first variant: requests of
  their traces under the other variant are left out, and the count is reported.
- Test traffic is excluded by trace (any test marker in the trace) and by user (a user
  ever marked as a tester), unless asked to include it or to look only at it.

Everything heavy runs in DuckDB; Python receives a few rows per cohort and stratum.
Traces are joined on the lake's `trace_key` (16 bytes, not 32 hex characters), requests
found by `is_entry`, and users and units carried as 64-bit hashes: at 10 M events that
took a diff from 5.6 s to about 3 s (bench/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from flagscope.analysis.result import TrafficFilter

QUANTILES = (0.5, 0.9, 0.95, 0.99)
# Probabilities around each quantile at which the empirical quantile function is read,
# so a rank interval (flagscope.analysis.stats.quantiles) can be mapped back to latencies by
# interpolation without another pass over the data.
_OFFSETS = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08)


def quantile_grid() -> tuple[float, ...]:
    """Fine steps around each reported quantile, and every 5th percentile as a coarse
    fallback for small samples (each probability costs time in DuckDB's quantile_cont)."""
    fine = {
        min(max(p + sign * d, 0.0), 1.0) for p in QUANTILES for d in _OFFSETS for sign in (-1, 1)
    }
    coarse = {i / 20 for i in range(21)}
    return tuple(sorted({round(g, 6) for g in fine | coarse}))


@dataclass(frozen=True)
class CohortQuery:
    flag: str
    treatment: str
    baseline: str
    start: datetime  # UTC, naive (the lake's timestamps are UTC without a zone)
    end: datetime
    service: str | None = None
    route: str | None = None
    test_mode: TrafficFilter = TrafficFilter.EXCLUDE


def _params(q: CohortQuery) -> dict[str, Any]:
    return {
        "flag": q.flag,
        "treatment": q.treatment,
        "baseline": q.baseline,
        "start": q.start,
        "end": q.end,
    }


# Evaluations may precede the entry span's start a little (clock skew between services)
# and follow it by up to the request's duration: look a little beyond the window.
_SLACK = "INTERVAL 1 HOUR"

# Arms: the compared variants coded as small integers, so the per-trace and per-user
# bookkeeping over millions of rows moves bytes, not strings.
TREATMENT, BASELINE, OTHER = 1, 0, 2
_ARM = (
    f"CASE variant WHEN $treatment THEN {TREATMENT} WHEN $baseline THEN {BASELINE} ELSE {OTHER} END"
)


def _cohort_name(column: str = "cohort") -> str:
    return f"CASE {column} WHEN {TREATMENT} THEN 'treatment' ELSE 'baseline' END"


# Units and users are compared by a 64-bit hash of the id (DuckDB's `hash`): grouping and
# joining on an integer is several times cheaper than on strings. Two of a million users
# share a hash with probability ~3e-8; the cost would be two users counted as one unit.
# (`hash(NULL)` is not NULL, hence the CASE.)
def _user_hash(column: str) -> str:
    return f"CASE WHEN {column} IS NOT NULL THEN hash({column}) END"


# (`map_contains` first: it rejects the rows without the flag faster than extracting.)
_EVALS_SQL = f"""
CREATE OR REPLACE TEMP TABLE fs_evals AS
SELECT trace_key, {_user_hash("user_id")} AS user_hash, time, flags[$flag] AS variant
FROM events_raw
WHERE time >= $start - {_SLACK} AND time < $end + {_SLACK}
  AND trace_key IS NOT NULL AND map_contains(flags, $flag) AND flags[$flag] IS NOT NULL
"""

_TESTS_SQL = f"""
CREATE OR REPLACE TEMP TABLE fs_tests AS
SELECT trace_key, {_user_hash("user_id")} AS user_hash FROM events_raw
WHERE is_test AND time >= $start - {_SLACK} AND time < $end + {_SLACK}
"""

# A trace's arm and unit: those of its first evaluation (of the first one naming a user);
# and whether anything in it was marked as test traffic. (A test-marked log record
# without a trace has a NULL key, and `x IN (…, NULL)` is NULL rather than false for
# every other trace: hence the filter.)
_TRACES_SQL = f"""
CREATE OR REPLACE TEMP TABLE fs_traces AS
SELECT *, trace_key IN (SELECT trace_key FROM fs_tests WHERE trace_key IS NOT NULL) AS test_trace FROM (
    SELECT trace_key, arg_min(arm, time) AS arm,
           arg_min(user_hash, time) FILTER (WHERE user_hash IS NOT NULL) AS eval_user
    FROM (SELECT trace_key, time, {_ARM} AS arm, user_hash FROM fs_evals)
    GROUP BY trace_key HAVING arg_min(arm, time) <> {OTHER})
"""
# The same when no trace evaluated the flag twice (the usual case): no grouping needed.
_ONE_EVALUATION_PER_TRACE_SQL = "SELECT count(*) = count(DISTINCT trace_key) FROM fs_evals"
_TRACES_ONE_EVALUATION_SQL = f"""
CREATE OR REPLACE TEMP TABLE fs_traces AS
SELECT trace_key, arm, user_hash AS eval_user,
       trace_key IN (SELECT trace_key FROM fs_tests WHERE trace_key IS NOT NULL) AS test_trace
FROM (SELECT trace_key, {_ARM} AS arm, user_hash FROM fs_evals) WHERE arm <> {OTHER}
"""

# Users who evaluated both compared variants (crossover) with their first one, and test
# users: one table, so that each request needs one lookup by user.
_ASSIGN_SQL = f"""
CREATE OR REPLACE TEMP TABLE fs_user_first AS
SELECT user_hash, arg_min(arm, time) AS first_arm
FROM (SELECT time, {_ARM} AS arm, user_hash FROM fs_evals WHERE user_hash IS NOT NULL)
GROUP BY user_hash
HAVING min(arm) FILTER (WHERE arm <> {OTHER}) <> max(arm) FILTER (WHERE arm <> {OTHER});

CREATE OR REPLACE TEMP TABLE fs_user_marks AS
SELECT user_hash, max(first_arm) AS first_arm, bool_or(tester) AS tester FROM (
    SELECT user_hash, first_arm, false AS tester FROM fs_user_first
    UNION ALL
    SELECT user_hash, NULL, true FROM fs_tests WHERE user_hash IS NOT NULL
) GROUP BY user_hash;

CREATE OR REPLACE TEMP TABLE fs_labelled AS
WITH r AS (
    SELECT r.trace_key, r.span_key, t.arm, t.test_trace,
           coalesce(t.eval_user, {_user_hash("r.user_id")}) AS user_hash,
           coalesce(r.service_name, 'unknown_service') AS service_name,
           trim(coalesce(r.http_method, '') || ' ' || coalesce(r.http_route, r.name)) AS route,
           r.time, r.duration_ms, r.is_error
    FROM events_raw r JOIN fs_traces t USING (trace_key)
    WHERE r.is_entry AND r.time >= $start AND r.time < $end AND r.duration_ms IS NOT NULL {{scope}}
)
SELECT r.arm AS cohort, coalesce(r.user_hash, hash(r.trace_key)) AS unit,
       r.user_hash IS NULL AS no_user, hash(r.service_name, r.route) AS stratum,
       r.service_name, r.route, r.time, r.duration_ms, r.is_error::UTINYINT AS err,
       r.trace_key, r.span_key, r.test_trace OR coalesce(um.tester, false) AS is_test,
       coalesce(r.arm <> um.first_arm, false) AS crossed
FROM r LEFT JOIN fs_user_marks um USING (user_hash)
"""

# A client that retried may have delivered a span twice. Checking is cheap; removing
# duplicates is not, so it happens only when there are any. Copies of a span share their
# trace and user, hence their labels: keeping any one of them is exact.
# Counting distinct span keys alone is cheaper and still sound: equal (trace, span) pairs
# share a span key, and two spans of different traces sharing one (~1e-7 at a million
# spans) only sends the lake through the exact de-duplication.
_DUPLICATES = "count(span_key) - count(DISTINCT span_key)"
_DEDUP_SQL = (
    "CREATE OR REPLACE TEMP TABLE fs_labelled AS "
    "SELECT DISTINCT ON (trace_key, span_key) * FROM fs_labelled WHERE span_key IS NOT NULL "
    "UNION ALL SELECT * FROM fs_labelled WHERE span_key IS NULL"
)


def collect_evaluations(
    con: duckdb.DuckDBPyConnection, flag: str, start: datetime, end: datetime
) -> dict[str, int]:
    """Create `fs_evals` (the flag's evaluations around the window, in one scan) and
    return the users (or traces, without a user) per variant inside the window."""
    con.execute(_EVALS_SQL, {"flag": flag, "start": start, "end": end})
    rows = con.execute(
        "SELECT variant, count(DISTINCT coalesce(user_hash, hash(trace_key))) FROM fs_evals "
        "WHERE time >= $start AND time < $end GROUP BY 1 ORDER BY 1",
        {"start": start, "end": end},
    ).fetchall()
    return {variant: int(n) for variant, n in rows}


def label_requests(con: duckdb.DuckDBPyConnection, q: CohortQuery) -> dict[str, int]:
    """Create `fs_labelled` (every entry span of the window in a compared variant, with its
    cohort, unit, stratum, test and crossover marks) and the view `fs_requests` (the ones
    compared); return what was left out (test traffic, crossover, requests without a
    user). Needs `collect_evaluations` first."""
    scope = ""
    params = _params(q)
    if q.service is not None:
        scope += " AND r.service_name = $service"
        params["service"] = q.service
    if q.route is not None:
        scope += (
            " AND (coalesce(r.http_route, r.name) = $route OR "
            "trim(coalesce(r.http_method, '') || ' ' || coalesce(r.http_route, r.name)) = $route)"
        )
        params["route"] = q.route
    con.execute(_TESTS_SQL, {"start": q.start, "end": q.end})
    one_each = con.execute(_ONE_EVALUATION_PER_TRACE_SQL).fetchall()[0][0]
    con.execute(
        _TRACES_ONE_EVALUATION_SQL if one_each else _TRACES_SQL,
        {"treatment": q.treatment, "baseline": q.baseline},
    )
    for statement in _ASSIGN_SQL.format(scope=scope).split(";"):
        if statement.strip():
            used = {k: v for k, v in params.items() if f"${k}" in statement}
            con.execute(statement, used)
    excluded, duplicates = _exclusions(con)
    if duplicates:
        con.execute(_DEDUP_SQL)
        excluded, _ = _exclusions(con)
    keep = {
        TrafficFilter.EXCLUDE: "NOT is_test",
        TrafficFilter.INCLUDE: "true",
        TrafficFilter.ONLY: "is_test",
    }
    con.execute(
        "CREATE OR REPLACE TEMP VIEW fs_requests AS "
        "SELECT cohort, unit, stratum, service_name, route, time, duration_ms, err "
        f"FROM fs_labelled WHERE NOT crossed AND {keep[q.test_mode]}"
    )
    return excluded


_EXCLUSION_KEYS = (
    "test_requests",
    "test_users",
    "crossover_requests",
    "crossover_users",
    "requests_without_user",
)


def _exclusions(con: duckdb.DuckDBPyConnection) -> tuple[dict[str, int], int]:
    """What was left out of the comparison, for the report; and how many rows are extra
    copies of a span (counted in the same pass)."""
    *counts, duplicates = con.execute(f"""
        SELECT count(*) FILTER (WHERE is_test),
               count(DISTINCT unit) FILTER (WHERE is_test),
               count(*) FILTER (WHERE crossed AND NOT is_test),
               (SELECT count(*) FROM fs_user_first),
               count(*) FILTER (WHERE no_user),
               {_DUPLICATES}
        FROM fs_labelled""").fetchall()[0]
    return dict(zip(_EXCLUSION_KEYS, (int(v or 0) for v in counts), strict=True)), duplicates


def unit_sums(con: duckdb.DuckDBPyConnection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per cohort, and per cohort and stratum (service, route): the sufficient statistics
    of the delta method and of the cluster-aware quantile intervals.

    Pass 1 reads the empirical quantile functions on `quantile_grid()` (both levels in one
    GROUPING SETS query). Pass 2 sums per unit (user) and stratum in one scan: req, err,
    lat, and b{k} / o{k} = requests at or below the k-th quantile estimate of the stratum /
    of the whole cohort. Then across units: n (units), sums, squares and cross products
    with req — for strata from those rows, for cohorts after adding each unit's strata up.
    Returns (cohort rows, stratum rows).
    """
    grid = list(quantile_grid())
    ks = range(len(QUANTILES))
    # The quantile estimates join each request as plain columns (a 74-element list per
    # row would be copied through the join).
    cuts = ", ".join(f"{{q}}.qs[{grid.index(p) + 1}] AS cut{k}" for k, p in enumerate(QUANTILES))
    below = ", ".join(
        f"count(*) FILTER (WHERE r.duration_ms <= c.cut{k}) AS b{k}, "
        f"count(*) FILTER (WHERE r.duration_ms <= c.ocut{k}) AS o{k}"
        for k in ks
    )

    def sums(b: str) -> str:
        return ", ".join(
            [
                "count(*) AS n",
                "sum(req) AS req",
                "sum(err) AS err",
                "sum(req * req) AS req2",
                "sum(err * err) AS err2",
                "sum(err * req) AS err_req",
                "sum(lat) AS lat",
                "sum(lat * lat) AS lat2",
                "sum(lat * req) AS lat_req",
            ]
            + [
                f"sum({b}{k}) AS b{k}, sum({b}{k} * {b}{k}) AS b{k}_2, sum({b}{k} * req) AS b{k}_req"
                for k in ks
            ]
        )

    con.execute(f"""
    CREATE OR REPLACE TEMP TABLE fs_quantiles AS
    SELECT cohort, stratum, quantile_cont(duration_ms, {grid}) AS qs,
           any_value(service_name) AS service_name, any_value(route) AS route
    FROM fs_requests GROUP BY GROUPING SETS ((cohort), (cohort, stratum));

    CREATE OR REPLACE TEMP TABLE fs_cuts AS
    SELECT s.cohort, s.stratum, {cuts.format(q="s")}, {cuts.format(q="o").replace("AS cut", "AS ocut")}
    FROM fs_quantiles s JOIN fs_quantiles o ON o.cohort = s.cohort AND o.stratum IS NULL
    WHERE s.stratum IS NOT NULL
    """)
    result = con.execute(f"""
    WITH per_unit AS MATERIALIZED (
        SELECT r.cohort, r.stratum, r.unit, count(*) AS req, sum(r.err) AS err,
               sum(r.duration_ms) AS lat, {below}
        FROM fs_requests r JOIN fs_cuts c USING (cohort, stratum)
        GROUP BY ALL
    ), per_cohort_unit AS (
        SELECT cohort, unit, sum(req) AS req, sum(err) AS err, sum(lat) AS lat,
               {", ".join(f"sum(o{k}) AS o{k}" for k in ks)}
        FROM per_unit GROUP BY ALL
    ), totals AS (
        SELECT cohort, stratum, {sums("b")} FROM per_unit GROUP BY ALL
        UNION ALL
        SELECT cohort, NULL, {sums("o")} FROM per_cohort_unit GROUP BY ALL
    )
    SELECT t.* REPLACE ({_cohort_name("t.cohort")} AS cohort), q.qs, q.service_name, q.route
    FROM totals t JOIN fs_quantiles q ON q.cohort = t.cohort AND q.stratum IS NOT DISTINCT FROM t.stratum
    ORDER BY t.stratum IS NOT NULL, q.service_name, q.route, t.cohort
    """)
    columns = [d[0] for d in result.description]
    overall: list[dict[str, Any]] = []
    strata: list[dict[str, Any]] = []
    for values in result.fetchall():
        row = dict(zip(columns, values, strict=True))
        row["grid"] = dict(zip(grid, row.pop("qs"), strict=True))
        (overall if row.pop("stratum") is None else strata).append(row)
    for row in overall:
        del row["service_name"], row["route"]
    return overall, strata


def time_series(con: duckdb.DuckDBPyConnection, bucket_seconds: int) -> list[dict[str, Any]]:
    """Per cohort and time bucket: requests, errors, p95 latency (for the report's charts)."""
    result = con.execute(f"""
        SELECT {_cohort_name()} AS cohort, time_bucket(INTERVAL '{int(bucket_seconds)} seconds', time) AS bucket,
               count(*) AS requests, sum(err) AS errors,
               quantile_cont(duration_ms, 0.95) AS p95_ms
        FROM fs_requests GROUP BY ALL ORDER BY ALL""")
    names = [d[0] for d in result.description]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def latency_histogram(
    con: duckdb.DuckDBPyConnection, bins: int = 40
) -> tuple[list[float], dict[str, list[int]]]:
    """Log-spaced latency bins over both cohorts: (bin edges in ms, counts per cohort)."""
    low, high = con.execute(
        "SELECT min(duration_ms) FILTER (WHERE duration_ms > 0), max(duration_ms) FROM fs_requests"
    ).fetchall()[0]
    if low is None or high is None or high <= low:
        return [], {}
    ratio = (high / low) ** (1 / bins)
    edges = [low * ratio**i for i in range(bins + 1)]
    rows = con.execute(
        f"SELECT {_cohort_name()} AS cohort, least(greatest(floor(ln(greatest(duration_ms, $low) / $low) / ln($ratio)), 0), "
        "$last)::INTEGER AS bin, count(*) FROM fs_requests GROUP BY ALL",
        {"low": low, "ratio": ratio, "last": bins - 1},
    ).fetchall()
    counts: dict[str, list[int]] = {}
    for cohort, index, n in rows:
        counts.setdefault(cohort, [0] * bins)[index] += int(n)
    return edges, counts
