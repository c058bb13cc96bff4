"""The Parquet lake: immutable files partitioned by hour, written atomically.

Layout: `<lake>/date=YYYY-MM-DD/hour=HH/<writer>-<seq>.parquet`. A file is written under a
`.tmp` name (which no `*.parquet` glob matches), fsynced, renamed into place and the
directory fsynced, so a reader sees a file completely or not at all. Names derive from the
WAL segment a file came from, so replaying a segment rewrites the same names (idempotent).
Compaction merges small files of one partition; retention drops old partitions.
Readers open the lake with `connect()`, which defines the de-duplicated `events` view.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from flagscope.collector import failpoints
from flagscope.collector.convert import KEY_COLUMNS, SCHEMA
from flagscope.collector.errors import LakeError
from flagscope.collector.wal import fsync_dir, publish, write_atomically

log = logging.getLogger(__name__)

HOUR_NS = 3_600_000_000_000
ROW_GROUP_ROWS = 128 * 1024
GLOB = "**/*.parquet"


def partition_of(hour_index: int) -> str:
    moment = datetime.fromtimestamp(hour_index * 3600, tz=UTC)
    return f"date={moment:%Y-%m-%d}/hour={moment:%H}"


class PartitionedWriter:
    """Streams tables into one file per hour partition, named `<name>.parquet`.

    Each file grows under its `.tmp` name (one row group per `write`), so memory holds one
    table at a time; `close()` fsyncs and renames them into place.
    """

    def __init__(self, lake: Path, name: str) -> None:
        self.lake = lake
        self.name = name
        self._open: dict[int, tuple[Path, BinaryIO, pq.ParquetWriter]] = {}

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        hours = pc.divide(table["time"].cast(pa.int64()), HOUR_NS)
        unique = pc.unique(hours).to_pylist()
        for hour in unique:
            part = table if len(unique) == 1 else table.filter(pc.equal(hours, hour))
            self._writer(hour).write_table(part, row_group_size=ROW_GROUP_ROWS)

    def _writer(self, hour: int) -> pq.ParquetWriter:
        if hour not in self._open:
            path = self.lake / partition_of(hour) / f"{self.name}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path.with_name(path.name + ".tmp"), "wb")  # noqa: SIM115 - closed in close()
            self._open[hour] = (path, handle, pq.ParquetWriter(handle, SCHEMA, compression="zstd"))
        return self._open[hour][2]

    def close(self) -> list[Path]:
        written = []
        for path, handle, writer in self._open.values():
            writer.close()
            failpoints.hit("lake.before_rename")
            publish(handle, path)
            written.append(path)
        self._open.clear()
        return written

    def abort(self) -> None:
        """Drop the files not yet closed (a conversion failed): nothing reaches the lake."""
        for _, handle, writer in self._open.values():
            try:
                writer.close()
            finally:
                handle.close()
                Path(handle.name).unlink(missing_ok=True)
        self._open.clear()


def write_table(lake: Path, table: pa.Table, name: str) -> list[Path]:
    """Write `table` as one file per hour partition named `<name>.parquet`."""
    writer = PartitionedWriter(lake, name)
    writer.write(table)
    return writer.close()


def partitions(lake: Path) -> list[Path]:
    if not lake.exists():
        return []
    return sorted(p for d in lake.glob("date=*") for p in d.glob("hour=*") if p.is_dir())


def _covered_seq(stem: str, writer: str) -> int | None:
    """Highest WAL segment a file of `writer` holds data of, or None if not this writer's.

    Stems: `<writer>-<seq>-<part>` (from a segment), `compact-<writer>-<first>-<last>`.
    """
    prefix = f"compact-{writer}-" if stem.startswith("compact-") else f"{writer}-"
    if not stem.startswith(prefix):
        return None
    numbers = stem[len(prefix):].split("-")
    if len(numbers) != 2 or not all(n.isdigit() for n in numbers):
        return None
    return int(numbers[1]) if stem.startswith("compact-") else int(numbers[0])


def compact(
    lake: Path, min_files: int, target_rows: int, writer: str, below_seq: int | None = None
) -> int:
    """Merge this writer's small files of each partition into files of about `target_rows`.

    Only files whose WAL segments are gone (seq < `below_seq`) qualify: a segment still in
    the WAL may be replayed, which rewrites its files by name. Streams row groups, so
    memory stays at one row group whatever the partition size. Inputs are deleted after
    the merged file is in place; a crash in between leaves duplicates that the `events`
    view hides and the next compaction merges away. Returns the number of merges.
    """
    merges = 0
    for partition in partitions(lake):
        small = []
        for path in sorted(partition.glob("*.parquet")):
            seq = _covered_seq(path.stem, writer)
            if seq is None or (below_seq is not None and seq >= below_seq):
                continue
            try:
                rows = pq.read_metadata(path).num_rows
            except (OSError, pa.ArrowInvalid) as exc:
                log.warning("skipping unreadable lake file %s: %s", path, exc)
                continue
            if rows < target_rows // 2:
                small.append((seq, path, rows))
        if len(small) < min_files:
            continue
        small.sort()
        group: list[tuple[int, Path]] = []
        total = 0
        for seq, path, rows in small + [(-1, None, 0)]:
            if path is None or (group and total + rows > target_rows):
                if len(group) > 1:
                    _merge(group, writer)
                    merges += 1
                group, total = [], 0
            if path is not None:
                group.append((seq, path))
                total += rows
    return merges


def remove_stale_temporaries(lake: Path, writer: str) -> int:
    """Delete this writer's `.tmp` files left by a crash (never visible to readers)."""
    removed = 0
    for path in lake.glob("**/*.parquet.tmp") if lake.exists() else []:
        if _covered_seq(path.name[: -len(".parquet.tmp")], writer) is not None:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _merge(group: list[tuple[int, Path]], writer: str) -> None:
    paths = [path for _, path in group]
    first = min(seq for seq, _ in group)
    last = max(seq for seq, _ in group)
    target = paths[0].with_name(f"compact-{writer}-{first:012d}-{last:012d}.parquet")
    # Files from before a column was widened (kind int8 → int32, …) unify to the wider type.
    schema = pa.unify_schemas(
        [pq.read_schema(p) for p in paths] + [SCHEMA], promote_options="permissive"
    )

    def write(handle) -> None:
        with pq.ParquetWriter(handle, schema, compression="zstd") as parquet:
            for path in paths:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP_ROWS):
                    table = _conform(pa.Table.from_batches([batch]), schema)
                    parquet.write_table(table, row_group_size=ROW_GROUP_ROWS)

    write_atomically(target, write)
    for path in paths:
        if path != target:
            path.unlink(missing_ok=True)
    fsync_dir(target.parent)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns in order: files written before a column existed
    (the join keys of such files are derived from their hex ids)."""
    if table.schema == schema:
        return table
    if not set(KEY_COLUMNS) <= set(table.column_names):
        table = with_keys(table)
    return pa.table(
        [
            table[f.name].cast(f.type) if f.name in table.column_names
            else pa.nulls(table.num_rows, f.type)
            for f in schema
        ],
        schema=schema,
    )


def expire(lake: Path, retention_days: float, now: float | None = None) -> int:
    """Delete hour partitions that ended more than `retention_days` ago; returns how many."""
    if retention_days <= 0:
        return 0
    cutoff = (now if now is not None else time.time()) - retention_days * 86400
    removed = 0
    for partition in partitions(lake):
        try:
            day = partition.parent.name.split("=", 1)[1]
            hour = int(partition.name.split("=", 1)[1])
            start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() + hour * 3600
        except (IndexError, ValueError):
            continue
        if start + 3600 <= cutoff:
            shutil.rmtree(partition, ignore_errors=True)
            removed += 1
    for day_dir in lake.glob("date=*"):
        if day_dir.is_dir() and not any(day_dir.iterdir()):
            day_dir.rmdir()
    return removed


# -- reading -------------------------------------------------------------------------------
def has_files(lake: Path) -> bool:
    return any(lake.glob(GLOB)) if lake.exists() else False


def derived_keys(trace_id: str = "trace_id", span_id: str = "span_id", signal: str = "signal",
                 kind: str = "kind", parent_span_id: str = "parent_span_id") -> dict[str, str]:
    """SQL for the join keys (convert.KEY_COLUMNS) from the hex ids and the other columns,
    for files written before the keys existed (and for bench/make_lake.py)."""
    as_uint = f"CASE WHEN length({span_id}) = 16 THEN TRY_CAST('0x' || {span_id} AS UBIGINT) END"
    return {
        "trace_key": f"TRY_CAST({trace_id} AS UUID)",
        "span_key": (f"({as_uint}::HUGEINT - CASE WHEN {as_uint} >= 9223372036854775808 "
                     "THEN 18446744073709551616 ELSE 0 END)::BIGINT"),
        "is_entry": (f"coalesce({signal} = 'span' AND ({kind} = 2 "
                     f"OR coalesce({parent_span_id}, '') = ''), false)"),
    }


def with_keys(table: pa.Table) -> pa.Table:
    """`table` (SCHEMA's other columns) with KEY_COLUMNS appended, derived by the same SQL
    as the views use (`derived_keys`): for rows written before the keys existed."""
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")  # rows come back in their order
        con.execute("SET arrow_lossless_conversion = true")  # UUIDs as Arrow UUIDs
        con.register("_rows", table)
        keys = con.sql("SELECT " + ", ".join(
            f"{sql} AS {name}" for name, sql in derived_keys().items()) + " FROM _rows"
        ).to_arrow_table()
    finally:
        con.close()
    table = table.drop_columns([name for name in KEY_COLUMNS if name in table.column_names])
    for name in KEY_COLUMNS:
        table = table.append_column(name, keys[name].cast(SCHEMA.field(name).type))
    return table


def define_views(con: duckdb.DuckDBPyConnection, lake: Path) -> None:
    """`events_raw`: every stored row; `events`: one row per span/log (retries de-duplicated)."""
    select = "*"
    con.register("_flagscope_empty", SCHEMA.empty_table())
    source = "_flagscope_empty"
    if has_files(lake):
        glob = _sql_str(str(lake / GLOB))
        source = f"read_parquet('{glob}', union_by_name = true, hive_partitioning = false)"
        keyed, files = con.execute(
            "SELECT count(*) FILTER (WHERE has_key), count(*) FROM (SELECT file_name, "
            f"bool_or(name = 'trace_key') AS has_key FROM parquet_schema('{glob}') GROUP BY 1)"
        ).fetchall()[0]
        if keyed < files:
            # Files from before the keys: derive them for those rows. The view lists the
            # files again at every query; the empty table in SCHEMA keeps the key columns
            # defined whichever files exist by then.
            source = f"(SELECT * FROM {source} UNION ALL BY NAME SELECT * FROM _flagscope_empty)"
            select = "* REPLACE (" + ", ".join(
                f"coalesce({name}, {sql}) AS {name}" for name, sql in derived_keys().items()) + ")"
    con.execute(f"CREATE OR REPLACE TEMP VIEW events_raw AS SELECT {select} FROM {source}")
    con.execute(
        "CREATE OR REPLACE TEMP VIEW events AS "
        "SELECT DISTINCT ON (event_id) * FROM events_raw"
    )


def _sql_str(value: str) -> str:
    return value.replace("'", "''")


def raced_compaction(exc: BaseException) -> bool:
    """A reader listed a file that compaction merged away before it was read: list again."""
    return isinstance(exc, duckdb.IOException) and "No such file" in str(exc)


def fetch(lake: Path, sql: str, params: Any = None, attempts: int = 3
          ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of `sql` over the lake's views, run again with a fresh
    listing when it raced compaction. Other errors are DuckDB's, for the caller to word."""
    for attempt in range(1, attempts + 1):
        con = connect(lake)
        try:
            result = con.execute(sql, params) if params else con.execute(sql)
            return [d[0] for d in result.description or ()], result.fetchall()
        except duckdb.Error as exc:
            if attempt == attempts or not raced_compaction(exc):
                raise
            time.sleep(0.05)
        finally:
            con.close()
    raise AssertionError("attempts must be at least 1")


def connect(lake: Path, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    retries = 2
    while True:
        try:
            define_views(con, lake)
            return con
        except duckdb.Error as exc:
            if retries and raced_compaction(exc):
                retries -= 1
                time.sleep(0.05)
                continue
            con.close()
            raise LakeError(f"cannot open the lake at {lake}: {exc}") from exc
