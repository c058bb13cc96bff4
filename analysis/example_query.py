"""Example requests of a route per cohort, from the lake (`events_raw`, de-duplicated
here): what the UI's example pages and the static report show.

Examples are entry spans (requests, DESIGN contract 3) of the route in the window whose
trace evaluated the flag, labelled as the cohorts label them: by the trace's first
evaluation. Test traffic — a trace with a test marker anywhere, or a user ever marked as a
tester — is not what the comparison counts, but testers test in production too: a few of
their requests follow the real ones, marked. Every list is bounded: `n` real and
`TEST_EXAMPLES` test requests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flagscope.analysis.examples import Example, Examples, RouteExamples
from flagscope.analysis.verdict import Verdict
from flagscope.collector.errors import FlagscopeError
from flagscope.collector.lake.read import run

if TYPE_CHECKING:
    import duckdb

    from flagscope.analysis.result import DiffResult

log = logging.getLogger(__name__)
EXAMPLES = 10
REPORT_EXAMPLES = 5  # per list in a static report
REPORT_ROUTES = 5  # regressed routes with examples in a static report
TEST_EXAMPLES = 3  # test-traffic requests per list, after the real ones
SLACK = timedelta(hours=1)  # evaluations around the window, as the cohorts read them

ROUTE = "trim(coalesce(r.http_method, '') || ' ' || coalesce(r.http_route, r.name))"
# A route's requests with their trace's variant (its first evaluation), for the examples
# and "what is different": the flagged traces, test-marked traces and testers (`FLAGGED`),
# and the entry spans of the window in a compared variant (`ROUTE_REQUESTS`, after FROM).
FLAGGED = """evals AS (
    SELECT trace_key, arg_min(flags[$flag], time) AS variant,
           arg_min(user_id, time) FILTER (WHERE user_id IS NOT NULL) AS eval_user
    FROM events_raw
    WHERE time >= $lower AND time < $upper AND trace_key IS NOT NULL
      AND map_contains(flags, $flag) AND flags[$flag] IS NOT NULL
    GROUP BY trace_key
), marked AS (
    SELECT DISTINCT trace_key FROM events_raw
    WHERE is_test AND trace_key IS NOT NULL AND time >= $lower AND time < $upper
), testers AS (
    SELECT DISTINCT user_id FROM events_raw WHERE is_test AND user_id IS NOT NULL
)"""
ROUTE_REQUESTS = f"""
events_raw r JOIN evals e USING (trace_key)
    WHERE r.is_entry AND r.time >= $start AND r.time < $end AND r.duration_ms IS NOT NULL
      AND e.variant IN ($treatment, $baseline)
      AND ($service IS NULL OR coalesce(r.service_name, 'unknown_service') = $service)
      AND ($route IS NULL OR {ROUTE} = $route OR coalesce(r.http_route, r.name) = $route)"""


def route_params(
    flag: str,
    treatment: str,
    baseline: str,
    start: datetime,
    end: datetime,
    service: str | None,
    route: str | None,
) -> dict[str, Any]:
    """The parameters of `FLAGGED` and `ROUTE_REQUESTS`."""
    return {
        "flag": flag,
        "treatment": treatment,
        "baseline": baseline,
        "start": start,
        "end": end,
        "lower": start - SLACK,
        "upper": end + SLACK,
        "service": service,
        "route": route,
    }


_REQUESTS_SQL = f"""
CREATE TEMP TABLE ui_requests AS
WITH {FLAGGED}, requests AS (
    SELECT r.trace_id, r.time, r.duration_ms, coalesce(r.is_error, false) AS is_error,
           r.http_status_code, r.status_code, r.status_message,
           coalesce(r.user_id, e.eval_user) AS user_id,
           coalesce(r.service_name, 'unknown_service') AS service_name, {ROUTE} AS route,
           e.variant,
           r.trace_key IN (SELECT trace_key FROM marked)
             OR coalesce(coalesce(r.user_id, e.eval_user) IN (SELECT user_id FROM testers), false)
             AS is_test
    FROM {ROUTE_REQUESTS}
)
SELECT * FROM requests
"""
_EXAMPLES_SQL = """
(SELECT 'failed' AS kind, * FROM ui_requests WHERE is_error
 QUALIFY row_number() OVER (PARTITION BY variant, is_test ORDER BY time DESC)
         <= CASE WHEN is_test THEN $tests ELSE $n END)
UNION ALL
(SELECT 'slowest' AS kind, * FROM ui_requests
 QUALIFY row_number() OVER (PARTITION BY variant, is_test ORDER BY duration_ms DESC)
         <= CASE WHEN is_test THEN $tests ELSE $n END)
ORDER BY variant, kind, is_test, CASE kind WHEN 'failed' THEN -epoch(time) ELSE -duration_ms END
"""
_COUNTS_SQL = """
SELECT variant, count(*) AS requests, count(*) FILTER (WHERE is_error) AS errors,
       count(*) FILTER (WHERE is_test) AS test_requests
FROM ui_requests GROUP BY ALL
"""


def examples(
    lake: Path,
    flag: str,
    treatment: str,
    baseline: str,
    start: datetime,
    end: datetime,
    service: str | None,
    route: str | None,
    n: int = EXAMPLES,
    runner: Callable[[Path, Callable[[duckdb.DuckDBPyConnection], Examples]], Examples] = run,
) -> Examples:
    """Each cohort's `n` most recent failed and `n` slowest requests of the route.
    `runner(lake, work)`: how the query runs (the UI's puts a deadline on it)."""
    params = route_params(flag, treatment, baseline, start, end, service, route)

    def query(con: duckdb.DuckDBPyConnection) -> Examples:
        con.execute(_REQUESTS_SQL, params)
        rows = con.execute(_EXAMPLES_SQL, {"n": n, "tests": TEST_EXAMPLES}).fetchall()
        counts = con.execute(_COUNTS_SQL).fetchall()
        return Examples(
            tuple(Example(*row) for row in rows),
            {variant: (int(r), int(e), int(t)) for variant, r, e, t in counts},
        )

    return runner(lake, query)


def with_examples(
    lake: Path, result: DiffResult, trace_link: str | None = None, n: int = REPORT_EXAMPLES
) -> DiffResult:
    """`result` with example requests for a report: per regressed route (at most
    `REPORT_ROUTES`), else for the comparison as a whole."""
    o, t, b = result.options, result.treatment.variant, result.baseline.variant
    if not result.compared:
        return result
    regressed: list[tuple[str | None, str | None]] = [
        (s.service, s.route)
        for s in result.breakdown
        if any(m.judgement.verdict is Verdict.REGRESSION for m in s.metrics)
    ]
    scopes = regressed[:REPORT_ROUTES] or [(o.service, o.route)]
    try:
        found = tuple(
            RouteExamples(
                service,
                route,
                t,
                b,
                examples(lake, o.flag, t, b, o.start, o.end, service, route, n),
                trace_link,
            )
            for service, route in scopes
        )
    except FlagscopeError as exc:  # the comparison stands without its examples
        log.warning("%s: no example requests in the report: %s", o.flag, exc)
        return result
    return replace(result, examples=found)
