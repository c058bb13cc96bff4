"""Values the OTLP schema allows but no sane client sends never stop the lake.

Issue 10 points 7, 8 and 15: each odd item below is sent over real HTTP between two good
clients' requests, and every good span must reach the lake. Each odd item is either
stored, with the odd value kept as data (the typed column null, the raw value in the
attributes JSON), or refused through `partial_success` — the policy README's "Odd values"
states. One burst sends them all between good requests, so they share WAL segments.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.logs.v1 import logs_pb2

from flagscope.collector.lake.read import fetch
from tests.otlp_requests import (
    kv,
    logs,
    make_span,
    new_trace_id,
    post,
    traces,
    wait_rows,
)

TOO_LATE = 2**63  # one past the largest time the lake can store


@dataclass
class Odd:
    """One odd item: how to build it, and what the lake must show for it."""

    name: str
    signal: str  # "traces" | "logs"
    build: Any  # trace id → export request
    stored: dict[str, Any] | None = None  # columns expected when stored; None: refused
    check: Any = None  # optional extra check on the stored row (a dict)
    refused_because: str = ""


def span_request(trace_id: bytes, resource: dict[str, Any] | None = None, **span: Any):
    request = traces(make_span(trace_id, **span))
    if resource:
        attrs = request.resource_spans[0].resource.attributes
        del attrs[:]
        attrs.extend(kv(k, v) for k, v in resource.items())
    return request


def log_request(trace_id: bytes, **fields: Any) -> logs_service_pb2.ExportLogsServiceRequest:
    attrs = fields.pop("attrs", {})
    fields.setdefault("time_unix_nano", time.time_ns())
    fields.setdefault("observed_time_unix_nano", time.time_ns())
    record = logs_pb2.LogRecord(
        trace_id=trace_id, attributes=[kv(k, v) for k, v in attrs.items()], **fields
    )
    return logs(record)


def _now_ish(value: Any) -> bool:
    """A lake time (naive UTC) within minutes of now."""
    return value is not None and abs(value.replace(tzinfo=UTC).timestamp() - time.time()) < 600


ODD = [
    Odd(
        "status.code=128",
        "traces",
        lambda t: span_request(t, status={"code": 128}),
        {"status_code": 128, "is_error": False},
    ),
    Odd("kind=128", "traces", lambda t: span_request(t, kind=128), {"kind": 128}),
    Odd(
        "start time 2^63",
        "traces",
        lambda t: span_request(t, start_time_unix_nano=TOO_LATE, end_time_unix_nano=TOO_LATE),
        refused_because="start_time_unix_nano",
    ),
    Odd(
        "start time 0",
        "traces",
        lambda t: span_request(t, start_time_unix_nano=0, end_time_unix_nano=10),
        refused_because="start_time_unix_nano is missing",
    ),
    Odd(
        "end time 2^63",
        "traces",
        lambda t: span_request(t, end_time_unix_nano=TOO_LATE),
        {"end_time": None, "duration_ms": None},
    ),
    Odd(
        "dropped_attributes_count=2^31",
        "traces",
        lambda t: span_request(t, dropped_attributes_count=2**31),
        {"dropped_attributes_count": 2**31},
    ),
    Odd(
        "http.response.status_code=2^31",
        "traces",
        lambda t: span_request(t, attrs={"http.response.status_code": 2**31}),
        {"http_status_code": None, "is_error": False},
        lambda row: json.loads(row["attributes"])["http.response.status_code"] == 2**31,
    ),
    Odd(
        "http.status_code='99999999999'",
        "traces",
        lambda t: span_request(t, attrs={"http.status_code": "99999999999"}),
        {"http_status_code": None},
    ),
    Odd(
        "http.status_code as a Unicode digit",
        "traces",
        lambda t: span_request(t, attrs={"http.status_code": "\u0665\u0660\u0663"}),
        {"http_status_code": None},
    ),
    Odd(
        "http.status_code='\u00b2'",
        "traces",
        lambda t: span_request(t, attrs={"http.status_code": "\u00b2"}),
        {"http_status_code": None},
    ),
    Odd(
        "service.name as an integer",
        "traces",
        lambda t: span_request(t, resource={"service.name": 42}),
        {"service_name": None},
        lambda row: json.loads(row["resource_attributes"])["service.name"] == 42,
    ),
    Odd(
        "http.route as an integer",
        "traces",
        lambda t: span_request(t, attrs={"http.route": 7}),
        {"http_route": None},
    ),
    Odd(
        "http.request.method as a bool",
        "traces",
        lambda t: span_request(t, attrs={"http.request.method": True}),
        {"http_method": None},
    ),
    Odd(
        "user_agent.synthetic.type as an array",
        "traces",
        lambda t: span_request(t, attrs={"user_agent.synthetic.type": ["test"]}),
        {"is_test": False},
    ),
    Odd(
        "user_agent.synthetic.type as a kvlist",
        "traces",
        lambda t: span_request(
            t, resource={"service.name": "s", "user_agent.synthetic.type": {"a": "test"}}
        ),
        {"is_test": False},
    ),
    Odd(
        "log severity_number=128",
        "logs",
        lambda t: log_request(t, severity_number=128),
        {"severity_number": 128, "is_error": False},
    ),
    Odd(
        "log observed_time=2^63",
        "logs",
        lambda t: log_request(t, observed_time_unix_nano=TOO_LATE),
        {},
        lambda row: _now_ish(row["observed_time"]),
    ),
    Odd(
        "log without timestamps",
        "logs",
        lambda t: log_request(t, time_unix_nano=0, observed_time_unix_nano=0),
        {},
        lambda row: _now_ish(row["time"]) and row["time"] == row["observed_time"],
    ),
    Odd(
        "log event.name as an integer",
        "logs",
        lambda t: log_request(t, attrs={"event.name": 3}),
        {"name": None},
    ),
]


def _good(srv, count: int = 3) -> list[bytes]:
    trace_id = new_trace_id()
    request = traces(*[make_span(trace_id, name=f"good-{i}") for i in range(count)])
    reply = post(srv, "/v1/traces", request.SerializeToString())
    assert reply.status == 200, reply.body
    return [trace_id]


def _send_odd(srv, odd: Odd, trace_id: bytes):
    reply = post(srv, f"/v1/{odd.signal}", odd.build(trace_id).SerializeToString())
    assert reply.status == 200, (odd.name, reply.status, reply.body)
    response_type = (
        trace_service_pb2.ExportTraceServiceResponse
        if odd.signal == "traces"
        else logs_service_pb2.ExportLogsServiceResponse
    )
    return response_type.FromString(reply.body).partial_success


def _row(srv, trace_id: bytes) -> dict[str, Any]:
    columns, rows = fetch(srv.lake, "select * from events_raw where trace_id = ?", [trace_id.hex()])
    assert len(rows) == 1, rows
    return dict(zip(columns, rows[0], strict=True))


def test_every_good_span_arrives_around_a_burst_of_odd_items(server):
    good: list[bytes] = []
    odd_ids = []
    for odd in ODD:
        good += _good(server)
        trace_id = new_trace_id()
        _send_odd(server, odd, trace_id)
        odd_ids.append(trace_id)
    good += _good(server)
    for trace_id in good:
        wait_rows(server, "trace_id = ?", [trace_id.hex()], 3)
    for odd, trace_id in zip(ODD, odd_ids, strict=True):
        wait_rows(server, "trace_id = ?", [trace_id.hex()], 0 if odd.stored is None else 1)


@pytest.mark.parametrize("odd", ODD, ids=[o.name for o in ODD])
def test_an_odd_item_is_stored_as_data_or_refused_as_documented(server, odd):
    before = _good(server)
    trace_id = new_trace_id()
    partial = _send_odd(server, odd, trace_id)
    after = _good(server)
    for good in before + after:
        wait_rows(server, "trace_id = ?", [good.hex()], 3)
    rejected = partial.rejected_spans if odd.signal == "traces" else partial.rejected_log_records
    if odd.stored is None:
        assert rejected == 1 and odd.refused_because in partial.error_message, partial
        wait_rows(server, "trace_id = ?", [trace_id.hex()], 0)
        return
    assert rejected == 0, partial
    wait_rows(server, "trace_id = ?", [trace_id.hex()], 1)
    row = _row(server, trace_id)
    assert {k: row[k] for k in odd.stored} == odd.stored
    assert odd.check is None or odd.check(row), row
