"""The write-ahead log: an acknowledged request is in a fsynced WAL record first.

Layout: `<wal>/<seq>.wal` segments of records `[magic u32][length u32][crc32 u32][signal u8]
[payload]` (little endian; crc over signal and payload). One writer thread appends and
group-commits: every record queued while a fsync runs goes into the next one, so acks
cost one fsync per batch of requests, not per request. A segment is rotated when large
or old; the lake writer (`flagscope.collector.lake_writer`) converts closed segments and deletes them.
A record torn by a crash is never acknowledged, so the tail after the last whole record
is quarantined on replay (`SegmentReader`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import BinaryIO

from flagscope.collector import failpoints
from flagscope.collector.errors import LakeError
from flagscope.collector.lag import Lag
from flagscope.collector.lake.durable import fsync_dir, write_atomically
from flagscope.collector.oplog import RateLimitedLog

log = logging.getLogger(__name__)

MAGIC = 0x46534331  # "FSC1"
HEADER = struct.Struct("<IIIB")
SUFFIX = ".wal"
LAST_SEQ = "last-seq"  # highest segment number used, kept when the WAL is empty
ROTATE_RETRY_S = 1.0  # after a failed rotation, how long to keep writing the current segment


def segment_name(seq: int) -> str:
    return f"{seq:012d}{SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for entry in os.scandir(directory):
        name = entry.name
        if name.endswith(SUFFIX) and name[: -len(SUFFIX)].isdigit():
            found.append((int(name[: -len(SUFFIX)]), Path(entry.path)))
    return sorted(found)


def read_last_seq(directory: Path) -> int:
    """The highest segment number ever opened in `directory` (0 if none was recorded)."""
    try:
        return int((directory / LAST_SEQ).read_text())
    except (FileNotFoundError, ValueError):
        return 0


def next_seq(directory: Path) -> int:
    """The number for a new segment: after every segment there is and ever was."""
    existing = list_segments(directory)
    return max(existing[-1][0] if existing else 0, read_last_seq(directory)) + 1


def reserve_seq(directory: Path, seq: int) -> None:
    """Number new segments above `seq` (the lake already holds files of segment `seq`)."""
    directory.mkdir(parents=True, exist_ok=True)
    if next_seq(directory) <= seq:
        _record_last_seq(directory, seq)


def _record_last_seq(directory: Path, seq: int) -> None:
    # Lake file names derive from segment numbers, so a number must never be reused,
    # even after the lake writers have converted and deleted every segment.
    try:
        write_atomically(directory / LAST_SEQ, lambda handle: handle.write(str(seq).encode()))
    except OSError as exc:
        log.warning("could not record WAL segment number %d in %s: %s", seq, LAST_SEQ, exc)


def encode_record(signal: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(bytes((signal,))))
    return HEADER.pack(MAGIC, len(payload), crc, signal) + payload


class SegmentReader:
    """Iterates a segment's whole records from disk, one at a time (bounded memory).

    A damaged stretch (a torn tail, a record whose checksum fails) is skipped: the reader
    resynchronises at the next whole record, so one bad record never costs the intact ones
    after it. After iteration, `damaged` lists the skipped byte ranges (start, end).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.damaged: list[tuple[int, int]] = []

    @property
    def tear(self) -> int | None:
        """Offset of the first damaged byte, or None if the segment is clean."""
        return self.damaged[0][0] if self.damaged else None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        offset = 0
        with open(self.path, "rb") as handle:
            while header := handle.read(HEADER.size):
                record = _whole_record(header, handle)
                if record is None:
                    resume = _next_record_offset(handle, offset + 1)
                    self.damaged.append((offset, resume))
                    handle.seek(resume)
                    offset = resume
                    continue
                yield record
                offset += HEADER.size + len(record[1])


def _whole_record(header: bytes, handle: BinaryIO) -> tuple[int, bytes] | None:
    if len(header) < HEADER.size:
        return None
    magic, length, crc, signal = HEADER.unpack(header)
    if magic != MAGIC:
        return None
    payload = handle.read(length)
    if len(payload) != length or zlib.crc32(payload, zlib.crc32(bytes((signal,)))) != crc:
        return None
    return signal, payload


def _next_record_offset(handle: BinaryIO, start: int) -> int:
    """Offset of the first whole record at or after `start`, or the end of the file."""
    handle.seek(start)
    data = handle.read()  # a segment is bounded (segment_bytes), and damage is rare
    view = memoryview(data)
    magic = HEADER.pack(MAGIC, 0, 0, 0)[:4]
    found = data.find(magic)
    while found >= 0 and found + HEADER.size <= len(data):
        _, length, crc, signal = HEADER.unpack_from(view, found)
        payload = view[found + HEADER.size : found + HEADER.size + length]
        if len(payload) == length and zlib.crc32(payload, zlib.crc32(bytes((signal,)))) == crc:
            return start + found
        found = data.find(magic, found + 1)
    return start + len(data)


def read_segment(path: Path) -> tuple[list[tuple[int, bytes]], int | None]:
    """Whole records of a segment, and the offset of its first damage (None if clean)."""
    reader = SegmentReader(path)
    records = list(reader)
    return records, reader.tear


def quarantine_bytes(path: Path, start: int, end: int) -> Path:
    """Keep a damaged byte range of a segment for inspection instead of deleting it."""
    target_dir = path.parent / "quarantine"
    target_dir.mkdir(exist_ok=True)
    target = target_dir / f"{path.stem}.{start}.tail"
    with open(path, "rb") as source:
        source.seek(start)
        data = source.read(end - start)
    write_atomically(target, lambda handle: handle.write(data))
    return target


def requeue(items: Path, directory: Path) -> Path:
    """Put a quarantined file of whole records (`quarantine/<seq>.items.wal`) back into the
    WAL `directory` as a new segment, which the lake writers then convert like any other.

    Only while no collector runs on `directory` (the caller holds the data dir's lock): a
    running WAL writer owns the next sequence number."""
    _, tear = read_segment(items)
    if tear is not None:
        raise LakeError(
            f"{items} is not a file of whole WAL records (damaged at byte "
            f"{tear}); move it out of quarantine/ and run requeue again"
        )
    seq = next_seq(directory)
    target = directory / segment_name(seq)
    data = items.read_bytes()
    write_atomically(target, lambda handle: handle.write(data))
    _record_last_seq(directory, seq)
    items.unlink()
    fsync_dir(items.parent)
    return target


FAILING_FOR_S = 30.0  # how long a failed WAL write keeps /readyz unready


class WalFullError(OSError):
    """The WAL holds more unconverted data than allowed: back-pressure."""


class WalWriter:
    """Appends records with group commit; `append` returns a Future resolved once fsynced."""

    def __init__(
        self,
        directory: Path,
        segment_bytes: int,
        flush_interval_s: float,
        max_backlog_bytes: int,
        max_lag_s: float = 0.0,
    ) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.flush_interval_s = flush_interval_s
        self.max_backlog_bytes = max_backlog_bytes
        self._queue: queue.SimpleQueue[tuple[bytes, Future[None]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="wal-writer", daemon=True)
        self._fd = -1
        self._seq = 0
        self._size = 0
        self._opened_at = 0.0
        self._backlog = 0
        self._backlog_checked = 0.0
        self._appended = 0  # bytes committed since the backlog was last measured
        self.lag = Lag(max_lag_s, segment_bytes) if max_lag_s > 0 else None
        self._directory_synced = False
        self._rotate_retry_at = 0.0
        self._faults = RateLimitedLog(log)
        self.fsyncs = 0
        # (when, what) of the last write's error, until a write succeeds; readiness reads it
        # for FAILING_FOR_S only, or an unready collector that gets no traffic (a load
        # balancer stops sending) could never become ready again
        self.failing: tuple[float, str] | None = None

    # -- called from request handlers -------------------------------------------------
    def append(self, signal: int, payload: bytes) -> Future[None]:
        future: Future[None] = Future()
        if self._backlog > self.max_backlog_bytes:
            future.set_exception(
                WalFullError(errno.ENOSPC, "write-ahead log backlog is full; the lake is behind")
            )
            return future
        if self.lag is not None and self.lag.over():
            future.set_exception(
                WalFullError(
                    errno.ENOSPC,
                    f"the lake is {self.lag.seconds():.0f} s behind the write-ahead log "
                    f"(max_lag_s = {self.lag.max_lag_s:g})",
                )
            )
            return future
        if not self._thread.is_alive():  # a request must get an answer, never wait forever
            future.set_exception(OSError(errno.EIO, "the write-ahead log is not running"))
            return future
        self._queue.put((encode_record(signal, payload), future))
        return future

    @property
    def backlog_bytes(self) -> int:
        return self._backlog

    def problems(self) -> list[str]:
        """Why an append would be refused now (empty: it would be taken), for /readyz."""
        found = []
        if not self._thread.is_alive():
            found.append("the write-ahead log is not running")
        if not os.access(self.directory, os.W_OK):
            found.append(f"the write-ahead log directory {self.directory} is not writable")
        failing = self.failing
        if failing and time.monotonic() - failing[0] < FAILING_FOR_S:
            found.append(f"the last write-ahead log write failed: {failing[1]}")
        if self._backlog > self.max_backlog_bytes:
            found.append("the write-ahead log backlog is full; the lake is behind")
        if self.lag is not None and self.lag.over():
            found.append(f"the lake is {self.lag.seconds():.0f} s behind the write-ahead log")
        return found

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open_segment(next_seq(self.directory))
        self._refresh_backlog(force=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is queued, fsync, and close; the last segment is then complete."""
        if self._thread.ident is None:  # never started (a collector that failed to start)
            return
        self._queue.put(None)
        self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def current_seq(self) -> int:
        return self._seq

    # -- writer thread --------------------------------------------------------------
    def _open_segment(self, seq: int) -> int:
        """Create segment `seq`, make it the one written, and return the previous descriptor
        (-1 if none). Its directory entry is made durable before a record in it is acked."""
        path = self.directory / segment_name(seq)
        _record_last_seq(self.directory, seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        previous, self._fd, self._seq, self._size = self._fd, fd, seq, size
        self._opened_at = time.monotonic()
        self._directory_synced = False
        return previous

    def _rotate(self) -> None:
        """Continue in the next segment. If it cannot be created (no inodes, no file
        descriptors) writing goes on in the current one and rotation is retried."""
        if time.monotonic() < self._rotate_retry_at:
            return
        try:
            # The next segment exists before the old one counts as closed (lake writers
            # convert every segment but the newest): nothing is appended to a closed one.
            previous = self._open_segment(self._seq + 1)
        except OSError as exc:
            self._rotate_retry_at = time.monotonic() + ROTATE_RETRY_S
            self._faults.report(
                logging.ERROR, "could not start a new WAL segment", f"{exc}; retrying"
            )
            return
        os.close(previous)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[tuple[bytes, Future[None]]] = []
            try:
                stopping = self._take(batch)
                if batch:
                    self._commit(batch)
                    batch = []
                aged = time.monotonic() - self._opened_at >= self.flush_interval_s
                if self._size and (self._size >= self.segment_bytes or aged):
                    self._rotate()
                self._refresh_backlog()
            except Exception as exc:  # noqa: BLE001 - no error may leave requests waiting
                self._faults.report(
                    logging.ERROR,
                    "WAL writer error",
                    f"{exc}; retrying",
                    exc_info=None if isinstance(exc, OSError) else exc,
                )
                for _, future in batch:
                    if not future.done():
                        future.set_exception(
                            exc
                            if isinstance(exc, OSError)
                            else OSError(errno.EIO, f"write-ahead log error: {exc}")
                        )
                time.sleep(0.05)

    def _take(self, batch: list[tuple[bytes, Future[None]]]) -> bool:
        """Fill `batch` with what is queued (waiting until the segment is due to rotate);
        True once `close` asked the thread to stop."""
        timeout = max(0.05, self._opened_at + self.flush_interval_s - time.monotonic())
        size = 0
        try:
            item = self._queue.get(timeout=timeout)
            while True:
                if item is None:
                    return True
                batch.append(item)
                size += len(item[0])
                if size > 8 * 1024 * 1024:
                    return False
                item = self._queue.get_nowait()
        except queue.Empty:
            return False

    def _commit(self, batch: list[tuple[bytes, Future[None]]]) -> None:
        data = b"".join(record for record, _ in batch)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            failpoints.hit("wal.before_fsync")
            os.fdatasync(self._fd)
            if not self._directory_synced:
                fsync_dir(self.directory)
                self._directory_synced = True
            failpoints.hit("wal.after_fsync")
        except OSError as exc:
            self.failing = (time.monotonic(), str(exc))
            self._recover_after_failed_write(exc)
            for _, future in batch:
                future.set_exception(exc)
            return
        self.failing = None
        self._size += len(data)
        self._backlog += len(data)
        self._appended += len(data)
        self.fsyncs += 1
        for _, future in batch:
            future.set_result(None)

    def _recover_after_failed_write(self, exc: OSError) -> None:
        # Cut the segment back to its last complete record so a later record never
        # follows a torn one; if even that fails, continue in a fresh segment.
        log.warning("WAL append failed (%s); the request is refused with 503", exc)
        try:
            os.ftruncate(self._fd, self._size)
            os.fdatasync(self._fd)
        except OSError:
            self._rotate_retry_at = 0.0
            self._rotate()

    def _refresh_backlog(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._backlog_checked < 0.5:
            return
        self._backlog_checked = now
        total = 0
        try:
            for _, path in list_segments(self.directory):
                with contextlib.suppress(FileNotFoundError):  # converted and deleted meanwhile
                    total += path.stat().st_size
        except OSError as exc:  # e.g. out of file descriptors: keep the last figure
            self._faults.report(
                logging.ERROR, "could not measure the WAL backlog", f"{exc}; retrying"
            )
            return
        self._backlog = total
        if self.lag is not None:
            self.lag.observe(now, total, self._appended)
        self._appended = 0
