"""Span attributes read as raw KeyValue bytes decode exactly as the regular messages do."""

import math

from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from flagscope.collector.convert import any_value, attributes
from flagscope.collector.rawproto import AttributeCache, TraceRequest, string_pair

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


def _kv_bytes(key: str, value: str) -> bytes:
    return KeyValue(key=key, value=AnyValue(string_value=value)).SerializeToString()


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.tuples(st.text(max_size=140), st.text(max_size=140)).map(lambda kv: _kv_bytes(*kv)),
        st.tuples(st.text(max_size=8), st.text(max_size=8), st.binary(max_size=3)).map(
            lambda t: _kv_bytes(t[0], t[1]) + t[2]  # a field after the usual layout
        ),
        st.binary(max_size=40),
        values.map(lambda v: KeyValue(key="k", value=v).SerializeToString()),
    )
)
def test_a_string_pair_is_read_as_the_parser_reads_it(data):
    """`string_pair` reads the usual layout of a string attribute, and leaves everything
    else (other values, other layouts, long or invalid text) to the parser."""
    found = string_pair(data)
    try:
        kv = KeyValue.FromString(data)
    except DecodeError:
        assert found is None
        return
    if found is not None:
        assert kv.value.WhichOneof("value") == "string_value"
        assert found == (kv.key, kv.value.string_value)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=130), st.text(max_size=130))
def test_every_short_string_pair_takes_the_quick_path(key, value):
    """The converse: a key under 128 bytes and a value under 126 (one-byte lengths, the
    AnyValue's own two bytes included) are read without the parser."""
    found = string_pair(_kv_bytes(key, value))
    if len(key.encode()) < 128 and len(value.encode()) < 126:
        assert found == (key, value)
    else:
        assert found is None


def test_string_pairs_of_every_short_length_take_the_quick_path():
    for size in (1, 60, 123):
        assert string_pair(_kv_bytes("k" * size, "v" * size)) == ("k" * size, "v" * size)
    assert string_pair(_kv_bytes("k", "")) == ("k", "")
    assert string_pair(_kv_bytes("", "v")) is None  # no key field at all: parsed
    # a value holding a string and then a bool: the oneof's last field wins, a bool
    assert KeyValue.FromString(b"\x0a\x01k\x12\x05\x0a\x01a\x10\x01").value.bool_value
    assert string_pair(b"\x0a\x01k\x12\x05\x0a\x01a\x10\x01") is None
    assert string_pair(_kv_bytes("k", "v" * 130)) is None  # two-byte length: parsed
    assert string_pair(_kv_bytes("k", "é")[:-1] + b"\xff") is None  # invalid UTF-8: parsed
