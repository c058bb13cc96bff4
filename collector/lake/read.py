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
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from flagscope.collector.errors import LakeError, LakeQueryError
from flagscope.collector.lake.layout import GLOB, files_between, has_files, unix_nanos
from flagscope.collector.lake.resources import memory_limit, spill_directory, thread_limit
from flagscope.collector.lake.schema import (
    NANOS,
    SCHEMA,
    SPAN_ID_SQL,
    TRACE_ID_SQL,
    TRACE_KEY,
    derived_keys,
    trace_key_sql,
)

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


# A span's identity is its trace id and span id: the files leave `event_id` null for spans
# (it was 20 % of a lake's bytes, issue 12), and the ids themselves where the keys spell
# them (schema.TRACE_ID_SQL); the views show all three as before. Log records and data
# points keep their digest.
DERIVED = {
    "trace_id": f"{TRACE_ID_SQL} AS trace_id",
    "span_id": f"{SPAN_ID_SQL} AS span_id",
    "event_id": f"coalesce(event_id, {TRACE_ID_SQL} || {SPAN_ID_SQL}) AS event_id",
}


# One row per identity in `events`: a span by its keys (which equal its ids), anything
# else by its event_id. The same as by event_id, without spelling every span's ids.
IDENTITY = (
    "CASE WHEN signal = 'span' AND span_key IS NOT NULL THEN NULL ELSE event_id END, "
    "trace_key_hi, trace_key_lo, span_key"
)

Window = tuple[datetime, datetime]  # [start, end), naive UTC


def define_views(
    con: duckdb.DuckDBPyConnection, lake: Path, thorough: bool = True, window: Window | None = None
) -> None:
    """`events_raw`: every stored row; `events`: one row per span, log record or metric
    data point (retries de-duplicated); `metrics`: the data points' own columns.

    The views show SCHEMA's columns with the times as naive UTC nanosecond timestamps
    (from the `*_unix_nano` columns, so DuckDB still skips row groups by time) and the
    trace key as one UUID (`trace_key`), as the lake held them before issue 12. Files from
    before (naive nanosecond times, a UUID or no trace key, fewer columns) are read too,
    their missing columns derived, until compaction rewrites them (`maintain.compact`).
    The connection's time zone is UTC, so a naive time compared with an aware one (`now()`)
    means UTC, as everywhere in flagscope. The lake's path is the connection's variable
    `flagscope_lake` (`lake_of`), for readers that pick files themselves (`narrow_views`).
    `thorough=False`: the files are taken to be in SCHEMA unless the first is not
    (`wide_rows`); `run` defines the views again, thoroughly, when a later one is not.
    `window`: only the rows in it, read from the hour partitions that overlap it alone
    (`flagscope query --since`): the other files are not even opened."""
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET VARIABLE flagscope_lake = '{_sql_str(str(lake))}'")
    where = "true"
    if window is None:
        files = f"'{_sql_str(str(lake / GLOB))}'" if has_files(lake) else None
    else:
        chosen = files_between(lake, *window)
        files = sql_list(chosen) if chosen else None
        where = window_sql(*window)
    if files is not None:
        rows = wide_rows(con, files, thorough)
    else:
        con.register("_flagscope_empty", SCHEMA.empty_table())
        rows = "SELECT * FROM _flagscope_empty"
    times = {stamp: f"make_timestamp_ns({nanos}) AS {stamp}" for stamp, nanos in NANOS.items()}
    outer = ", ".join({**times, **DERIVED}.get(n, n) for n in SCHEMA.names)
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW events_raw AS SELECT {outer}, {trace_key_sql()} AS "
        f"{TRACE_KEY} FROM ({rows}) WHERE {where}"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW events AS SELECT DISTINCT ON ({IDENTITY}) * FROM events_raw"
    )
    con.execute(f"CREATE OR REPLACE TEMP VIEW metrics AS {METRICS_VIEW}")


def lake_of(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The lake whose views `con` has (`define_views`), or None."""
    value = con.execute("SELECT getvariable('flagscope_lake')").fetchall()[0][0]
    return Path(value) if value else None


def wide_rows(con: duckdb.DuckDBPyConnection, files: str, thorough: bool = True) -> str:
    """SQL for the rows of the lake files `files` (a DuckDB glob string or list literal) in
    SCHEMA's columns, as stored: the columns a file from before lacks are derived.

    Deriving them means reading every file's footer when the SQL is bound (the check
    below, and `union_by_name` at each query): 0.7 ms a file, 1.7 s to open a lake of
    2,400 small files before compaction (bench/many_files.py). `thorough=False` reads the
    files as they are when the first one listed is in SCHEMA, which DuckDB binds on alone;
    a later file from before then fails the query with a schema mismatch
    (`mixed_schemas`), and the caller asks again, thoroughly (`run`)."""
    if not thorough:
        quick = f"SELECT {', '.join(SCHEMA.names)} FROM read_parquet({files}, hive_partitioning = false)"
        try:
            con.execute(f"DESCRIBE {quick}")
            return quick
        except duckdb.BinderException:
            pass  # the first file lacks a column: from before it existed
    source = f"read_parquet({files}, union_by_name = true, hive_partitioning = false)"
    names = ", ".join(f"'{name}'" for name in SCHEMA.names)
    current, count = con.execute(
        f"SELECT count(*) FILTER (WHERE columns = {len(SCHEMA.names)}), count(*) FROM ("
        f"SELECT file_name, count(DISTINCT name) FILTER (WHERE name IN ({names})) AS columns "
        f"FROM parquet_schema({files}) GROUP BY 1)"
    ).fetchall()[0]
    if current == count:
        return f"SELECT {', '.join(SCHEMA.names)} FROM {source}"
    # Files from before a column existed: the empty table keeps every column defined
    # (null in those files, derived below) whichever files exist when the view lists them
    # again at a query, the older forms' columns too.
    con.register("_flagscope_older", _OLDER.empty_table())
    source = f"(SELECT * FROM {source} UNION ALL BY NAME SELECT * FROM _flagscope_older)"
    # (str.replace, not format: the derived keys' SQL has braces of its own)
    return OLDER_ROWS.replace("{source}", source)


# Files from before issue 12 (naive nanosecond times, the trace key as a UUID or absent)
# and before the keys (issue 10): every column that a file lacks is derived from the ones
# it has, as `schema.complete` derives them when compaction rewrites it.
_OLDER = pa.schema(
    [pa.field(f.name, pa.timestamp("ns")) if f.name in NANOS else f for f in SCHEMA]
    + [pa.field(TRACE_KEY, pa.uuid())]
)
_DERIVED = {nanos: f"coalesce({nanos}, epoch_ns({stamp}))" for stamp, nanos in NANOS.items()} | {
    name: f"coalesce({name}, {sql})" for name, sql in derived_keys().items()
}
OLDER_ROWS = (
    "SELECT "
    + ", ".join(f"{_DERIVED[n]} AS {n}" if n in _DERIVED else n for n in SCHEMA.names)
    + " FROM {source}"
)


def _sql_str(value: str) -> str:
    return value.replace("'", "''")


def sql_literal(value: str) -> str:
    """`value` as a quoted SQL string literal."""
    return f"'{_sql_str(value)}'"


def window_sql(start: datetime, end: datetime) -> str:
    """SQL: a row's time is in [start, end) (naive UTC), on the stored nanoseconds."""
    return f"time_unix_nano >= {unix_nanos(start)} AND time_unix_nano < {unix_nanos(end)}"


def sql_list(paths: list[Path]) -> str:
    """`paths` as a DuckDB list literal of strings, for `read_parquet`."""
    return "[" + ", ".join(sql_literal(str(p)) for p in paths) + "]"


def mixed_schemas(exc: BaseException) -> bool:
    """A quickly defined view (`wide_rows`) met a file from before a column existed."""
    return isinstance(exc, duckdb.InvalidInputException) and "schema mismatch" in str(exc)


def raced_compaction(exc: BaseException) -> bool:
    """A reader listed a file that compaction merged away before it was read: list again."""
    # (a list of files names the missing one "No files found that match the pattern")
    message = str(exc)
    return isinstance(exc, duckdb.IOException) and (
        "No such file" in message or "No files found that match the pattern" in message
    )


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


def _open(
    lake: Path, threads: int | None, thorough: bool = True, window: Window | None = None
) -> duckdb.DuckDBPyConnection:
    """A fresh connection with the lake's views (DuckDB's errors come out raw), within the
    memory limit (`resources`); `thorough`, `window`: as `define_views`."""
    limit, spill = memory_limit(), spill_directory()
    threads = threads or thread_limit()
    con = duckdb.connect()
    try:
        con.execute(f"SET enable_progress_bar = {'true' if _progress else 'false'}")
        con.execute(f"SET memory_limit = '{limit}'")
        con.execute(f"SET temp_directory = '{_sql_str(str(spill))}'")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        define_views(con, lake, thorough, window)
    except BaseException:
        con.close()
        raise
    return con


def _retrying(lake: Path, attempt: Callable[[bool], T]) -> T:
    """`attempt(thorough)` again (up to ATTEMPTS) while it raced compaction, and
    thoroughly once it met files of older schemas (`mixed_schemas`); DuckDB's errors
    otherwise become `LakeError`s."""
    thorough = False
    for number in range(1, ATTEMPTS + 1):
        try:
            return attempt(thorough)
        except duckdb.Error as exc:
            if number < ATTEMPTS and not thorough and mixed_schemas(exc):
                thorough = True
                continue
            if number == ATTEMPTS or not raced_compaction(exc):
                raise translate(exc, lake) from exc
            time.sleep(0.05)
    raise AssertionError("unreachable: the last attempt returns or raises")


def run(
    lake: Path,
    work: Callable[[duckdb.DuckDBPyConnection], T],
    threads: int | None = None,
    window: Window | None = None,
) -> T:
    """`work(con)` on a fresh connection with the lake's views (of `window` only, if
    given); run again from the start when it raced compaction. DuckDB errors come out as
    `LakeError`s."""

    def attempt(thorough: bool) -> T:
        con = _open(lake, threads, thorough, window)
        try:
            return work(con)
        finally:
            con.close()

    return _retrying(lake, attempt)


def fetch(
    lake: Path, sql: str, params: Any = None, window: Window | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of `sql` over the lake's views (of `window` only, if given)."""

    def query(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[tuple[Any, ...]]]:
        result = con.execute(sql, params) if params else con.execute(sql)
        return [d[0] for d in result.description or ()], result.fetchall()

    return run(lake, query, window=window)


def connect(lake: Path, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A connection with the lake's views, for a caller that runs several queries and
    handles a compaction race itself (tests, benchmarks); prefer `run` or `fetch`."""
    return _retrying(lake, lambda _thorough: _open(lake, threads))
