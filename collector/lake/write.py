"""Writing lake files: one file per hour partition, streamed, published atomically."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flagscope.collector import failpoints
from flagscope.collector.lake.durable import publish
from flagscope.collector.lake.layout import HOUR_NS, covered_seq, partition_of
from flagscope.collector.lake.schema import SCHEMA

ROW_GROUP_ROWS = 128 * 1024


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


def remove_stale_temporaries(lake: Path, writer: str) -> int:
    """Delete this writer's `.tmp` files left by a crash (never visible to readers)."""
    removed = 0
    for path in lake.glob("**/*.parquet.tmp") if lake.exists() else []:
        if covered_seq(path.name[: -len(".parquet.tmp")], writer) is not None:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
