"""OTLP/JSON decoding without protobuf's JSON parser (issue 10 point 1).

`collector/otlp_json.py` writes the wire format straight from the parsed JSON. Its oracle
is protobuf's own `json_format`: arbitrary requests (every field of every message type,
random values at the edges of their ranges) are printed by `MessageToDict` in each way
OTLP/JSON allows (camelCase or proto names, enums as names or numbers) with hex ids, and
must decode to the very message; mutated requests must be refused exactly when
`json_format.ParseDict` refuses them, and otherwise decode to what it decodes.
"""

from __future__ import annotations

import copy
import json
import math
import time
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flagscope.collector.decode import parse
from flagscope.collector.errors import BadRequest
from flagscope.collector.otlp import JSON, LOGS, METRICS, TRACES
from flagscope.collector.otlp_json import JsonMessage, compile_message, encode_request
from flagscope.collector.otlp_json_fast import FAST_WRITERS
from tests.otlp_requests import ID_KEYS, hex_to_base64, map_ids, otlp_json

T = FieldDescriptor
INTEGERS = {
    T.TYPE_INT32: (-(2**31), 2**31 - 1),
    T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    T.TYPE_UINT32: (0, 2**32 - 1),
    T.TYPE_FIXED32: (0, 2**32 - 1),
    T.TYPE_INT64: (-(2**63), 2**63 - 1),
    T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    T.TYPE_UINT64: (0, 2**64 - 1),
    T.TYPE_FIXED64: (0, 2**64 - 1),
}
checks = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],  # generating big messages on a busy machine
)


def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([lo, hi, 0, 1, -1 if lo else 2]), st.integers(lo, hi))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type in INTEGERS:
        return _integers(*INTEGERS[field.type])
    if field.type == T.TYPE_DOUBLE:
        special = st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 5e-324])
        return st.one_of(special, st.floats(allow_nan=False))
    if field.type == T.TYPE_BOOL:
        return st.booleans()
    if field.type == T.TYPE_STRING:
        return st.text(max_size=8)
    if field.type == T.TYPE_BYTES:
        size = {"trace_id": 16, "span_id": 8, "parent_span_id": 8}.get(field.name)
        return st.binary(min_size=size or 0, max_size=size or 12)
    if field.type == T.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values] + [77])
    raise AssertionError(field.type)


def messages(descriptor: Descriptor, cls: type[Message], depth: int = 0) -> st.SearchStrategy:
    """Any message of `descriptor`: each field present or not, at most one member of a
    oneof, messages nested to a few levels (AnyValue in AnyValue included)."""

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        chosen = {o.name: draw(st.sampled_from([None, *o.fields])) for o in descriptor.oneofs}
        for field in descriptor.fields:
            oneof = field.containing_oneof
            if oneof is not None and chosen[oneof.name] is not field:
                continue
            if not draw(st.booleans()):
                continue
            if field.type == T.TYPE_MESSAGE:
                if depth >= 4:
                    continue
                child_cls = type(getattr(cls(), field.name)) if not field.is_repeated else None
                sub = _child_class(cls, field) if child_cls is None else child_cls
                strategy = messages(field.message_type, sub, depth + 1)
                if field.is_repeated:
                    getattr(message, field.name).extend(draw(st.lists(strategy, max_size=2)))
                else:
                    getattr(message, field.name).CopyFrom(draw(strategy))
            elif field.is_repeated:
                getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=3)))
            else:
                setattr(message, field.name, draw(_scalar(field)))
        return message

    return build()


def _child_class(cls: type[Message], field: FieldDescriptor) -> type[Message]:
    return type(getattr(cls(), field.name).add())


def oracle(signal, doc: dict[str, Any]) -> Message:
    """protobuf's json_format on the same document (ids turned back to base64 for it)."""
    doc = copy.deepcopy(doc)
    map_ids(doc, hex_to_base64)
    message = signal.request_type()
    json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    return message


def wire(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)


@pytest.mark.parametrize("signal", [TRACES, LOGS, METRICS], ids=["traces", "logs", "metrics"])
@checks
@given(data=st.data(), proto_names=st.booleans(), enum_numbers=st.booleans())
def test_any_request_decodes_to_the_message_it_was_printed_from(
    signal, data, proto_names, enum_numbers
):
    cls = signal.request_type
    message = data.draw(messages(cls.DESCRIPTOR, cls))
    body = orjson.dumps(otlp_json(message, proto_names, enum_numbers))
    assert wire(parse(signal, body, JSON)) == wire(message)


# Replacements for one value of a valid request: each JSON type, and numbers at the edges
# of the integer ranges.
MUTATIONS = [None, True, False, 0, -1, 1.5, 2.0, 2**31, 2**32, 2**63, 2**64, "", "x", "12",
             "NaN", [], [1], {}, {"stringValue": "s"}]  # fmt: skip


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    children = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, value in children:
        if key not in ID_KEYS:
            out += _leaves(value, (*path, key))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize("signal", [TRACES, LOGS, METRICS], ids=["traces", "logs", "metrics"])
@checks
@given(data=st.data(), proto_names=st.booleans())
def test_a_mutated_request_is_refused_exactly_when_json_format_refuses_it(
    signal, data, proto_names
):
    cls = signal.request_type
    doc = otlp_json(data.draw(messages(cls.DESCRIPTOR, cls)), proto_names, False)
    leaves = _leaves(doc)
    if not leaves:
        return
    path = data.draw(st.sampled_from(leaves))
    value = data.draw(st.sampled_from(MUTATIONS))
    mutated = _replace(doc, path, value)
    try:
        expected = wire(oracle(signal, mutated))
    except (json_format.ParseError, ValueError, TypeError):
        expected = None
    try:
        got, why = wire(parse(signal, json.dumps(mutated).encode(), JSON)), ""  # orjson: ≤ 64 bits
    except BadRequest as exc:
        got, why = None, str(exc)
    if got is None and expected is not None:
        # Stricter than json_format on purpose: it reads any iterable as a message (a
        # string's characters as unknown field names), true as the enum number 1 or as the
        # double 1.0, an enum number beyond int32 modulo 2³² (2³² + 3 as 3), and a fraction
        # such as 1.5 as an enum number.
        stricter = (
            "expected an object" in why
            or (
                isinstance(value, bool) and ("is not an integer" in why or "is not a number" in why)
            )
            or (isinstance(value, float) and not value.is_integer() and "not an integer" in why)
            or (type(value) is int and value >= 2**32 and "out of range" in why)
        )
        assert stricter, f"{path} := {mutated}: {why}"
    else:
        assert got == expected, f"{path} := {mutated}"


REFUSED = [
    ({"resourceSpans": {}}, "resourceSpans: expected an array"),
    ({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}, "traceId: 'zz' is not a hex"),
    ({"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "AAECAwQFBgc="}]}]}]}, "not base64"),
    ({"resourceSpans": [{"scopeSpans": [{"spans": [{"kind": 1.5}]}]}]}, "kind: 1.5 is not an integer"),
    ({"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "-1"}]}]}]}, "out of range"),
    ({"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": {"intValue": "1", "stringValue": "s"}}]}}]},
     "more than one value of the oneof 'value'"),
    ({"resourceSpans": [{"scopeSpans": [None]}]}, "scopeSpans[0]: null is not allowed"),
    ({"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 7}]}]}]}, "name: 7 is not a string"),
    ({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "01", "trace_id": "02"}]}]}]},
     "'traceId' is given twice, also as 'trace_id'"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_a_broken_value_is_refused_with_where_it_is(doc, message):
    with pytest.raises(BadRequest) as caught:
        parse(TRACES, orjson.dumps(doc), JSON)
    assert message in str(caught.value)
    assert str(caught.value).startswith("invalid OTLP/JSON: resourceSpans")


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"stringValue": "leaf"}
    for _ in range(depth):
        value = {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
    return {"resourceSpans": [{"resource": {"attributes": [{"key": "a", "value": value}]}}]}


def test_nesting_is_limited_like_protobuf_and_refused_without_a_recursion_error():
    parse(TRACES, orjson.dumps(_nested(30)), JSON)  # 30 kvlists: 95 messages deep
    with pytest.raises(BadRequest, match="nesting deeper than the limit of 100"):
        parse(TRACES, orjson.dumps(_nested(40)), JSON)  # 124 deep


def test_unknown_fields_and_unknown_enum_names_are_ignored_as_otlp_requires():
    doc = {
        "resourceSpans": [
            {
                "futureField": {"x": [1, 2]},
                "scopeSpans": [
                    {"spans": [{"name": "a", "kind": "SPAN_KIND_TELEPATHIC", "new": 1}]}
                ],
            }
        ]
    }
    request = parse(TRACES, orjson.dumps(doc), JSON)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert (span.name, span.kind) == ("a", 0)


def _span_doc(**span: Any) -> bytes:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


HOSTILE = {
    # a digit string that ends badly took a backtracking number pattern seconds to refuse
    "backtracking number": _span_doc(attributes=[{"key": "k", "value": {"doubleValue": "1" * 16000 + "x"}}]),
    # int() refuses more than 4,300 digits with a ValueError of its own
    "long integer": _span_doc(startTimeUnixNano="1" * 5000),
    "long enum number": _span_doc(kind="1" * 5000),
    # b64decode refuses non-ASCII with a ValueError, not binascii.Error
    "non-ASCII base64": _span_doc(attributes=[{"key": "k", "value": {"bytesValue": "é"}}]),
}  # fmt: skip


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_values_are_refused_at_once_with_a_short_message(body):
    started = time.monotonic()
    with pytest.raises(BadRequest) as caught:
        parse(TRACES, body, JSON)
    assert time.monotonic() - started < 0.5
    assert len(str(caught.value)) < 300  # the value is not echoed whole


def test_an_ignored_member_nested_past_what_orjson_writes_is_not_an_error():
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    body = _span_doc(name="n", attributes=[{"key": "a", "value": {"intValue": 1}, "x": deep}])
    span = parse(TRACES, body, JSON).resource_spans[0].scope_spans[0].spans[0]
    assert span.attributes[0].value.int_value == 1


# -- the fast writers (collector/otlp_json_fast.py) against the generic ones ---------------
# One table each for the whole module: the fast one's memo fills up across examples, so a
# KeyValue met before must come back as the value it is, not as one that looks like it.
GENERIC = compile_message(TRACES.request_type.DESCRIPTOR)
FAST = compile_message(TRACES.request_type.DESCRIPTOR, FAST_WRITERS)


def outcome(table: JsonMessage, doc: Any) -> tuple[str, Any]:
    """What a table makes of a request: its message (fields in a canonical order: the
    writers may write them in any), or the refusal's message."""
    try:
        data = encode_request(table, doc)
    except BadRequest as exc:
        return "refused", str(exc)
    try:
        return "message", wire(TRACES.request_type.FromString(data))
    except DecodeError:  # what upb refuses after either (UTF-8, depth)
        return "undecodable", None


# Mostly the values senders write, then those at the edges of what is accepted: the
# inline writers must hand each of those to the generic one, or agree with it.
ODD_VALUES = [None, True, False, 0, 1, -1, 127, 128, 1.0, 1.5, -0.0, 2**63 - 1, 2**63, 2**64,
              "", "0", "12", "-5", "+5", " 5", "5 ", "1_0", "١٢", "０", "²", "9" * 19, "9" * 20,
              "1" * 21, "NaN", "SPAN_KIND_SERVER", "0a 0b", "0A0B", "0a0", "abc", "é", "\ud800",
              [], [1], {}, {"stringValue": "s"}]  # fmt: skip
ODD = st.sampled_from(ODD_VALUES)
HEX_IDS = st.one_of(st.binary(min_size=8, max_size=8), st.binary(min_size=16, max_size=16))
HEX_TEXT = st.one_of(
    HEX_IDS.map(bytes.hex),
    HEX_IDS.map(lambda b: b.hex().upper()),
    st.binary(max_size=3).map(bytes.hex),
)
TIMES = st.one_of(st.integers(0, 2**64 - 1).map(str), st.integers(0, 2**64 - 1))
TEXT = st.text(max_size=6)
SCALAR_VALUES = st.one_of(
    st.builds(lambda v: {"stringValue": v}, TEXT),
    st.builds(lambda v: {"intValue": v}, st.one_of(st.integers(-(2**63), 2**63 - 1).map(str), st.integers(-(2**63), 2**63 - 1))),
    st.builds(lambda v: {"boolValue": v}, st.booleans()),
    st.builds(lambda v: {"doubleValue": v}, st.floats(allow_nan=False, allow_infinity=False)),
    st.builds(lambda v: {"bytesValue": v}, st.sampled_from(["", "AAE=", "AAE"])),
    st.builds(lambda v: {"arrayValue": {"values": [v]}}, st.builds(lambda s: {"stringValue": s}, TEXT)),
    st.builds(lambda m, v: {m: v}, st.sampled_from(["stringValue", "intValue", "boolValue", "doubleValue", "futureValue"]), ODD),
    st.just({"stringValue": "a", "intValue": "1"}),
)  # fmt: skip
# few keys, so that the same KeyValue turns up again with its value in another form
KEY_VALUES = st.one_of(
    st.builds(lambda k, v: {"key": k, "value": v}, st.sampled_from(["k", "http.route", "", "é"]), SCALAR_VALUES),
    st.builds(lambda k, v: {"key": k, "value": v, "futureField": 1}, st.sampled_from(["k"]), SCALAR_VALUES),
    st.builds(lambda v: {"key": "k", "value": {"intValue": v}}, ODD),
    st.builds(lambda k: {"key": k}, ODD),
    ODD,
)  # fmt: skip


def _fields(usual: dict[str, Any], odd_names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object with some of `usual` (name → strategy), now and then one value
    replaced by an odd one, or a field given by its proto name."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        doc = {k: draw(v) for k, v in usual.items() if draw(st.integers(0, 3))}
        if draw(st.integers(0, 2)) == 0:
            doc[draw(st.sampled_from([*usual, *odd_names]))] = draw(ODD)
        return doc

    return build()


EVENTS = _fields(
    {"timeUnixNano": TIMES, "name": TEXT, "attributes": st.lists(KEY_VALUES, max_size=4)},
    ["time_unix_nano", "droppedAttributesCount", "future"],
)
SPANS = _fields(
    {
        "traceId": HEX_TEXT,
        "spanId": HEX_TEXT,
        "parentSpanId": HEX_TEXT,
        "name": TEXT,
        "kind": st.integers(0, 5),
        "startTimeUnixNano": TIMES,
        "endTimeUnixNano": TIMES,
        "attributes": st.lists(KEY_VALUES, max_size=5),
        "events": st.lists(st.one_of(EVENTS, ODD), max_size=2),
        "status": st.builds(lambda c, m: {"code": c, "message": m}, st.integers(0, 2), TEXT),
    },
    ["trace_id", "span_id", "start_time_unix_nano", "links", "flags", "traceState", "future"],
)


@checks
@given(spans=st.lists(st.one_of(SPANS, ODD), min_size=1, max_size=4),
       resource=st.lists(KEY_VALUES, max_size=3))  # fmt: skip
def test_the_fast_writers_accept_and_refuse_exactly_what_the_generic_ones_do(spans, resource):
    doc = {
        "resourceSpans": [
            {"resource": {"attributes": resource}, "scopeSpans": [{"spans": spans}]},
        ]
    }
    expected = outcome(GENERIC, doc)
    assert outcome(FAST, doc) == expected
    assert outcome(FAST, doc) == expected  # again, every KeyValue now memoized


def test_a_memoized_attribute_is_told_apart_from_one_that_looks_like_it():
    values = [{"intValue": 1}, {"intValue": "1"}, {"doubleValue": 1.0}, {"boolValue": True},
              {"stringValue": "1"}, {"intValue": True}]  # fmt: skip
    attributes = [{"key": "k", "value": v} for v in values[:-1]]
    table = compile_message(TRACES.request_type.DESCRIPTOR, FAST_WRITERS)
    for _ in range(2):  # the second time from the memo
        request = parse_with(table, {"attributes": attributes, "name": "n"})
        got = [(a.value.WhichOneof("value"), a.value) for a in request.attributes]
        kinds = ["int_value", "int_value", "double_value", "bool_value", "string_value"]
        assert [kind for kind, _ in got] == kinds
        assert [v.int_value for _, v in got[:2]] == [1, 1]
    with pytest.raises(
        BadRequest, match=r"attributes\[0\]\.value\.intValue: True is not an integer"
    ):
        parse_with(table, {"attributes": [{"key": "k", "value": values[-1]}]})


def parse_with(table: JsonMessage, span: dict[str, Any]) -> Any:
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
    request = TRACES.request_type.FromString(encode_request(table, doc))
    return request.resource_spans[0].scope_spans[0].spans[0]


def _base_span() -> dict[str, Any]:
    attributes = [{"key": "k", "value": {"stringValue": "v"}}]
    return {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "parentSpanId": "eee19b7ec3c1b173",
        "name": "GET /",
        "kind": 2,
        "startTimeUnixNano": "1544712660000000000",
        "endTimeUnixNano": "1544712661000000000",
        "attributes": copy.deepcopy(attributes),
        "events": [{"timeUnixNano": "1544712660300000000", "name": "e", "attributes": attributes}],
        "status": {"code": 1},
    }


# Every value the inline writers read, each replaced by each odd value.
INLINE_PATHS = [(key,) for key in _base_span() if key not in ("attributes", "events")] + [
    ("events", 0, "timeUnixNano"), ("events", 0, "name"), ("events", 0),
    ("attributes", 0), ("attributes", 0, "key"), ("attributes", 0, "value"),
    *[("attributes", 0, "value", m) for m in ("stringValue", "intValue", "boolValue", "doubleValue")],
]  # fmt: skip


def test_each_inline_value_at_the_edges_is_judged_as_the_generic_writers_judge_it():
    differ = []
    for path in INLINE_PATHS:
        for value in ODD_VALUES:
            span = _base_span()
            if path[-1] in ("stringValue", "intValue", "boolValue", "doubleValue"):
                span = _replace(span, path[:-1], {path[-1]: value})  # the member alone
            else:
                span = _replace(span, path, value)
            doc = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
            expected = outcome(GENERIC, doc)
            for _ in range(2):  # the second time from the memo
                if outcome(FAST, doc) != expected:
                    differ.append((path, value, outcome(FAST, doc), expected))
    assert not differ, differ[:5]
