"""A refused request's answer reaches the client (issue 10 point 4): a Node.js exporter
writes its whole chunked gzip body before it reads; a collector that answers 401 and closes
at once makes the kernel reset the connection, and the client logs ECONNRESET or EPIPE
instead of the 401 that says what is wrong."""

from __future__ import annotations

import gzip
import os
import socket
import time

import pytest

from tests.helpers import RunningCollector, make_settings


@pytest.fixture
def guarded(tmp_path):
    running = RunningCollector(make_settings(tmp_path, auth_token="s3cret")).start()
    yield running
    running.stop()


def chunked(data: bytes, piece: int = 16 * 1024) -> bytes:
    return (
        b"".join(
            f"{len(data[i : i + piece]):x}\r\n".encode() + data[i : i + piece] + b"\r\n"
            for i in range(0, len(data), piece)
        )
        + b"0\r\n\r\n"
    )


def test_a_wrong_token_with_a_chunked_gzip_body_is_answered_401_not_reset(guarded):
    body = gzip.compress(os.urandom(900 * 1024))  # incompressible: 900 KiB on the wire
    request = (
        b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer wrong\r\n"
        b"Content-Type: application/x-protobuf\r\nContent-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body)
    )
    with socket.create_connection(("127.0.0.1", guarded.collector.http_port), timeout=10) as s:
        s.sendall(request[: 64 * 1024])
        time.sleep(0.3)  # the collector has answered; the client is still writing its body
        s.sendall(request[64 * 1024 :])  # was: ECONNRESET / EPIPE here
        answer = b""
        while b"bearer token" not in answer and (chunk := s.recv(65536)):
            answer += chunk  # until the error body (the connection may stay open)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
    assert b"bearer token" in answer
