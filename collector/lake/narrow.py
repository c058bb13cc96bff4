"""Narrow tables beside each lake file: the requests and flag evaluations a cohort diff reads.

Most of a diff's time went into reading wide rows to find, per trace, its entry spans and
its flag evaluations (issue 12 point 2). So every lake file `<stem>.parquet` has four
companions in its partition, derived from it row by row:

- `_<stem>.requests.v2.pq`: its entry spans (`is_entry`), with just what cohorts need —
  the (service, route) stratum and the entry (service, route, path) as 64-bit keys, not
  their strings: at 10 M events the strings took the diff's largest statement from 0.61
  to 0.85 s (bench/RESULTS.md);
- `_<stem>.entries.pq`: those keys' names, once each (a few rows);
- `_<stem>.evaluations.pq`: one row per (row, flag) of its rows that carry flags, and one
  for each test-marked row without flags: what labels a trace and what excludes it (a
  trace or user marked as test traffic anywhere);
- `_<stem>.testers.pq`: the users its test-marked rows name, once each. A diff excludes
  every user ever marked as a tester, so it reads these of the whole lake: reading the
  evaluations of every partition for them made each diff cost more as the lake aged
  (30 days of retention: 30 days of evaluations, for a 1-hour guard look).

Why companions, named after their file, in its partition: the leading `_` and the `.pq`
suffix keep them out of every engine's reading of the wide lake (`**/*.parquet` globs do
not match them; Spark, pyarrow and pandas skip names starting with `_`); retention removes
them with their partition; a WAL replay rewrites them by name with their file; and
because they are derivable from their file, a file without one (written before it
existed, or by a crash between the file and it) is read through the same projection from
the wide file instead — its testers from its evaluations table, where it has one
(`narrow_views`). Readers go by the wide files: a companion whose file is
gone is ignored, so the narrow path reads exactly the rows the wide one does.

The lake writers publish a file's companions right after the file (its rows are
readable at once; a reader derives the tables until they are there); compaction writes a
merged file's before it, and those any of its writer's files lack.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flagscope.collector.lake.durable import write_atomically
from flagscope.collector.lake.layout import temporary
from flagscope.collector.lake.read import sql_literal, wide_rows

REQUESTS, ENTRIES, EVALUATIONS, TESTERS = "requests.v2", "entries", "evaluations", "testers"
# The requests table before the keys, with the strings: read through LEGACY_PROJECTIONS
# (cheaper than the wide file), and removed once its file has the new one.
LEGACY_REQUESTS = "requests"
SUFFIX = ".pq"
COMPANION_GLOB = "_*" + SUFFIX

REQUESTS_SCHEMA = pa.schema(
    [
        ("time_unix_nano", pa.int64()),
        ("trace_key_hi", pa.int64()),
        ("trace_key_lo", pa.int64()),
        ("span_key", pa.int64()),
        ("root", pa.bool_()),  # no parent: the trace's own entry
        ("stratum", pa.uint64()),  # STRATUM_KEY
        ("entry", pa.uint64()),  # ENTRY_KEY
        ("duration_ms", pa.float64()),
        ("is_error", pa.bool_()),
        ("user_id", pa.string()),
    ]
)
ENTRIES_SCHEMA = pa.schema(
    [
        ("entry", pa.uint64()),
        ("stratum", pa.uint64()),
        ("service_name", pa.string()),
        ("route", pa.string()),
        ("path", pa.string()),
    ]
)
EVALUATIONS_SCHEMA = pa.schema(
    [
        ("time_unix_nano", pa.int64()),
        ("trace_key_hi", pa.int64()),
        ("trace_key_lo", pa.int64()),
        ("user_id", pa.string()),
        ("flag", pa.string()),  # null: a test-marked row without flags
        ("variant", pa.string()),
        ("is_test", pa.bool_()),
    ]
)
TESTERS_SCHEMA = pa.schema([("user_id", pa.string())])
SCHEMAS = {
    REQUESTS: REQUESTS_SCHEMA,
    ENTRIES: ENTRIES_SCHEMA,
    EVALUATIONS: EVALUATIONS_SCHEMA,
    TESTERS: TESTERS_SCHEMA,
}
_DICTIONARY = ["stratum", "entry", "user_id", "flag", "variant"]
_EVERY_TABLE = (*SCHEMAS, LEGACY_REQUESTS)  # every companion name a file may have


def name_sql(row: str = "") -> tuple[str, str, str]:
    """SQL for a request's service, route (the per-route breakdown's stratum: method and
    route) and path (what --route also matches), from the columns of a row `row` (its
    qualifier, e.g. 'r.')."""
    path = f"coalesce({row}http_route, {row}name)"
    route = f"trim(coalesce({row}http_method, '') || ' ' || {path})"
    return f"coalesce({row}service_name, 'unknown_service')", route, path


SERVICE_SQL, ROUTE_SQL, PATH_SQL = name_sql()


def key_sql(*values: str) -> str:
    """SQL for a 64-bit key of `values` (SQL strings): the first 8 bytes of the MD5 of
    them, each written as its length, ':' and itself (a null as chr(1)), so that no two
    lists of values read the same. Stored, so a function that does not change between
    versions (DuckDB's `hash` may); ~0.23 µs a row, so worked out once per distinct name
    (`keys_sql`), not per row."""
    joined = " || ".join(f"coalesce(length({v}) || ':' || {v}, chr(1))" for v in values)
    return f"md5_number_upper({joined})"


def stratum_key(row: str = "") -> str:
    """SQL for a row's stratum key (`name_sql`)."""
    service, route, _ = name_sql(row)
    return key_sql(service, route)


def entry_key(row: str = "") -> str:
    """SQL for a row's entry key."""
    return key_sql(*name_sql(row))


STRATUM_KEY, ENTRY_KEY = stratum_key(), entry_key()
NAME_COLUMNS = ("service_name", "http_method", "http_route", "name")


def keys_sql(rows: str) -> str:
    """The distinct names (NAME_COLUMNS) of `rows` (a relation), each with its keys."""
    names = ", ".join(NAME_COLUMNS)
    return (
        f"SELECT {names}, {STRATUM_KEY} AS stratum, {ENTRY_KEY} AS entry "
        f"FROM (SELECT DISTINCT {names} FROM {rows})"
    )


def same_names(left: str, right: str) -> str:
    """The join condition of a row `left` with its names' keys `right` (nulls match)."""
    return " AND ".join(f"{left}.{c} IS NOT DISTINCT FROM {right}.{c}" for c in NAME_COLUMNS)


def _keyed_requests(rows: str) -> str:
    """A requests table from `rows` (its columns with the names instead of the keys)."""
    return (
        f"WITH fs_rows AS MATERIALIZED ({rows}) "
        "SELECT r.time_unix_nano, r.trace_key_hi, r.trace_key_lo, r.span_key, r.root, "
        "k.stratum, k.entry, r.duration_ms, r.is_error, r.user_id "
        f"FROM fs_rows r JOIN ({keys_sql('fs_rows')}) k ON {same_names('r', 'k')}"
    )


def names_sql(keys: str) -> str:
    """An entries table from `keys` (a relation as `keys_sql` gives)."""
    return (
        f"SELECT DISTINCT entry, stratum, {SERVICE_SQL} AS service_name, {ROUTE_SQL} AS route, "
        f"{PATH_SQL} AS path FROM {keys}"
    )


def _entry_names(rows: str) -> str:
    """An entries table from `rows` (with NAME_COLUMNS)."""
    return names_sql(f"({keys_sql(f'({rows})')})")


_NAMES = ", ".join(NAME_COLUMNS)
# Projections of wide rows (`{source}`: SCHEMA's columns) into each narrow table: the one
# definition the writers, compaction and the readers' fallback share.
PROJECTIONS = {
    REQUESTS: _keyed_requests(
        "SELECT time_unix_nano, trace_key_hi, trace_key_lo, span_key, "
        f"coalesce(parent_span_id, '') = '' AS root, {_NAMES}, duration_ms, is_error, user_id "
        "FROM {source} WHERE is_entry"
    ),
    ENTRIES: _entry_names(f"SELECT {_NAMES} FROM {{source}} WHERE is_entry"),
    EVALUATIONS: (
        "SELECT time_unix_nano, trace_key_hi, trace_key_lo, user_id, e.key AS flag, "
        "e.value AS variant, coalesce(is_test, false) AS is_test FROM ("
        "SELECT *, unnest(map_entries(flags)) AS e FROM {source} WHERE cardinality(flags) > 0) "
        "UNION ALL "
        "SELECT time_unix_nano, trace_key_hi, trace_key_lo, user_id, NULL, NULL, true "
        "FROM {source} WHERE is_test AND coalesce(cardinality(flags), 0) = 0"
    ),
    # (the same users as the evaluations' test-marked rows name: those hold every one)
    TESTERS: "SELECT DISTINCT user_id FROM {source} WHERE is_test AND user_id IS NOT NULL",
}
# The same from a LEGACY_REQUESTS table (`{source}`), for the tables it can give.
LEGACY_PROJECTIONS = {
    REQUESTS: _keyed_requests(
        "SELECT time_unix_nano, trace_key_hi, trace_key_lo, span_key, root, "
        f"{_NAMES}, duration_ms, is_error, user_id FROM {{source}}"
    ),
    ENTRIES: _entry_names(f"SELECT {_NAMES} FROM {{source}}"),
}
# The order each table is written in (a join puts the requests' rows in no order).
ORDER = {
    REQUESTS: "time_unix_nano, span_key",
    EVALUATIONS: "is_test, flag NULLS LAST, time_unix_nano",
}


# An evaluations table's rows in row groups by flag, the test-marked rows in their own: a
# diff reads one flag's evaluations and every test mark (`flag = …`, `is_test`), and the
# row groups' min/max statistics let the engines skip the rest of the file. (A flag with
# fewer rows shares its row group with the next, so that many rare flags do not make
# many tiny row groups.)
FLAG_GROUP_ROWS = 16 * 1024
_ROW_GROUP_ROWS = 1024 * 1024  # at most, in every narrow table


def flag_row_groups(rows: pa.Table) -> list[tuple[int, int]]:
    """(offset, length) of each part of an evaluations table (`rows`, in its
    ORDER) to begin a row group: at each change of test mark, and of flag once
    FLAG_GROUP_ROWS are in the current one."""
    starts = [0]
    if rows.num_rows > 1:
        test_changes = set(_changes(rows.column("is_test")))
        for i in sorted(test_changes | set(_changes(rows.column("flag")))):
            if i in test_changes or i - starts[-1] >= FLAG_GROUP_ROWS:
                starts.append(i)
    stops = [*starts[1:], rows.num_rows]
    return [(start, stop - start) for start, stop in zip(starts, stops, strict=True)]


def _changes(column: pa.ChunkedArray) -> list[int]:
    """The places i where column[i] differs from column[i - 1] (null from non-null too)."""
    after, before = column[1:], column[:-1]
    differs = pc.or_kleene(
        pc.not_equal(after, before), pc.not_equal(pc.is_null(after), pc.is_null(before))
    )
    return [i + 1 for i in pc.indices_nonzero(pc.fill_null(differs, False)).to_pylist()]


def companion(wide: Path, table: str) -> Path:
    """Where `table`'s rows of the lake file `wide` (`<stem>.parquet`) are."""
    return wide.with_name(f"_{wide.name.removesuffix('.parquet')}.{table}{SUFFIX}")


def companions(wide: Path) -> list[Path]:
    return [companion(wide, table) for table in SCHEMAS]


def has_companions(wide: Path) -> bool:
    return not missing_companions(wide)


def missing_companions(wide: Path) -> list[str]:
    """The tables `wide` has no companion of (the testers, in a file written before them)."""
    return [table for table in SCHEMAS if not companion(wide, table).exists()]


def wide_file_of(path: Path) -> Path | None:
    """The lake file a companion belongs to (None if `path` is not a companion's name)."""
    name = path.name
    for table in _EVERY_TABLE:
        ending = f".{table}{SUFFIX}"
        if name.startswith("_") and name.endswith(ending):
            return path.with_name(name[1 : -len(ending)] + ".parquet")
    return None


# One DuckDB connection per thread (and process: a forked child makes its own): opening one
# cost ~0.1 s of the ~0.3 s a small file's companions took on a busy machine, and a
# replay after a crash publishes many small files.
_local = threading.local()


_INHERITED: list[duckdb.DuckDBPyConnection] = []  # a forked parent's: never closed here


def _connection() -> duckdb.DuckDBPyConnection:
    cached = getattr(_local, "con", None)
    if cached is None or cached[0] != os.getpid():
        if cached is not None:
            _INHERITED.append(cached[1])  # closing it in a fork crashes DuckDB
        con = duckdb.connect()
        con.execute("SET threads = 1")  # lake writers are one process per core already
        con.execute("SET memory_limit = '1GB'")  # one file's rows at a time
        _local.con = cached = (os.getpid(), con)
    return cached[1]


def write_companions(
    wide: Path, source: Path | None = None, current: bool = False, tables: list[str] | None = None
) -> list[Path]:
    """Derive and publish `wide`'s companions (of `tables`, default all) from the lake file
    at `source` (default `wide` itself; a writer passes the temporary file it is about to
    rename to `wide`). `current`: the file is in SCHEMA (just written), so nothing needs
    deriving. Each is written under a temporary name, fsynced and renamed, as lake files
    are."""
    con = _connection()
    path = sql_literal(str(source or wide))
    # any form a file has had, unless it is known to be current
    rows_sql = f"(SELECT * FROM read_parquet({path}))" if current else f"({wide_rows(con, path)})"
    written = []
    for table, schema in SCHEMAS.items():
        if tables is not None and table not in tables:
            continue
        projection = PROJECTIONS[table].replace("{source}", rows_sql)
        if table in ORDER:
            projection = f"SELECT * FROM ({projection}) ORDER BY {ORDER[table]}"
        rows = con.sql(projection).to_arrow_table().cast(schema)
        target = companion(wide, table)

        def write(handle: BinaryIO, rows: pa.Table = rows, table: str = table) -> None:
            parts = flag_row_groups(rows) if table == EVALUATIONS else [(0, rows.num_rows)]
            with pq.ParquetWriter(
                handle, rows.schema, compression="zstd", use_dictionary=_DICTIONARY
            ) as writer:
                for offset, length in parts:
                    writer.write_table(rows.slice(offset, length), row_group_size=_ROW_GROUP_ROWS)

        write_atomically(target, write, temporary(target))
        written.append(target)
        if table == REQUESTS:
            companion(wide, LEGACY_REQUESTS).unlink(missing_ok=True)  # superseded
    return written


def remove_companions(wide: Path) -> None:
    """Delete `wide`'s companions (before `wide` itself: a crash between the two leaves a
    file without companions, which readers derive, never companions without a file)."""
    for table in _EVERY_TABLE:
        companion(wide, table).unlink(missing_ok=True)


def orphans(partition: Path) -> list[tuple[Path, Path]]:
    """Companions in `partition` whose lake file is not there, with that file's path: a
    crash between deleting the two, or a writer between publishing them."""
    found = []
    for path in partition.glob(COMPANION_GLOB):
        wide = wide_file_of(path)
        if wide is not None and not wide.exists():
            found.append((path, wide))
    return found
