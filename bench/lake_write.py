"""What a lake writer spends per span: the conversion, then the Parquet file and the narrow
tables beside it (issue 12: "The lake writers spend ~44 µs of CPU per span").

Converts bench/payload.py's 512-span requests with the collector's own `Converter` into
segments of `--spans` spans (chunks of ~8 MiB of protobuf, as the lake writers cut a
segment), then, best of `--repeat`, one core's CPU time:

- convert: the protobuf requests to wide rows (`Converter.table`), and one collection of
  the cyclic GC, which is off throughout, as in a lake writer;
- bare file: `pyarrow.parquet.write_table` of the segment's rows, fsynced: the floor;
- lake file and narrow tables: `PartitionedWriter.write` + `close`, as `convert_segment`
  does (in time order, row groups, the file and its three narrow tables published);
- the narrow tables alone: `narrow.write_companions` on the published file, which reads
  it back.

Prints the figures as µs per span and as ratios to the bare file; writes
bench/out/lake_write.json. Run: `.venv/bin/python bench/lake_write.py` (~1 minute).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import best, machine, write_figures
from bench.payload import trace_request
from flagscope.collector.config import Settings
from flagscope.collector.convert import Converter
from flagscope.collector.lake import narrow
from flagscope.collector.lake.write import PartitionedWriter
from flagscope.collector.otlp import SIGNAL_CODES
from flagscope.collector.tagging import Tagger

REQUEST_SPANS = 512
CHUNK_REQUESTS = 25  # ~8 MiB of protobuf: the lake writers' chunk (lake_writer.CHUNK_BYTES)


def cpu_best(work: Callable[[], Any], repeat: int) -> float:
    """The least CPU seconds of `repeat` runs of `work` (`machine.best`)."""
    return min(best(work, 1)[1] for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=204_800, help="spans per segment")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    code = SIGNAL_CODES["traces"]
    now = time.time_ns()
    requests = [
        (code, trace_request(REQUEST_SPANS, seed=i, start_ns=now - 600 * 10**9))
        for i in range(max(1, args.spans // REQUEST_SPANS))
    ]
    converter = Converter(Tagger.from_settings(Settings()))
    chunks = [requests[i : i + CHUNK_REQUESTS] for i in range(0, len(requests), CHUNK_REQUESTS)]
    # As in a lake writer (collector/lake_writer.py): the cyclic GC off from here on, and
    # one collection a segment, counted with the conversion
    gc.disable()

    def convert() -> None:
        for chunk in chunks:
            converter.table(chunk)
        gc.collect()

    convert_s = cpu_best(convert, args.repeat)
    tables = [converter.table(chunk) for chunk in chunks]
    spans = sum(t.num_rows for t in tables)
    work = Path(tempfile.mkdtemp(prefix="lake-write-"))
    try:

        def bare() -> None:
            with open(work / "bare.parquet", "wb") as handle:
                pq.write_table(pa.concat_tables(tables), handle, compression="zstd")
                handle.flush()
                os.fsync(handle.fileno())

        runs = iter(range(10**6))

        def writer() -> list[Path]:
            lake = work / f"lake-{next(runs)}"
            out = PartitionedWriter(lake, "bench-000000000001-000")
            for table in tables:
                out.write(table)
            return out.close()

        bare_s = cpu_best(bare, args.repeat)
        writer_s = cpu_best(writer, args.repeat)
        (published,) = writer()
        read_back_s = cpu_best(
            lambda: narrow.write_companions(published, current=True), args.repeat
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def us(seconds: float) -> float:
        return round(seconds / spans * 1e6, 2)

    figures = {
        "machine": machine(),
        "command": "bench/lake_write.py " + " ".join(sys.argv[1:]),
        "spans_per_segment": spans,
        "convert_us_per_span": us(convert_s),
        "bare_file_us_per_span": us(bare_s),
        "lake_file_and_narrow_us_per_span": us(writer_s),
        "narrow_read_back_us_per_span": us(read_back_s),
        "lake_file_and_narrow_over_bare": round(writer_s / bare_s, 2),
        "convert_share_of_the_writer": round(convert_s / (convert_s + writer_s), 3),
    }
    write_figures("lake_write", figures)


if __name__ == "__main__":
    main()
