"""Several collectors, one lake (issue 12 point 5): real `flagscope serve` subprocesses with
their own data directories and writer ids write one shared lake, each compacting its own
files of the same hours, under concurrent load — no row lost or doubled. A writer id can
belong to one collector only, and a collector whose data directory was wiped never reuses
a file name its id already has in the lake."""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flagscope.collector.lake.claims import CLAIMS
from flagscope.collector.lake.layout import GLOB, partitions
from flagscope.collector.lake.read import run
from tests.helpers import CollectorProcess
from tests.test_durability import connection, post, spans_request, wait_until

# Small segments and compaction every half second: many files, merged while load goes on.
BUSY = {
    "FLAGSCOPE_FLUSH_INTERVAL_S": "0.05",
    "FLAGSCOPE_COMPACT_INTERVAL_S": "0.5",
    "FLAGSCOPE_COMPACT_MIN_FILES": "3",
    "FLAGSCOPE_RETENTION_DAYS": "0",
}


@pytest.fixture
def start() -> Iterator[Callable[..., CollectorProcess]]:
    started: list[CollectorProcess] = []

    def run(data_dir: Path, lake: Path, writer: str, **env: str) -> CollectorProcess:
        variables = {**BUSY, "FLAGSCOPE_LAKE_DIR": str(lake), "FLAGSCOPE_WRITER_ID": writer}
        process = CollectorProcess(data_dir, env={**variables, **env})
        started.append(process)
        return process.start()

    yield run
    for process in started:
        process.close()


def raw_counts(lake: Path) -> dict[str, int]:
    """Stored rows per trace, duplicates included (`events_raw`, not the de-duplicated view)."""
    sql = "SELECT trace_id, count(*) FROM events_raw WHERE signal = 'span' GROUP BY 1"
    # `run` starts again when the query raced a compaction (it does, every half second)
    return dict(run(lake, lambda con: con.execute(sql).fetchall()))


def send(collector: CollectorProcess, traces: list[bytes], spans: int) -> None:
    conn = connection(collector)
    try:
        for trace_id in traces:  # one small request at a time: a segment, a small file each
            assert post(conn, spans_request(trace_id, spans)) == 200
            time.sleep(0.02)
    finally:
        conn.close()


def test_two_collectors_compacting_the_same_hour_lose_and_double_nothing(
    tmp_path: Path, start: Callable[..., CollectorProcess]
) -> None:
    lake = tmp_path / "lake"
    east = start(tmp_path / "east", lake, "east")
    west = start(tmp_path / "west", lake, "west")
    rng = random.Random(12)
    plan = {name: [rng.randbytes(16) for _ in range(60)] for name in ("east", "west")}
    senders = [
        threading.Thread(target=send, args=(collector, plan[name], 4))
        for name, collector in (("east", east), ("west", west))
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(120)
    expected = {trace.hex(): 4 for traces in plan.values() for trace in traces}

    def merged_by_both() -> bool:
        names = {path.name.split("-")[1] for path in lake.glob("**/compact-*.parquet")}
        return {"east", "west"} <= names

    assert wait_until(merged_by_both, timeout=60), "both collectors compacted their files"
    assert wait_until(lambda: raw_counts(lake) == expected, timeout=60)
    hours = {path.parent for path in lake.glob("**/compact-*.parquet")}
    assert len(hours) == 1 and len(partitions(lake)) == 1, "one hour, compacted by both"
    assert east.terminate() == 0 and west.terminate() == 0
    assert raw_counts(lake) == expected
    stems = [path.stem for path in lake.glob(GLOB)]
    assert all(stem.split("-")[0] in {"east", "west", "compact"} for stem in stems)


def test_a_second_collector_with_the_same_writer_id_is_refused(
    tmp_path: Path, start: Callable[..., CollectorProcess]
) -> None:
    lake = tmp_path / "lake"
    first = start(tmp_path / "one", lake, "shop")
    second = CollectorProcess(
        tmp_path / "two",
        env={**BUSY, "FLAGSCOPE_LAKE_DIR": str(lake), "FLAGSCOPE_WRITER_ID": "shop"},
    )
    try:  # closed whatever happens: a second collector that did start must not outlive us
        with pytest.raises(RuntimeError) as refused:
            second.start()
        assert second.proc is not None and second.proc.wait(30) == 2
        message = str(refused.value)
        assert "writer id 'shop' already belongs to another collector" in message
        assert "writer_id" in message and "Traceback" not in message
    finally:
        second.close()
    send(first, [bytes(16 * [7])], 2)  # the first one is undisturbed
    assert wait_until(lambda: raw_counts(lake) == {bytes(16 * [7]).hex(): 2})
    assert first.terminate() == 0


def _restart_after_losing(
    tmp_path: Path, start: Callable[..., CollectorProcess], lose: Callable[[Path, Path], None]
) -> dict[str, int]:
    """Three copies of one trace, `lose(data_dir, lake)`, three of another trace in the
    same hour (a reused segment number would overwrite the first file): the lake's rows."""
    lake, data_dir = tmp_path / "lake", tmp_path / "data"
    before, after = bytes(16 * [1]), bytes(16 * [2])
    collector = start(data_dir, lake, "solo")
    send(collector, [before], 3)
    assert collector.terminate() == 0
    assert raw_counts(lake) == {before.hex(): 3}
    lose(data_dir, lake)
    collector = start(data_dir, lake, "solo")
    send(collector, [after], 3)
    assert collector.terminate() == 0
    return raw_counts(lake)


def test_a_wiped_data_directory_never_reuses_a_file_name_of_its_writer_id(
    tmp_path: Path, start: Callable[..., CollectorProcess]
) -> None:
    def wipe(data_dir: Path, lake: Path) -> None:
        # the operator follows the refusal's advice and frees the id
        for path in sorted(data_dir.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() else path.rmdir()
        (lake / CLAIMS / "solo").unlink()

    counts = _restart_after_losing(tmp_path, start, wipe)
    assert counts == {bytes(16 * [1]).hex(): 3, bytes(16 * [2]).hex(): 3}


# -- numbering after a restart (issue 12: start-up must not list every file of the lake) ------
LONG_AGO = time.time() - 30 * 86400


def test_a_lost_wal_directory_never_reuses_a_file_name_either(
    tmp_path: Path, start: Callable[..., CollectorProcess]
) -> None:
    def lose_the_wal(data_dir: Path, lake: Path) -> None:
        # Only the WAL directory is lost, and the lake's partitions look unchanged since
        # the recorded start: the numbering must still come from the whole lake.
        shutil.rmtree(data_dir / "wal")
        for partition in partitions(lake):
            os.utime(partition, (LONG_AGO, LONG_AGO))

    counts = _restart_after_losing(tmp_path, start, lose_the_wal)
    assert counts == {bytes(16 * [1]).hex(): 3, bytes(16 * [2]).hex(): 3}


def _old_and_new_partitions(lake: Path, in_old: str, in_new: str) -> tuple[Path, Path]:
    """Two hour partitions with a file each: one unchanged for a month, one just written."""
    old = lake / "date=2026-11-01" / "hour=03"
    new = lake / "date=2026-11-20" / "hour=10"
    for partition, name in ((old, in_old), (new, in_new)):
        partition.mkdir(parents=True)
        (partition / name).write_bytes(b"")
    os.utime(old, (LONG_AGO, LONG_AGO))
    return old, new


def test_after_a_restart_only_partitions_changed_since_the_last_start_are_numbered_from(
    tmp_path: Path,
) -> None:
    from flagscope.collector.lake.claims import highest_seq

    lake = tmp_path / "lake"
    _, new = _old_and_new_partitions(
        lake, "w1-000000000007-000.parquet", "w1-000000000041-000.parquet"
    )
    assert highest_seq(lake, "w1") == 41  # everything listed
    assert highest_seq(lake, "w1", changed_since=time.time() - 3600) == 41
    # a partition untouched since the previous start is not listed (it holds no later file)
    (new / "w1-000000000041-000.parquet").unlink()
    os.utime(new, (LONG_AGO, LONG_AGO))
    assert highest_seq(lake, "w1", changed_since=time.time() - 3600) == 0
    assert highest_seq(lake, "w1") == 7


def test_after_a_restart_only_partitions_changed_since_the_last_start_are_cleaned(
    tmp_path: Path,
) -> None:
    from flagscope.collector.lake.claims import last_start, record_start
    from flagscope.collector.lake.write import remove_stale_temporaries

    torn = ".w1-000000000007-000.parquet.tmp"
    old, new = _old_and_new_partitions(tmp_path / "lake", torn, torn)
    lake = tmp_path / "lake"
    # since the last start: only the partition a run since then wrote in is looked in
    assert remove_stale_temporaries(lake, "w1", changed_since=time.time() - 3600) == 1
    assert [p.name for p in new.iterdir()] == []
    assert remove_stale_temporaries(lake, "w1") == 1  # no start known: the whole lake
    assert [p.name for p in old.iterdir()] == []

    data = tmp_path / "data"
    data.mkdir()
    assert last_start(data) is None
    record_start(data, 1_764_000_000.5)
    assert last_start(data) == 1_764_000_000.5
