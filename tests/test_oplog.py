"""Logging an operator can use (issue 10 point 6): refused clients and clients that hang up
leave one line per cause per interval, with counts and the client address, and no
traceback; a fault that repeats does not flood the log."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from flagscope.collector.oplog import RateLimitedLog
from tests.helpers import RunningCollector, make_settings
from tests.otlp_requests import PB, one_span, post

LOGGER = "flagscope.collector"


def test_a_repeated_cause_is_one_line_per_interval_with_what_it_folded_in(caplog):
    log = RateLimitedLog(logging.getLogger("test.oplog"), interval_s=0.2)
    with caplog.at_level(logging.INFO, logger="test.oplog"):
        for i in range(50):
            log.report(logging.WARNING, "refused 401", "wrong token", client=f"10.0.0.{i % 3}")
        log.report(logging.WARNING, "refused 413", "too large", client="10.0.0.9")
        time.sleep(0.25)
        log.report(logging.WARNING, "refused 401", "wrong token", client="10.0.0.1")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused 401 from 10.0.0.0: wrong token",
        "refused 413 from 10.0.0.9: too large",
        "refused 401 from 10.0.0.1: wrong token (49 more from 3 clients since the last report)",
    ]
    assert log.counts == {"refused 401": 51, "refused 413": 1}


@pytest.fixture
def guarded(tmp_path):
    running = RunningCollector(make_settings(tmp_path, auth_token="s3cret")).start()
    yield running
    running.stop()


def test_refused_clients_and_hang_ups_are_logged_once_without_a_traceback(guarded, caplog):
    body, _ = one_span()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(5):
            reply = post(
                guarded, "/v1/traces", body, PB, {"Authorization": "Bearer wrong"}, authorize=False
            )
            assert reply.status == 401
        big = post(guarded, "/v1/traces", b"\x0a" * (2 * 1024 * 1024), PB)
        assert big.status == 413
        with socket.create_connection(("127.0.0.1", guarded.collector.http_port)) as sock:
            sock.sendall(
                b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret"
                b"\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000"
                b"\r\n\r\n" + b"\x0a" * 10
            )
            time.sleep(0.2)  # the collector is waiting for the rest; the client goes away
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            "hung up" in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.05)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    refused = [m for m in messages if "with 401" in m]
    assert len(refused) == 1 and "from 127.0.0.1" in refused[0] and "bearer token" in refused[0]
    assert len([m for m in messages if "with 413" in m]) == 1
    assert len([m for m in messages if "client hung up during /v1/traces" in m]) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text
