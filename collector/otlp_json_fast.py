"""Faster OTLP/JSON writers for what nearly every request is made of: spans, their events
and attribute lists (issue 10 point 1).

`otlp_json` writes a message field by field, two or three Python calls a field: more
than `orjson` takes to parse the span. These writers stand in for it on the hot path: a
span's or an event's ids, name, kind and times are written inline, and an attribute list
is memoized and looked up with no Python call per attribute. The memo is keyed by
`orjson.dumps` text, exact for what `orjson.loads` makes (it never yields NaN or
infinity, which `dumps` would write as null).

`otlp_json` stays the definition of what is accepted. Whatever is not of the usual shape
(a proto field name, a negative or fractional number, a lone surrogate, a broken value,
anything not handled here) makes the element be written by the generic writer instead,
which accepts it as it always has or refuses it with its usual message; the writers
here only ever give the message it would give (tests/test_otlp_json.py checks both ways).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from google.protobuf.descriptor import Descriptor

from flagscope.collector.otlp_json import (
    MAX_DEPTH,
    SMALL,
    JsonMessage,
    Special,
    Writer,
    array,
    element,
    hex_id,
    tag_of,
    varint,
)

_CACHE_LIMIT = 1 << 14  # distinct KeyValues kept per field (cleared when full)
_CACHED_TEXT = 512  # bytes of JSON: a larger KeyValue is encoded each time
_U64_MAX = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1
_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack
_fromhex = bytes.fromhex


class _Unusual(Exception):
    """A value the inline writers leave to the generic ones."""


def _tags(descriptor: Descriptor) -> dict[str, bytes]:
    """The tag of each field, by JSON name."""
    return {field.json_name: tag_of(field) for field in descriptor.fields}


# -- scalars, inline ----------------------------------------------------------------------
def _fixed64(value: Any) -> bytes:
    """An unsigned 64-bit integer as OTLP/JSON writes times (a decimal string, or a
    number); b"" for 0, which proto3 leaves off the wire."""
    kind = type(value)
    if kind is str and len(value) <= 20 and value.isdigit() and value.isascii():
        n = int(value)  # isdigit alone lets other scripts' digits through
    elif kind is int:
        n = value
    elif value is None:  # absent
        return b""
    else:
        raise _Unusual
    if not 0 <= n <= _U64_MAX:
        raise _Unusual
    return _pack_fixed64(n) if n else b""


def _text(value: Any) -> bytes:
    """A string's UTF-8; b"" for an absent one."""
    if type(value) is not str:
        if value is None:
            return b""
        raise _Unusual
    return value.encode()  # a lone surrogate raises UnicodeEncodeError, a ValueError


def _id(value: Any) -> bytes:
    """A hex id's bytes; b"" for an absent one."""
    if value is None:
        return b""
    data = hex_id(value)
    if data is None:
        raise _Unusual
    return data


# -- attributes ---------------------------------------------------------------------------
def _any_value_encoders(descriptor: Descriptor) -> dict[str, Callable[[Any], bytes | None]]:
    """AnyValue's scalar members, each as a function of the JSON value giving its
    encoding, or None where the generic writer should decide. A oneof member is written
    even at its default."""
    tag = _tags(descriptor)
    string_tag, bool_tag = tag["stringValue"], tag["boolValue"]
    int_tag, double_tag = tag["intValue"], tag["doubleValue"]

    def string(value: Any) -> bytes | None:
        if type(value) is not str:
            return None
        try:
            data = value.encode()
        except UnicodeEncodeError:
            return None
        return string_tag + varint(len(data)) + data

    def boolean(value: Any) -> bytes | None:
        return bool_tag + SMALL[value] if type(value) is bool else None

    def integer(value: Any) -> bytes | None:
        kind = type(value)
        if kind is str and len(value) <= 20 and value.isdigit() and value.isascii():
            n = int(value)
        elif kind is int:
            n = value
        else:
            return None
        # a negative one is ten bytes of two's complement: left to the generic writer
        return int_tag + varint(n) if 0 <= n <= _I64_MAX else None

    def double(value: Any) -> bytes | None:
        return double_tag + _pack_double(value) if type(value) is float else None

    return {"stringValue": string, "boolValue": boolean, "intValue": integer, "doubleValue": double}


def key_values(tag: bytes, sub: JsonMessage) -> Writer:
    """A KeyValue list's writer. Each distinct small KeyValue is encoded once per field:
    most attributes repeat from span to span. The key is its compact JSON text (orjson,
    in C), and a list is looked up with `map`, in C: no Python call per attribute."""
    cache: dict[bytes | None, bytes] = {}
    lookup = cache.get
    tags = _tags(sub.descriptor)
    key_tag, value_tag = tags["key"], tags["value"]
    scalars = _any_value_encoders(sub.descriptor.fields_by_name["value"].message_type)

    def scalar_key_value(item: Any) -> bytes | None:
        """`{"key": "k", "value": {"stringValue": "v"}}` and the like, or None."""
        if type(item) is not dict or len(item) != 2:
            return None
        key, value = item.get("key"), item.get("value")
        if type(key) is not str or type(value) is not dict or len(value) != 1:
            return None
        [(member, scalar)] = value.items()
        encode = scalars.get(member)
        any_value = None if encode is None else encode(scalar)
        if any_value is None:
            return None
        try:
            name = key.encode()
        except UnicodeEncodeError:
            return None
        head = key_tag + varint(len(name)) + name if name else b""  # proto3: "" is absent
        return head + value_tag + varint(len(any_value)) + any_value

    def encode(
        found: list[bytes | None], texts: list[bytes | None], items: list[Any], depth: int
    ) -> None:
        for i, data in enumerate(found):
            if data is not None:
                continue
            item = items[i]
            body = scalar_key_value(item)
            if body is None:
                body = element(sub, item, i, depth)
            data = found[i] = tag + varint(len(body)) + body
            text = texts[i]
            if text is not None and len(text) <= _CACHED_TEXT:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[text] = data

    def write(out: list[bytes], items: Any, depth: int) -> None:
        items = array(items)
        if depth + 2 > MAX_DEPTH:  # a KeyValue and its AnyValue would be too deep
            for i, item in enumerate(items):
                body = element(sub, item, i, depth)
                out += (tag, varint(len(body)), body)
            return
        texts = _texts(items)
        found: list[bytes | None] = list(map(lookup, texts))
        if None in found:
            encode(found, texts, items, depth)
        out += found  # type: ignore[arg-type]  # every None was filled in

    return write


def _texts(items: list[Any]) -> list[bytes | None]:
    try:
        return list(map(orjson.dumps, items))
    except TypeError:  # one nested deeper than orjson writes, or an integer beyond 64 bits
        return [_one_text(item) for item in items]


def _one_text(item: Any) -> bytes | None:
    try:
        return orjson.dumps(item)
    except TypeError:
        return None  # encoded, not cached


# -- spans and events ---------------------------------------------------------------------
def _elements(tag: bytes, sub: JsonMessage, fast: Any) -> Writer:
    """The writer of a repeated field whose elements `fast` writes when they are of the
    usual shape, and the generic writer otherwise."""

    def write(out: list[bytes], items: Any, depth: int) -> None:
        for i, item in enumerate(array(items)):
            try:
                data = fast(item, depth + 1)
            except (_Unusual, ValueError, TypeError):  # ValueError: the generic one's Invalid too
                data = element(sub, item, i, depth)
            out += (tag, varint(len(data)), data)

    return write


def _rest(
    out: list[bytes], sub: JsonMessage, value: dict[str, Any], names: Any, depth: int
) -> None:
    """The fields of `value` not in `names`, by their writers; _Unusual if one is a proto
    name or unknown (for the generic writer to judge: it checks aliases, ignores unknowns)."""
    if not value.keys() <= sub.json_names:
        raise _Unusual
    writers = sub.writers
    for key in value.keys() - names:
        item = value[key]
        if item is not None:
            writers[key](out, item, depth)


def spans(tag: bytes, sub: JsonMessage) -> Writer:
    """Span's writer: ids, name, kind and times inline, attributes and events by their
    (fast) writers, and the rest (status, links…) by theirs."""
    t = _tags(sub.descriptor)
    trace_tag, span_tag, parent_tag = t["traceId"], t["spanId"], t["parentSpanId"]
    name_tag, kind_tag = t["name"], t["kind"]
    start_tag, end_tag = t["startTimeUnixNano"], t["endTimeUnixNano"]
    usual = frozenset(("traceId", "spanId", "parentSpanId", "name", "kind", "attributes"))
    usual |= {"startTimeUnixNano", "endTimeUnixNano", "events"}
    writers = sub.writers  # filled in by now: Span does not contain itself

    def span(value: Any, depth: int) -> bytes:
        if type(value) is not dict or depth > MAX_DEPTH:
            raise _Unusual
        get = value.get
        out: list[bytes] = []
        # ids inline: fromhex refuses a non-string and non-hex (TypeError, ValueError)
        if (item := get("traceId")) is not None and (data := _fromhex(item)):
            if 2 * len(data) != len(item):
                raise _Unusual  # whitespace, which fromhex skips
            out += (trace_tag, varint(len(data)), data)
        if (item := get("spanId")) is not None and (data := _fromhex(item)):
            if 2 * len(data) != len(item):
                raise _Unusual
            out += (span_tag, varint(len(data)), data)
        if data := _id(get("parentSpanId")):
            out += (parent_tag, varint(len(data)), data)
        if data := _text(get("name")):
            out += (name_tag, varint(len(data)), data)
        kind = get("kind")
        if kind is not None:
            if type(kind) is not int or not 0 <= kind < 0x80:
                raise _Unusual  # a name, out of range, or not an integer
            if kind:
                out += (kind_tag, SMALL[kind])
        if data := _fixed64(get("startTimeUnixNano")):
            out += (start_tag, data)
        if data := _fixed64(get("endTimeUnixNano")):
            out += (end_tag, data)
        if (items := get("attributes")) is not None:
            writers["attributes"](out, items, depth)
        if (items := get("events")) is not None:
            writers["events"](out, items, depth)
        if not value.keys() <= usual:
            _rest(out, sub, value, usual, depth)
        return b"".join(out)

    return _elements(tag, sub, span)


def events(tag: bytes, sub: JsonMessage) -> Writer:
    """Span.Event's writer: time and name inline, attributes by their (fast) writer."""
    t = _tags(sub.descriptor)
    time_tag, name_tag = t["timeUnixNano"], t["name"]
    usual = frozenset(("timeUnixNano", "name", "attributes"))
    writers = sub.writers

    def event(value: Any, depth: int) -> bytes:
        if type(value) is not dict or depth > MAX_DEPTH:
            raise _Unusual
        get = value.get
        out: list[bytes] = []
        if data := _fixed64(get("timeUnixNano")):
            out += (time_tag, data)
        if data := _text(get("name")):
            out += (name_tag, varint(len(data)), data)
        if (items := get("attributes")) is not None:
            writers["attributes"](out, items, depth)
        if not value.keys() <= usual:
            _rest(out, sub, value, usual, depth)
        return b"".join(out)

    return _elements(tag, sub, event)


FAST_WRITERS: Mapping[str, Special] = {
    "opentelemetry.proto.common.v1.KeyValue": key_values,
    "opentelemetry.proto.trace.v1.Span": spans,
    "opentelemetry.proto.trace.v1.Span.Event": events,
}
