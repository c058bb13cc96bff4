"""Span attributes read as raw KeyValue bytes decode exactly as the regular messages do."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from flagscope.collector.convert import any_value, attributes
from flagscope.collector.rawproto import AttributeCache, TraceRequest

scalars = st.one_of(
    st.text(max_size=20).map(lambda s: AnyValue(string_value=s)),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: AnyValue(int_value=i)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda d: AnyValue(double_value=d)),
    st.binary(max_size=8).map(lambda b: AnyValue(bytes_value=b)),
)


def _array(values: list[AnyValue]) -> AnyValue:
    value = AnyValue()
    value.array_value.values.extend(values)
    return value


values = st.one_of(scalars, st.lists(scalars, max_size=3).map(_array))


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=10), values), max_size=8))
def test_raw_attributes_decode_like_the_messages(pairs):
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    event = span.events.add()
    for key, value in pairs:
        span.attributes.append(KeyValue(key=key, value=value))
        event.attributes.append(KeyValue(key=key, value=value))
    raw = TraceRequest.FromString(request.SerializeToString())
    raw_span = raw.resource_spans[0].scope_spans[0].spans[0]
    cache = AttributeCache(any_value)
    for decoded in (
        cache.attributes(raw_span.attributes),
        cache.attributes(raw_span.events[0].attributes),
    ):
        expected = attributes(span.attributes)
        assert decoded.keys() == expected.keys()
        assert all(_same(decoded[k], expected[k]) for k in expected)


def test_the_cache_starts_over_at_its_limit():
    cache = AttributeCache(any_value, limit=3)
    raw = [KeyValue(key=f"k{i}", value=AnyValue(int_value=i)).SerializeToString() for i in range(5)]
    assert cache.attributes(raw) == {f"k{i}": i for i in range(5)}
    assert len(cache) <= 3
