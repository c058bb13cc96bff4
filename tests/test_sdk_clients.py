"""Real clients: the OpenTelemetry SDK's OTLP exporters (HTTP and gRPC) and OpenFeature.

Each test exports through the SDK to a collector on loopback port 0, then reads the lake
with the real `flagscope query` command and checks the wide-event columns: flags,
user_id, is_test/test_reason, is_error, duration_ms, http_route.

The SDK's global tracer provider can be set only once per process, so every test builds
its own providers and passes them explicitly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk._logs import Logger, LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.helpers import RunningCollector, wait_for_count

REPO = Path(__file__).resolve().parent.parent
EXPORT_TIMEOUT_S = 10

pytestmark = pytest.mark.parametrize("transport", ["http", "grpc"])


# -- clients -----------------------------------------------------------------------------------


def _service(purpose: str, transport: str) -> str:
    return f"{purpose}-{transport}-{uuid.uuid4().hex[:8]}"


def _span_exporter(server: RunningCollector, transport: str, gzip: bool = False):
    if transport == "http":
        return HttpSpanExporter(
            endpoint=f"{server.http_url}/v1/traces",
            timeout=EXPORT_TIMEOUT_S,
            compression=HttpCompression.Gzip if gzip else HttpCompression.NoCompression,
        )
    return GrpcSpanExporter(
        endpoint=server.grpc_target,
        insecure=True,
        timeout=EXPORT_TIMEOUT_S,
        compression=grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression,
    )


def _log_exporter(server: RunningCollector, transport: str):
    if transport == "http":
        return HttpLogExporter(endpoint=f"{server.http_url}/v1/logs", timeout=EXPORT_TIMEOUT_S)
    return GrpcLogExporter(endpoint=server.grpc_target, insecure=True, timeout=EXPORT_TIMEOUT_S)


@contextmanager
def sdk_tracer(
    server: RunningCollector,
    transport: str,
    service: str,
    batch: bool = False,
    gzip: bool = False,
) -> Iterator[trace.Tracer]:
    """A tracer of a local TracerProvider exporting over `transport`; flushed on exit."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = _span_exporter(server, transport, gzip)
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    try:
        yield trace.get_tracer("tests.sdk_clients", "1.2.3", tracer_provider=provider)
        assert provider.force_flush(EXPORT_TIMEOUT_S * 1000), "span export did not finish"
    finally:
        provider.shutdown()


@contextmanager
def sdk_logger(
    server: RunningCollector, transport: str, service: str, batch: bool = False
) -> Iterator[Logger]:
    provider = LoggerProvider(
        resource=Resource.create({"service.name": service}), shutdown_on_exit=False
    )
    exporter = _log_exporter(server, transport)
    processor = BatchLogRecordProcessor(exporter) if batch else SimpleLogRecordProcessor(exporter)
    provider.add_log_record_processor(processor)
    try:
        yield provider.get_logger("tests.sdk_clients")
        assert provider.force_flush(EXPORT_TIMEOUT_S * 1000), "log export did not finish"
    finally:
        provider.shutdown()


def hex_ids(span: trace.Span) -> tuple[str, str]:
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


# -- the query side ------------------------------------------------------------------------------


def flagscope_query(lake: Path, sql: str) -> list[dict[str, Any]]:
    """Rows of `flagscope query --format json`, run as the real command."""
    result = subprocess.run(
        [sys.executable, "-m", "flagscope", "query", "--lake", str(lake), "--format", "json", sql],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def rows_of(server: RunningCollector, service: str, expected: int, columns: str) -> dict[str, dict]:
    """Wait until `expected` rows of `service` are stored, then read them via the CLI, by name."""
    sql = "SELECT count(*) FROM events_raw WHERE service_name = ?"
    assert wait_for_count(server.lake, sql, expected, params=[service]) == expected
    rows = flagscope_query(
        server.lake,
        f"SELECT name, {columns} FROM events WHERE service_name = '{service}' ORDER BY time",
    )
    by_name = {row["name"]: row for row in rows}
    assert len(by_name) == len(rows) == expected, [row["name"] for row in rows]
    return by_name


# -- spans: exactly what was sent ------------------------------------------------------------------


@pytest.mark.parametrize("gzip", [False, True], ids=["identity", "gzip"])
def test_span_exporter_spans_are_stored_exactly_once(server, transport, gzip):
    service = _service("shop", transport)
    start = (time.time_ns() // 1_000_000) * 1_000_000
    with sdk_tracer(server, transport, service, batch=True, gzip=gzip) as tracer:
        root = tracer.start_span(
            "GET /items/{id}",
            kind=SpanKind.SERVER,
            start_time=start,
            attributes={
                "http.route": "/items/{id}",
                "http.request.method": "GET",
                "http.response.status_code": 200,
            },
        )
        inside = trace.set_span_in_context(root)
        child = tracer.start_span(
            "SELECT items", context=inside, kind=SpanKind.CLIENT, start_time=start + 5_000_000
        )
        child.end(end_time=start + 45_500_000)
        render = tracer.start_span("render", context=inside, start_time=start + 50_000_000)
        render.end(end_time=start + 60_000_000)
        root.end(end_time=start + 123_456_000)
        other = tracer.start_span(
            "POST /cart", kind=SpanKind.SERVER, start_time=start, attributes={"http.route": "/cart"}
        )
        other.end(end_time=start + 2_000_000)

    rows = rows_of(
        server,
        service,
        4,
        "trace_id, span_id, parent_span_id, kind, duration_ms, "
        "http_route, http_method, http_status_code, is_error, is_test, flags",
    )
    trace_id, root_id = hex_ids(root)
    assert set(rows) == {"GET /items/{id}", "SELECT items", "render", "POST /cart"}
    in_trace = ("GET /items/{id}", "SELECT items", "render")
    assert {rows[n]["trace_id"] for n in in_trace} == {trace_id}
    assert rows["POST /cart"]["trace_id"] == hex_ids(other)[0] != trace_id
    assert rows["GET /items/{id}"]["span_id"] == root_id
    assert rows["GET /items/{id}"]["parent_span_id"] is None
    assert rows["SELECT items"]["span_id"] == hex_ids(child)[1]
    assert rows["SELECT items"]["parent_span_id"] == root_id
    assert rows["render"]["parent_span_id"] == root_id
    assert [rows[n]["kind"] for n in in_trace] == [2, 3, 1]
    assert rows["GET /items/{id}"]["duration_ms"] == pytest.approx(123.456)
    assert rows["SELECT items"]["duration_ms"] == pytest.approx(40.5)
    assert rows["render"]["duration_ms"] == pytest.approx(10.0)
    assert rows["POST /cart"]["duration_ms"] == pytest.approx(2.0)
    assert rows["GET /items/{id}"]["http_route"] == "/items/{id}"
    assert rows["GET /items/{id}"]["http_method"] == "GET"
    assert rows["GET /items/{id}"]["http_status_code"] == 200
    assert rows["POST /cart"]["http_route"] == "/cart"
    assert rows["render"]["http_route"] is None
    assert all(row["is_error"] is False and row["is_test"] is False for row in rows.values())
    assert all(row["flags"] == {} for row in rows.values())


# -- flags on spans ------------------------------------------------------------------------------


def test_span_flag_events_and_attributes_land_in_flags(server, transport):
    service = _service("flags", transport)
    with sdk_tracer(server, transport, service) as tracer:
        with tracer.start_as_current_span("event.current") as span:
            span.add_event(
                "feature_flag.evaluation",
                {
                    "feature_flag.key": "new-checkout",
                    "feature_flag.result.variant": "on",
                    "feature_flag.provider.name": "acme",
                    "feature_flag.context.id": "user-1",
                },
            )
        with tracer.start_as_current_span("event.old") as span:
            span.add_event(
                "feature_flag",
                {
                    "feature_flag.key": "old-banner",
                    "feature_flag.variant": "b",
                    "feature_flag.provider_name": "legacy",
                },
            )
        with tracer.start_as_current_span("event.value-only") as span:
            # The OpenFeature Python hook JSON-encodes values when there is no variant.
            span.add_event(
                "feature_flag.evaluation",
                {"feature_flag.key": "dark-mode", "feature_flag.result.value": "true"},
            )
            span.add_event(
                "feature_flag.evaluation",
                {"feature_flag.key": "theme", "feature_flag.result.value": '"blue"'},
            )
            span.add_event(
                "unrelated",
                {"feature_flag.key": "not-a-flag-event", "feature_flag.result.variant": "x"},
            )
        with tracer.start_as_current_span(
            "attr.pair",
            attributes={
                "feature_flag.key": "search-v2",
                "feature_flag.result.variant": "treatment",
            },
        ):
            pass
        with tracer.start_as_current_span(
            "attr.per-flag",
            attributes={
                "feature_flag.beta-nav": "enabled",
                "app.flag.pricing": "annual",
                "app.flag.recs": True,
                "app.flag.max-items": 20,
            },
        ):
            pass
        with tracer.start_as_current_span(
            "attr.reserved-only",
            attributes={
                "feature_flag.provider.name": "acme",
                "feature_flag.result.reason": "static",
                "feature_flag.context.id": "user-2",
                "other.flag.x": "on",
            },
        ):
            pass

    rows = rows_of(server, service, 6, "flags, user_id")
    assert rows["event.current"]["flags"] == {"new-checkout": "on"}
    assert rows["event.current"]["user_id"] == "user-1"
    assert rows["event.old"]["flags"] == {"old-banner": "b"}
    assert rows["event.value-only"]["flags"] == {"dark-mode": "true", "theme": "blue"}
    assert rows["attr.pair"]["flags"] == {"search-v2": "treatment"}
    assert rows["attr.per-flag"]["flags"] == {
        "beta-nav": "enabled",
        "pricing": "annual",
        "recs": "true",
        "max-items": "20",
    }
    assert rows["attr.reserved-only"]["flags"] == {}
    assert rows["attr.reserved-only"]["user_id"] == "user-2"


# -- logs ------------------------------------------------------------------------------------------


def test_log_exporter_flag_evaluation_event_is_linked_to_its_span(server, transport):
    service = _service("logs", transport)
    with (
        sdk_tracer(server, transport, service) as tracer,
        sdk_logger(server, transport, service, batch=True) as logger,
        tracer.start_as_current_span("checkout", kind=SpanKind.SERVER) as span,
    ):
        logger.emit(
            event_name="feature_flag.evaluation",
            severity_number=SeverityNumber.INFO,
            attributes={
                "feature_flag.key": "checkout-flow",
                "feature_flag.result.variant": "v2",
                "feature_flag.context.id": "user-7",
            },
        )
        logger.emit(
            event_name="payment.failed",
            severity_number=SeverityNumber.ERROR,
            body="card declined",
        )
        logger.emit(event_name="payment.slow", severity_number=SeverityNumber.WARN, body="took 3 s")
        logger.emit(
            event_name="process.crash",
            severity_number=SeverityNumber.FATAL,
            body="out of memory",
        )

    rows = rows_of(
        server,
        service,
        5,
        "signal, trace_id, span_id, flags, user_id, severity_number, is_error, body",
    )
    trace_id, span_id = hex_ids(span)
    event = rows["feature_flag.evaluation"]
    assert event["signal"] == "log"
    assert (event["trace_id"], event["span_id"]) == (trace_id, span_id)
    assert event["flags"] == {"checkout-flow": "v2"}
    assert event["user_id"] == "user-7"
    assert event["is_error"] is False
    assert rows["checkout"]["signal"] == "span"
    assert rows["checkout"]["is_error"] is False
    assert rows["payment.failed"]["severity_number"] == SeverityNumber.ERROR.value
    assert rows["payment.failed"]["is_error"] is True
    assert rows["payment.failed"]["body"] == '"card declined"'
    assert rows["process.crash"]["is_error"] is True
    assert rows["payment.slow"]["is_error"] is False
    assert {row["trace_id"] for row in rows.values()} == {trace_id}


# -- test traffic ----------------------------------------------------------------------------------


def test_test_markers_set_is_test_and_reason(server, transport):
    service = _service("markers", transport)
    spans = {
        "synthetic-test": {"user_agent.synthetic.type": "test"},
        "synthetic-bot": {"user_agent.synthetic.type": "bot", "enduser.id": "carol"},
        "test-user-true": {"test_user": True, "enduser.id": "dave"},
        "test-user-false": {"test_user": False, "enduser.id": "erin"},
        "qa-user": {"enduser.id": "qa-alice"},
        "test-prefixed-user": {"user.id": "test-bob"},
        "qa-in-the-middle": {"enduser.id": "frank-qa-1"},
        "real-user": {"enduser.id": "alice", "user_agent.synthetic.type": "none"},
    }
    with sdk_tracer(server, transport, service) as tracer:
        for name, attributes in spans.items():
            with tracer.start_as_current_span(name, attributes=attributes):
                pass

    rows = rows_of(server, service, len(spans), "user_id, is_test, test_reason")
    got = {name: (r["user_id"], r["is_test"], r["test_reason"]) for name, r in rows.items()}
    assert got == {
        "synthetic-test": (None, True, "user_agent.synthetic.type=test"),
        "synthetic-bot": ("carol", True, "user_agent.synthetic.type=bot"),
        "test-user-true": ("dave", True, "test_user=true"),
        "test-user-false": ("erin", False, None),
        "qa-user": ("qa-alice", True, "user_id matches qa-*"),
        "test-prefixed-user": ("test-bob", True, "user_id matches test-*"),
        "qa-in-the-middle": ("frank-qa-1", False, None),
        "real-user": ("alice", False, None),
    }


# -- errors ----------------------------------------------------------------------------------------


def test_error_rules_status_and_server_5xx(server, transport):
    service = _service("errors", transport)
    unset = StatusCode.UNSET
    cases = {
        "status-error": (SpanKind.INTERNAL, {}, StatusCode.ERROR, True),
        "server-500": (SpanKind.SERVER, {"http.response.status_code": 500}, unset, True),
        "server-503-old-name": (SpanKind.SERVER, {"http.status_code": 503}, unset, True),
        "server-404": (SpanKind.SERVER, {"http.response.status_code": 404}, unset, False),
        "client-500": (SpanKind.CLIENT, {"http.response.status_code": 500}, unset, False),
        "status-ok": (SpanKind.SERVER, {"http.response.status_code": 200}, StatusCode.OK, False),
    }
    with sdk_tracer(server, transport, service, batch=True) as tracer:
        for name, (kind, attributes, code, _) in cases.items():
            with tracer.start_as_current_span(name, kind=kind, attributes=attributes) as span:
                if code is not StatusCode.UNSET:
                    span.set_status(Status(code, "boom" if code is StatusCode.ERROR else None))

    rows = rows_of(server, service, len(cases), "is_error, status_code, http_status_code")
    assert {name: row["is_error"] for name, row in rows.items()} == {
        name: expected for name, (*_, expected) in cases.items()
    }
    assert rows["status-error"]["status_code"] == 2
    assert rows["server-503-old-name"]["http_status_code"] == 503


# -- OpenFeature with its OpenTelemetry hook -----------------------------------------------------


def test_openfeature_tracing_hook_evaluation_lands_in_flags(server, transport):
    from openfeature import api
    from openfeature.contrib.hook.opentelemetry import TracingHook
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.flag_evaluation import FlagResolutionDetails, Reason
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    def by_user(flag: InMemoryFlag, context: EvaluationContext) -> FlagResolutionDetails:
        on = context.targeting_key in ("user-on", "qa-tester")
        variant = "on" if on else flag.default_variant
        return FlagResolutionDetails(
            value=flag.variants[variant], variant=variant, reason=Reason.TARGETING_MATCH
        )

    provider = InMemoryProvider(
        {
            "new-checkout": InMemoryFlag(
                "off", {"on": True, "off": False}, context_evaluator=by_user
            ),
            "button-color": InMemoryFlag("green", {"blue": "#00f", "green": "#0f0"}),
        }
    )
    domain = f"flagscope-tests-{uuid.uuid4().hex[:8]}"
    api.set_provider_and_wait(provider, domain)
    client = api.get_client(domain)
    client.add_hooks([TracingHook()])
    service = _service("openfeature", transport)

    with sdk_tracer(server, transport, service) as tracer:
        for user in ("user-on", "user-off", "qa-tester"):
            with tracer.start_as_current_span(f"request {user}", kind=SpanKind.SERVER):
                context = EvaluationContext(targeting_key=user)
                checkout = client.get_boolean_value("new-checkout", False, context)
                color = client.get_string_value("button-color", "#fff", context)
                assert (checkout, color) == (user != "user-off", "#0f0")

    rows = rows_of(server, service, 3, "flags, user_id, is_test, test_reason")
    assert rows["request user-on"]["flags"] == {"new-checkout": "on", "button-color": "green"}
    assert rows["request user-on"]["user_id"] == "user-on"
    assert rows["request user-off"]["flags"] == {"new-checkout": "off", "button-color": "green"}
    assert rows["request user-off"]["user_id"] == "user-off"
    assert rows["request user-off"]["is_test"] is False
    assert rows["request qa-tester"]["flags"]["new-checkout"] == "on"
    assert rows["request qa-tester"]["user_id"] == "qa-tester"
    assert rows["request qa-tester"]["is_test"] is True
    assert rows["request qa-tester"]["test_reason"] == "user_id matches qa-*"
