"""Real Node.js clients (issue 10): the OpenTelemetry JS SDK with its own OTLP exporters —
http/protobuf, http/json and gRPC, for traces, logs and metrics — and OpenFeature JS with
its OpenTelemetry hooks, as tests/node_client/client.js runs them, against a collector on
loopback port 0.

The client reports what each exporter acknowledged (every span, log record and metric data
point, as sent) and every export failure; the tests compare that with the lake, read by
DuckDB: each item exactly once, the variant OpenFeature evaluated per user in `flags`, test
traffic marked, evaluation spans never requests, metric points with their attributes. With
a wrong token the exporter's own error must say 401 / UNAUTHENTICATED, not EPIPE.

Skipped, naming the fix, when node or the pinned packages are missing (`make test` installs
them with npm ci in tests/node_client).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import RunningCollector, make_settings, query, wait_for_count
from tests.otlp_requests import send_marker

NODE_CLIENT = Path(__file__).resolve().parent / "node_client"
TOKEN = "node-client-token"
PROTOCOLS = ("http/protobuf", "http/json", "grpc")
# gzip where a Node.js service would likely turn it on, plain JSON as the SDK's default sends it
COMPRESSION = {"http/protobuf": "gzip", "http/json": "none", "grpc": "gzip"}
FLAG = "new-checkout"
REQUESTS = 300  # 2 × 300 + 3 spans and log records: more than one 512-item batch each
BACKGROUND = 3  # evaluations outside any request: root `feature_flag.evaluation` spans
TEST_EVERY = 5
SYNTHETIC = "user_agent.synthetic.type=test"
TEST_USER = "user_id matches qa-*"
EVALUATION = "feature_flag.evaluation"


def _missing() -> str | None:
    """Why the Node.js client cannot run here, with the fix; None when it can."""
    if shutil.which("node") is None:
        return "node not found: install Node.js ≥ 20.6 and npm, then `make test` (npm ci)"
    pinned = json.loads((NODE_CLIENT / "package.json").read_text())["dependencies"]
    for name, version in pinned.items():
        manifest = NODE_CLIENT / "node_modules" / name / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text())["version"] != version:
            return (
                f"{name}@{version} is not installed in tests/node_client: "
                "run `npm ci` there (`make test` does when package.json changes)"
            )
    return None


MISSING = _missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


# -- the client ----------------------------------------------------------------------------------
def run_client(srv: RunningCollector, protocol: str, service: str, *extra: str) -> dict[str, Any]:
    """Run tests/node_client/client.js to its end; its JSON report."""
    node = shutil.which("node")
    assert node is not None
    args = [
        node,
        "client.js",
        *("--protocol", protocol, "--http", srv.http_url, "--grpc", srv.grpc_target),
        *("--service", service, "--compression", COMPRESSION[protocol]),
        *extra,
    ]
    done = subprocess.run(args, cwd=NODE_CLIENT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@dataclass
class Run:
    """One client run with the right token and the lake's rows of its service."""

    protocol: str
    service: str
    report: dict[str, Any]
    srv: RunningCollector

    @property
    def sent(self) -> dict[str, list[dict[str, Any]]]:
        return self.report["exported"]

    def rows(self, columns: str, where: str = "true") -> list[tuple[Any, ...]]:
        sql = f"SELECT {columns} FROM events_raw WHERE service_name = ? AND ({where})"
        return query(self.srv.lake, sql, [self.service])


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCollector]:
    settings = make_settings(tmp_path_factory.mktemp("node-clients"), auth_token=TOKEN)
    running = RunningCollector(settings).start()
    yield running
    running.stop()


@pytest.fixture(scope="module", params=PROTOCOLS, ids=lambda p: p.replace("/", "-"))
def run(request: pytest.FixtureRequest, collector: RunningCollector) -> Run:
    protocol = request.param
    service = f"node-{protocol.replace('/', '-')}-{uuid.uuid4().hex[:8]}"
    report = run_client(
        collector,
        protocol,
        service,
        *("--token", TOKEN, "--requests", str(REQUESTS), "--background", str(BACKGROUND)),
        *("--test-every", str(TEST_EVERY)),
    )
    exported = report["exported"]
    expected = len(exported["spans"]) + len(exported["logs"]) + len(exported["metrics"])
    sql = "SELECT count(*) FROM events_raw WHERE service_name = ?"
    wait_for_count(collector.lake, sql, expected, params=[service])  # the tests say what is off
    return Run(protocol, service, report, collector)


def by_trace(pairs: list[tuple[str, dict[str, str] | None]]) -> dict[str, dict[str, set[str]]]:
    """trace id → flag key → the variants rows of that trace carry."""
    flags: dict[str, dict[str, set[str]]] = {}
    for trace_id, row_flags in pairs:
        for key, variant in (row_flags or {}).items():
            flags.setdefault(trace_id, {}).setdefault(key, set()).add(variant)
    return flags


def difference(sent: Counter, stored: Counter) -> dict[str, Any]:
    return {
        "missing": list((sent - stored).items())[:5],
        "extra": list((stored - sent).items())[:5],
    }


# -- what the client saw -------------------------------------------------------------------------
def test_the_node_sdk_exports_everything_without_an_error(run: Run) -> None:
    report = run.report
    assert report["failures"] == [], report["failures"]
    assert report["diag"] == [], report["diag"]  # warnings too: a drop, a retry, a bad config
    assert report["unanswered_exports"] == 0
    assert report["ended"] == {
        "spans": 2 * REQUESTS + BACKGROUND,
        "logs": 2 * REQUESTS + BACKGROUND,
    }
    assert len(run.sent["spans"]) == report["ended"]["spans"], "spans dropped in the client"
    assert len(run.sent["logs"]) == report["ended"]["logs"], "log records dropped in the client"


# -- spans and logs ------------------------------------------------------------------------------
def test_every_span_arrives_exactly_once(run: Run) -> None:
    sent = Counter(
        (s["trace_id"], s["span_id"], s["parent_span_id"], s["name"], s["otlp_kind"])
        for s in run.sent["spans"]
    )
    stored = Counter(run.rows("trace_id, span_id, parent_span_id, name, kind", "signal = 'span'"))
    assert stored == sent, difference(sent, stored)


def test_every_log_record_arrives_exactly_once(run: Run) -> None:
    def key(record: dict[str, Any]) -> tuple[Any, ...]:
        attributes = record["attributes"]
        which = attributes.get("request.id") or attributes.get("feature_flag.context.id")
        severity = record["severity_number"] or 0  # unset is 0 in OTLP
        ids = (record["trace_id"], record["span_id"], record["event_name"])
        return (*ids, severity, record["body"], which)

    sent = Counter(key(r) for r in run.sent["logs"])
    columns = (
        "trace_id, span_id, name, severity_number, body ->> '$', "
        """coalesce(attributes ->> '$."request.id"', attributes ->> '$."feature_flag.context.id"')"""
    )
    stored = Counter(run.rows(columns, "signal = 'log'"))
    assert stored == sent, difference(sent, stored)


def test_span_and_log_attributes_arrive_as_sent(run: Run) -> None:
    """Every attribute with its JSON type (the JS SDK sends integral numbers as intValue)."""
    spans = {s["span_id"]: (s["attributes"], s["status_code"]) for s in run.sent["spans"]}
    for span_id, attributes, status in run.rows(
        "span_id, attributes, status_code", "signal = 'span'"
    ):
        assert (json.loads(attributes), status) == spans[span_id], span_id
    sent = sorted(json.dumps(r["attributes"], sort_keys=True) for r in run.sent["logs"])
    stored = [json.loads(a) for (a,) in run.rows("attributes", "signal = 'log'")]
    assert sorted(json.dumps(a, sort_keys=True) for a in stored) == sent


def test_requests_keep_their_route_method_status_and_user(run: Run) -> None:
    sent = Counter(
        (r["span_id"], "POST", "/checkout", r["status"], r["status"] >= 500, r["user"])
        for r in run.report["requests"]
    )
    stored = Counter(
        run.rows(
            "span_id, http_method, http_route, http_status_code, is_error, user_id",
            "signal = 'span' AND kind = 2",
        )
    )
    assert stored == sent, difference(sent, stored)


# -- flags, test traffic, requests -----------------------------------------------------------------
def test_the_lake_holds_the_variant_openfeature_evaluated_per_user(run: Run) -> None:
    variants = run.report["variants"]
    assert set(variants.values()) == {"on", "off"}, variants  # both cohorts, or nothing is shown
    trace_flags = by_trace(run.rows("trace_id, flags"))
    for request in run.report["requests"]:
        found = trace_flags.get(request["trace_id"])
        assert found == {FLAG: {variants[request["user"]]}}, (request, found)
    # the evaluation's own rows (the SpanHook's span, the EventHook's log event) name the user
    per_user: dict[str, set[str]] = {}
    for user, flags in run.rows("user_id, flags", f"name = '{EVALUATION}'"):
        per_user.setdefault(user, set()).add(flags.get(FLAG))
    expected = {user: {variant} for user, variant in variants.items()}
    expected |= {b["user"]: {b["variant"]} for b in run.report["background"]}
    assert per_user == expected


def test_test_traffic_is_marked(run: Run) -> None:
    def reason(request: dict[str, Any]) -> str | None:
        if request["synthetic"]:
            return SYNTHETIC
        return TEST_USER if request["user"].startswith("qa-") else None

    expected = Counter(
        (r["span_id"], signal, reason(r) is not None, reason(r))
        for r in run.report["requests"]
        for signal in ("span", "log")
    )
    assert {reason for (_, _, _, reason) in expected} == {SYNTHETIC, TEST_USER, None}
    stored = Counter(
        run.rows(
            "span_id, signal, is_test, test_reason",
            "(signal = 'span' AND kind = 2) OR (signal = 'log' AND name IS NULL)",
        )
    )
    assert stored == expected, difference(expected, stored)


def test_evaluation_spans_are_not_requests(run: Run) -> None:
    evaluations = run.rows(
        "is_entry, parent_span_id IS NULL", f"signal = 'span' AND name = '{EVALUATION}'"
    )
    assert len(evaluations) == REQUESTS + BACKGROUND
    assert sum(root for _, root in evaluations) == BACKGROUND  # a background worker's: roots
    assert not any(entry for entry, _ in evaluations)
    entries = {span_id for (span_id,) in run.rows("span_id", "is_entry")}
    assert entries == {r["span_id"] for r in run.report["requests"]}


# -- metrics ---------------------------------------------------------------------------------------
METRIC_TYPES = {"SUM": "sum", "GAUGE": "gauge", "HISTOGRAM": "histogram"}


def test_every_metric_point_arrives_exactly_once_with_its_value(run: Run) -> None:
    points = run.sent["metrics"]
    names = {p["name"] for p in points}
    assert {
        "checkout.requests",
        "checkout.duration",
        "checkout.active",
        "checkout.cart_items",
    } <= names
    assert "feature_flag.evaluation_requests_total" in names  # the OpenFeature MetricsHook's

    def key(name: str, time_ns: int, attributes: dict[str, Any]) -> tuple[str, int, str]:
        return name, time_ns, json.dumps(attributes, sort_keys=True)

    sent = {key(p["name"], int(p["time_unix_nano"]), p["attributes"]): p for p in points}
    assert len(sent) == len(points)
    rows = query(
        run.srv.lake,
        "SELECT name, epoch_ns(time), attributes, metric_type, value, point_count, point_sum, "
        "point_min, point_max FROM metrics WHERE service_name = ?",
        [run.service],
    )
    stored = Counter(key(name, time_ns, json.loads(attrs)) for name, time_ns, attrs, *_ in rows)
    assert stored == Counter(sent.keys()), difference(Counter(sent.keys()), stored)
    for name, time_ns, attrs, metric_type, value, count, total, low, high in rows:
        point = sent[key(name, time_ns, json.loads(attrs))]
        assert metric_type == METRIC_TYPES[point["type"]], point
        if point["type"] == "HISTOGRAM":
            histogram = point["value"]
            assert count == histogram["count"], point
            assert math.isclose(total, histogram["sum"]), point
            assert (low, high) == (histogram["min"], histogram["max"]), point
        else:
            assert math.isclose(value, point["value"], abs_tol=1e-9), point


def test_metric_attributes_answer_a_query_by_flag_variant(run: Run) -> None:
    """The last cumulative `checkout.requests` per variant is the number of requests."""
    per_variant = query(
        run.srv.lake,
        """
        SELECT variant, sum(last) FROM (
            SELECT attributes ->> '$."feature_flag.result.variant"' AS variant,
                   arg_max(value, time) AS last
            FROM metrics
            WHERE service_name = ? AND name = 'checkout.requests'
              AND attributes ->> '$."feature_flag.key"' = ?
            GROUP BY variant, attributes ->> '$."http.response.status_code"'
        ) GROUP BY variant
        """,
        [run.service, FLAG],
    )
    expected = Counter(r["variant"] for r in run.report["requests"])
    assert dict(per_variant) == dict(expected)


# -- a wrong token ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("protocol", "expected"),
    [("http/protobuf", ("401", "Unauthorized")), ("grpc", ("16", "UNAUTHENTICATED"))],
    ids=["http-protobuf-gzip", "grpc"],
)
def test_a_wrong_token_is_reported_by_the_exporter_as_unauthorized(
    collector: RunningCollector, protocol: str, expected: tuple[str, str]
) -> None:
    """Issue 10 point 4: each span batch is a ~4 MB chunked gzip body, still being written
    when the collector answers; the exporter must read the answer, not a reset."""
    service = f"node-wrong-token-{uuid.uuid4().hex[:8]}"
    report = run_client(
        collector,
        protocol,
        service,
        *("--token", "not-the-token", "--requests", "600", "--payload-bytes", "32768"),
    )
    assert report["exported"] == {"spans": [], "logs": [], "metrics": []}
    failures = report["failures"]
    seen = Counter(f["signal"] for f in failures for _ in range(f["items"]))
    ended = report["ended"]
    assert (seen["spans"], seen["logs"]) == (ended["spans"], ended["logs"]), failures
    assert seen["metrics"] > 0
    code, word = expected
    for failure in failures:
        said = f"{failure.get('code')} {failure['message']}"
        assert said.startswith(f"{code} ") and word in said, failure  # not EPIPE / ECONNRESET
    send_marker(collector)  # everything acknowledged before is in the lake by now
    assert query(
        collector.lake, "SELECT count(*) FROM events_raw WHERE service_name = ?", [service]
    ) == [(0,)]
