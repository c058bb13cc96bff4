"""Every wide-event column, written with a value of its own and read back from the lake.

A review swapped two columns' values in the span row and every receiver, SDK and CLI test
still passed: those tests look at a few columns, or at columns that happened to hold equal
values. Here each field of an OTLP request that feeds a column has a value no other field
has (distinct strings, numbers and times), goes through the real collector over HTTP, and
every column of `SCHEMA` is compared with what the request says it must be. A column that
is neither expected nor listed as null for the signal fails the test, so a new column
cannot be added unchecked.

Booleans cannot all differ within one row, so each signal sends several items whose
is_error / is_test / is_entry patterns differ: every boolean takes both values, and every
pair of booleans differs in some row.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
import uuid
from typing import Any

import duckdb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from flagscope.collector.lake.read import fetch
from flagscope.collector.lake.schema import NANOS, SCHEMA, TRACE_KEY
from tests.otlp_requests import any_value, kv, new_trace_id, post, wait_rows

JSON_COLUMNS = {
    "buckets",
    "exemplars",
    "attributes",
    "resource_attributes",
    "scope_attributes",
    "span_events",
    "span_links",
    "body",
}
# The views' columns: SCHEMA's (the files'), and the trace key as one UUID.
COLUMNS = [*SCHEMA.names, TRACE_KEY]
# Columns a signal has no field for: null in every row of that signal.
METRIC_COLUMNS = {
    "metric_type", "metric_unit", "metric_description", "start_time", "value", "value_int",
    "is_monotonic", "aggregation_temporality", "point_count", "point_sum", "point_min",
    "point_max", "buckets", "exemplars", "start_time_unix_nano",
}  # fmt: skip
NULL_FOR_SPANS = {
    "observed_time", "observed_time_unix_nano", "severity_number", "severity_text", "body",
    *METRIC_COLUMNS,
}  # fmt: skip
NULL_FOR_LOGS = {
    *METRIC_COLUMNS,
    "end_time",
    "end_time_unix_nano",
    "parent_span_id",
    "trace_state",
    "kind",
    "duration_ms",
    "status_code",
    "status_message",
    "span_events",
    "span_links",
    "dropped_events_count",
    "dropped_links_count",
}

# A span that sends none of the rarer OTLP fields (issue 10 point 14)
NOTHING_MORE = dict.fromkeys(
    ("otlp_flags", "dropped_events_count", "dropped_links_count", "scope_attributes",
     "resource_schema_url", "scope_schema_url")
)  # fmt: skip

SPAN_A = bytes.fromhex("f0e1d2c3b4a59687")  # high bit set: a negative span_key
SPAN_B = bytes.fromhex("1122334455667788")
SPAN_C = bytes.fromhex("7f00000000000001")
LINKED_TRACE = bytes.fromhex("9a8b7c6d5e4f30211203f4e5d6c7b8a9")
LINKED_SPAN = bytes.fromhex("0102030405060708")
LOG_SPAN_1 = bytes.fromhex("c1c2c3c4c5c6c7c8")
LOG_SPAN_2 = bytes.fromhex("2122232425262728")


def _base_ns() -> int:
    """Two minutes ago on a whole second: recent enough for any retention rule."""
    return (time.time_ns() // 10**9 - 120) * 10**9


def _resource(container: Any, attrs: dict[str, Any]) -> None:
    container.resource.attributes.extend(kv(k, v) for k, v in attrs.items())


# -- the row read back -----------------------------------------------------------------------
def _rows_by_span(server: Any, trace_id: bytes, expected_rows: int) -> dict[str | None, dict]:
    """The stored rows of `trace_id` as column → value, times as integer nanoseconds."""
    wait_rows(server, "trace_id = ?", [trace_id.hex()], expected_rows)
    columns, _ = fetch(server.lake, "select * from events_raw limit 0")
    assert columns == COLUMNS, "the view's columns are not SCHEMA's and the trace key"
    select = _select()
    columns, rows = fetch(
        server.lake, f"select {select} from events_raw where trace_id = ?", [trace_id.hex()]
    )
    assert len(rows) == expected_rows, rows
    found = [dict(zip(columns, row, strict=True)) for row in rows]
    return {row["span_id"]: row for row in found}


def _select() -> str:
    """Every view column, times as integer nanoseconds."""
    return ", ".join(
        [f"epoch_ns({f.name}) AS {f.name}" if f.name in NANOS else f.name for f in SCHEMA]
        + [TRACE_KEY]
    )


def derived(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with what the lake derives from it: the exact nanoseconds beside each time,
    and the trace key's two halves (the id's bytes, big-endian, signed)."""
    row = dict(row)
    for stamp, nanos in NANOS.items():
        if stamp in row:
            row[nanos] = row[stamp]
    if TRACE_KEY in row:
        key = row[TRACE_KEY].bytes
        row["trace_key_hi"] = int.from_bytes(key[:8], "big", signed=True)
        row["trace_key_lo"] = int.from_bytes(key[8:], "big", signed=True)
    return row


def _same(name: str, got: Any, want: Any) -> bool:
    if want is None or got is None:
        return got is None and want is None
    if name in JSON_COLUMNS:
        return isinstance(got, str) and json.loads(got) == want
    if isinstance(want, float):
        return isinstance(got, float) and math.isclose(got, want, rel_tol=1e-12)
    return type(got) is type(want) and got == want


def assert_every_column(row: dict[str, Any], expected: dict[str, Any], null: set[str]) -> None:
    """Each view column is either expected (with its value) or null for the signal."""
    names = set(COLUMNS)
    assert not (unchecked := names - set(expected) - null), f"columns not checked: {unchecked}"
    assert not (unknown := set(expected) - names), f"no such columns: {unknown}"
    assert not (both := set(expected) & null), f"expected and null at once: {both}"
    wrong = {}
    for name in COLUMNS:
        want = None if name in null else expected[name]
        if not _same(name, row[name], want):
            wrong[name] = {"stored": row[name], "expected": want}
    assert not wrong, wrong


def assert_swaps_show(rows: list[dict[str, Any]], null: set[str]) -> None:
    """The premise of the test: for any two columns of one type, some expected row holds
    different values in them, so a swap of the two cannot go unseen."""
    filled = [{name: row.get(name) for name in SCHEMA.names} for row in rows]
    for a, b in itertools.combinations(SCHEMA.names, 2):
        if SCHEMA.field(a).type != SCHEMA.field(b).type or {a, b} <= null:
            continue
        assert any(row[a] != row[b] for row in filled), f"{a} and {b} are equal in every row"


# -- spans -------------------------------------------------------------------------------------
def _span_request(trace_id: bytes, base: int) -> trace_service_pb2.ExportTraceServiceRequest:
    """Three spans in three resources: A (SERVER, 5xx, flags from an evaluation event, a
    link), B (CLIENT, status ERROR, old attribute names, a test-user attribute) and C (the
    root: INTERNAL, no status, no scope, a synthetic-traffic resource, a numeric user id)."""
    request = trace_service_pb2.ExportTraceServiceRequest()

    rs = request.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
    _resource(rs, {"service.name": "svc-a", "deployment.environment": "env-a"})
    ss = rs.scope_spans.add(schema_url="https://example.com/scope-schema-a")
    ss.scope.name, ss.scope.version = "scope-a", "scope-version-a"
    ss.scope.attributes.append(kv("scope.attr", "scope-attr-a"))
    span = ss.spans.add(
        flags=0x301,  # sampled, parent known to be remote
        dropped_events_count=5,
        dropped_links_count=6,
        trace_id=trace_id,
        span_id=SPAN_A,
        parent_span_id=SPAN_C,
        trace_state="vendor=state-a",
        name="span-a",
        kind=trace_pb2.Span.SPAN_KIND_SERVER,
        start_time_unix_nano=base + 111_111_111,
        end_time_unix_nano=base + 111_111_111 + 1_234_567_891,
        dropped_attributes_count=7,
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_OK, message="message-a"),
    )
    span.attributes.extend(
        kv(k, v)
        for k, v in {
            "http.request.method": "PATCH",
            "http.route": "/route-a/{id}",
            "http.response.status_code": 503,
            "app.flag.dark-mode": "dark-a",
            "custom.a": 1.5,
        }.items()
    )
    evaluation = span.events.add(name="feature_flag.evaluation", time_unix_nano=base + 5_000_017)
    evaluation.attributes.extend(
        [
            kv("feature_flag.key", "checkout"),
            kv("feature_flag.result.variant", "treat-a"),
            kv("feature_flag.context.id", "user-event-a"),
        ]
    )
    other = span.events.add(
        name="cache.miss", time_unix_nano=base + 6_000_029, dropped_attributes_count=2
    )
    other.attributes.append(kv("cache.key", "key-a"))
    link = span.links.add(
        trace_id=LINKED_TRACE, span_id=LINKED_SPAN, trace_state="vendor=link-a", flags=0x101
    )
    link.attributes.append(kv("link.why", "retry-of-a"))

    rs = request.resource_spans.add()
    _resource(rs, {"service.name": "svc-b", "host.name": "host-b"})
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "scope-b", "scope-version-b"
    span = ss.spans.add(
        trace_id=trace_id,
        span_id=SPAN_B,
        parent_span_id=SPAN_A,
        trace_state="vendor=state-b",
        name="span-b",
        kind=trace_pb2.Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=base + 222_222_222,
        end_time_unix_nano=base + 222_222_222 + 2_500_000_001,
        dropped_attributes_count=3,
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message="message-b"),
    )
    span.attributes.extend(
        kv(k, v)
        for k, v in {
            "http.method": "DELETE",
            "http.route": "/route-b",
            "http.status_code": 404,
            "enduser.id": "user-attr-b",
            "app.user.is_test": True,
            "feature_flag.key": "flag-b",
            "feature_flag.variant": "variant-b",
        }.items()
    )

    rs = request.resource_spans.add()
    _resource(rs, {"service.name": "svc-c", "user_agent.synthetic.type": "bot"})
    span = rs.scope_spans.add().spans.add(
        trace_id=trace_id,
        span_id=SPAN_C,
        name="span-c",
        kind=trace_pb2.Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=base + 333,
        end_time_unix_nano=base + 340,
    )
    span.attributes.extend([kv("user.id", 4242), kv("feature_flag.beta-search", True)])
    return request


def _expected_spans(trace_id: bytes, base: int) -> dict[str, dict[str, Any]]:
    trace_hex = trace_id.hex()
    common = {"signal": "span", "trace_id": trace_hex, "trace_key": uuid.UUID(bytes=trace_id)}
    a = {
        **common,
        "time": base + 111_111_111,
        "end_time": base + 1_345_679_002,
        "event_id": trace_hex + "f0e1d2c3b4a59687",
        "span_id": "f0e1d2c3b4a59687",
        "parent_span_id": "7f00000000000001",
        "trace_state": "vendor=state-a",
        "service_name": "svc-a",
        "scope_name": "scope-a",
        "scope_version": "scope-version-a",
        "name": "span-a",
        "kind": 2,
        "duration_ms": 1234.567891,
        "status_code": 1,
        "status_message": "message-a",
        "is_error": True,  # a SERVER span answering 5xx
        "http_method": "PATCH",
        "http_route": "/route-a/{id}",
        "http_status_code": 503,
        "user_id": "user-event-a",  # the evaluation event's context
        "flags": {"dark-mode": "dark-a", "checkout": "treat-a"},
        "is_test": False,
        "test_reason": None,
        "attributes": {
            "http.request.method": "PATCH",
            "http.route": "/route-a/{id}",
            "http.response.status_code": 503,
            "app.flag.dark-mode": "dark-a",
            "custom.a": 1.5,
        },
        "resource_attributes": {"service.name": "svc-a", "deployment.environment": "env-a"},
        "span_events": [
            {
                "name": "feature_flag.evaluation",
                "time_unix_nano": base + 5_000_017,
                "attributes": {
                    "feature_flag.key": "checkout",
                    "feature_flag.result.variant": "treat-a",
                    "feature_flag.context.id": "user-event-a",
                },
            },
            {
                "name": "cache.miss",
                "time_unix_nano": base + 6_000_029,
                "attributes": {"cache.key": "key-a"},
                "dropped_attributes_count": 2,
            },
        ],
        "span_links": [
            {
                "trace_id": "9a8b7c6d5e4f30211203f4e5d6c7b8a9",
                "span_id": "0102030405060708",
                "attributes": {"link.why": "retry-of-a"},
                "trace_state": "vendor=link-a",
                "flags": 0x101,
            }
        ],
        "dropped_attributes_count": 7,
        "otlp_flags": 0x301,
        "dropped_events_count": 5,
        "dropped_links_count": 6,
        "scope_attributes": {"scope.attr": "scope-attr-a"},
        "resource_schema_url": "https://opentelemetry.io/schemas/1.26.0",
        "scope_schema_url": "https://example.com/scope-schema-a",
        "span_key": 0xF0E1D2C3B4A59687 - 2**64,
        "is_entry": True,  # a SERVER span, though it has a parent
    }
    b = {
        **common,
        "time": base + 222_222_222,
        "end_time": base + 2_722_222_223,
        "event_id": trace_hex + "1122334455667788",
        "span_id": "1122334455667788",
        "parent_span_id": "f0e1d2c3b4a59687",
        "trace_state": "vendor=state-b",
        "service_name": "svc-b",
        "scope_name": "scope-b",
        "scope_version": "scope-version-b",
        "name": "span-b",
        "kind": 3,
        "duration_ms": 2500.000001,
        "status_code": 2,
        "status_message": "message-b",
        "is_error": True,  # status ERROR
        "http_method": "DELETE",
        "http_route": "/route-b",
        "http_status_code": 404,
        "user_id": "user-attr-b",
        "flags": {"flag-b": "variant-b"},
        "is_test": True,
        "test_reason": "app.user.is_test=true",
        "attributes": {
            "http.method": "DELETE",
            "http.route": "/route-b",
            "http.status_code": 404,
            "enduser.id": "user-attr-b",
            "app.user.is_test": True,
            "feature_flag.key": "flag-b",
            "feature_flag.variant": "variant-b",
        },
        "resource_attributes": {"service.name": "svc-b", "host.name": "host-b"},
        "span_events": None,
        "span_links": None,
        "dropped_attributes_count": 3,
        **NOTHING_MORE,
        "span_key": 0x1122334455667788,
        "is_entry": False,  # a CLIENT span with a parent
    }
    c = {
        **common,
        "time": base + 333,
        "end_time": base + 340,
        "event_id": trace_hex + "7f00000000000001",
        "span_id": "7f00000000000001",
        "parent_span_id": None,
        "trace_state": None,
        "service_name": "svc-c",
        "scope_name": None,
        "scope_version": None,
        "name": "span-c",
        "kind": 1,
        "duration_ms": 7e-6,
        "status_code": 0,
        "status_message": None,
        "is_error": False,
        "http_method": None,
        "http_route": None,
        "http_status_code": None,
        "user_id": "4242",
        "flags": {"beta-search": "true"},
        "is_test": True,
        "test_reason": "resource user_agent.synthetic.type=bot",
        "attributes": {"user.id": 4242, "feature_flag.beta-search": True},
        "resource_attributes": {"service.name": "svc-c", "user_agent.synthetic.type": "bot"},
        "span_events": None,
        "span_links": None,
        "dropped_attributes_count": 0,
        **NOTHING_MORE,
        "span_key": 0x7F00000000000001,
        "is_entry": True,  # a root span
    }
    return {row["span_id"]: row for row in (a, b, c)}


def test_every_span_column_holds_its_own_field(server):
    """A swap of any two span columns, or a column derived from the wrong field, fails."""
    trace_id, base = new_trace_id(), _base_ns()
    reply = post(server, "/v1/traces", _span_request(trace_id, base).SerializeToString())
    assert reply.status == 200, reply.body
    partial = trace_service_pb2.ExportTraceServiceResponse.FromString(reply.body).partial_success
    assert partial.rejected_spans == 0, partial
    stored = _rows_by_span(server, trace_id, 3)
    expected = {k: derived(v) for k, v in _expected_spans(trace_id, base).items()}
    assert_swaps_show(list(expected.values()), NULL_FOR_SPANS)
    assert set(stored) == set(expected)
    for span_id, want in expected.items():
        assert_every_column(stored[span_id], want, NULL_FOR_SPANS)


def test_a_span_file_row_leaves_its_ids_to_the_views(server):
    """The files leave a span's event_id null (it is its ids: 20 % of a lake's bytes,
    issue 12), and its trace_id and span_id, which the keys hold; every view shows them,
    and trace_id‖span_id as the event_id, as before."""
    trace_id, base = new_trace_id(), _base_ns()
    reply = post(server, "/v1/traces", _span_request(trace_id, base).SerializeToString())
    assert reply.status == 200, reply.body
    stored = _rows_by_span(server, trace_id, 3)
    assert all(row["event_id"] == trace_id.hex() + span for span, row in stored.items())
    assert all(row["trace_id"] == trace_id.hex() for row in stored.values())
    files = f"{server.lake}/**/*.parquet"
    hi, lo = (int.from_bytes(trace_id[i : i + 8], "big", signed=True) for i in (0, 8))
    in_files = duckdb.sql(
        "SELECT count(*), count(event_id), count(trace_id), count(span_id), "
        f"list_sort(list(printf('%016x', span_key))) FROM read_parquet('{files}') "
        "WHERE trace_key_hi = ? AND trace_key_lo = ?",
        params=[hi, lo],
    ).fetchall()
    assert in_files == [(3, 0, 0, 0, sorted(stored))]


# -- logs --------------------------------------------------------------------------------------
def _log_request(trace_id: bytes, base: int) -> logs_service_pb2.ExportLogsServiceRequest:
    """Two log records: 1 (ERROR2, new attribute names, status as a string, an evaluation
    in attributes, a kvlist body) and 2 (INFO, old names, its name from `event.name`, a
    test user by pattern, a string body), in two resources."""
    request = logs_service_pb2.ExportLogsServiceRequest()

    rl = request.resource_logs.add(schema_url="https://opentelemetry.io/schemas/log-1")
    _resource(rl, {"service.name": "svc-log-1", "k8s.pod.name": "pod-1"})
    sl = rl.scope_logs.add(schema_url="https://example.com/log-scope-schema-1")
    sl.scope.name, sl.scope.version = "log-scope-1", "log-scope-version-1"
    sl.scope.attributes.append(kv("log.scope.attr", 1))
    sl.log_records.append(
        logs_pb2.LogRecord(
            time_unix_nano=base + 444_444_444,
            observed_time_unix_nano=base + 555_555_555,
            severity_number=logs_pb2.SEVERITY_NUMBER_ERROR2,
            severity_text="severity-text-1",
            body=any_value({"message": "body-1", "count": 5}),
            attributes=[
                kv(k, v)
                for k, v in {
                    "http.request.method": "PUT",
                    "http.route": "/logs-1",
                    "http.response.status_code": "502",
                    "user.id": "user-log-1",
                    "feature_flag.key": "eval-key-1",
                    "feature_flag.result.value": 3,
                    "app.flag.log-flag": "log-variant-1",
                }.items()
            ],
            dropped_attributes_count=11,
            flags=1,
            trace_id=trace_id,
            span_id=LOG_SPAN_1,
            event_name="log-event-1",
        )
    )

    rl = request.resource_logs.add()
    _resource(rl, {"service.name": "svc-log-2", "host.name": "host-log-2"})
    sl = rl.scope_logs.add()
    sl.scope.name, sl.scope.version = "log-scope-2", "log-scope-version-2"
    sl.log_records.append(
        logs_pb2.LogRecord(
            time_unix_nano=base + 666_666_666,
            observed_time_unix_nano=base + 777_777_777,
            severity_number=logs_pb2.SEVERITY_NUMBER_INFO,
            severity_text="severity-text-2",
            body=any_value("body-2"),
            attributes=[
                kv(k, v)
                for k, v in {
                    "http.method": "GET",
                    "http.route": "/logs-2",
                    "http.status_code": 201,
                    "enduser.id": "qa-tester-2",
                    "event.name": "attr-event-2",
                    "feature_flag.search-v2": "on-2",
                }.items()
            ],
            dropped_attributes_count=13,
            trace_id=trace_id,
            span_id=LOG_SPAN_2,
        )
    )
    return request


def _log_event_id(rl: Any, sl: Any, record: Any) -> str:
    """A log's id: a digest of its resource, scope and record (retries share it)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (rl.resource, sl.scope, record):
        digest.update(part.SerializeToString())
    return digest.hexdigest()


def _expected_logs(
    request: logs_service_pb2.ExportLogsServiceRequest, trace_id: bytes, base: int
) -> dict[str, dict[str, Any]]:
    ids = [
        _log_event_id(rl, sl, record)
        for rl in request.resource_logs
        for sl in rl.scope_logs
        for record in sl.log_records
    ]
    common = {
        "signal": "log",
        "trace_id": trace_id.hex(),
        "trace_key": uuid.UUID(bytes=trace_id),
        "is_entry": False,  # never a request
    }
    one = {
        **common,
        "time": base + 444_444_444,
        "observed_time": base + 555_555_555,
        "event_id": ids[0],
        "span_id": "c1c2c3c4c5c6c7c8",
        "service_name": "svc-log-1",
        "scope_name": "log-scope-1",
        "scope_version": "log-scope-version-1",
        "name": "log-event-1",
        "is_error": True,  # severity ERROR2
        "http_method": "PUT",
        "http_route": "/logs-1",
        "http_status_code": 502,
        "user_id": "user-log-1",
        "flags": {"eval-key-1": "3", "log-flag": "log-variant-1"},
        "is_test": False,
        "test_reason": None,
        "severity_number": 18,
        "severity_text": "severity-text-1",
        "body": {"message": "body-1", "count": 5},
        "attributes": {
            "http.request.method": "PUT",
            "http.route": "/logs-1",
            "http.response.status_code": "502",
            "user.id": "user-log-1",
            "feature_flag.key": "eval-key-1",
            "feature_flag.result.value": 3,
            "app.flag.log-flag": "log-variant-1",
        },
        "resource_attributes": {"service.name": "svc-log-1", "k8s.pod.name": "pod-1"},
        "dropped_attributes_count": 11,
        "otlp_flags": 1,
        "scope_attributes": {"log.scope.attr": 1},
        "resource_schema_url": "https://opentelemetry.io/schemas/log-1",
        "scope_schema_url": "https://example.com/log-scope-schema-1",
        "span_key": 0xC1C2C3C4C5C6C7C8 - 2**64,
    }
    two = {
        **common,
        "time": base + 666_666_666,
        "observed_time": base + 777_777_777,
        "event_id": ids[1],
        "span_id": "2122232425262728",
        "service_name": "svc-log-2",
        "scope_name": "log-scope-2",
        "scope_version": "log-scope-version-2",
        "name": "attr-event-2",
        "is_error": False,  # severity INFO
        "http_method": "GET",
        "http_route": "/logs-2",
        "http_status_code": 201,
        "user_id": "qa-tester-2",
        "flags": {"search-v2": "on-2"},
        "is_test": True,
        "test_reason": "user_id matches qa-*",
        "severity_number": 9,
        "severity_text": "severity-text-2",
        "body": "body-2",
        "attributes": {
            "http.method": "GET",
            "http.route": "/logs-2",
            "http.status_code": 201,
            "enduser.id": "qa-tester-2",
            "event.name": "attr-event-2",
            "feature_flag.search-v2": "on-2",
        },
        "resource_attributes": {"service.name": "svc-log-2", "host.name": "host-log-2"},
        "dropped_attributes_count": 13,
        "otlp_flags": None,
        "scope_attributes": None,
        "resource_schema_url": None,
        "scope_schema_url": None,
        "span_key": 0x2122232425262728,
    }
    return {row["span_id"]: row for row in (one, two)}


def test_every_log_record_column_holds_its_own_field(server):
    """A swap of any two log columns, or a column derived from the wrong field, fails."""
    trace_id, base = new_trace_id(), _base_ns()
    request = _log_request(trace_id, base)
    reply = post(server, "/v1/logs", request.SerializeToString())
    assert reply.status == 200, reply.body
    partial = logs_service_pb2.ExportLogsServiceResponse.FromString(reply.body).partial_success
    assert partial.rejected_log_records == 0, partial
    stored = _rows_by_span(server, trace_id, 2)
    expected = {k: derived(v) for k, v in _expected_logs(request, trace_id, base).items()}
    assert_swaps_show(list(expected.values()), NULL_FOR_LOGS)
    assert set(stored) == set(expected)
    for span_id, want in expected.items():
        assert_every_column(stored[span_id], want, NULL_FOR_LOGS)


# -- metrics -----------------------------------------------------------------------------------
NULL_FOR_METRICS = {
    "end_time", "observed_time", "trace_id", "span_id", "parent_span_id", "trace_state",
    "kind", "duration_ms", "status_code", "status_message", "is_error", "http_method",
    "http_route", "http_status_code", "user_id", "flags", "is_test", "test_reason",
    "severity_number", "severity_text", "body", "span_events", "span_links",
    "dropped_attributes_count", "dropped_events_count", "dropped_links_count", "trace_key",
    "trace_key_hi", "trace_key_lo", "span_key", "end_time_unix_nano", "observed_time_unix_nano",
}  # fmt: skip


def _metric_request(service: str, base: int) -> metrics_service_pb2.ExportMetricsServiceRequest:
    """A monotonic integer sum with an exemplar, and a histogram: distinct values in every
    field that feeds a column."""
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = request.resource_metrics.add(schema_url="https://opentelemetry.io/schemas/metric-1")
    _resource(rm, {"service.name": service, "host.name": "host-metric"})
    sm = rm.scope_metrics.add(schema_url="https://example.com/metric-scope-schema")
    sm.scope.name, sm.scope.version = "metric-scope", "metric-scope-version"
    sm.scope.attributes.append(kv("metric.scope.attr", 2))
    counter = sm.metrics.add(name="metric-sum", unit="unit-sum", description="about-sum")
    counter.sum.is_monotonic = True
    counter.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    point = counter.sum.data_points.add(
        time_unix_nano=base + 888_888_888,
        start_time_unix_nano=base + 111,
        as_int=2**53 + 1,  # exact in value_int, rounded in value
        flags=1,
    )
    point.attributes.append(kv("feature_flag.key", "metric-flag"))
    point.exemplars.add(
        time_unix_nano=base + 999, as_double=0.25, trace_id=LINKED_TRACE, span_id=LINKED_SPAN
    )
    histogram = sm.metrics.add(name="metric-histogram", unit="unit-histogram")
    histogram.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    histogram.histogram.data_points.add(
        time_unix_nano=base + 777_777,
        start_time_unix_nano=base + 222,
        count=6,
        sum=123.5,
        min=0.5,
        max=99.0,
        bucket_counts=[1, 2, 3],
        explicit_bounds=[1.0, 10.0],
    ).attributes.append(kv("route", "/metric-route"))
    return request


def _metric_event_id(rm: Any, sm: Any, metric: Any, point: Any) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in (rm.resource.SerializeToString(), sm.scope.SerializeToString()):
        digest.update(part)
    digest.update(metric.name.encode())
    digest.update(metric.WhichOneof("data").encode())
    digest.update(point.SerializeToString())
    return digest.hexdigest()


def test_every_metric_column_holds_its_own_field(server):
    service, base = f"svc-metric-{uuid.uuid4().hex[:8]}", _base_ns()
    request = _metric_request(service, base)
    reply = post(server, "/v1/metrics", request.SerializeToString())
    assert reply.status == 200, reply.body
    wait_rows(server, "service_name = ?", [service], 2)
    columns, rows = fetch(
        server.lake, f"select {_select()} from events_raw where service_name = ?", [service]
    )
    stored = {row["name"]: row for row in (dict(zip(columns, r, strict=True)) for r in rows)}
    rm = request.resource_metrics[0]
    sm = rm.scope_metrics[0]
    common = {
        "signal": "metric",
        "service_name": service,
        "scope_name": "metric-scope",
        "scope_version": "metric-scope-version",
        "resource_attributes": {"service.name": service, "host.name": "host-metric"},
        "scope_attributes": {"metric.scope.attr": 2},
        "resource_schema_url": "https://opentelemetry.io/schemas/metric-1",
        "scope_schema_url": "https://example.com/metric-scope-schema",
        "is_entry": False,  # never a request
    }
    expected = {
        "metric-sum": {
            **common,
            "time": base + 888_888_888,
            "start_time": base + 111,
            "event_id": _metric_event_id(rm, sm, sm.metrics[0], sm.metrics[0].sum.data_points[0]),
            "name": "metric-sum",
            "metric_type": "sum",
            "metric_unit": "unit-sum",
            "metric_description": "about-sum",
            "value": float(2**53 + 1),
            "value_int": 2**53 + 1,
            "is_monotonic": True,
            "aggregation_temporality": 1,
            "point_count": None,
            "point_sum": None,
            "point_min": None,
            "point_max": None,
            "buckets": None,
            "exemplars": [
                {
                    "time": base + 999,
                    "value": 0.25,
                    "trace_id": LINKED_TRACE.hex(),
                    "span_id": LINKED_SPAN.hex(),
                }
            ],
            "attributes": {"feature_flag.key": "metric-flag"},
            "otlp_flags": 1,
        },
        "metric-histogram": {
            **common,
            "time": base + 777_777,
            "start_time": base + 222,
            "event_id": _metric_event_id(
                rm, sm, sm.metrics[1], sm.metrics[1].histogram.data_points[0]
            ),
            "name": "metric-histogram",
            "metric_type": "histogram",
            "metric_unit": "unit-histogram",
            "metric_description": None,
            "value": None,
            "value_int": None,
            "is_monotonic": None,
            "aggregation_temporality": 2,
            "point_count": 6,
            "point_sum": 123.5,
            "point_min": 0.5,
            "point_max": 99.0,
            "buckets": {"bounds": [1.0, 10.0], "counts": [1, 2, 3]},
            "exemplars": None,
            "attributes": {"route": "/metric-route"},
            "otlp_flags": None,
        },
    }
    expected = {k: derived(v) for k, v in expected.items()}
    assert set(stored) == set(expected)
    for name, want in expected.items():
        assert_every_column(stored[name], want, NULL_FOR_METRICS)
