"""Lake writer processes: closed WAL segments → wide events → Parquet files.

Each of `workers` processes owns the segments whose sequence number ≡ its index (mod
workers), so conversion — the CPU-heavy part of ingest — uses every core without any
coordination beyond file names. A segment is deleted only after its files are renamed
into the lake, so a crash at any point leads to a replay that rewrites the same file
names. Worker 0 also compacts and expires partitions, in a thread beside its conversion.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import logging
import os
import shutil
import threading
import time
from collections import Counter
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TextIO

import pyarrow as pa
import pyarrow.compute as pc

from flagscope.collector import failpoints
from flagscope.collector.children import child_process_init
from flagscope.collector.config import Settings
from flagscope.collector.convert import Converter
from flagscope.collector.lake.durable import fsync_dir
from flagscope.collector.lake.layout import file_stem
from flagscope.collector.lake.maintain import compact, expire
from flagscope.collector.lake.write import PartitionedWriter
from flagscope.collector.quarantine import Quarantine, convert_chunk, pieces
from flagscope.collector.tagging import Tagger
from flagscope.collector.wal import SegmentReader, list_segments, quarantine_bytes

log = logging.getLogger("flagscope.ingest")

CHUNK_BYTES = 8 * 1024 * 1024  # payload converted into one table at a time (bounds memory)
POLL_S = 0.1
MAINTENANCE_JOIN_S = 30.0  # at a stop, how long a running compaction may take to finish
# Items this lake writer quarantined since it started (logged with each new case).
QUARANTINED: Counter[str] = Counter()


def convert_segment(settings: Settings, converter: Converter, seq: int, path: Path) -> int:
    """Convert one closed segment into lake files, then delete it; returns rows written.

    Neither a damaged stretch of the segment nor an item the converter cannot handle stops
    it: both are quarantined (kept, logged, counted) and everything else converts.
    """
    reader = SegmentReader(path)
    quarantine = Quarantine(path.parent, seq)
    rows = records = 0
    news: list[str] = []  # first data of a service, said once its files are in the lake
    chunk: list[tuple[int, bytes]] = []
    size = 0
    writer = PartitionedWriter(settings.lake_path, file_stem(settings.writer, seq))
    try:
        for record in reader:
            records += 1
            # a record larger than a chunk is converted in pieces of about a chunk each
            for piece in pieces(record, CHUNK_BYTES):
                if chunk and size + len(piece[1]) > CHUNK_BYTES:
                    rows += _write_chunk(converter, chunk, quarantine, writer, news, path.parent)
                    chunk, size = [], 0
                chunk.append(piece)
                size += len(piece[1])
        if chunk:
            rows += _write_chunk(converter, chunk, quarantine, writer, news, path.parent)
        kept = quarantine.save()
    except BaseException:
        writer.abort()
        raise
    writer.close()
    for line in news:
        log.info("%s", line)
    _report_damage(path, reader, records)
    if kept is not None:
        QUARANTINED["items"] += len(quarantine.items)
        log.error(
            "WAL segment %s: %d items could not be converted (first: %s); the rest of the "
            "segment is in the lake, the items are kept in %s (%d quarantined since start)",
            path.name,
            len(quarantine.items),
            quarantine.first_error,
            kept,
            QUARANTINED["items"],
        )
    failpoints.hit("lake.after_rename")
    path.unlink()
    fsync_dir(path.parent)
    return rows


# The first data of each service a collector run stores is logged, so an operator sees a
# newly instrumented service arrive (issue 11 point 2). Lake writers are processes: a
# marker file created with O_EXCL in SEEN_DIR (emptied when the collector starts) makes
# one of them say it, once per run; SERVICES_SEEN spares this process the file system.
SEEN_DIR = ".services-seen"
SERVICES_SEEN: set[str] = set()


def clear_seen(wal_dir: Path) -> None:
    """A new run: every service's first data is news again."""
    shutil.rmtree(wal_dir / SEEN_DIR, ignore_errors=True)
    (wal_dir / SEEN_DIR).mkdir(parents=True, exist_ok=True)


def _first_to_see(wal_dir: Path, service: str) -> bool:
    marker = wal_dir / SEEN_DIR / hashlib.sha256(service.encode()).hexdigest()[:32]
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    except OSError:  # no marker directory (a writer run on its own): say it anyway
        return True
    return True


MAX_SERVICES_SEEN = 1000  # a client sending a new service.name per request: stop saying it


_NOUNS = {"span": "spans", "log": "log records", "metric": "metric data points"}


def _new_services(wal_dir: Path, table: pa.Table) -> list[str]:
    """'first data from service …' lines for the services `table` brings first."""
    lines: list[str] = []
    names = pc.unique(table.column("service_name")).to_pylist()
    for name in sorted(n for n in names if n is not None and n not in SERVICES_SEEN):
        if len(SERVICES_SEEN) >= MAX_SERVICES_SEEN:
            break
        SERVICES_SEEN.add(name)
        if not _first_to_see(wal_dir, name):
            continue
        of = pc.equal(table.column("service_name"), name)
        signals = pc.value_counts(pc.filter(table.column("signal"), of)).to_pylist()
        what = ", ".join(
            f"{c['counts']} {_NOUNS.get(str(c['values']), str(c['values']))}"
            for c in sorted(signals, key=lambda c: str(c["values"]))
        )
        lines.append(f"first data from service {name!r}: {what}")
        if len(SERVICES_SEEN) == MAX_SERVICES_SEEN:
            lines.append(f"{MAX_SERVICES_SEEN} services seen: no more first-data lines this run")
    return lines


def _write_chunk(
    converter: Converter,
    chunk: list[tuple[int, bytes]],
    quarantine: Quarantine,
    writer: PartitionedWriter,
    news: list[str],
    wal_dir: Path,
) -> int:
    """Convert `chunk` into `writer`'s files; returns its rows, adds its news."""
    table = convert_chunk(converter, chunk, quarantine)
    writer.write(table)
    news += _new_services(wal_dir, table)
    rows: int = table.num_rows
    return rows


def _report_damage(path: Path, reader: SegmentReader, records: int) -> None:
    for start, end in reader.damaged:
        target = quarantine_bytes(path, start, end)
        log.warning(
            "WAL segment %s is damaged at bytes %d-%d: %d whole records recovered around it, "
            "the damaged bytes quarantined in %s",
            path.name,
            start,
            end,
            records,
            target,
        )


def _lock(path: Path) -> TextIO:
    handle = open(path, "a+")  # noqa: SIM115 - held for the life of the process
    fcntl.flock(handle, fcntl.LOCK_EX)  # waits for a dying predecessor to let go
    return handle


def run_worker(
    settings: Settings, index: int, workers: int, parent_pid: int, drain: Event, ready: Event
) -> None:
    """Process entry point; sets `ready` once it converts, returns when `drain` is set and
    every segment is converted."""
    child_process_init()  # the parent decides when to stop; it started us with them blocked
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    wal_dir = settings.wal_path
    _lock_file = _lock(wal_dir / f".worker-{index}.lock")
    converter = Converter(Tagger.from_settings(settings))
    # Conversion allocates millions of short-lived acyclic objects; the cyclic collector
    # would rescan them for nothing (~15 % of the time). Collect once per segment instead.
    gc.disable()
    ready.set()
    stop = threading.Event()
    # Worker 0 compacts and expires in a thread of its own: inline, a compaction held up
    # the conversion of this worker's segments for as long as it took, and the lake's
    # freshness p99 with it (bench/freshness.py: 8.6 s with compaction inline).
    maintainer = (
        threading.Thread(target=_maintain_every, args=(settings, stop), daemon=True)
        if index == 0
        else None
    )
    if maintainer is not None:
        maintainer.start()
    try:
        _convert_until_drained(settings, converter, index, workers, parent_pid, drain)
    finally:
        stop.set()
        if maintainer is not None:
            maintainer.join(MAINTENANCE_JOIN_S)


def _convert_until_drained(
    settings: Settings,
    converter: Converter,
    index: int,
    workers: int,
    parent_pid: int,
    drain: Event,
) -> None:
    wal_dir = settings.wal_path
    while True:
        if os.getppid() != parent_pid:
            return  # orphaned: the collector died; its successor replays the WAL
        draining = drain.is_set()
        segments = list_segments(wal_dir)
        closed = segments if draining else segments[:-1]
        mine = [(seq, path) for seq, path in closed if seq % workers == index]
        for seq, path in mine:
            try:
                convert_segment(settings, converter, seq, path)
                gc.collect()
            except Exception:  # a bug must not wedge ingest: keep the segment, log, go on
                log.exception("could not convert WAL segment %s; it is kept for replay", path)
                time.sleep(1)
        if draining and not mine:
            return
        if not mine:
            time.sleep(POLL_S)


def _maintain_every(settings: Settings, stop: threading.Event) -> None:
    """Compaction and retention every `compact_interval_s` until `stop` (a compaction
    merges only files whose WAL segments are gone: never one being converted)."""
    while not stop.wait(settings.compact_interval_s):
        try:
            maintain(settings)
        except Exception:  # a bug must not end maintenance for the life of the worker
            log.exception("lake maintenance failed; will retry")


def maintain(settings: Settings) -> None:
    live = [seq for seq, _ in list_segments(settings.wal_path)]
    try:
        merged = compact(
            settings.lake_path,
            settings.compact_min_files,
            settings.compact_target_rows,
            writer=settings.writer,
            below_seq=min(live) if live else None,
        )
        expired = expire(settings.lake_path, settings.retention_days)
    except OSError:
        log.exception("lake maintenance failed; will retry")
        return
    if merged or expired:
        log.info("lake maintenance: %d merges, %d partitions expired", merged, expired)
