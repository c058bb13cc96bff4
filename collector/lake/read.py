"""Reading the lake: DuckDB views over its files, and the one place DuckDB's errors become
flagscope's.

`events_raw` is every stored row, `events` one row per span or log record (retries
de-duplicated). A reader lists the files when a query starts; the collector may compact
or expire some before they are read, so a query that raced it runs again with a fresh
listing (`run`). Every other DuckDB error is translated here: a `LakeQueryError` when the
SQL itself was refused, a `LakeError` when the files could not be read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from flagscope.collector.errors import LakeError, LakeQueryError
from flagscope.collector.lake.layout import GLOB, has_files
from flagscope.collector.lake.schema import NANOS, SCHEMA, TRACE_KEY, derived_keys, trace_key_sql

T = TypeVar("T")
ATTEMPTS = 3  # a query that raced compaction this many times in a row fails
# DuckDB refused the statement itself when planning it; anything else (a damaged file, an
# I/O error, a value that does not convert) is met while reading the lake.
_QUERY_ERRORS = (
    duckdb.ParserException,
    duckdb.SyntaxException,
    duckdb.BinderException,
    duckdb.CatalogException,
)


def require_events(lake: Path) -> Path:
    """`lake` if it holds events; otherwise a `LakeError` that names the path and the fix
    (a reader must not answer "0 rows" for a lake that is not there, issue 11)."""
    if not lake.is_dir():
        problem = "does not exist" if not lake.exists() else "is not a directory"
    elif not has_files(lake):
        problem = "holds no events yet (no collector has written to it)"
    else:
        return lake
    raise LakeError(f"lake {lake} {problem}: pass --data-dir or --lake to name the lake to read")


# The metric data points with their own columns only (README "Metrics").
METRICS_VIEW = (
    "SELECT time, start_time, service_name, name, metric_type, metric_unit, "
    "metric_description, value, value_int, is_monotonic, aggregation_temporality, "
    "point_count, point_sum, point_min, point_max, buckets, exemplars, attributes, "
    "resource_attributes, scope_name, scope_version, scope_attributes, otlp_flags, event_id "
    "FROM events WHERE signal = 'metric'"
)


def define_views(con: duckdb.DuckDBPyConnection, lake: Path) -> None:
    """`events_raw`: every stored row; `events`: one row per span, log record or metric
    data point (retries de-duplicated); `metrics`: the data points' own columns.

    The views show SCHEMA's columns with the times as naive UTC nanosecond timestamps
    (from the `*_unix_nano` columns, so DuckDB still skips row groups by time) and the
    trace key as one UUID (`trace_key`), as the lake held them before issue 12. Files from
    before (naive nanosecond times, a UUID or no trace key, fewer columns) are read too,
    their missing columns derived, until compaction rewrites them (`maintain.compact`).
    The connection's time zone is UTC, so a naive time compared with an aware one (`now()`)
    means UTC, as everywhere in flagscope."""
    con.execute("SET TimeZone = 'UTC'")
    con.register("_flagscope_empty", SCHEMA.empty_table())
    source, select = "_flagscope_empty", CURRENT_VIEW
    if has_files(lake):
        glob = _sql_str(str(lake / GLOB))
        source = f"read_parquet('{glob}', union_by_name = true, hive_partitioning = false)"
        names = ", ".join(f"'{name}'" for name in SCHEMA.names)
        current, files = con.execute(
            f"SELECT count(*) FILTER (WHERE columns = {len(SCHEMA.names)}), count(*) FROM ("
            f"SELECT file_name, count(DISTINCT name) FILTER (WHERE name IN ({names})) AS columns "
            f"FROM parquet_schema('{glob}') GROUP BY 1)"
        ).fetchall()[0]
        if current < files:
            # Files from before a column existed: the empty table keeps every column
            # defined (null in those files, derived below) whichever files exist when the
            # view lists them again at a query, the older forms' columns too.
            con.register("_flagscope_older", _OLDER.empty_table())
            source = f"(SELECT * FROM {source} UNION ALL BY NAME SELECT * FROM _flagscope_older)"
            select = OLDER_VIEW
    # (str.replace, not format: the derived keys' SQL has braces of its own)
    con.execute("CREATE OR REPLACE TEMP VIEW events_raw AS " + select.replace("{source}", source))
    con.execute(
        "CREATE OR REPLACE TEMP VIEW events AS SELECT DISTINCT ON (event_id) * FROM events_raw"
    )
    con.execute(f"CREATE OR REPLACE TEMP VIEW metrics AS {METRICS_VIEW}")


def _view(derive: dict[str, str]) -> str:
    """`events_raw` over `{source}`: SCHEMA's columns in order (each as `derive` says, else
    as stored), the times from their nanoseconds, and the trace key from its halves."""
    inner = ", ".join(f"{derive[n]} AS {n}" if n in derive else n for n in SCHEMA.names)
    times = {stamp: f"make_timestamp_ns({nanos}) AS {stamp}" for stamp, nanos in NANOS.items()}
    outer = ", ".join(times.get(n, n) for n in SCHEMA.names)
    return f"SELECT {outer}, {trace_key_sql()} AS {TRACE_KEY} FROM (SELECT {inner} FROM {{source}})"


CURRENT_VIEW = _view({})
# Files from before issue 12 (naive nanosecond times, the trace key as a UUID or absent)
# and before the keys (issue 10): every column that a file lacks is derived from the ones
# it has, as `schema.complete` derives them when compaction rewrites it.
_OLDER = pa.schema(
    [pa.field(f.name, pa.timestamp("ns")) if f.name in NANOS else f for f in SCHEMA]
    + [pa.field(TRACE_KEY, pa.uuid())]
)
OLDER_VIEW = _view(
    {nanos: f"coalesce({nanos}, epoch_ns({stamp}))" for stamp, nanos in NANOS.items()}
    | {name: f"coalesce({name}, {sql})" for name, sql in derived_keys().items()}
)


def _sql_str(value: str) -> str:
    return value.replace("'", "''")


def raced_compaction(exc: BaseException) -> bool:
    """A reader listed a file that compaction merged away before it was read: list again."""
    return isinstance(exc, duckdb.IOException) and "No such file" in str(exc)


def translate(exc: duckdb.Error, lake: Path) -> LakeError:
    """The flagscope error for a DuckDB error met while reading `lake`."""
    if isinstance(exc, _QUERY_ERRORS):
        return LakeQueryError(str(exc))
    return LakeError(f"reading the lake at {lake} failed: {exc}")


# DuckDB draws its own progress bar on stderr for a query that runs over 2 s, terminal or
# not (it showed up in a benchmark's log file): off, unless the CLI turns it on for a
# person at a terminal (`show_progress`), where a 20 s diff must not be silent.
_progress = False


def show_progress(on: bool) -> None:
    """DuckDB's progress bar on stderr for this process's lake queries over 2 s."""
    global _progress
    _progress = on


def _open(lake: Path, threads: int | None) -> duckdb.DuckDBPyConnection:
    """A fresh connection with the lake's views (DuckDB's errors come out raw)."""
    con = duckdb.connect()
    try:
        con.execute(f"SET enable_progress_bar = {'true' if _progress else 'false'}")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        define_views(con, lake)
    except BaseException:
        con.close()
        raise
    return con


def _retrying(lake: Path, attempt: Callable[[], T]) -> T:
    """`attempt()` again (up to ATTEMPTS) while it raced compaction; DuckDB's errors
    otherwise become `LakeError`s."""
    for number in range(1, ATTEMPTS + 1):
        try:
            return attempt()
        except duckdb.Error as exc:
            if number == ATTEMPTS or not raced_compaction(exc):
                raise translate(exc, lake) from exc
            time.sleep(0.05)
    raise AssertionError("unreachable: the last attempt returns or raises")


def run(
    lake: Path, work: Callable[[duckdb.DuckDBPyConnection], T], threads: int | None = None
) -> T:
    """`work(con)` on a fresh connection with the lake's views; run again from the start
    when it raced compaction. DuckDB errors come out as `LakeError`s."""

    def attempt() -> T:
        con = _open(lake, threads)
        try:
            return work(con)
        finally:
            con.close()

    return _retrying(lake, attempt)


def fetch(lake: Path, sql: str, params: Any = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of `sql` over the lake's views."""

    def query(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[tuple[Any, ...]]]:
        result = con.execute(sql, params) if params else con.execute(sql)
        return [d[0] for d in result.description or ()], result.fetchall()

    return run(lake, query)


def connect(lake: Path, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A connection with the lake's views, for a caller that runs several queries and
    handles a compaction race itself (tests, benchmarks); prefer `run` or `fetch`."""
    return _retrying(lake, lambda: _open(lake, threads))
