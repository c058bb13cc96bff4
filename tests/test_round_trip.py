"""OTLP-RECEIVER item 55, the round-trip property: for any accepted request, decode → store
→ read back → re-encode equals the canonical re-encoding of the input — attribute types
and empty values included. Hypothesis builds attribute values of every AnyValue type (NaN
and infinities, bytes, nested arrays and kvlists, kvlists that look like the stored
wrappers, empty values); the real decoder and converter store them in a lake file, DuckDB
reads them back, and `stored_value` must give the AnyValue that was sent.

Before issue 10 point 14 a NaN came back as the string "NaN" and bytes as a base64 string.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1 import common_pb2

from flagscope.collector.config import Settings
from flagscope.collector.convert import WRAPPERS, Converter, stored_value
from flagscope.collector.decode import prepare
from flagscope.collector.lake.read import fetch
from flagscope.collector.lake.write import write_table
from flagscope.collector.otlp import PROTOBUF, SIGNAL_CODES, TRACES
from flagscope.collector.tagging import Tagger
from tests.otlp_requests import any_value, make_span, new_span_id, new_trace_id, traces

keys = st.one_of(st.text(max_size=6), st.sampled_from(sorted(WRAPPERS)))
scalars = st.one_of(
    st.none(),  # an AnyValue with no value set
    st.text(max_size=10),
    st.sampled_from(["NaN", "Infinity", ""]),  # strings a lossy store would confuse
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=2)),
    max_leaves=8,
)
CONVERTER = Converter(Tagger.from_settings(Settings()))


def canonical(value: common_pb2.AnyValue) -> bytes:
    """The canonical encoding: every NaN is the one quiet NaN (IEEE payloads are not
    data), and deterministic serialization."""
    if value.WhichOneof("value") == "double_value" and math.isnan(value.double_value):
        value = common_pb2.AnyValue(double_value=math.nan)
    elif value.WhichOneof("value") == "array_value":
        items = [common_pb2.AnyValue.FromString(canonical(v)) for v in value.array_value.values]
        value = common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=items))
    elif value.WhichOneof("value") == "kvlist_value":
        pairs = [
            common_pb2.KeyValue(
                key=kv.key, value=common_pb2.AnyValue.FromString(canonical(kv.value))
            )
            for kv in value.kvlist_value.values
        ]
        value = common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(values=pairs))
    return value.SerializeToString(deterministic=True)


def stored_attributes(tmp: Path, attributes: dict[str, Any]) -> dict[str, Any]:
    trace_id, span_id = new_trace_id(), new_span_id()
    request = traces(make_span(trace_id, span_id, attrs=attributes, start_time_unix_nano=1))
    prepared = prepare(TRACES, request.SerializeToString(), PROTOBUF)
    assert prepared.accepted == 1, prepared.error_message
    write_table(tmp, CONVERTER.table([(SIGNAL_CODES["traces"], prepared.payload)]), "rt-1-000")
    _, rows = fetch(tmp, "SELECT attributes FROM events WHERE trace_id = ?", [trace_id.hex()])
    return orjson.loads(rows[0][0])


@given(st.dictionaries(st.text(min_size=1, max_size=6), values, min_size=1, max_size=4))
@settings(max_examples=60, deadline=None, database=None)
def test_every_attribute_value_comes_back_as_sent(tmp_path_factory, attributes):
    tmp = tmp_path_factory.mktemp("rt")
    back = stored_attributes(tmp, attributes)
    assert list(back) == list(attributes)
    for key, sent in attributes.items():
        assert canonical(any_value(stored_value(back[key]))) == canonical(any_value(sent)), key


def test_odd_values_are_stored_as_otlp_json_objects_not_strings(tmp_path):
    sent = {
        "nan": math.nan,
        "text": "NaN",
        "raw": b"\x00\xff",
        "b64": "AP8=",
        "tricky": {"bytesValue": "AP8="},
    }
    back = stored_attributes(tmp_path, sent)
    assert back == {
        "nan": {"doubleValue": "NaN"},
        "text": "NaN",
        "raw": {"bytesValue": "AP8="},
        "b64": "AP8=",
        "tricky": {"kvlistValue": {"bytesValue": "AP8="}},  # a kvlist, not bytes
    }
    assert stored_value(back["raw"]) == b"\x00\xff" and math.isnan(stored_value(back["nan"]))
    assert stored_value(back["tricky"]) == {"bytesValue": "AP8="}
