"""Unit tests of the lake (`flagscope.collector.lake`) and the write-ahead log (`flagscope.collector.wal`) on
temporary directories, without a server."""

from __future__ import annotations

import errno
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flagscope.collector import wal
from flagscope.collector.lake import maintain
from flagscope.collector.lake.layout import GLOB, TEMPORARY_GLOB, has_files, partitions, temporary
from flagscope.collector.lake.maintain import compact, expire
from flagscope.collector.lake.read import connect
from flagscope.collector.lake.schema import INPUT_SCHEMA, SCHEMA, TRACE_KEY
from flagscope.collector.lake.write import PartitionedWriter, remove_stale_temporaries, write_table
from flagscope.collector.wal import (
    WalFullError,
    WalWriter,
    encode_record,
    list_segments,
    read_segment,
)
from tests.helpers import query

HOUR_NS = 3_600_000_000_000


def ns(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()) * 1_000_000_000


def table(times: list[int], ids: list[str]) -> pa.Table:
    """Wide events as a builder gives them (times in nanoseconds): only time, signal and
    the ids filled in; the writer derives the rest of the lake's schema."""
    columns = {name: [None] * len(ids) for name in INPUT_SCHEMA.names}
    columns["time"] = times
    columns["signal"] = ["span"] * len(ids)
    columns["event_id"] = ids
    columns["trace_id"] = [i[:32] for i in ids]
    columns["span_id"] = [i[32:] for i in ids]
    return pa.Table.from_pydict(columns, schema=INPUT_SCHEMA)


def event_ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix:0>32}{i:016x}" for i in range(n)]


def glob_count(lake_dir: Path) -> int:
    con = duckdb.connect()
    try:
        sql = "select count(*) from read_parquet(?)"
        return con.execute(sql, [str(lake_dir / GLOB)]).fetchone()[0]
    finally:
        con.close()


def files(directory: Path) -> list[str]:
    """The lake files and temporaries, without the narrow companions (test_narrow_tables.py)."""
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("_"))


T10 = ns("2024-05-01T10:30:00")  # an hour partition date=2024-05-01/hour=10


# -- writing -----------------------------------------------------------------------------
def test_write_table_partitions_by_hour_with_deterministic_names(tmp_path):
    times = [ns("2024-05-01T11:15:00"), T10 + 5, ns("2024-05-01T11:00:00"), T10]
    written = write_table(tmp_path, table(times, event_ids("a", 4)), "w-000000000007-000")

    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "date=2024-05-01/hour=10/w-000000000007-000.parquet",
        "date=2024-05-01/hour=11/w-000000000007-000.parquet",
    ]
    hour10 = pq.read_table(tmp_path / "date=2024-05-01/hour=10/w-000000000007-000.parquet")
    hour11 = pq.read_table(tmp_path / "date=2024-05-01/hour=11/w-000000000007-000.parquet")
    assert hour10.schema.equals(SCHEMA) and hour11.schema.equals(SCHEMA)
    assert sorted(hour10["time_unix_nano"].to_pylist()) == [T10, T10 + 5]
    assert sorted(hour11["time_unix_nano"].to_pylist()) == [times[2], times[0]]
    # the timestamp column: the same instants in UTC, to the microsecond
    assert sorted(hour10["time"].to_pylist()) == [datetime.fromtimestamp(T10 // 10**9, UTC)] * 2


def test_times_are_utc_instants_to_the_microsecond_and_exact_in_nanoseconds(tmp_path):
    at = ns("2024-05-01T10:30:00") + 123_456_789
    (path,) = write_table(tmp_path, table([at], event_ids("t", 1)), "w-000000000001-000")
    field = pq.ParquetFile(path).schema.column(0)  # `time`, the first column
    assert field.name == "time"
    assert json.loads(field.logical_type.to_json()) | {"is_from_converted_type": False} == {
        "Type": "Timestamp",
        "isAdjustedToUTC": True,
        "timeUnit": "microseconds",
        "is_from_converted_type": False,
        "force_set_converted_type": False,
    }
    stored = pq.read_table(path)
    assert stored["time"].to_pylist() == [datetime(2024, 5, 1, 10, 30, 0, 123456, tzinfo=UTC)]
    assert stored["time_unix_nano"].to_pylist() == [at]
    # flagscope's views: naive UTC at nanosecond precision, as before
    assert query(tmp_path, "select epoch_ns(time), time_unix_nano from events_raw") == [(at, at)]


def test_write_table_of_no_rows_writes_no_file(tmp_path):
    assert write_table(tmp_path, table([], []), "w-000000000001-000") == []
    assert not has_files(tmp_path)


def test_a_writer_aborted_midway_leaves_nothing_in_the_lake(tmp_path):
    writer = PartitionedWriter(tmp_path, "w-000000000001-000")
    writer.write(table([T10, T10 + HOUR_NS], event_ids("a", 2)))  # two partitions
    assert len(list(tmp_path.glob(TEMPORARY_GLOB))) == 2
    writer.abort()
    assert list(tmp_path.glob("**/*.parquet*")) == []


def test_rewriting_the_same_name_replaces_the_file(tmp_path):
    ids = event_ids("b", 3)
    write_table(tmp_path, table([T10] * 3, ids), "w-000000000001-000")
    write_table(tmp_path, table([T10] * 3, ids), "w-000000000001-000")  # a replay
    partition = tmp_path / "date=2024-05-01/hour=10"
    assert files(partition) == ["w-000000000001-000.parquet"]
    assert query(tmp_path, "select count(*) from events_raw") == [(3,)]

    write_table(tmp_path, table([T10] * 2, ids[:2]), "w-000000000001-000")
    assert pq.read_table(partition / "w-000000000001-000.parquet").num_rows == 2


def test_temporary_files_are_not_matched_by_the_lake_glob(tmp_path):
    write_table(tmp_path, table([T10] * 2, event_ids("c", 2)), "w-000000000001-000")
    partition = tmp_path / "date=2024-05-01/hour=10"
    half = temporary(partition / "w-000000000002-000.parquet")
    assert half.name == ".w-000000000002-000.parquet.tmp"  # hidden: Spark, pyarrow skip it
    half.write_bytes(b"PAR1 half a file")

    assert glob_count(tmp_path) == 2
    assert [p.name for p in tmp_path.glob(GLOB)] == ["w-000000000001-000.parquet"]
    assert query(tmp_path, "select count(*) from events_raw") == [(2,)]


def test_remove_stale_temporaries_deletes_only_this_writers_tmp_files(tmp_path):
    write_table(tmp_path, table([T10], event_ids("d", 1)), "w-000000000001-000")
    partition = tmp_path / "date=2024-05-01/hour=10"
    (partition / ".w-000000000002-000.parquet.tmp").write_bytes(b"torn")
    (partition / ".compact-w-000000000001-000000000002.parquet.tmp").write_bytes(b"torn")
    (partition / "w-000000000003-000.parquet.tmp").write_bytes(b"torn, by a version before")
    (partition / ".other-000000000002-000.parquet.tmp").write_bytes(b"in progress")

    assert remove_stale_temporaries(tmp_path, "w") == 3
    assert files(partition) == [".other-000000000002-000.parquet.tmp", "w-000000000001-000.parquet"]


# -- compaction --------------------------------------------------------------------------
def _small_files(lake_dir: Path, writer: str, seqs: range, rows: int = 3) -> None:
    for seq in seqs:
        ids = event_ids(f"{writer}{seq}", rows)
        write_table(lake_dir, table([T10 + seq] * rows, ids), f"{writer}-{seq:012d}-000")


def test_compaction_merges_small_files_of_one_partition_and_keeps_every_row(tmp_path):
    _small_files(tmp_path, "w", range(1, 8))
    _small_files(tmp_path, "other", range(1, 4))
    lonely = ns("2024-05-01T12:00:00")
    write_table(tmp_path, table([lonely], event_ids("e", 1)), "w-000000000003-001")
    before = query(tmp_path, "select event_id from events_raw order by 1")

    merges = compact(tmp_path, min_files=2, target_rows=1000, writer="w", below_seq=6)

    assert merges == 1
    assert files(tmp_path / "date=2024-05-01/hour=10") == [
        "compact-w-000000000001-000000000005.parquet",
        "other-000000000001-000.parquet",  # another writer's files are not ours to merge
        "other-000000000002-000.parquet",
        "other-000000000003-000.parquet",
        "w-000000000006-000.parquet",  # segments 6 and 7 are still in the WAL: untouched
        "w-000000000007-000.parquet",
    ]
    assert files(tmp_path / "date=2024-05-01/hour=12") == ["w-000000000003-001.parquet"]
    merged = pq.read_table(
        tmp_path / "date=2024-05-01/hour=10/compact-w-000000000001-000000000005.parquet"
    )
    assert merged.num_rows == 15
    assert merged.schema.equals(SCHEMA)
    assert query(tmp_path, "select event_id from events_raw order by 1") == before
    assert glob_count(tmp_path) == len(before)


def test_compaction_groups_files_up_to_the_target_rows(tmp_path):
    _small_files(tmp_path, "w", range(1, 6), rows=30)  # 5 files of 30 rows, target 100

    assert compact(tmp_path, min_files=2, target_rows=100, writer="w") == 2
    partition = tmp_path / "date=2024-05-01/hour=10"
    assert files(partition) == [  # 90 + 30 rows would pass the target: a second file
        "compact-w-000000000001-000000000003.parquet",
        "compact-w-000000000004-000000000005.parquet",
    ]
    assert glob_count(tmp_path) == 150


def test_compaction_writes_whole_row_groups(tmp_path, monkeypatch):
    # 12 files of 30 rows with row groups of 100: 100, 100, 100 and the 60 left over, in
    # the rows' order, not the inputs' 12 groups of 30
    monkeypatch.setattr(maintain, "ROW_GROUP_ROWS", 100)
    _small_files(tmp_path, "w", range(1, 13), rows=30)
    before = query(tmp_path, "select event_id from events_raw order by 1")
    assert compact(tmp_path, min_files=2, target_rows=1000, writer="w") == 1
    (merged,) = (tmp_path / "date=2024-05-01/hour=10").glob("compact-*.parquet")
    meta = pq.ParquetFile(merged).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [100, 100, 100, 60]
    assert query(tmp_path, "select event_id from events_raw order by 1") == before


def test_compaction_waits_for_min_files(tmp_path):
    _small_files(tmp_path, "w", range(1, 4))
    assert compact(tmp_path, min_files=4, target_rows=1000, writer="w") == 0
    assert len(files(tmp_path / "date=2024-05-01/hour=10")) == 3


# -- retention ---------------------------------------------------------------------------
def test_expire_deletes_only_partitions_older_than_the_retention(tmp_path):
    now = ns("2024-05-10T12:30:00") / 1e9
    for iso in (
        "2024-05-08T09:00:00",
        "2024-05-09T11:00:00",
        "2024-05-09T12:00:00",
        "2024-05-10T12:00:00",
    ):
        write_table(tmp_path, table([ns(iso)], event_ids("f", 1)), "w-000000000001-000")

    assert expire(tmp_path, retention_days=1, now=now) == 2  # ended before 05-09 12:30

    remaining = [p.relative_to(tmp_path).as_posix() for p in partitions(tmp_path)]
    assert remaining == ["date=2024-05-09/hour=12", "date=2024-05-10/hour=12"]
    assert not (tmp_path / "date=2024-05-08").exists()  # the emptied day is gone too


def test_expire_with_zero_retention_keeps_everything(tmp_path):
    write_table(tmp_path, table([ns("2000-01-01T00:00:00")], event_ids("g", 1)), "w-1")
    assert expire(tmp_path, retention_days=0) == 0
    assert len(partitions(tmp_path)) == 1


# -- reading -----------------------------------------------------------------------------
def test_events_view_deduplicates_by_event_id_and_events_raw_keeps_all_rows(tmp_path):
    ids = event_ids("h", 4)
    write_table(tmp_path, table([T10] * 3, ids[:3]), "w-000000000001-000")
    write_table(tmp_path, table([T10] * 3, ids[1:]), "w-000000000002-000")  # a retry

    assert query(tmp_path, "select count(*) from events_raw") == [(6,)]
    assert query(tmp_path, "select event_id from events order by 1") == [(i,) for i in ids]


@pytest.mark.parametrize("exists", [False, True])
def test_empty_lake_gives_an_empty_events_view_with_the_full_schema(tmp_path, exists):
    lake_dir = tmp_path / "lake"
    if exists:
        lake_dir.mkdir()
    con = connect(lake_dir)
    try:
        for view in ("events", "events_raw"):
            result = con.execute(f"select * from {view}")
            assert [d[0] for d in result.description] == [*SCHEMA.names, TRACE_KEY]
            assert result.fetchall() == []
    finally:
        con.close()


# -- write-ahead log ---------------------------------------------------------------------
RECORDS = [(1, b"first"), (2, b""), (1, bytes(range(256)) * 40)]


def _segment(path: Path, records: list[tuple[int, bytes]]) -> list[int]:
    """Write `records` to `path`; return each record's start offset."""
    offsets, data = [], b""
    for signal, payload in records:
        offsets.append(len(data))
        data += encode_record(signal, payload)
    path.write_bytes(data)
    return offsets


def test_wal_records_round_trip(tmp_path):
    path = tmp_path / wal.segment_name(1)
    _segment(path, RECORDS)
    assert read_segment(path) == (RECORDS, None)


@pytest.mark.parametrize("damage", ["mid-header", "mid-payload", "bad-crc", "garbage"])
def test_read_segment_returns_whole_records_and_the_tear_offset(tmp_path, damage):
    path = tmp_path / wal.segment_name(1)
    offsets = _segment(path, RECORDS)
    data = path.read_bytes()
    last = offsets[-1]
    if damage == "mid-header":
        path.write_bytes(data[: last + 5])
    elif damage == "mid-payload":
        path.write_bytes(data[: last + wal.HEADER.size + 100])
    elif damage == "bad-crc":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        last = len(data)
        path.write_bytes(data + os.urandom(37))

    records, tear = read_segment(path)
    assert tear == last
    assert records == (RECORDS if damage == "garbage" else RECORDS[:-1])


def test_quarantine_bytes_keeps_the_torn_bytes(tmp_path):
    path = tmp_path / wal.segment_name(3)
    _segment(path, RECORDS[:1])
    whole = path.stat().st_size
    with open(path, "ab") as handle:
        handle.write(b"\x01torn tail")

    target = wal.quarantine_bytes(path, whole, path.stat().st_size)
    assert target.parent == tmp_path / "quarantine"
    assert target.read_bytes() == b"\x01torn tail"


def _writer(directory: Path, **overrides) -> WalWriter:
    options = {"segment_bytes": 1 << 20, "flush_interval_s": 3600.0, "max_backlog_bytes": 1 << 30}
    options.update(overrides)
    return WalWriter(directory, **options)


def test_writer_resolves_futures_only_after_fsync_and_groups_commits(tmp_path, monkeypatch):
    real_fdatasync = os.fdatasync
    entered, release = threading.Event(), threading.Event()

    def gated_fdatasync(fd: int) -> None:
        entered.set()
        assert release.wait(10)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", gated_fdatasync)
    writer = _writer(tmp_path)
    writer.start()
    try:
        first = writer.append(1, b"one")
        assert entered.wait(10)  # the writer thread is inside the fsync of `first`
        queued = [writer.append(1, b"queued %d" % i) for i in range(20)]
        assert not first.done()
        assert not any(f.done() for f in queued)
        release.set()
        first.result(10)
        for future in queued:
            future.result(10)
        assert writer.fsyncs == 2  # the 20 records queued during the fsync share one
    finally:
        release.set()
        writer.close()
    [(_, segment)] = list_segments(tmp_path)
    records, tear = read_segment(segment)
    assert tear is None
    assert [p for _, p in records] == [b"one"] + [b"queued %d" % i for i in range(20)]


def test_writer_cuts_the_segment_back_after_a_failed_write(tmp_path, monkeypatch):
    real_write = os.write
    fail = threading.Event()

    def failing_write(fd: int, data: bytes) -> int:
        if fail.is_set():
            fail.clear()
            real_write(fd, bytes(data[: len(data) // 2]))  # half the record reaches the disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    writer = _writer(tmp_path)
    writer.start()
    try:
        writer.append(1, b"before").result(10)
        fail.set()
        with pytest.raises(OSError) as info:
            writer.append(1, b"refused" * 100).result(10)
        assert info.value.errno == errno.ENOSPC
        writer.append(2, b"after").result(10)
    finally:
        writer.close()
    records = []
    for _, segment in list_segments(tmp_path):
        found, tear = read_segment(segment)
        assert tear is None
        records += found
    assert records == [(1, b"before"), (2, b"after")]


def test_writer_refuses_appends_when_the_backlog_is_full(tmp_path):
    _segment(tmp_path / wal.segment_name(1), [(1, b"x" * 4096)])
    writer = _writer(tmp_path, max_backlog_bytes=1024)
    writer.start()
    try:
        with pytest.raises(WalFullError):
            writer.append(1, b"more").result(10)
    finally:
        writer.close()


def test_writer_continues_after_the_existing_segments(tmp_path):
    _segment(tmp_path / wal.segment_name(5), RECORDS[:1])
    writer = _writer(tmp_path)
    writer.start()
    writer.close()
    assert writer.current_seq == 6


def test_writer_never_reuses_a_sequence_number_after_the_wal_was_emptied(tmp_path):
    # Lake file names derive from segment numbers: a reused number would overwrite
    # (lose) files written from an earlier segment of that number.
    writer = _writer(tmp_path)
    writer.start()
    writer.append(1, b"data").result(10)
    writer.close()
    used = writer.current_seq
    for _, segment in list_segments(tmp_path):
        segment.unlink()  # what the lake writers do once a segment is in the lake

    successor = _writer(tmp_path)
    successor.start()
    successor.close()
    assert successor.current_seq > used


def test_a_windowed_query_reads_only_its_hour_partitions(tmp_path, capsys):
    """`flagscope query --from/--to` (and `--since`): the views hold the window's rows, and
    the files of other hours are not even opened — a damaged one there changes nothing."""
    from flagscope.analysis.cli import main

    early, late = ns("2026-11-28T08:10:00"), ns("2026-11-28T11:20:00")
    write_table(tmp_path, table([early, early + 1], event_ids("a", 2)), "w-000000000001-000")
    write_table(tmp_path, table([late, late + HOUR_NS], event_ids("b", 2)), "w-000000000002-000")
    sql = "SELECT count(*) AS n, min(time) AS first FROM events"
    window = ["--from", "2026-11-28T11:00", "--to", "2026-11-28T12:00"]
    assert main(["query", "--lake", str(tmp_path), "--format", "csv", *window, sql]) == 0
    assert capsys.readouterr().out.splitlines() == ["n,first", "1,2026-11-28 11:20:00"]

    (broken,) = (tmp_path / "date=2026-11-28" / "hour=08").glob("*.parquet")
    broken.write_bytes(b"not parquet")
    assert main(["query", "--lake", str(tmp_path), "--format", "csv", *window, sql]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "1,2026-11-28 11:20:00"
    assert main(["query", "--lake", str(tmp_path), sql]) == 2  # the whole lake meets it
    assert broken.name in capsys.readouterr().err
