"""The narrow tables as a reader sees them: DuckDB views over the hour partitions a window
needs (issue 12 point 2), for the cohort diff.

Which files: the lake files (`*.parquet`) of the partitions that overlap the window — a row
lives in the partition of its own time's hour (`write.PartitionedWriter`), so no other
can hold one of the window's rows; each file's companions (`narrow`), or, for a file
without them, the same projection of its legacy requests table (the requests and entries,
from before their keys) or of the file itself (`read.wide_rows`), so every lake gives the
answers the wide rows give.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb

from flagscope.collector.errors import LakeQueryError
from flagscope.collector.lake import testers
from flagscope.collector.lake.layout import files_between
from flagscope.collector.lake.narrow import (
    ENTRIES,
    EVALUATIONS,
    LEGACY_PROJECTIONS,
    LEGACY_REQUESTS,
    PROJECTIONS,
    REQUESTS,
    SCHEMAS,
    TESTERS,
    companion,
)
from flagscope.collector.lake.read import sql_list, wide_rows, window_sql
from flagscope.collector.lake.schema import trace_key_sql


def _relation(con: duckdb.DuckDBPyConnection, table: str, files: list[Path]) -> str:
    """SQL for `table`'s rows of `files`: their companions, and the projection of the legacy
    requests table or of the file itself for each file without one."""
    has = {f: companion(f, table).exists() for f in files}
    ready = [f for f in files if has[f]]
    missing = [f for f in files if not has[f]]
    parts = []
    if ready:
        parts.append(_read(ready, table))
    if table in LEGACY_PROJECTIONS:
        legacy = [f for f in missing if companion(f, LEGACY_REQUESTS).exists()]
        if legacy:
            source = f"({_read(legacy, LEGACY_REQUESTS)})"
            parts.append(LEGACY_PROJECTIONS[table].replace("{source}", source))
            missing = [f for f in missing if f not in legacy]
    if missing:
        rows = f"({wide_rows(con, sql_list(missing))})"
        parts.append(PROJECTIONS[table].replace("{source}", rows))
    if not parts:
        empty = f"_fs_empty_{table.replace('.', '_')}"
        con.register(empty, SCHEMAS[table].empty_table())
        parts.append(f"SELECT * FROM {empty}")
    return " UNION ALL BY NAME ".join(f"({p})" for p in parts)


def _read(files: list[Path], table: str) -> str:
    companions = sql_list([companion(f, table) for f in files])
    return f"SELECT * FROM read_parquet({companions}, hive_partitioning = false)"


def _testers_relation(con: duckdb.DuckDBPyConnection, files: list[Path]) -> str:
    """SQL for the users `files` mark as testers: their testers tables, as a long-running
    reader keeps them (`testers`); for a file without one (written before them), the
    same projection of its evaluations (`_relation`: its table, or the file itself)."""
    has = {f: companion(f, TESTERS).exists() for f in files}
    kept = testers.cached(con, [companion(f, TESTERS) for f in files if has[f]])
    parts = [f"SELECT user_id FROM {kept}"]
    older = [f for f in files if not has[f]]
    if older:
        evaluations = f"({_relation(con, EVALUATIONS, older)})"
        parts.append(PROJECTIONS[TESTERS].replace("{source}", evaluations))
    return " UNION ALL BY NAME ".join(f"({p})" for p in parts)


def _view(name: str, table: str, relation: str, where: str = "true") -> str:
    """`name`: `relation`'s rows with the time at nanosecond precision and the trace key as
    one UUID, as the `events_raw` view shows them."""
    keys = ("time_unix_nano", "trace_key_hi", "trace_key_lo")
    rest = ", ".join(n for n in SCHEMAS[table].names if n not in keys)
    return (
        f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT make_timestamp_ns(time_unix_nano) AS "
        f"time, {trace_key_sql()} AS trace_key, {rest} FROM ({relation}) WHERE {where}"
    )


def define_views(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    requests: tuple[datetime, datetime],
    evaluations: tuple[datetime, datetime],
    tests: tuple[datetime | None, datetime | None] = (None, None),
) -> None:
    """The views a cohort diff reads, each over the partitions its window ([start, end),
    naive UTC) needs:

    - `fs_narrow_requests` (time, trace_key, span_key, root, stratum, entry, duration_ms,
      is_error, user_id): entry spans in `requests`;
    - `fs_narrow_evaluations` (time, trace_key, user_id, flag, variant, is_test): in
      `evaluations`;
    - `fs_narrow_tests` (user_id, is_test): the users ever marked as testers, once per
      lake file (of the partitions overlapping `tests`, if given).
    """
    for name, table, (start, end) in (
        ("fs_narrow_requests", REQUESTS, requests),
        ("fs_narrow_evaluations", EVALUATIONS, evaluations),
    ):
        relation = _relation(con, table, files_between(lake, start, end))
        con.execute(_view(name, table, relation, window_sql(start, end)))
    users = _testers_relation(con, files_between(lake, *tests))
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW fs_narrow_tests AS SELECT user_id, true AS is_test FROM ({users})"
    )


_FIRST_BATCH = 8  # files; then four times as many each round


def name_entries(
    con: duckdb.DuckDBPyConnection, lake: Path, window: tuple[datetime, datetime], keys: str
) -> None:
    """`fs_entry_names` (entry, stratum, service_name, route, path): the names of the entry
    keys in `keys` (a relation with an `entry` column) from the entries tables of the
    files `window` reads, a batch at a time (8 files, then 4× as many) until every key has
    its name. Many small files (a busy hour before compaction) name their few entries
    in the first ones: reading every file's table cost a 24 h diff over 7,258 files 0.87 s
    of 7.4 s (bench/RESULTS.md)."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE fs_entries_to_name AS SELECT DISTINCT entry FROM {keys} "
        "WHERE entry IS NOT NULL"
    )
    none = _relation(con, ENTRIES, [])  # the table's columns, no rows
    con.execute(f"CREATE OR REPLACE TEMP TABLE fs_entry_names AS SELECT * FROM ({none})")
    unnamed = "FROM fs_entries_to_name WHERE entry NOT IN (SELECT entry FROM fs_entry_names)"

    def left() -> int:
        return int(con.execute(f"SELECT count(*) {unnamed}").fetchall()[0][0])

    files, size, missing = files_between(lake, *window), _FIRST_BATCH, left()
    while missing and files:
        batch, files, size = files[:size], files[size:], size * 4
        con.execute(
            f"INSERT INTO fs_entry_names SELECT DISTINCT * FROM ({_relation(con, ENTRIES, batch)}) "
            f"WHERE entry IN (SELECT entry {unnamed})"
        )
        missing = left()
    # A key no file names would drop its requests from every stratum and total: never silently.
    if missing:
        raise LakeQueryError(
            f"{missing} request key(s) of the lake's narrow requests tables are in no entries "
            f"table of {lake}: delete the narrow tables (`_*.pq`) of the window's partitions, "
            "and compaction (or the reader) derives them again from the lake files"
        )
