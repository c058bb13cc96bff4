"""The OTLP/HTTP receiver, one test per behaviour of OTLP-RECEIVER.md (items 1–34 and 48).

Every request goes over a real loopback socket to a real collector (the module-scoped
`server` fixture: port 0, a 1 MiB limit `L`, 0.1 s flushes) and is checked in the lake
through DuckDB. Each test uses fresh random trace ids. A failure case runs inside
`nothing_stored()`: a marker request before it settles the lake, a marker request after it
must get 200 and show up, and by then the lake holds exactly one new row (that marker) and
none of the bad request's ids.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import gc
import gzip
import json
import os
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import psutil
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

import flagscope.collector.receiver
from tests.helpers import RunningCollector, make_settings, query
from tests.otlp_requests import (
    JSON,
    PB,
    TRACE_JSON_ID,
    MiB,
    Reply,
    any_value,
    assert_retry_after,
    dumps,
    field,
    gzip_of_zeros,
    kv,
    logs,
    make_span,
    new_span_id,
    new_trace_id,
    nothing_stored,
    one_span,
    otlp_json,
    post,
    post_until_ok,
    rows,
    send_marker,
    sized_request,
    status_body,
    stored,
    stored_twice,
    traces,
    varint,
    wait_rows,
)

# allocator noise, thread stacks, DuckDB queries of the polling helpers.
RSS_SLACK = 24 * MiB


# -- memory --------------------------------------------------------------------------------
class PeakRss:
    """Peak resident memory of this process (the collector's front end) above a baseline."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.baseline = self.peak = 0

    def _rss(self) -> int:
        return self._process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> Self:
        gc.collect()
        self.baseline = self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@contextlib.contextmanager
def running(tmp_path: Path, **overrides: Any) -> Iterator[RunningCollector]:
    collector_ = RunningCollector(make_settings(tmp_path / "data", **overrides)).start()
    try:
        yield collector_
    finally:
        collector_.stop()


def limit(srv: RunningCollector) -> int:
    return srv.settings.max_request_bytes


# == OTLP/HTTP — happy paths ===============================================================
def test_01_protobuf_span_200_protobuf_response_without_partial_success(server):
    body, trace_id = one_span()
    reply = post(server, "/v1/traces", body)
    assert reply.status == 200
    assert reply.content_type == PB
    response = trace_service_pb2.ExportTraceServiceResponse.FromString(reply.body)
    assert not response.HasField("partial_success")
    wait_rows(server, "trace_id = ? and signal = 'span'", [trace_id.hex()], 1)


def test_02_trace_json_example_stored_with_hex_ids_and_fields(server, otlp_examples):
    reply = post(server, "/v1/traces", (otlp_examples / "trace.json").read_bytes(), JSON)
    assert reply.status == 200
    assert reply.content_type == JSON
    assert reply.body == b"{}"
    wait_rows(server, "trace_id = ?", [TRACE_JSON_ID], 1)
    [row] = stored(
        server,
        TRACE_JSON_ID,
        "trace_id, span_id, parent_span_id, kind, epoch_ns(time), service_name, scope_name, "
        "scope_version, name",
    )
    assert row == (
        TRACE_JSON_ID,
        "eee19b7ec3c1b174",
        "eee19b7ec3c1b173",
        2,
        1544712660000000000,
        "my.service",
        "my.library",
        "1.0.0",
        "I'm a server span",
    )
    assert len(bytes.fromhex(row[0])) == 16 and len(bytes.fromhex(row[1])) == 8


def test_03_logs_json_example_stored_with_typed_attributes(server, otlp_examples):
    reply = post(server, "/v1/logs", (otlp_examples / "logs.json").read_bytes(), JSON)
    assert reply.status == 200
    assert reply.content_type == JSON
    where = "signal = 'log' and trace_id = ?"
    wait_rows(server, where, [TRACE_JSON_ID], 1)
    [(severity, attributes, trace_id, span_id, body)] = query(
        server.lake,
        "select severity_number, attributes, trace_id, span_id, body from events_raw "
        f"where {where}",
        [TRACE_JSON_ID],
    )
    assert severity == 10
    attrs = json.loads(attributes)
    assert attrs["int.attribute"] == 10 and type(attrs["int.attribute"]) is int
    assert attrs["double.attribute"] == 637.704
    assert attrs["boolean.attribute"] is True
    assert attrs["string.attribute"] == "some string"
    assert attrs["array.attribute"] == ["many", "values"]
    assert attrs["map.attribute"] == {"some.map.key": "some value"}
    assert (len(bytes.fromhex(trace_id)), len(bytes.fromhex(span_id))) == (16, 8)
    assert span_id == "eee19b7ec3c1b174"
    assert json.loads(body) == "Example log record"


def test_04_events_json_example_stores_event_name(server, otlp_examples):
    reply = post(server, "/v1/logs", (otlp_examples / "events.json").read_bytes(), JSON)
    assert reply.status == 200
    wait_rows(server, "signal = 'log' and name = 'browser.page_view'", [], 1)


def test_05_metrics_json_example_stores_all_four_types(server, otlp_examples):
    doc = json.loads((otlp_examples / "metrics.json").read_text())
    now = time.time_ns()  # the example's 2018 times would be expired by retention
    for metric in doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]:
        kind = next(k for k in metric if k not in ("name", "unit", "description"))
        for point in metric[kind]["dataPoints"]:
            point["timeUnixNano"] = str(now)
    reply = post(server, "/v1/metrics", json.dumps(doc).encode(), JSON)
    assert reply.status == 200
    wait_rows(
        server,
        "signal = 'metric' and metric_type in "
        "('sum', 'gauge', 'histogram', 'exponential_histogram') and name like 'my.%'",
        [],
        4,
    )


def rich_request(trace_id: bytes) -> trace_service_pb2.ExportTraceServiceRequest:
    """A span using every field the lake stores, with every AnyValue type."""
    span = make_span(
        trace_id,
        new_span_id(),
        name="POST /checkout",
        parent_span_id=new_span_id(),
        trace_state="vendor=1",
        start_time_unix_nano=1_700_000_000_123_456_789,
        end_time_unix_nano=1_700_000_000_223_456_789,
        dropped_attributes_count=3,
        attrs={
            "http.route": "/checkout",
            "http.response.status_code": 503,
            "http.request.method": "POST",
            "enduser.id": "user-42",
            "app.flag.new-checkout": "on",
            "big": -(2**62),
            "ratio": 0.25,
            "ok": False,
            "raw": b"\x00\xff",
            "list": [1, "two", 3.5, [True]],
            "map": {"a": {"b": 1}},
            "empty": "",
        },
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message="boom"),
    )
    event = span.events.add(
        name="feature_flag.evaluation", time_unix_nano=1_700_000_000_200_000_000
    )
    event.attributes.extend(
        [kv("feature_flag.key", "dark-mode"), kv("feature_flag.result.variant", "blue")]
    )
    link = span.links.add(trace_id=new_trace_id(), span_id=new_span_id())
    link.attributes.append(kv("link.kind", "follows"))
    request = traces(span)
    request.resource_spans[0].resource.attributes.append(kv("deployment.environment", "prod"))
    request.resource_spans[0].scope_spans[0].scope.version = "2.1"
    return request


def test_06_protobuf_json_and_gzip_variants_store_identical_rows(server):
    trace_id = new_trace_id()
    request = rich_request(trace_id)
    pb_body = request.SerializeToString()
    json_body = dumps(otlp_json(request))
    variants = [
        (pb_body, PB, {}),
        (json_body, JSON, {}),
        (gzip.compress(pb_body), PB, {"Content-Encoding": "gzip"}),
        (gzip.compress(json_body), JSON, {"Content-Encoding": "gzip"}),
    ]
    for body, content_type, headers in variants:
        reply = post(server, "/v1/traces", body, content_type, headers)
        assert reply.status == 200, (content_type, headers, reply.body)
    wait_rows(server, "trace_id = ?", [trace_id.hex()], 4)
    got = stored(server, trace_id)
    assert all(row == got[0] for row in got[1:]), got
    columns = [name for name, *_ in query(server.lake, "describe select * from events_raw")]
    row = dict(zip(columns, got[0], strict=True))
    assert row["flags"] == {"new-checkout": "on", "dark-mode": "blue"}
    assert row["user_id"] == "user-42" and row["is_error"] is True
    assert json.loads(row["attributes"])["big"] == -(2**62)


def test_07_json_with_charset_parameter_accepted(server):
    trace_id = new_trace_id()
    body = dumps(otlp_json(traces(make_span(trace_id))))
    reply = post(server, "/v1/traces", body, "application/json; charset=utf-8")
    assert reply.status == 200
    assert reply.content_type == JSON
    wait_rows(server, "trace_id = ?", [trace_id.hex()], 1)


def test_08_empty_requests_200_and_nothing_stored(server):
    empty_resource = trace_service_pb2.ExportTraceServiceRequest()
    empty_resource.resource_spans.add().scope_spans.add()  # a ResourceSpans with no spans
    cases = [
        (b"", PB),
        (b"{}", JSON),
        (empty_resource.SerializeToString(), PB),
        (dumps(otlp_json(empty_resource)), JSON),
    ]
    with nothing_stored(server):
        for body, content_type in cases:
            reply = post(server, "/v1/traces", body, content_type)
            assert reply.status == 200, (body, reply.body)
            assert reply.content_type == content_type
            if content_type == PB:
                response = trace_service_pb2.ExportTraceServiceResponse.FromString(reply.body)
                assert not response.HasField("partial_success")
            else:
                assert json.loads(reply.body) == {}
        reply = post(server, "/v1/logs", b"", PB)
        assert reply.status == 200


def test_09_json_ids_upper_and_lower_case_store_identical_bytes(server):
    trace_id, span_id, parent = new_trace_id(), new_span_id(), new_span_id()
    doc = otlp_json(traces(make_span(trace_id, span_id, parent_span_id=parent)))
    upper = copy.deepcopy(doc)
    span = upper["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    for key in ("traceId", "spanId", "parentSpanId"):
        span[key] = span[key].upper()
    assert span["traceId"] != doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"]
    got = stored_twice(server, trace_id, (dumps(doc), dumps(upper)))
    assert got[0] == got[1]
    ids = stored(server, trace_id, "trace_id, span_id, parent_span_id")
    assert ids[0] == (trace_id.hex(), span_id.hex(), parent.hex())


def test_10_json_enum_names_and_numeric_int64_accepted_identically(server):
    trace_id = new_trace_id()
    doc = otlp_json(
        traces(
            make_span(
                trace_id,
                start_time_unix_nano=1544712660000000000,
                end_time_unix_nano=1544712661000000000,
            )
        )
    )
    lenient = copy.deepcopy(doc)
    span = lenient["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["kind"] == 2 and span["startTimeUnixNano"] == "1544712660000000000"
    span["kind"] = "SPAN_KIND_SERVER"
    span["startTimeUnixNano"] = 1544712660000000000
    span["endTimeUnixNano"] = 1544712661000000000
    got = stored_twice(server, trace_id, (dumps(doc), dumps(lenient)))
    assert got[0] == got[1]
    assert stored(server, trace_id, "kind, epoch_ns(time)")[0] == (2, 1544712660000000000)


def test_11_json_unknown_fields_at_every_level_ignored(server):
    trace_id = new_trace_id()
    doc = otlp_json(rich_request(trace_id))
    future = copy.deepcopy(doc)
    touched = 0

    def sprinkle(node: Any) -> None:
        nonlocal touched
        if isinstance(node, dict):
            for value in node.values():
                sprinkle(value)
            node["futureField"] = 1
            touched += 1
        elif isinstance(node, list):
            for value in node:
                sprinkle(value)

    sprinkle(future)
    assert touched > 30  # request, resource, scope, span, events, links, every AnyValue …
    got = stored_twice(server, trace_id, (dumps(doc), dumps(future)))
    assert got[0] == got[1]
    assert "futureField" not in str(got[0])


def test_12_json_non_finite_doubles_accepted_as_ieee_values(server):
    trace_id, span_id = new_trace_id(), new_span_id()
    values = {"d.nan": float("nan"), "d.inf": float("inf"), "d.ninf": float("-inf"), "d.one": 1.5}
    request = traces(make_span(trace_id, span_id, attrs=values, start_time_unix_nano=1))
    doc = otlp_json(request)
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    sent = {a["key"]: a["value"] for a in span["attributes"]}
    assert sent["d.nan"] == {"doubleValue": "NaN"}
    assert sent["d.ninf"] == {"doubleValue": "-Infinity"}
    assert post(server, "/v1/traces", dumps(doc), JSON).status == 200
    # The same values as real IEEE doubles over protobuf must store the same row.
    assert post(server, "/v1/traces", request.SerializeToString(), PB).status == 200
    wait_rows(server, "trace_id = ?", [trace_id.hex()], 2)
    got = stored(server, trace_id)
    assert got[0] == got[1]
    attrs = json.loads(stored(server, trace_id, "attributes")[0][0])
    # Documented policy (collector/convert.py): JSON has no literal for them, so the lake
    # keeps OTLP/JSON's AnyValue object — never the plain string "NaN" (issue 10 point 14).
    assert attrs == {
        "d.nan": {"doubleValue": "NaN"},
        "d.inf": {"doubleValue": "Infinity"},
        "d.ninf": {"doubleValue": "-Infinity"},
        "d.one": 1.5,
    }


# == OTLP/HTTP — rejections ================================================================
def test_13_get_put_patch_405_nothing_stored(server):
    body, trace_id = one_span()
    with nothing_stored(server, trace_id):
        for method in ("GET", "PUT", "PATCH"):
            reply = post(server, "/v1/traces", None if method == "GET" else body, method=method)
            assert reply.status == 405, method
            assert "POST" in (reply.headers.get("Allow") or "")


def test_14_unknown_path_404(server):
    body, trace_id = one_span()
    with nothing_stored(server, trace_id):
        assert post(server, "/v1/unknown", body).status == 404


def test_15_missing_or_text_plain_content_type_415(server):
    body, trace_id = one_span()
    with nothing_stored(server, trace_id):
        for content_type in (None, "text/plain"):
            reply = post(server, "/v1/traces", body, content_type)
            assert reply.status == 415, content_type


def test_16_garbage_protobuf_400_with_protobuf_status(server):
    with nothing_stored(server):
        reply = post(server, "/v1/traces", b"\xff" * 16 + b"not a protobuf message", PB)
        assert reply.status == 400
        status_body(reply, PB)


def test_17_truncated_or_invalid_json_400_with_json_status(server):
    body = dumps(otlp_json(traces(make_span(trace_id := new_trace_id()))))
    with nothing_stored(server, trace_id):
        for bad in (body[: len(body) // 2], b"{not json", b"[1, 2]"):
            reply = post(server, "/v1/traces", bad, JSON)
            assert reply.status == 400, bad
            doc = json.loads(reply.body)
            assert isinstance(doc["code"], int) and doc["message"], doc
            status_body(reply, JSON)


def test_18_json_ids_in_base64_wrong_length_or_non_hex_400(server):
    span_id = new_span_id()
    doc = otlp_json(traces(make_span(new_trace_id(), span_id)))
    bad_ids = ["W47/95gDgQPSabYzgT/GDA==", "5b8efff798038103d269b633813fc6", "zz" * 16]
    with nothing_stored(server, span_id):
        for bad in bad_ids:
            sent = copy.deepcopy(doc)
            sent["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = bad
            reply = post(server, "/v1/traces", dumps(sent), JSON)
            if reply.status == 200:  # allowed: the span alone rejected via partial_success
                assert json.loads(reply.body)["partialSuccess"]["rejectedSpans"] == "1", bad
            else:
                assert reply.status == 400, (bad, reply.body)
                assert "hex" in status_body(reply, JSON).message
        sent = copy.deepcopy(doc)
        sent["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "7u6bfsPBsXQ="
        assert post(server, "/v1/traces", dumps(sent), JSON).status == 400


def test_19_all_zero_trace_id_rejected_by_partial_success_json(server):
    trace_id, bad_span = new_trace_id(), new_span_id()
    request = traces(make_span(trace_id), make_span(bytes(16), bad_span), make_span(trace_id))
    reply = post(server, "/v1/traces", dumps(otlp_json(request)), JSON)
    assert reply.status == 200
    partial = json.loads(reply.body)["partialSuccess"]
    assert partial["rejectedSpans"] == "1"
    assert "all zeros" in partial["errorMessage"]
    wait_rows(server, "trace_id = ?", [trace_id.hex()], 2)
    send_marker(server)
    assert rows(server, "span_id = ?", [bad_span.hex()]) == 0
    assert rows(server, "trace_id = ?", [trace_id.hex()]) == 2


def test_19_seven_byte_span_id_rejected_by_partial_success_protobuf(server):
    trace_id = new_trace_id()
    request = traces(make_span(trace_id), make_span(trace_id, b"\x07" * 7), make_span(trace_id))
    reply = post(server, "/v1/traces", request.SerializeToString(), PB)
    assert reply.status == 200
    response = trace_service_pb2.ExportTraceServiceResponse.FromString(reply.body)
    assert response.partial_success.rejected_spans == 1
    assert "span_id has 7 bytes" in response.partial_success.error_message
    wait_rows(server, "trace_id = ?", [trace_id.hex()], 2)
    send_marker(server)
    assert rows(server, "trace_id = ?", [trace_id.hex()]) == 2


def test_20_protobuf_logs_posted_to_traces_not_stored_as_spans(server):
    trace_id, span_id = new_trace_id(), new_span_id()
    records = [
        logs_pb2.LogRecord(
            time_unix_nano=time.time_ns(),
            severity_number=9,
            trace_id=trace_id,
            span_id=span_id,
            body=any_value("hello"),
            attributes=[kv("a", 1)],
        ),
        logs_pb2.LogRecord(time_unix_nano=time.time_ns(), body=any_value("no ids")),
    ]
    for request in (logs(*records), logs(records[1])):
        with nothing_stored(server, trace_id, span_id):
            reply = post(server, "/v1/traces", request.SerializeToString(), PB)
            if reply.status == 200:
                response = trace_service_pb2.ExportTraceServiceResponse.FromString(reply.body)
                assert response.partial_success.rejected_spans == len(
                    request.resource_logs[0].scope_logs[0].log_records
                )
            else:
                assert reply.status == 400
                status_body(reply, PB)


def test_21_invalid_utf8_span_name_400_mentions_utf8(server):
    trace_id = new_trace_id()
    body = traces(make_span(trace_id, name="NAME")).SerializeToString()
    assert body.count(b"NAME") == 1
    with nothing_stored(server, trace_id):
        reply = post(server, "/v1/traces", body.replace(b"NAME", b"\xff\xfeNA"), PB)
        assert reply.status == 400
        assert "UTF-8" in status_body(reply, PB).message


def test_22_json_lone_surrogate_string_400_never_500(server):
    trace_id = new_trace_id()
    doc = otlp_json(traces(make_span(trace_id, attrs={"s": "SURROGATE"})))
    body = dumps(doc).replace(b'"SURROGATE"', b'"\\ud800"')
    assert b"\\ud800" in body
    with nothing_stored(server, trace_id):
        reply = post(server, "/v1/traces", body, JSON)
        assert reply.status == 400
        status_body(reply, JSON)


def nested_arrays(levels: int, leaf: bytes = b"") -> bytes:
    """AnyValue bytes: `levels` nested arrayValues around the AnyValue `leaf` (built in O(n)).

    Written by hand: the protobuf classes themselves refuse to build past their depth limit.
    """
    heads: list[bytes] = []
    size = len(leaf)
    for _ in range(levels):
        array_head = b"\x0a" + varint(size)  # ArrayValue.values = the AnyValue inside
        size += len(array_head)
        any_head = b"\x2a" + varint(size)  # AnyValue.array_value
        size += len(any_head)
        heads.append(any_head + array_head)
    return b"".join(reversed(heads)) + leaf


def logs_request_with_body(body: bytes, trace_id: bytes = b"") -> bytes:
    """ExportLogsServiceRequest bytes of one log record whose body is the AnyValue `body`."""
    record = logs_pb2.LogRecord(
        time_unix_nano=time.time_ns(), trace_id=trace_id, span_id=new_span_id() if trace_id else b""
    )
    record_bytes = record.SerializeToString() + field(5, body)  # LogRecord.body
    return field(1, field(2, field(2, record_bytes)))  # resource_logs.scope_logs.log_records


def deep_log(depth: int, trace_id: bytes) -> bytes:
    return logs_request_with_body(nested_arrays(depth, field(1, b"leaf")), trace_id)


def test_23_log_body_48_nested_arrays_stored_faithfully(server):
    trace_id = new_trace_id()
    reply = post(server, "/v1/logs", deep_log(48, trace_id), PB)
    assert reply.status == 200, reply.body
    wait_rows(server, "trace_id = ?", [trace_id.hex()], 1)
    [(body,)] = stored(server, trace_id, "body")
    expected: Any = "leaf"
    for _ in range(48):
        expected = [expected]
    assert json.loads(body) == expected


def test_23_log_body_49_nested_arrays_400(server):
    trace_id = new_trace_id()
    with nothing_stored(server, trace_id):
        for depth in (49, 50):
            reply = post(server, "/v1/logs", deep_log(depth, trace_id), PB)
            assert reply.status == 400, depth
            assert "nesting" in status_body(reply, PB).message


def test_23_deep_nesting_bombs_400_fast_without_memory_growth(server):
    protobuf_bomb = logs_request_with_body(nested_arrays(100_000))
    assert 700_000 < len(protobuf_bomb) < limit(server)
    depth = 3000
    json_bomb = (
        b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":'
        + b'{"arrayValue":{"values":[' * depth
        + b'{"stringValue":"x"}'
        + b"]}}" * depth
        + b"}]}]}]}"
    )
    assert json_bomb.count(b"[") == json_bomb.count(b"]") == depth + 3  # well-formed
    with nothing_stored(server), PeakRss() as rss:
        for body, content_type in ((protobuf_bomb, PB), (json_bomb, JSON)):
            started = time.monotonic()
            reply = post(server, "/v1/logs", body, content_type)
            elapsed = time.monotonic() - started
            assert reply.status == 400, (content_type, reply.body[:200])
            status_body(reply, content_type)
            assert elapsed < 1.0, (content_type, elapsed)
    assert rss.growth < 2 * limit(server) + RSS_SLACK, rss.growth


def test_24_brotli_content_encoding_415(server):
    body, trace_id = one_span()
    with nothing_stored(server, trace_id):
        reply = post(server, "/v1/traces", body, PB, {"Content-Encoding": "br"})
        assert reply.status == 415
        assert "Content-Encoding" in status_body(reply, PB).message


def test_25_corrupt_or_truncated_gzip_400(server):
    body, trace_id = one_span()
    good = gzip.compress(body)
    bad_crc = good[:-8] + struct.pack("<I", zlib.crc32(body) ^ 1) + good[-4:]
    cases = {
        "truncated": good[: len(good) - 12],
        "trailer missing": good[:-8],
        "garbage deflate data": good[:10] + b"\xff" * 40,
        "crc mismatch": bad_crc,
        "not gzip at all": body,
    }
    with nothing_stored(server, trace_id):
        for name, bad in cases.items():
            reply = post(server, "/v1/traces", bad, PB, {"Content-Encoding": "gzip"})
            assert reply.status == 400, name
            status_body(reply, PB)


# == Size limits ===========================================================================
def test_26_body_of_exactly_limit_200_and_limit_plus_one_413(server):
    body, trace_id = sized_request(limit(server))
    reply = post(server, "/v1/traces", body)
    assert reply.status == 200
    wait_rows(server, "trace_id = ?", [trace_id.hex()], 1)
    too_big, big_id = sized_request(limit(server) + 1)
    with nothing_stored(server, big_id):
        reply = post(server, "/v1/traces", too_big)
        assert reply.status == 413
        status_body(reply, PB)


def test_27_chunked_body_over_limit_413_and_reading_stops_near_limit(server):
    """The server must stop reading about `L` bytes in, not swallow whatever the client sends."""
    trace_id = new_trace_id()
    span = make_span(trace_id, attrs={"pad": "p" * (16 * limit(server))})
    body = traces(span).SerializeToString()
    head = (
        b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = 64 * 1024
    stream = (
        head
        + b"".join(
            f"{len(body[i : i + piece]):x}\r\n".encode() + body[i : i + piece] + b"\r\n"
            for i in range(0, len(body), piece)
        )
        + b"0\r\n\r\n"
    )
    with nothing_stored(server, trace_id):
        sent, answer = 0, b""
        writing = reading = True
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            sock.connect(("127.0.0.1", server.collector.http_port))
            sock.setblocking(False)
            deadline = time.monotonic() + 15
            while reading and time.monotonic() < deadline:
                writing = writing and sent < len(stream)
                if sent == len(stream) and b"\r\n\r\n" in answer:
                    break  # the server read it all (and may keep the connection open)
                readable, writable, _ = select.select([sock], [sock] if writing else [], [], 0.5)
                if readable:
                    try:
                        data = sock.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    answer += data
                    reading = bool(data)
                if writable:
                    try:
                        sent += sock.send(stream[sent : sent + piece])
                    except (BrokenPipeError, ConnectionResetError):
                        writing = False  # the server closed the connection
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 413"), (sent, answer[:200])
        # Socket buffers on both sides hold a few MiB at most; the client had 16 × L to send.
        assert sent < limit(server) + 8 * MiB, f"server read {sent} of {len(stream)} bytes"


def test_28_gzip_inflating_just_over_limit_413_memory_bounded(server):
    L = limit(server)
    bomb = gzip.compress(bytes(L + 1), 9)
    assert len(bomb) < L // 500
    with nothing_stored(server), PeakRss() as rss:
        reply = post(server, "/v1/traces", bomb, PB, {"Content-Encoding": "gzip"})
        assert reply.status == 413
        status_body(reply, PB)
    assert rss.growth < 2 * L + RSS_SLACK, rss.growth


def test_28_gzip_bomb_of_1_gib_zeros_413_memory_bounded(server):
    L = limit(server)
    bomb = gzip_of_zeros(1024 * MiB)
    assert len(bomb) < L
    with nothing_stored(server), PeakRss() as rss:
        started = time.monotonic()
        reply = post(server, "/v1/traces", bomb, PB, {"Content-Encoding": "gzip"})
        assert reply.status == 413
        assert time.monotonic() - started < 5
        status_body(reply, PB)
    assert rss.growth < 2 * L + RSS_SLACK, rss.growth


def test_29_sixteen_concurrent_limit_sized_requests_answered_within_memory_bound(tmp_path):
    """16 × L at once against a budget of 4 × L: each answered 200 or 503 + Retry-After."""
    with running(tmp_path, max_inflight_bytes=4 * MiB) as srv:
        L = limit(srv)
        requests = [sized_request(L) for _ in range(16)]
        barrier = threading.Barrier(16)

        def send(body: bytes) -> Reply:
            barrier.wait()
            return post(srv, "/v1/traces", body)

        with PeakRss() as rss, ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(send, [body for body, _ in requests]))
        for reply, (body, _) in zip(replies, requests, strict=True):
            assert reply.status in (200, 503), reply.status
            if reply.status == 503:
                assert_retry_after(reply)
                status_body(reply, PB)
                assert post_until_ok(srv, "/v1/traces", body).status == 200
        for _, trace_id in requests:
            wait_rows(srv, "trace_id = ?", [trace_id.hex()], 1)
        # Request bytes held at once are bounded by max_inflight_bytes; what the collector
        # derives from them (joined body, parsed message, WAL record) stays within 2× that.
        # Without the budget, 16 requests at once grow RSS by about 40 MiB here.
        assert rss.growth < 2 * srv.settings.max_inflight_bytes + RSS_SLACK, rss.growth


def test_30_response_to_many_rejections_stays_under_4_mib_with_exact_counts(server):
    good = make_span(trace_id := new_trace_id()).SerializeToString()
    empty_span = field(2, b"")  # a span without ids: rejected
    count = (limit(server) - 200) // len(empty_span)
    spans = empty_span * count + field(2, good)
    body = field(1, field(2, spans))
    assert len(body) <= limit(server)
    started = time.monotonic()
    reply = post(server, "/v1/traces", body)
    assert reply.status == 200
    assert time.monotonic() - started < 10
    assert len(reply.body) <= 4 * MiB
    partial = trace_service_pb2.ExportTraceServiceResponse.FromString(reply.body).partial_success
    assert partial.rejected_spans == count
    assert partial.error_message and str(count) in partial.error_message
    wait_rows(server, "trace_id = ?", [trace_id.hex()], 1)


# == Throttling and errors =================================================================
def test_31_inflight_budget_exhausted_503_retry_after_then_200(tmp_path):
    with running(tmp_path, max_inflight_bytes=1 * MiB) as srv:
        held_body, held_id = sized_request(limit(srv))
        body, trace_id = one_span()
        json_body = dumps(otlp_json(traces(make_span(json_id := new_trace_id()))))
        with (
            nothing_stored(srv, trace_id, json_id, others=1),  # the held request
            socket.create_connection(("127.0.0.1", srv.collector.http_port), timeout=30) as holder,
        ):
            holder.sendall(
                b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-protobuf\r\n"
                + f"Content-Length: {len(held_body)}\r\n\r\n".encode()
                + held_body[:1000]
            )
            # Synchronisation only: wait until the held request has reserved its bytes.
            deadline = time.monotonic() + 10
            while srv.collector.receiver.budget.used == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            for sent, content_type in ((body, PB), (json_body, JSON)):
                reply = post(srv, "/v1/traces", sent, content_type)
                assert reply.status == 503, reply.status
                assert assert_retry_after(reply) >= 1
                status_body(reply, content_type)
            holder.sendall(held_body[1000:])
            assert holder.recv(100).startswith(b"HTTP/1.1 200")
        for sent, content_type, sent_id in ((body, PB, trace_id), (json_body, JSON, json_id)):
            assert post(srv, "/v1/traces", sent, content_type).status == 200
            wait_rows(srv, "trace_id = ?", [sent_id.hex()], 1)
        assert rows(srv, "trace_id = ?", [held_id.hex()]) == 1


def test_31_wal_backlog_full_503_retry_after_then_200_stored_once(tmp_path):
    with running(tmp_path, wal_max_backlog_bytes=1) as srv:
        first, first_id = one_span()
        assert post(srv, "/v1/traces", first).status == 200
        body, trace_id = one_span()
        reply = post(srv, "/v1/traces", body)
        assert reply.status == 503
        assert assert_retry_after(reply) >= 1
        assert "retry" in status_body(reply, PB).message
        assert post_until_ok(srv, "/v1/traces", body).status == 200
        marker, marker_id = one_span()
        assert post_until_ok(srv, "/v1/traces", marker).status == 200
        wait_rows(srv, "trace_id = ?", [marker_id.hex()], 1)
        assert rows(srv, "trace_id = ?", [trace_id.hex()]) == 1  # the 503s stored nothing
        assert rows(srv, "trace_id = ?", [first_id.hex()]) == 1


def test_32_disk_full_on_wal_append_503_then_recovers(server, monkeypatch):
    body, trace_id = one_span()
    wal_dir = str(server.settings.wal_path.resolve()) + os.sep
    real_write = os.write
    calls = {"wal": 0}

    def write_until_disk_full(fd: int, data: bytes) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if not target.startswith(wal_dir):
            return real_write(fd, data)
        calls["wal"] += 1
        if calls["wal"] == 1:
            return real_write(fd, bytes(data[:7]))  # a torn record: the disk filled up mid-way
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with nothing_stored(server, trace_id):
        with monkeypatch.context() as patch:
            patch.setattr(os, "write", write_until_disk_full)
            reply = post(server, "/v1/traces", body)
        assert calls["wal"] >= 2
        assert reply.status == 503, reply.body
        assert assert_retry_after(reply) >= 1
        assert "retry" in status_body(reply, PB).message
    assert post(server, "/v1/traces", body).status == 200  # the client's retry, space freed
    wait_rows(server, "trace_id = ?", [trace_id.hex()], 1)


def test_33_unexpected_exception_500_status_without_traceback(server, monkeypatch):
    body, trace_id = one_span()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail")

    with nothing_stored(server, trace_id):
        with monkeypatch.context() as patch:
            patch.setattr(flagscope.collector.receiver, "prepare", broken)
            replies = [
                post(server, "/v1/traces", body, PB),
                post(server, "/v1/traces", dumps(otlp_json(traces(make_span()))), JSON),
            ]
        for reply, content_type in zip(replies, (PB, JSON), strict=True):
            assert reply.status == 500
            message = status_body(reply, content_type).message
            for leak in ("Traceback", "RuntimeError", "secret internal detail", ".py"):
                assert leak not in message and leak.encode() not in reply.body


def test_34_every_error_on_otlp_paths_has_status_body_in_request_encoding(server):
    L = limit(server)
    garbage = {PB: b"\xff" * 8, JSON: b"{"}
    gzipped = {"Content-Encoding": "gzip"}
    cases = []
    for content_type in (PB, JSON):
        cases += [
            ("/v1/traces", garbage[content_type], content_type, {}, 400),
            ("/v1/logs", garbage[content_type], content_type, {}, 400),
            ("/v1/metrics", garbage[content_type], content_type, {}, 400),
            ("/v1/traces", b" " * (L + 1), content_type, {}, 413),
            ("/v1/logs", gzip.compress(bytes(L + 1)), content_type, gzipped, 413),
            ("/v1/traces", b"{}", content_type, {"Content-Encoding": "br"}, 415),
            ("/v1/logs", b"\x1f\x8b junk", content_type, gzipped, 400),
        ]
    with nothing_stored(server):
        for path, body, content_type, headers, expected in cases:
            reply = post(server, path, body, content_type, headers)
            assert reply.status == expected, (path, content_type, headers, reply.status)
            status_body(reply, content_type)


# == Security ==============================================================================
def test_48_bearer_auth_401_before_any_decoding_nothing_stored(tmp_path, monkeypatch):
    bomb = gzip_of_zeros(1024 * MiB)
    decompressed = []
    real_decompress = flagscope.collector.receiver.decompress

    def spy(*args: Any, **kwargs: Any) -> bytes:
        decompressed.append(args[1:])
        return real_decompress(*args, **kwargs)

    monkeypatch.setattr(flagscope.collector.receiver, "decompress", spy)
    with running(tmp_path, auth_token="s3cret-token") as srv:
        body, trace_id = one_span()
        gz_body = gzip.compress(body)
        bad = [
            (body, {}),
            (body, {"Authorization": "Bearer wrong"}),
            (body, {"Authorization": "s3cret-token"}),
            (body, {"Authorization": "Bearer s3cret-token-and-more"}),
            (body, {"Authorization": "Basic s3cret-token"}),
            (gz_body, {"Content-Encoding": "gzip"}),
            (b"\x1f\x8b corrupt", {"Content-Encoding": "gzip"}),  # 401, not 400: never decoded
        ]
        with nothing_stored(srv, trace_id):
            decompressed.clear()
            with PeakRss() as rss:
                reply = post(
                    srv, "/v1/traces", bomb, PB, {"Content-Encoding": "gzip"}, authorize=False
                )
            assert reply.status == 401
            status_body(reply, PB)
            assert rss.growth < limit(srv) + RSS_SLACK, rss.growth
            for sent, headers in bad:
                reply = post(srv, "/v1/traces", sent, PB, headers, authorize=False)
                assert reply.status == 401, headers
                status_body(reply, PB)
            reply = post(srv, "/v1/logs", body, JSON, {}, authorize=False)
            assert reply.status == 401
            status_body(reply, JSON)
            assert decompressed == [], "an unauthenticated body was decompressed"
        reply = post(srv, "/v1/traces", gz_body, PB, {"Content-Encoding": "gzip"})
        assert reply.status == 200
        assert decompressed, "the spy never saw a request: it proves nothing"
        # RFC 7235: the auth scheme is case-insensitive (issue 10 point 16)
        for scheme in ("bearer", "BEARER"):
            reply = post(
                srv,
                "/v1/traces",
                body,
                PB,
                {"Authorization": f"{scheme} s3cret-token"},
                authorize=False,
            )
            assert reply.status == 200, scheme
        # Acked three times (gzip, "bearer", "BEARER"): three raw rows, one event.
        wait_rows(srv, "trace_id = ?", [trace_id.hex()], 3)
