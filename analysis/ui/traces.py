"""The traces behind a comparison: example requests of a route per cohort, and one trace's
spans and log records, from the lake (`events_raw`, de-duplicated here).

Examples are entry spans (requests, DESIGN contract 3) of the route in the window whose
trace evaluated the flag, labelled as the cohorts label them: by the trace's first
evaluation. Test traffic — a trace with a test marker anywhere, or a user ever marked as a
tester — is not what the comparison counts, but testers test in production too: a few of
their requests follow the real ones, marked. Every query is bounded: `EXAMPLES` real and
`TEST_EXAMPLES` test requests per list, `MAX_SPANS` rows per trace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.ui.work import bounded

EXAMPLES = 10
TEST_EXAMPLES = 3  # test-traffic requests per list, after the real ones
MAX_SPANS = 500
SLACK = timedelta(hours=1)  # evaluations around the window, as the cohorts read them
TRACE_ID = re.compile(r"[0-9a-f]{32}")

_ROUTE = "trim(coalesce(r.http_method, '') || ' ' || coalesce(r.http_route, r.name))"
_REQUESTS_SQL = f"""
CREATE TEMP TABLE ui_requests AS
WITH evals AS (
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
), requests AS (
    SELECT r.trace_id, r.time, r.duration_ms, coalesce(r.is_error, false) AS is_error,
           r.http_status_code, r.status_code, r.status_message,
           coalesce(r.user_id, e.eval_user) AS user_id,
           coalesce(r.service_name, 'unknown_service') AS service_name, {_ROUTE} AS route,
           e.variant,
           r.trace_key IN (SELECT trace_key FROM marked)
             OR coalesce(coalesce(r.user_id, e.eval_user) IN (SELECT user_id FROM testers), false)
             AS is_test
    FROM events_raw r JOIN evals e USING (trace_key)
    WHERE r.is_entry AND r.time >= $start AND r.time < $end AND r.duration_ms IS NOT NULL
      AND e.variant IN ($treatment, $baseline)
      AND ($service IS NULL OR coalesce(r.service_name, 'unknown_service') = $service)
      AND ($route IS NULL OR {_ROUTE} = $route OR coalesce(r.http_route, r.name) = $route)
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


@dataclass(frozen=True)
class Example:
    kind: str  # "failed" or "slowest"
    trace_id: str
    time: datetime
    duration_ms: float
    is_error: bool
    http_status_code: int | None
    status_code: int | None
    status_message: str | None
    user_id: str | None
    service_name: str
    route: str
    variant: str
    is_test: bool


@dataclass(frozen=True)
class Examples:
    rows: tuple[Example, ...]
    # variant -> (requests, errors, test requests) of the route in the window
    counts: dict[str, tuple[int, int, int]]

    def of(self, variant: str, kind: str) -> list[Example]:
        return [e for e in self.rows if e.variant == variant and e.kind == kind]


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
) -> Examples:
    """Each cohort's `n` most recent failed and `n` slowest requests of the route."""
    params: dict[str, Any] = {
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

    def query(con: duckdb.DuckDBPyConnection) -> Examples:
        con.execute(_REQUESTS_SQL, params)
        rows = con.execute(_EXAMPLES_SQL, {"n": n, "tests": TEST_EXAMPLES}).fetchall()
        counts = con.execute(_COUNTS_SQL).fetchall()
        return Examples(
            tuple(Example(*row) for row in rows),
            {variant: (int(r), int(e), int(t)) for variant, r, e, t in counts},
        )

    return bounded(lake, query)


def check_trace_id(text: str) -> str:
    """A trace id as the lake keeps it: 32 lowercase hex digits."""
    trace_id = text.strip().lower()
    if not TRACE_ID.fullmatch(trace_id) or trace_id == "0" * 32:
        raise AnalysisError(
            f"{text[:80]!r} is not a trace id: a trace id is 32 hex digits, "
            "e.g. 4bf92f3577b34da6a3ce929d0e0e4736"
        )
    return trace_id


@dataclass(frozen=True)
class Row:
    """One span or log record of a trace."""

    signal: str
    span_id: str | None
    parent_span_id: str | None
    service_name: str | None
    name: str | None
    kind: int | None
    time: datetime
    end_time: datetime | None
    duration_ms: float | None
    status_code: int | None
    status_message: str | None
    is_error: bool
    http_method: str | None
    http_route: str | None
    http_status_code: int | None
    user_id: str | None
    flags: dict[str, str]
    is_test: bool
    test_reason: str | None
    attributes: str | None
    resource_attributes: str | None
    span_events: str | None
    severity_text: str | None
    body: str | None


@dataclass(frozen=True)
class Trace:
    trace_id: str
    rows: tuple[Row, ...]
    truncated: bool  # more than MAX_SPANS rows: the first ones by time are shown

    @property
    def spans(self) -> list[Row]:
        return [r for r in self.rows if r.signal == "span"]

    @property
    def logs(self) -> list[Row]:
        return [r for r in self.rows if r.signal == "log"]


# By the hex id, a column as stored: DuckDB filters it in the Parquet scan and reads the
# wide columns (attributes, events) of matching rows only — the trace key is derived in the
# view, and filtering on it read every column of every row (2.4 s against 0.4 s at 10 M).
_TRACE_SQL = """
SELECT * FROM (
SELECT DISTINCT ON (event_id) signal, span_id, parent_span_id, service_name, name, kind, time,
       end_time, duration_ms, status_code, status_message, coalesce(is_error, false),
       http_method, http_route, http_status_code, user_id, flags, coalesce(is_test, false),
       test_reason, attributes, resource_attributes, span_events, severity_text, body
FROM events_raw
WHERE trace_id = $trace AND signal IN ('span', 'log') {when}
ORDER BY event_id
) ORDER BY time, signal <> 'span' LIMIT $limit
"""


def trace(lake: Path, trace_id: str, near: datetime | None = None) -> Trace | None:
    """The trace's spans and logs, earliest first (None: not in the lake). `near`: a time
    the trace is known to be near (an example's), read first within an hour of it."""

    def query(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        if near is not None:
            sql = _TRACE_SQL.format(when="AND time >= $lo AND time < $hi")
            params = {"trace": trace_id, "lo": near - SLACK, "hi": near + SLACK, **limit}
            rows = con.execute(sql, params).fetchall()
        if not rows:
            rows = con.execute(_TRACE_SQL.format(when=""), {"trace": trace_id, **limit}).fetchall()
        return rows

    limit = {"limit": MAX_SPANS + 1}
    rows = bounded(lake, query)
    if not rows:
        return None
    found = tuple(_row(row) for row in rows[:MAX_SPANS])
    return Trace(trace_id, found, len(rows) > MAX_SPANS)


def _row(values: tuple[Any, ...]) -> Row:
    fields = list(values)
    fields[16] = dict(fields[16] or {})  # the flags map
    return Row(*fields)


def lake_range(lake: Path) -> tuple[datetime | None, datetime | None]:
    """The first and last event time the lake holds (for a 'not found' page)."""
    rows = bounded(
        lake, lambda con: con.execute("SELECT min(time), max(time) FROM events_raw").fetchall()
    )
    return rows[0][0], rows[0][1]
