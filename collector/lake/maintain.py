"""Lake maintenance by the lake writers: compaction of small files, retention."""

from __future__ import annotations

import logging
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from flagscope.collector.lake.durable import fsync_dir, write_atomically
from flagscope.collector.lake.layout import covered_seq, partitions, temporary
from flagscope.collector.lake.narrow import (
    LEGACY_REQUESTS,
    REQUESTS,
    companion,
    missing_companions,
    orphans,
    remove_companions,
    write_companions,
)
from flagscope.collector.lake.schema import SCHEMA, complete
from flagscope.collector.lake.write import ROW_GROUP_ROWS, in_time_order, parquet_writer

log = logging.getLogger(__name__)


def compact(
    lake: Path, min_files: int, target_rows: int, writer: str, below_seq: int | None = None
) -> int:
    """Merge this writer's small files of each partition into files of about `target_rows`,
    and rewrite each of its files from before the current SCHEMA (issue 12: UUID trace
    keys, naive nanosecond times) in SCHEMA, merged with others or alone.

    Only files whose WAL segments are gone (seq < `below_seq`) qualify: a segment still in
    the WAL may be replayed, which rewrites its files by name. Streams row groups, so
    memory stays at about two row groups whatever the partition size. Inputs are deleted
    after the merged file is in place; a crash in between leaves duplicates that the `events`
    view hides and the next compaction merges away. Returns the number of files written.
    """
    merges = 0
    for partition in partitions(lake):
        small, stale = _candidates(partition, target_rows, writer, below_seq)
        merged: set[Path] = set()
        if len(small) >= min_files:
            for group in _groups(small, target_rows):
                if len(group) > 1:
                    _merge(group, writer)
                    merges += 1
                    merged.update(path for _, path in group)
        for seq, path in stale:
            if path not in merged:
                _merge([(seq, path)], writer)
                merges += 1
        _complete_companions(partition, writer, below_seq)
    return merges


def _complete_companions(partition: Path, writer: str, below_seq: int | None) -> None:
    """Narrow companions for this writer's files without them (written before issue 12,
    or a crash between a file and its companions), and none of its left without a file.
    Only files whose WAL segments are gone: a segment being converted gets its companions
    right after its file, and a replay rewrites both."""

    def settled(path: Path) -> bool:
        seq = covered_seq(path.stem, writer)
        return seq is not None and (below_seq is None or seq < below_seq)

    for path, wide in orphans(partition):
        if settled(wide):
            path.unlink(missing_ok=True)
    for path in sorted(partition.glob("*.parquet")):
        missing = missing_companions(path)
        if settled(path) and REQUESTS not in missing:  # a crash may have left it
            companion(path, LEGACY_REQUESTS).unlink(missing_ok=True)
        if not settled(path) or not missing:
            continue
        try:
            write_companions(path, tables=missing)  # a lake's older files: the new tables only
        except (OSError, duckdb.Error) as exc:
            log.warning("could not write the narrow tables of lake file %s: %s", path, exc)


def _candidates(
    partition: Path, target_rows: int, writer: str, below_seq: int | None
) -> tuple[list[tuple[int, Path, int]], list[tuple[int, Path]]]:
    """This writer's files in `partition` that may be rewritten: the small ones (seq, path,
    rows), in WAL order, and the ones not in SCHEMA (seq, path)."""
    small, stale = [], []
    for path in sorted(partition.glob("*.parquet")):
        seq = covered_seq(path.stem, writer)
        if seq is None or (below_seq is not None and seq >= below_seq):
            continue
        try:
            metadata = pq.read_metadata(path)
            names = metadata.schema.to_arrow_schema().names
        except (OSError, pa.ArrowInvalid) as exc:
            log.warning("skipping unreadable lake file %s: %s", path, exc)
            continue
        if metadata.num_rows < target_rows // 2:
            small.append((seq, path, metadata.num_rows))
        if names != SCHEMA.names:
            stale.append((seq, path))
    small.sort()
    return small, stale


def _groups(small: list[tuple[int, Path, int]], target_rows: int) -> list[list[tuple[int, Path]]]:
    """Consecutive files of up to `target_rows` rows together."""
    groups: list[list[tuple[int, Path]]] = [[]]
    total = 0
    for seq, path, rows in small:
        if groups[-1] and total + rows > target_rows:
            groups.append([])
            total = 0
        groups[-1].append((seq, path))
        total += rows
    return groups


def _merge(group: list[tuple[int, Path]], writer: str) -> None:
    paths = [path for _, path in group]
    first = min(seq for seq, _ in group)
    last = max(seq for seq, _ in group)
    target = paths[0].with_name(f"compact-{writer}-{first:012d}-{last:012d}.parquet")

    def write(handle: BinaryIO) -> None:
        with parquet_writer(handle) as parquet:
            # Small files' batches are gathered into whole row groups: written as they
            # came, a merged file kept its inputs' small row groups (~27 k rows against the
            # 128 Ki target, issue 12), and every reader paid for their footers and stats.
            pending: list[pa.Table] = []
            held = 0
            for path in paths:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP_ROWS):
                    # Files from before a column existed or was widened (kind int8 →
                    # int32, the keys, the nanosecond columns) are written in SCHEMA.
                    pending.append(complete(pa.Table.from_batches([batch])))
                    held += batch.num_rows
                    if held >= ROW_GROUP_ROWS:
                        whole = pa.concat_tables(pending)
                        cut = held - held % ROW_GROUP_ROWS
                        for start in range(0, cut, ROW_GROUP_ROWS):  # each group in time order
                            group = in_time_order(whole.slice(start, ROW_GROUP_ROWS))
                            parquet.write_table(group, row_group_size=ROW_GROUP_ROWS)
                        pending, held = [whole.slice(cut)], held - cut
            if held:
                rest = in_time_order(pa.concat_tables(pending))
                parquet.write_table(rest, row_group_size=ROW_GROUP_ROWS)
        handle.flush()
        write_companions(
            target, source=Path(handle.name), current=True
        )  # before the file, as writers do

    write_atomically(target, write, temporary(target))
    for path in paths:
        if path != target:
            remove_companions(path)  # first: never companions without their file
            path.unlink(missing_ok=True)
    fsync_dir(target.parent)


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
