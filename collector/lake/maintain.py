"""Lake maintenance by the lake writers: compaction of small files, retention."""

from __future__ import annotations

import logging
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from flagscope.collector.lake.durable import fsync_dir, write_atomically
from flagscope.collector.lake.layout import covered_seq, partitions
from flagscope.collector.lake.schema import KEY_COLUMNS, SCHEMA, with_keys
from flagscope.collector.lake.write import ROW_GROUP_ROWS

log = logging.getLogger(__name__)


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
            seq = covered_seq(path.stem, writer)
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
        for seq, member, rows in [*small, (-1, None, 0)]:
            if member is None or (group and total + rows > target_rows):
                if len(group) > 1:
                    _merge(group, writer)
                    merges += 1
                group, total = [], 0
            if member is not None:
                group.append((seq, member))
                total += rows
    return merges


def _merge(group: list[tuple[int, Path]], writer: str) -> None:
    paths = [path for _, path in group]
    first = min(seq for seq, _ in group)
    last = max(seq for seq, _ in group)
    target = paths[0].with_name(f"compact-{writer}-{first:012d}-{last:012d}.parquet")
    # Files from before a column was widened (kind int8 → int32, …) unify to the wider type.
    schema = pa.unify_schemas(
        [pq.read_schema(p) for p in paths] + [SCHEMA], promote_options="permissive"
    )

    def write(handle: BinaryIO) -> None:
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
            table[f.name].cast(f.type)
            if f.name in table.column_names
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
