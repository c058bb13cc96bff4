"""The traces behind a comparison: example requests of a route per cohort (the query is
`flagscope.analysis.example_query`'s, shared with the static report), and one trace's spans
and log records, from the lake (`events_raw`, de-duplicated here). Every query is bounded:
`EXAMPLES` real and `TEST_EXAMPLES` test requests per list, `MAX_SPANS` rows per trace, and
the UI's deadline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from flagscope.analysis import example_query
from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.example_query import EXAMPLES, SLACK
from flagscope.analysis.examples import Examples as Examples  # re-exported for the pages
from flagscope.analysis.ui.work import bounded
from flagscope.collector.lake.schema import trace_key_of

MAX_SPANS = 500
TRACE_ID = re.compile(r"[0-9a-f]{32}")


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
    """Each cohort's `n` most recent failed and `n` slowest requests of the route, under
    the UI's query deadline."""
    return example_query.examples(
        lake, flag, treatment, baseline, start, end, service, route, n, runner=bounded
    )


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


# By the trace key's two halves, columns as stored: DuckDB filters them in the Parquet scan
# and reads the wide columns (attributes, events) of matching rows only. The view's hex
# `trace_id` and one-UUID `trace_key` are derived, and filtering on the UUID read every
# column of every row (2.4 s against 0.4 s at 10 M).
_TRACE_SQL = """
SELECT * FROM (
SELECT DISTINCT ON (event_id) signal, span_id, parent_span_id, service_name, name, kind, time,
       end_time, duration_ms, status_code, status_message, coalesce(is_error, false),
       http_method, http_route, http_status_code, user_id, flags, coalesce(is_test, false),
       test_reason, attributes, resource_attributes, span_events, severity_text, body
FROM events_raw
WHERE trace_key_hi = $hi AND trace_key_lo = $lo AND signal IN ('span', 'log') {when}
ORDER BY event_id
) ORDER BY time, signal <> 'span' LIMIT $limit
"""


def trace(lake: Path, trace_id: str, near: datetime | None = None) -> Trace | None:
    """The trace's spans and logs, earliest first (None: not in the lake). `near`: a time
    the trace is known to be near (an example's), read first within an hour of it."""

    def query(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        if near is not None:
            sql = _TRACE_SQL.format(when="AND time >= $since AND time < $until")
            params = {"since": near - SLACK, "until": near + SLACK, **known}
            rows = con.execute(sql, params).fetchall()
        if not rows:
            rows = con.execute(_TRACE_SQL.format(when=""), known).fetchall()
        return rows

    hi, lo = trace_key_of(bytes.fromhex(trace_id))  # checked: 32 hex digits (check_trace_id)
    known = {"hi": hi, "lo": lo, "limit": MAX_SPANS + 1}
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
