"""OTLP-RECEIVER item 53: optional attribute caps. With caps of 128 attributes and 64 KiB
per value, a span with 10,000 attributes and a 32 MiB string value is answered 200,
stored truncated with `dropped_attributes_count` raised, and the `partial_success`
warning says so (rejected 0); with the caps off the same span is stored intact."""

from __future__ import annotations

import json

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from flagscope.collector.caps import AttributeCaps
from flagscope.collector.decode import prepare
from flagscope.collector.otlp import PROTOBUF, TRACES
from tests.helpers import RunningCollector, make_settings, query
from tests.otlp_requests import PB, kv, make_span, new_trace_id, post, traces, wait_rows

MiB = 1024 * 1024


def _big_span(trace_id: bytes, attributes: int, value_bytes: int):
    span = make_span(trace_id, attrs={f"a{i}": i for i in range(attributes)})
    span.attributes.insert(0, kv("big", "é" * (value_bytes // 2)))  # 2 bytes a character
    span.dropped_attributes_count = 3  # already dropped by the SDK
    return span


@pytest.mark.parametrize(("caps", "kept"), [((128, 65536), 128), ((0, 0), 10_001)])
def test_caps_over_http(tmp_path, caps, kept):
    settings = make_settings(
        tmp_path,
        max_request_bytes=40 * MiB,
        max_inflight_bytes=200 * MiB,
        max_attributes=caps[0],
        max_attribute_value_bytes=caps[1],
    )
    running = RunningCollector(settings).start()
    try:
        trace = new_trace_id()
        size = 32 * MiB if caps[0] else 2 * MiB  # intact is checked on a smaller value
        reply = post(
            running, "/v1/traces", traces(_big_span(trace, 10_000, size)).SerializeToString(), PB
        )
        assert reply.status == 200
        answer = trace_service_pb2.ExportTraceServiceResponse.FromString(reply.body)
        wait_rows(running, "trace_id = ?", [trace.hex()], 1)
        ((attrs, dropped),) = query(
            running.lake,
            "SELECT attributes, dropped_attributes_count FROM events WHERE trace_id = ?",
            [trace.hex()],
        )
    finally:
        running.stop()
    stored = json.loads(attrs)
    assert len(stored) == kept
    if caps[0]:
        assert answer.partial_success.rejected_spans == 0
        assert "9873 attributes dropped, 1 values cut" in answer.partial_success.error_message
        assert dropped == 3 + 9_873
        assert len(stored["big"].encode()) == 65536  # 32,768 two-byte characters
    else:
        assert not answer.HasField("partial_success")
        assert dropped == 3
        assert len(stored["big"].encode()) == size


def test_values_are_cut_inside_arrays_and_kvlists_on_a_character_boundary():
    span = make_span(new_trace_id(), attrs={"list": ["x" * 10, "ab€€€"], "map": {"k": "€" * 5}})
    body = traces(span).SerializeToString()
    prepared = prepare(TRACES, body, PROTOBUF, caps=AttributeCaps(0, 5))
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(prepared.payload)
    values = {
        kv.key: kv.value for kv in request.resource_spans[0].scope_spans[0].spans[0].attributes
    }
    assert [v.string_value for v in values["list"].array_value.values] == ["xxxxx", "ab€"]
    assert values["map"].kvlist_value.values[0].value.string_value == "€"
    assert prepared.rejected == 0 and "4 values cut" in prepared.error_message


def test_a_dropped_count_near_the_top_of_uint32_stays_at_the_top():
    span = make_span(new_trace_id(), attrs={"a": 1, "b": 2})
    span.dropped_attributes_count = 2**32 - 1
    prepared = prepare(TRACES, traces(span).SerializeToString(), PROTOBUF, caps=AttributeCaps(1, 0))
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(prepared.payload)
    assert request.resource_spans[0].scope_spans[0].spans[0].dropped_attributes_count == 2**32 - 1
