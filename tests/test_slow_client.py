"""OTLP-RECEIVER item 52: a client trickling its body is cut off after the body timeout,
and other clients are served meanwhile."""

from __future__ import annotations

import socket
import time
import urllib.request

from tests.helpers import RunningCollector, make_settings


def test_a_slow_body_is_refused_after_the_timeout_while_others_are_served(tmp_path, otlp_examples):
    running = RunningCollector(make_settings(tmp_path, body_timeout_s=1.0)).start()
    slow = None
    try:
        slow = socket.create_connection(("127.0.0.1", running.collector.http_port), timeout=10)
        slow.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        started = time.monotonic()
        body = (otlp_examples / "trace.json").read_bytes()
        request = urllib.request.Request(
            running.http_url + "/v1/traces", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # not held up by the slow one
            assert response.status == 200
        assert time.monotonic() - started < 1.0
        answer = b""
        try:
            for _ in range(20):  # one byte a tick, as a trickling client would
                slow.sendall(b" ")
                time.sleep(0.1)
                slow.settimeout(0.01)
                try:
                    chunk = slow.recv(4096)
                except TimeoutError:
                    continue
                answer += chunk
                if not chunk or b"\r\n\r\n" in answer:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert 0.9 < elapsed < 3.0
    finally:
        if slow is not None:
            slow.close()
        running.stop()
