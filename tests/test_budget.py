"""The in-flight budget counts the bytes a request actually holds (issue 10 points 2 and
12): Node.js exporters send every body chunked, the OpenTelemetry Collector gzips by
default, and such a request used to reserve the whole size limit (twice with gzip)."""

from __future__ import annotations

import gzip
import socket
import time

from tests.helpers import MiB, RunningCollector, make_settings
from tests.otlp_requests import one_span, wait_rows

SENDERS = 8


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_small_chunked_gzip_requests_in_flight_together_are_all_accepted(tmp_path):
    # Worst-case reservation would be 2 × 8 MiB per request: one at a time in 24 MiB.
    settings = make_settings(tmp_path, max_request_bytes=8 * MiB, max_inflight_bytes=24 * MiB)
    srv = RunningCollector(settings).start()
    sockets: list[socket.socket] = []
    rests: list[bytes] = []
    try:
        bodies = [one_span() for _ in range(SENDERS)]
        for body, _ in bodies:
            compressed = gzip.compress(body)
            sock = socket.create_connection(("127.0.0.1", srv.collector.http_port), timeout=30)
            sock.sendall(
                b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-protobuf\r\nContent-Encoding: gzip\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunk(compressed[:10])
            )
            sockets.append(sock)
            rests.append(compressed[10:])
        time.sleep(0.3)  # every request is now being received at once
        for sock, rest in zip(sockets, rests, strict=True):
            sock.sendall(chunk(rest) + b"0\r\n\r\n")
        statuses = [sock.recv(64).split(b" ", 2)[1] for sock in sockets]
        assert statuses == [b"200"] * SENDERS
        for _, trace_id in bodies:
            wait_rows(srv, "trace_id = ?", [trace_id.hex()], 1)
        assert srv.collector.receiver.budget.used == 0  # everything given back
    finally:
        for sock in sockets:
            sock.close()
        srv.stop()
