"""The lake query behind "what is different" (`different`): a route's requests of both
arms, the attribute values of their traces' spans, and per value the per-user sums the
test needs — sufficient statistics, never rows, leave DuckDB.

Requests are labelled as the cohorts label them (the trace's first evaluation of the flag)
with test traffic left out, as in `ui.traces`. The query is bounded: at most
`MAX_REQUESTS` requests (beyond that a hash-sample of users, whole users kept, and the
share read is reported), keys with more than `MAX_VALUES_PER_KEY` distinct values dropped
as near-unique (ids, paths), and at most `MAX_CANDIDATES` values tested — the ones most
common among treatment's bad requests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from flagscope.analysis.different import (
    ALPHA,
    MIN_BAD,
    MIN_BASELINE_BAD,
    MIN_UNITS,
    Bad,
    Difference,
    DiffStatus,
    GroupCounts,
    ValueSums,
    rank,
)
from flagscope.analysis.example_query import FLAGGED, ROUTE_REQUESTS, route_params
from flagscope.analysis.result import DiffResult, StratumResult
from flagscope.analysis.stats.different import JackSums
from flagscope.analysis.verdict import Verdict
from flagscope.collector.errors import FlagscopeError
from flagscope.collector.lake.read import run

log = logging.getLogger(__name__)
REPORT_ROUTES = 3  # a report looks at this many regressed routes
MAX_REQUESTS = 200_000
MAX_VALUES_PER_KEY = 50
MAX_CANDIDATES = 200
MAX_VALUE_CHARS = 200
SLOW_QUANTILE = 0.95

_REQUESTS_SQL = f"""
CREATE OR REPLACE TEMP TABLE wd_requests AS
WITH {FLAGGED}
SELECT DISTINCT ON (r.trace_key, r.span_key) r.trace_key,
       coalesce(r.user_id, e.eval_user, CAST(r.trace_key AS VARCHAR)) AS unit,
       e.variant = $treatment AS treated, coalesce(r.is_error, false) AS is_error,
       r.duration_ms
FROM {ROUTE_REQUESTS}
  AND r.trace_key NOT IN (SELECT trace_key FROM marked)
  AND coalesce(coalesce(r.user_id, e.eval_user) NOT IN (SELECT user_id FROM testers), true)
"""
# A value is the JSON scalar as text; flag attributes are the cohort itself, not a cause.
_PAIRS_SQL = """
CREATE OR REPLACE TEMP TABLE wd_pairs AS
WITH spans AS MATERIALIZED (  -- a retried span twice adds nothing: pairs are distinct
    SELECT trace_key, coalesce(service_name, 'unknown_service') AS service,
           attributes, resource_attributes, span_events
    FROM events_raw
    WHERE signal = 'span' AND time >= $lower AND time < $upper
      AND trace_key IN (SELECT trace_key FROM wd_requests)
), kv AS (
    SELECT trace_key, service, j.key, j.value FROM spans, json_each(spans.attributes) j
    UNION ALL
    SELECT trace_key, service, j.key, j.value FROM spans, json_each(spans.resource_attributes) j
    UNION ALL
    SELECT trace_key, service, a.key, a.value
    FROM spans, json_each(spans.span_events) e, json_each(e.value -> 'attributes') a
    WHERE e.value ->> 'name' = 'exception'
)
SELECT DISTINCT trace_key, service, key, value ->> '$' AS value FROM kv
WHERE json_type(value) IN ('VARCHAR', 'BOOLEAN', 'BIGINT', 'UBIGINT', 'DOUBLE')
  AND NOT starts_with(key, 'feature_flag') AND length(value ->> '$') <= $chars
"""
_GROUPS_SQL = """
CREATE OR REPLACE TEMP TABLE wd_groups AS
SELECT trace_key, unit,
       CASE WHEN treated THEN (CASE WHEN bad THEN 'a' ELSE 'g' END)
            WHEN bad OR $baseline_all THEN 'c' END AS grp
FROM (SELECT *, CASE WHEN $slow THEN duration_ms > $threshold ELSE is_error END AS bad
      FROM wd_requests)
"""
_CANDIDATES_SQL = """
CREATE OR REPLACE TEMP TABLE wd_candidates AS
WITH keys AS (
    SELECT service, key FROM wd_pairs GROUP BY ALL HAVING count(DISTINCT value) <= $per_key
)
SELECT row_number() OVER (ORDER BY count(*) DESC, p.service, p.key, p.value) AS id,
       p.service, p.key, p.value, count(DISTINCT g.unit) AS units_bad
FROM wd_pairs p JOIN keys USING (service, key) JOIN wd_groups g USING (trace_key)
WHERE g.grp = 'a'
GROUP BY p.service, p.key, p.value HAVING count(DISTINCT g.unit) >= $min_units
ORDER BY count(*) DESC, p.service, p.key, p.value LIMIT $candidates
"""
# Per value, the jackknife's sums over users (stats.different.JackSums): the weights w
# (1 / (Y − y)) and P, Q of every user, then e over the users who carry the value.
_SUMS_SQL = """
WITH counts AS (
    SELECT unit, count(*) FILTER (WHERE grp = 'a')::DOUBLE AS ya,
           count(*) FILTER (WHERE grp = 'g')::DOUBLE AS yg,
           count(*) FILTER (WHERE grp = 'c')::DOUBLE AS yc
    FROM wd_groups WHERE grp IS NOT NULL GROUP BY unit
), big AS (
    SELECT sum(ya) AS big_a, sum(yg) AS big_g, sum(yc) AS big_c FROM counts
), units AS (
    SELECT *, ya * wa AS p, yg * wg AS qg, yc * wc AS qc FROM (
        SELECT c.*,
               CASE WHEN big_a > ya THEN 1 / (big_a - ya) ELSE 0 END AS wa,
               CASE WHEN big_g > yg THEN 1 / (big_g - yg) ELSE 0 END AS wg,
               CASE WHEN big_c > yc THEN 1 / (big_c - yc) ELSE 0 END AS wc,
               (ya > 0 AND ya = big_a) AS whole_a, (yg > 0 AND yg = big_g) AS whole_g,
               (yc > 0 AND yc = big_c) AS whole_c
        FROM counts c, big)
), totals AS (
    SELECT any_value(big_a) AS ya, any_value(big_g) AS yg, any_value(big_c) AS yc,
           count(*) FILTER (WHERE ya + yg > 0) AS n_g,
           count(*) FILTER (WHERE ya + yc > 0) AS n_c,
           sum(p) AS p, sum(qg) AS qg, sum(qc) AS qc, sum(p * p) AS pp,
           sum(qg * qg) AS qgqg, sum(qc * qc) AS qcqc, sum(p * qg) AS pqg, sum(p * qc) AS pqc,
           count(*) FILTER (WHERE whole_a OR whole_g) AS whole_g,
           count(*) FILTER (WHERE whole_a OR whole_c) AS whole_c,
           sum((ya + yg) ** 2) AS m_g, sum((ya + yc) ** 2) AS m_c
    FROM units, big
), carried AS (
    SELECT c.id, g.unit, count(*) FILTER (WHERE g.grp = 'a')::DOUBLE AS xa,
           count(*) FILTER (WHERE g.grp = 'g')::DOUBLE AS xg,
           count(*) FILTER (WHERE g.grp = 'c')::DOUBLE AS xc
    FROM wd_candidates c JOIN wd_pairs p USING (service, key, value)
         JOIN wd_groups g USING (trace_key)
    WHERE g.grp IS NOT NULL
    GROUP BY c.id, g.unit
), sums AS (
    SELECT id, sum(xa) AS xa, sum(xg) AS xg, sum(xc) AS xc,
           sum(eg) AS eg, sum(eg * eg) AS egeg, sum(eg * p) AS egp, sum(eg * qg) AS egq,
           sum(ec) AS ec, sum(ec * ec) AS ecec, sum(ec * p) AS ecp, sum(ec * qc) AS ecq
    FROM (SELECT *, xa * wa - xg * wg AS eg, xa * wa - xc * wc AS ec
          FROM carried JOIN units USING (unit))
    GROUP BY id
)
SELECT c.service, c.key, c.value, c.units_bad, s.*, t.*
FROM wd_candidates c JOIN sums s USING (id), totals t ORDER BY c.id
"""
_COUNTS_SQL = """
SELECT grp, count(*), count(DISTINCT unit) FROM wd_groups WHERE grp IS NOT NULL GROUP BY grp
"""


def what_is_different(
    lake: Path,
    flag: str,
    treatment: str,
    baseline: str,
    start: datetime,
    end: datetime,
    service: str | None,
    route: str | None,
    bad: Bad = Bad.ERRORS,
    alpha: float = ALPHA,
    runner: Callable[[Path, Callable[[duckdb.DuckDBPyConnection], Difference]], Difference] = run,
) -> Difference:
    """The route's attribute values over-represented among treatment's bad requests.
    `runner`: how the query meets the lake (`lake.read.run`; the UI's `work.bounded`)."""
    params = route_params(flag, treatment, baseline, start, end, service, route)

    def query(con: duckdb.DuckDBPyConnection) -> Difference:
        return _query(con, params, bad, alpha)

    return runner(lake, query)


def _query(
    con: duckdb.DuckDBPyConnection, params: dict[str, Any], bad: Bad, alpha: float
) -> Difference:
    con.execute(_REQUESTS_SQL, params)
    sampled = _sample(con)
    threshold = None
    if bad is Bad.SLOW:
        threshold = con.execute(
            "SELECT quantile_cont(duration_ms, $q) FROM wd_requests WHERE NOT treated",
            {"q": SLOW_QUANTILE},
        ).fetchone()[0]  # type: ignore[index]
    groups = {"slow": bad is Bad.SLOW, "threshold": threshold if threshold is not None else 0.0}
    con.execute(_GROUPS_SQL, {**groups, "baseline_all": False})
    counts = _counts(con)
    baseline_group = "bad"
    if counts["baseline"].requests < MIN_BASELINE_BAD or counts["baseline"].units < MIN_UNITS:
        baseline_group = "all"
        con.execute(_GROUPS_SQL, {**groups, "baseline_all": True})
        counts = _counts(con)

    def result(status: DiffStatus, values: list[ValueSums]) -> Difference:
        findings = rank(values, alpha)
        return Difference(
            params["flag"],
            params["treatment"],
            params["baseline"],
            params["service"],
            params["route"],
            bad,
            status,
            threshold,
            baseline_group,
            counts,
            sampled,
            len(findings),
            findings,
            alpha,
        )

    treated = counts["bad"].requests + counts["good"].requests
    if not treated or not counts["baseline"].requests:
        return result(DiffStatus.NO_DATA, [])
    if counts["bad"].requests < MIN_BAD or not counts["good"].requests:
        return result(DiffStatus.TOO_FEW_BAD, [])
    con.execute(
        _PAIRS_SQL,
        {"lower": params["lower"], "upper": params["upper"], "chars": MAX_VALUE_CHARS},
    )
    con.execute(
        _CANDIDATES_SQL,
        {"per_key": MAX_VALUES_PER_KEY, "min_units": MIN_UNITS, "candidates": MAX_CANDIDATES},
    )
    result_ = con.execute(_SUMS_SQL)
    names = [d[0] for d in result_.description or ()]
    values = [_value_sums(dict(zip(names, row, strict=True))) for row in result_.fetchall()]
    return result(DiffStatus.OK, values)


def with_differences(lake: Path, result: DiffResult) -> DiffResult:
    """`result` with "what is different" for each regressed route (at most REPORT_ROUTES):
    its failed requests when its error rate regressed, else its slow ones."""
    o, t, b = result.options, result.treatment.variant, result.baseline.variant
    regressed = [s for s in result.breakdown if _regressed(s)][:REPORT_ROUTES]
    if not result.compared or not regressed:
        return result
    try:
        found = tuple(
            what_is_different(
                lake, o.flag, t, b, o.start, o.end, s.service, s.route, _bad(s), o.alpha
            )
            for s in regressed
        )
    except FlagscopeError as exc:  # the comparison stands without it
        log.warning("%s: no 'what is different' in the report: %s", o.flag, exc)
        return result
    return replace(result, different=found)


def _regressed(s: StratumResult) -> bool:
    return any(m.judgement.verdict is Verdict.REGRESSION for m in s.metrics)


def _bad(s: StratumResult) -> Bad:
    errors = any(
        m.metric == "error_rate" and m.judgement.verdict is Verdict.REGRESSION for m in s.metrics
    )
    return Bad.ERRORS if errors else Bad.SLOW


def _sample(con: duckdb.DuckDBPyConnection) -> float:
    """Keep at most MAX_REQUESTS requests: a share of users by hash, whole users."""
    total = int(con.execute("SELECT count(*) FROM wd_requests").fetchall()[0][0])
    if total <= MAX_REQUESTS:
        return 1.0
    share = MAX_REQUESTS / total
    con.execute(
        "DELETE FROM wd_requests WHERE hash(unit) % 1000000 >= $keep",
        {"keep": int(share * 1_000_000)},
    )
    return share


def _counts(con: duckdb.DuckDBPyConnection) -> dict[str, GroupCounts]:
    found = {g: GroupCounts(int(r), int(u)) for g, r, u in con.execute(_COUNTS_SQL).fetchall()}
    empty = GroupCounts(0, 0)
    return {
        "bad": found.get("a", empty),
        "good": found.get("g", empty),
        "baseline": found.get("c", empty),
    }


def _value_sums(r: dict[str, Any]) -> ValueSums:
    def f(name: str) -> float:
        return float(r[name] or 0.0)

    vs_good = JackSums(
        f("xa"), f("ya"), f("xg"), f("yg"), int(r["n_g"]),
        f("eg"), f("egeg"), f("egp"), f("egq"),
        f("p"), f("qg"), f("pp"), f("qgqg"), f("pqg"), int(r["whole_g"]), f("m_g"),
    )  # fmt: skip
    vs_baseline = JackSums(
        f("xa"), f("ya"), f("xc"), f("yc"), int(r["n_c"]),
        f("ec"), f("ecec"), f("ecp"), f("ecq"),
        f("p"), f("qc"), f("pp"), f("qcqc"), f("pqc"), int(r["whole_c"]), f("m_c"),
    )  # fmt: skip
    return ValueSums(r["service"], r["key"], r["value"], int(r["units_bad"]), vs_good, vs_baseline)
