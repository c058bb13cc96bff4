"""What an operator sees of a running collector (issue 11 point 2): what to export when it
is ready, the probes, the first data of each service, one line of activity per interval
in spans and log records, and refused requests by status."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest

from flagscope.collector.activity import describe
from flagscope.collector.wal import WalWriter
from tests.helpers import CollectorProcess

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def _post(url: str, body: bytes, content_type: str) -> int:
    request = urllib.request.Request(url, body, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_a_running_collector_tells_the_operator_what_happens(tmp_path, otlp_examples):
    collector = CollectorProcess(tmp_path, env={"FLAGSCOPE_ACTIVITY_LOG_S": "1"}).start()
    try:
        assert collector.proc is not None and collector.proc.stdout is not None
        export = collector.proc.stdout.readline().strip()
        assert export == f"export OTEL_EXPORTER_OTLP_ENDPOINT={collector.http_url}"
        assert _get(f"{collector.http_url}/healthz") == (200, {"live": True})
        assert _get(f"{collector.http_url}/readyz") == (200, {"ready": True, "problems": []})
        trace = (otlp_examples / "trace.json").read_bytes()
        logs = (otlp_examples / "logs.json").read_bytes()
        assert _post(f"{collector.http_url}/v1/traces", trace, "application/json") == 200
        assert _post(f"{collector.http_url}/v1/logs", logs, "application/json") == 200
        assert _post(f"{collector.http_url}/v1/traces", b"{", "application/json") == 400
        time.sleep(2.5)  # an activity interval, and the lake writers' conversion
        assert collector.terminate() == 0
        err = collector.proc.stderr.read() if collector.proc.stderr else ""
    finally:
        collector.close()
    # The spec's example trace has 1 span and its logs 1 record, of service "my.service".
    # once in a run, whichever lake writer converts it first, with what arrived first
    first = re.findall(r"first data from service 'my.service': (.*)", err)
    assert first in (["1 spans"], ["1 log records"], ["1 log records, 1 spans"]), err
    assert "last 1 s: 1 spans and 1 log records accepted; 1 request refused (400 ×1)" in err, err
    assert "this run: 1 spans and 1 log records accepted; 1 request refused (400 ×1)" in err


def test_the_activity_line_counts_items_not_requests():
    assert describe(Counter()) is None
    delta = Counter({"traces.accepted": 1204, "logs.accepted": 3, "traces.rejected": 2})
    delta.update({"refused.503": 5, "refused.400": 1})
    assert describe(delta) == (
        "1,204 spans and 3 log records accepted; 2 spans rejected; "
        "6 requests refused (400 ×1, 503 ×5)"
    )


def test_readiness_names_a_full_write_ahead_log(tmp_path):
    wal = WalWriter(tmp_path / "wal", 1 << 20, 0.01, max_backlog_bytes=100)
    assert wal.problems()[0] == "the write-ahead log is not running"
    wal.start()
    try:
        assert wal.problems() == []
        wal.append(1, b"x" * 200).result(10)
        wal._refresh_backlog(force=True)
        assert wal.problems() == ["the write-ahead log backlog is full; the lake is behind"]
    finally:
        wal.close()
