"""Durability of the ack (OTLP-RECEIVER items 42, 44–47): a 200 means the request is in the
lake exactly once after whatever happens to the collector — kill -9, a torn WAL, a replay,
a retry, SIGTERM. Real `flagscope serve` subprocesses on loopback port 0."""

from __future__ import annotations

import http.client
import os
import random
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import psutil
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from flagscope.collector.lake.layout import GLOB
from flagscope.collector.wal import HEADER, list_segments, read_segment
from tests.helpers import CollectorProcess, query

PROTOBUF = "application/x-protobuf"
# Compaction and retention stay out of the way: these tests are about the WAL and replay.
QUIET = {"FLAGSCOPE_COMPACT_INTERVAL_S": "3600", "FLAGSCOPE_RETENTION_DAYS": "0"}
# Segments never rotate, so acknowledged data stays in the WAL until the collector stops.
HOLD = {**QUIET, "FLAGSCOPE_FLUSH_INTERVAL_S": "3600"}
NOW_NS = time.time_ns() // 3_600_000_000_000 * 3_600_000_000_000 + 1_000_000_000


def spans_request(trace_id: bytes, spans: int, start_ns: int = NOW_NS) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    attribute = resource_spans.resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", "durability"
    scope_spans = resource_spans.scope_spans.add()
    for i in range(spans):
        span = scope_spans.spans.add()
        span.trace_id = trace_id
        span.span_id = (i + 1).to_bytes(8, "big")
        span.name = f"op-{i}"
        span.kind = 2
        span.start_time_unix_nano = start_ns + i
        span.end_time_unix_nano = start_ns + i + 1_000_000
    return request.SerializeToString()


def trace_of(payload: bytes) -> str:
    request = ExportTraceServiceRequest.FromString(payload)
    return request.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()


def post(conn: http.client.HTTPConnection, body: bytes) -> int:
    conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": PROTOBUF})
    response = conn.getresponse()
    response.read()
    return response.status


def connection(collector: CollectorProcess) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", collector.http_port, timeout=30)


def acked_then_killed(
    tmp_path: Path, collectors, seed: int, traces: int, spans: int
) -> list[tuple[bytes, int]]:
    """`traces` traces of `spans` spans acked by a collector that keeps them in its WAL
    (no flush) and is then killed; returns the plan (trace id, spans)."""
    rng = random.Random(seed)
    plan = [(rng.randbytes(16), spans) for _ in range(traces)]
    first = collectors(tmp_path, env=HOLD)
    send_all(first, [spans_request(trace_id, n) for trace_id, n in plan])
    first.kill()
    return plan


def send_all(collector: CollectorProcess, bodies: list[bytes]) -> None:
    conn = connection(collector)
    try:
        assert [post(conn, body) for body in bodies] == [200] * len(bodies)
    finally:
        conn.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def span_counts(lake_dir: Path, view: str = "events") -> dict[str, int]:
    sql = f"select trace_id, count(*) from {view} where signal = 'span' group by 1"
    return dict(query(lake_dir, sql))


def duplicated_event_ids(lake_dir: Path) -> list[tuple[str, int]]:
    sql = "select event_id, count(*) from events_raw group by 1 having count(*) > 1"
    return query(lake_dir, sql)


def lake_files(lake_dir: Path) -> dict[str, int]:
    """Relative path → inode of every visible lake file."""
    return {p.relative_to(lake_dir).as_posix(): p.stat().st_ino for p in lake_dir.glob(GLOB)}


@pytest.fixture
def collectors() -> Iterator[Callable[..., CollectorProcess]]:
    """Start `flagscope serve` subprocesses; any still running at the end are killed."""
    started: list[CollectorProcess] = []

    def start(data_dir: Path, env: dict[str, str] | None = None) -> CollectorProcess:
        process = CollectorProcess(data_dir, env={**QUIET, **(env or {})})
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.close()  # kills it if still running; closes its stdout and stderr pipes


class LakeReader(threading.Thread):
    """Keeps counting rows over the lake glob, as an outside DuckDB user would."""

    def __init__(self, lake_dir: Path) -> None:
        super().__init__(daemon=True)
        self.glob = str(lake_dir / GLOB)
        self.stop = threading.Event()
        self.reads = 0
        self.missing_file_races = 0
        self.errors: list[str] = []

    def run(self) -> None:
        con = duckdb.connect()
        con.execute("SET threads = 1")
        try:
            while not self.stop.is_set():
                try:
                    con.execute("select count(*) from read_parquet(?)", [self.glob]).fetchone()
                    self.reads += 1
                except duckdb.Error as exc:
                    message = str(exc)
                    if "No files found" in message:
                        continue  # nothing written yet
                    if "No such file" in message:
                        self.missing_file_races += 1  # listed, then gone: a reader retries
                        continue
                    self.errors.append(message)
        finally:
            con.close()


# -- item 42 -----------------------------------------------------------------------------
@pytest.mark.slow
def test_every_acked_request_survives_kill_9_exactly_once(tmp_path, collectors):
    rng = random.Random(20240501)
    plan = [(rng.randbytes(16), rng.randint(1, 5)) for _ in range(1000)]
    bodies = [spans_request(trace_id, spans) for trace_id, spans in plan]
    kill_after = rng.randint(100, 900)  # the kill comes after this many acks
    first = collectors(tmp_path)
    reader = LakeReader(tmp_path / "lake")
    reader.start()

    acked: set[int] = set()
    statuses: list[int] = []
    lock = threading.Lock()
    enough, killed = threading.Event(), threading.Event()
    todo = iter(range(len(bodies)))

    def client() -> None:
        conn = connection(first)
        try:
            while not killed.is_set():
                with lock:
                    index = next(todo, None)
                if index is None:
                    return
                try:
                    status = post(conn, bodies[index])
                except (OSError, http.client.HTTPException):
                    return  # the collector is gone: no response, may or may not be stored
                with lock:
                    statuses.append(status)
                    if status == 200:
                        acked.add(index)
                        if len(acked) >= kill_after:
                            enough.set()
        finally:
            conn.close()

    clients = [threading.Thread(target=client) for _ in range(8)]
    for thread in clients:
        thread.start()
    assert enough.wait(60), f"only {len(acked)} acks before the kill"
    first.kill()
    killed.set()
    for thread in clients:
        thread.join(30)
    assert set(statuses) == {200}
    assert len(acked) >= kill_after

    second = collectors(tmp_path)
    wal_dir = tmp_path / "wal"
    assert wait_until(lambda: len(list_segments(wal_dir)) == 1), "the WAL was not replayed"
    reader.stop.set()
    reader.join(30)
    assert second.terminate() == 0

    stored = span_counts(tmp_path / "lake")
    expected = {plan[i][0].hex(): plan[i][1] for i in acked}
    assert {t: stored.get(t) for t in expected} == expected  # every ack, all of its spans
    sent = {trace_id.hex(): spans for trace_id, spans in plan}
    assert set(stored) <= set(sent)
    assert all(stored[t] == sent[t] for t in stored)  # unacked: whole or absent, never half
    assert duplicated_event_ids(tmp_path / "lake") == []  # replay rewrote, never duplicated
    assert reader.reads > 0
    assert reader.errors == []
    assert reader.missing_file_races == 0


# -- item 44 -----------------------------------------------------------------------------
@pytest.mark.slow
def test_replaying_an_already_converted_segment_adds_no_duplicates(tmp_path, collectors):
    plan = acked_then_killed(tmp_path, collectors, seed=44, traces=20, spans=3)
    wal_dir = tmp_path / "wal"
    segments = [path for _, path in list_segments(wal_dir) if path.stat().st_size]
    assert segments, "the acknowledged requests should still be in the WAL"
    saved = tmp_path / "saved-wal"
    saved.mkdir()
    for path in segments:
        shutil.copy2(path, saved / path.name)

    second = collectors(tmp_path)  # replays the WAL into the lake, deletes the segments
    assert second.terminate() == 0
    assert list_segments(wal_dir) == []
    before = lake_files(tmp_path / "lake")
    assert sum(span_counts(tmp_path / "lake", "events_raw").values()) == 60

    # A crash after the Parquet files were renamed into place but before the segment was
    # deleted leaves exactly this: a converted segment back in the WAL.
    for path in saved.iterdir():
        shutil.copy2(path, wal_dir / path.name)
    third = collectors(tmp_path)
    assert wait_until(lambda: not any((wal_dir / p.name).exists() for p in saved.iterdir()))
    assert third.terminate() == 0

    after = lake_files(tmp_path / "lake")
    assert sorted(after) == sorted(before)  # the same names were rewritten
    assert all(after[name] != before[name] for name in before)  # ... really rewritten
    assert span_counts(tmp_path / "lake", "events_raw") == {t.hex(): 3 for t, _ in plan}


# -- item 45 -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("tear", ["truncated-record", "random-bytes"])
def test_a_torn_wal_tail_is_quarantined_and_the_records_before_it_recovered(
    tmp_path, collectors, tear
):
    plan = acked_then_killed(tmp_path, collectors, seed=45, traces=10, spans=2)

    wal_dir = tmp_path / "wal"
    [segment] = [path for _, path in list_segments(wal_dir) if path.stat().st_size]
    records, torn = read_segment(segment)
    assert torn is None and len(records) == len(plan)
    data = segment.read_bytes()
    last = len(data) - HEADER.size - len(records[-1][1])
    if tear == "truncated-record":
        cut = last + HEADER.size + len(records[-1][1]) // 2
        segment.write_bytes(data[:cut])
        tail = data[last:cut]
        survivors = records[:-1]
    else:
        tail = random.Random(7).randbytes(100)
        segment.write_bytes(data + tail)
        survivors = records

    second = collectors(tmp_path)
    assert wait_until(lambda: not segment.exists())
    assert second.terminate() == 0
    assert second.proc is not None and second.proc.stderr is not None
    stderr = second.proc.stderr.read()

    quarantined = list((wal_dir / "quarantine").iterdir())
    assert [path.read_bytes() for path in quarantined] == [tail]
    assert any("quarantine" in line and segment.name in line for line in stderr.splitlines())
    expected = {trace_of(payload): 2 for _, payload in survivors}
    assert span_counts(tmp_path / "lake") == expected


# -- item 46 -----------------------------------------------------------------------------
def test_a_retried_request_is_acked_twice_and_shown_once(server):
    body = spans_request(random.Random(46).randbytes(16), 4)
    trace_id = trace_of(body)
    conn = http.client.HTTPConnection("127.0.0.1", server.collector.http_port, timeout=30)
    try:
        assert [post(conn, body), post(conn, body)] == [200, 200]
    finally:
        conn.close()

    def both_stored() -> bool:
        return span_counts(server.lake, "events_raw").get(trace_id) == 8

    assert wait_until(both_stored), "both deliveries are stored (at-least-once)"
    assert span_counts(server.lake).get(trace_id) == 4  # `events` shows each span once


# -- item 47 -----------------------------------------------------------------------------
def _listener_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.slow
def test_sigterm_closes_the_listener_answers_in_flight_requests_and_flushes_the_wal(
    tmp_path, collectors
):
    collector = collectors(tmp_path)
    acked: list[bytes] = []
    outcomes: list[str] = []
    stop = threading.Event()

    def client(seed: int) -> None:
        local = random.Random(seed)
        conn = connection(collector)
        try:
            while not stop.is_set():
                trace_id = local.randbytes(16)
                try:
                    status = post(conn, spans_request(trace_id, 2))
                except (OSError, http.client.HTTPException):
                    outcomes.append("closed")  # sent after the shutdown began: no response
                    return
                if status == 200:
                    acked.append(trace_id)
                else:
                    outcomes.append(str(status))
        finally:
            conn.close()

    clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in clients:
        thread.start()
    assert wait_until(lambda: len(acked) >= 50, timeout=30)
    assert collector.proc is not None
    collector.proc.send_signal(signal.SIGTERM)  # while four clients have requests in flight
    assert wait_until(lambda: _listener_closed(collector.http_port), timeout=10)
    assert collector.proc.wait(60) == 0
    for thread in clients:
        thread.join(30)  # every request got its answer or saw the connection close: no hang
    assert not any(thread.is_alive() for thread in clients)
    assert set(outcomes) <= {"closed"}

    assert list_segments(tmp_path / "wal") == []  # everything went into the lake
    expected = {t.hex(): 2 for t in acked}
    stored = span_counts(tmp_path / "lake")
    assert {t: stored.get(t) for t in expected} == expected

    restarted = collectors(tmp_path)
    stored = span_counts(tmp_path / "lake")
    assert {t: stored.get(t) for t in expected} == expected
    assert restarted.terminate() == 0


def test_sigterm_answers_a_request_whose_body_is_still_arriving(tmp_path, collectors):
    collector = collectors(tmp_path, env={"FLAGSCOPE_BODY_TIMEOUT_S": "3"})
    trace_id = random.Random(47).randbytes(16)
    body = spans_request(trace_id, 5)
    slow = connection(collector)
    try:
        slow.putrequest("POST", "/v1/traces")
        slow.putheader("Content-Type", PROTOBUF)
        slow.putheader("Content-Length", str(len(body)))
        slow.endheaders()
        slow.send(body[: len(body) // 2])
        assert collector.proc is not None
        time.sleep(0.2)  # let the collector start handling it
        collector.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: _listener_closed(collector.http_port), timeout=10)
        slow.send(body[len(body) // 2 :])
        response = slow.getresponse()
        status = response.status
        response.read()
    finally:
        slow.close()
    assert collector.proc.wait(60) == 0
    assert status == 200
    assert span_counts(tmp_path / "lake") == {trace_id.hex(): 5}


@pytest.mark.slow
def test_a_restarted_collector_keeps_the_files_of_its_previous_run(tmp_path, collectors):
    # Both runs write to the same hour partition; file names must not collide.
    rng = random.Random(48)
    runs = [[rng.randbytes(16) for _ in range(5)] for _ in range(2)]
    for traces in runs:
        collector = collectors(tmp_path)
        send_all(collector, [spans_request(trace_id, 2) for trace_id in traces])
        assert collector.terminate() == 0
    assert span_counts(tmp_path / "lake") == {t.hex(): 2 for traces in runs for t in traces}


def test_a_second_collector_on_the_same_data_dir_fails_clearly(tmp_path, collectors):
    first = collectors(tmp_path)
    second = CollectorProcess(tmp_path, env=QUIET)
    with pytest.raises(RuntimeError, match="another collector is using") as refused:
        second.start(timeout=30)
    assert "Traceback" not in str(refused.value)  # one line, as the CLI promises
    assert second.proc is not None
    assert second.proc.wait(30) == 2
    second.close()
    send_all(first, [spans_request(random.Random(49).randbytes(16), 1)])  # still serving
    assert first.terminate() == 0


def test_kill_9_takes_the_lake_writers_down_too(tmp_path, collectors):
    collector = collectors(tmp_path)
    assert collector.proc is not None
    workers = psutil.Process(collector.proc.pid).children()
    assert workers, "the collector runs lake writer processes"
    collector.kill()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []


def test_a_running_collector_compacts_small_files_and_keeps_every_row_once(tmp_path, collectors):
    collector = collectors(
        tmp_path,
        env={
            "FLAGSCOPE_COMPACT_INTERVAL_S": "0.5",
            "FLAGSCOPE_COMPACT_MIN_FILES": "4",
            "FLAGSCOPE_FLUSH_INTERVAL_S": "0.1",
        },
    )
    rng = random.Random(50)
    traces = [rng.randbytes(16) for _ in range(12)]
    for trace_id in traces:  # one small request per WAL segment: one small file each
        send_all(collector, [spans_request(trace_id, 3)])
        time.sleep(0.15)
    lake_dir = tmp_path / "lake"
    assert wait_until(lambda: any(p.name.startswith("compact-") for p in lake_dir.glob(GLOB)))
    assert wait_until(lambda: span_counts(lake_dir, "events_raw") == {t.hex(): 3 for t in traces})
    assert duplicated_event_ids(lake_dir) == []
    assert len(lake_files(lake_dir)) < len(traces)
    assert collector.terminate() == 0


# -- item 43: the crash at each stage boundary ------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "stage", ["wal.before_fsync", "wal.after_fsync", "lake.before_rename", "lake.after_rename"]
)
def test_a_crash_at_each_stage_loses_no_acked_span_and_shows_no_broken_file(
    tmp_path, collectors, stage
):
    rng = random.Random(hash(stage) & 0xFFFF)
    # The failpoint fires on the 4th pass: some requests are acked and converted first.
    crashing = collectors(tmp_path, env={"FLAGSCOPE_FAILPOINT": f"{stage}:4"})
    acked: dict[str, int] = {}
    conn = connection(crashing)
    try:
        for _ in range(60):
            trace_id, spans = rng.randbytes(16), rng.randint(1, 4)
            try:
                if post(conn, spans_request(trace_id, spans)) == 200:
                    acked[trace_id.hex()] = spans
            except (ConnectionError, http.client.HTTPException, OSError):
                break  # the collector died
            time.sleep(0.05)  # segments rotate (0.2 s), so the lake stages are reached
    finally:
        conn.close()
    assert crashing.proc is not None and crashing.proc.wait(30) != 0, "the failpoint did not fire"
    lake_dir = tmp_path / "lake"
    # Whatever the crash left, a reader never meets an unreadable file.
    if any(lake_dir.glob(GLOB)):
        duckdb.sql(f"select count(*) from read_parquet('{lake_dir / GLOB}')").fetchall()
    restarted = collectors(tmp_path)
    assert restarted.terminate() == 0  # replays the WAL, then drains it into the lake
    stored = span_counts(lake_dir, "events_raw")
    assert {t: stored.get(t) for t in acked} == acked
    assert duplicated_event_ids(lake_dir) == []
    assert not list(lake_dir.glob("**/*.tmp"))


def test_a_dead_lake_writer_is_restarted_and_nothing_is_lost(tmp_path, collectors):
    collector = collectors(tmp_path)
    assert collector.proc is not None
    workers = [
        p
        for p in psutil.Process(collector.proc.pid).children()
        if "spawn_main" in " ".join(p.cmdline()) and "resource_tracker" not in " ".join(p.cmdline())
    ]
    assert workers
    for worker in workers:
        worker.kill()
    rng = random.Random(51)
    traces = [rng.randbytes(16) for _ in range(5)]
    send_all(collector, [spans_request(t, 2) for t in traces])
    assert wait_until(lambda: span_counts(tmp_path / "lake") == {t.hex(): 2 for t in traces})
    assert collector.terminate() == 0


# -- issue 10 point 3: a stop soon after a crash, and crash after crash -----------------
@pytest.mark.slow
def test_sigterm_to_the_process_group_right_after_a_restart_drains_the_crash_wal(
    tmp_path, collectors
):
    """systemd and a terminal's Ctrl-C signal the whole group, lake writers included, while
    they may still be starting; the stop must still convert everything acknowledged."""
    plan = acked_then_killed(tmp_path, collectors, seed=3, traces=20, spans=3)
    second = collectors(tmp_path)
    assert second.proc is not None
    os.killpg(second.proc.pid, signal.SIGTERM)
    assert second.proc.wait(120) == 0
    assert list_segments(tmp_path / "wal") == []
    assert span_counts(tmp_path / "lake", "events_raw") == {t.hex(): n for t, n in plan}


@pytest.mark.slow
def test_each_of_five_quick_crashes_converts_what_the_previous_run_acked(tmp_path, collectors):
    rng = random.Random(5)
    expected: dict[str, int] = {}
    for cycle in range(5):
        collector = collectors(tmp_path, env=HOLD)  # its own acks stay in its open segment
        # the restart's replay converts the previous run's acks (a loaded machine once
        # needed more than the 0.3 s this gave it)
        assert wait_until(lambda: span_counts(tmp_path / "lake", "events_raw") == expected), (
            f"cycle {cycle}"
        )
        traces = [rng.randbytes(16) for _ in range(10)]
        send_all(collector, [spans_request(t, 2) for t in traces])
        expected.update({t.hex(): 2 for t in traces})
        collector.kill()
