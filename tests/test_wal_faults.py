"""OS faults outside the WAL's write path (issue 10 point 10; OTLP-RECEIVER item 32): out of
inodes or file descriptors, the next segment cannot be created or the WAL directory cannot
be listed. The writer must keep answering — with the ack when the record is durable, with
503 when it is not — and recover by itself when the resource returns."""

from __future__ import annotations

import errno
import http.client
import os
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

from flagscope.collector import wal as wal_module
from flagscope.collector.wal import ROTATE_RETRY_S, WalWriter, list_segments, read_segment
from tests.helpers import CollectorProcess, query
from tests.test_durability import PROTOBUF, QUIET, spans_request, wait_until

ANSWER_S = 5.0  # an append is answered within this, or the writer is wedged


def all_records(directory: Path) -> list[bytes]:
    return [payload for _, path in list_segments(directory) for _, payload in read_segment(path)[0]]


@pytest.fixture
def writer(tmp_path: Path):
    wal = WalWriter(tmp_path, segment_bytes=1, flush_interval_s=0.05, max_backlog_bytes=1 << 30)
    wal.start()
    yield wal
    wal.close()


def fail_under(
    directory: Path,
    name: str,
    error: int,
    active: threading.Event,
    monkeypatch,
    only_creating: bool = False,
):
    """Make `os.<name>` fail with `error` for paths under `directory` while `active` is set
    (with `only_creating`, only calls that would create a file, as out of inodes)."""
    real = getattr(os, name)

    def faulty(path, *args, **kwargs):
        creating = bool(args and args[0] & os.O_CREAT)
        if (
            active.is_set()
            and str(path).startswith(str(directory))
            and (creating or not only_creating)
        ):
            raise OSError(error, os.strerror(error))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(wal_module.os, name, faulty)


def test_a_segment_that_cannot_be_created_does_not_stop_the_writer(writer, tmp_path, monkeypatch):
    no_inodes = threading.Event()
    no_inodes.set()
    fail_under(tmp_path, "open", errno.ENOSPC, no_inodes, monkeypatch, only_creating=True)
    sent = [f"record {i}".encode() for i in range(20)]
    for payload in sent[:10]:
        writer.append(1, payload).result(ANSWER_S)  # rotation fails after every record
        time.sleep(0.02)
    assert len(list_segments(tmp_path)) == 1  # ... so the records share the open segment

    no_inodes.clear()  # inodes are back: rotation resumes on its own (retried every second)
    assert wait_until(lambda: len(list_segments(tmp_path)) == 2, ROTATE_RETRY_S + 1)
    for payload in sent[10:]:
        writer.append(1, payload).result(ANSWER_S)
        time.sleep(0.06)
    assert len(list_segments(tmp_path)) > 2
    assert all_records(tmp_path) == sent


def test_a_wal_directory_that_cannot_be_listed_does_not_stop_the_writer(
    writer, tmp_path, monkeypatch
):
    no_descriptors = threading.Event()
    no_descriptors.set()
    fail_under(tmp_path, "scandir", errno.EMFILE, no_descriptors, monkeypatch)
    writer.append(1, b"first").result(ANSWER_S)
    time.sleep(0.6)  # past the backlog refresh interval: the listing is attempted and fails
    writer.append(1, b"second").result(ANSWER_S)
    no_descriptors.clear()
    writer.append(1, b"third").result(ANSWER_S)
    assert all_records(tmp_path) == [b"first", b"second", b"third"]


def test_an_unexpected_error_fails_its_batch_and_the_next_request_is_acked(
    writer, tmp_path, monkeypatch
):
    real_write = os.write
    failures = iter([ValueError("a bug")])

    def write_once_badly(fd, data):
        error = next(failures, None)
        if error is not None:
            raise error
        return real_write(fd, data)

    monkeypatch.setattr(wal_module.os, "write", write_once_badly)
    with pytest.raises(OSError, match="a bug") as caught:
        writer.append(1, b"lost to the bug").result(ANSWER_S)
    assert caught.value.errno == errno.EIO  # answered as storage trouble: 503
    writer.append(1, b"kept").result(ANSWER_S)
    assert all_records(tmp_path) == [b"kept"]


def test_a_stopped_writer_refuses_at_once(tmp_path):
    wal = WalWriter(tmp_path, segment_bytes=1 << 20, flush_interval_s=1, max_backlog_bytes=1 << 30)
    wal.start()
    wal.close()
    with pytest.raises(OSError, match="not running") as caught:
        wal.append(1, b"too late").result(ANSWER_S)
    assert caught.value.errno == errno.EIO


@pytest.mark.slow
def test_out_of_file_descriptors_the_collector_answers_and_recovers(tmp_path):
    """A real `flagscope serve` with a 256-descriptor limit, filled by idle connections."""
    limit = 256
    collector = CollectorProcess(tmp_path, env=QUIET, max_open_files=limit).start()
    process = psutil.Process(collector.proc.pid)
    idle: list[socket.socket] = []
    conn = http.client.HTTPConnection("127.0.0.1", collector.http_port, timeout=ANSWER_S * 2)
    try:
        trace_ids = [os.urandom(16) for _ in range(30)]

        def post(trace_id: bytes) -> int:
            conn.request(
                "POST",
                "/v1/traces",
                body=spans_request(trace_id, 2),
                headers={"Content-Type": PROTOBUF},
            )
            response = conn.getresponse()
            response.read()
            return response.status

        assert post(trace_ids[0]) == 200
        while process.num_fds() < limit - 1 and len(idle) < 2 * limit:
            idle.append(socket.create_connection(("127.0.0.1", collector.http_port)))
            time.sleep(0.002)
        assert process.num_fds() >= limit - 1, "the descriptors were not exhausted"
        statuses = []
        for trace_id in trace_ids[1:20]:  # > 1 s: rotations (every 0.2 s) fail meanwhile
            statuses.append(post(trace_id))
            time.sleep(0.06)
        assert statuses == [200] * 19  # each still in a durable WAL record

        for sock in idle:
            sock.close()
        idle.clear()
        assert [post(trace_id) for trace_id in trace_ids[20:]] == [200] * 10
        conn.close()
        assert collector.terminate() == 0
        stored = dict(query(tmp_path / "lake", "select trace_id, count(*) from events group by 1"))
        assert stored == {trace_id.hex(): 2 for trace_id in trace_ids}
        assert list_segments(tmp_path / "wal") == []
        log = collector.proc.stderr.read()
        assert "Traceback" not in log
    finally:
        for sock in idle:
            sock.close()
        conn.close()
        collector.close()  # kills it if still running; closes its stdout and stderr pipes
