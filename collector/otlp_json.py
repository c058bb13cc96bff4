"""OTLP/JSON → protobuf wire bytes, without protobuf's generic JSON parser.

`json_format.ParseDict` is reflective Python: ~1 ms a span, most of an OTLP/JSON
request's cost (issue 10 point 1). The OTLP/JSON rules are few (OTLP 1.x, "JSON Protobuf
Encoding"), so this module compiles each message type once into a table of field
encoders and writes the wire format straight from `orjson`'s dicts:

- keys in lowerCamelCase, or the proto field name; unknown keys are ignored;
- `traceId`, `spanId`, `parentSpanId` (any message) are hex, every other bytes field
  base64 (standard or URL-safe alphabet, padding optional);
- enums as integers or their names (an unknown name is ignored, as protobuf does);
- 64-bit integers as JSON numbers or decimal strings; doubles as numbers or the strings
  "NaN", "Infinity", "-Infinity";
- `null` anywhere means absent; two members of one oneof is an error.

The caller parses the bytes with the generated protobuf type, which applies the same
limits (nesting depth, UTF-8) as to a protobuf body. A KeyValue whose value is one scalar
(most attributes, repeating from span to span) is encoded once and cached.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from flagscope.collector.errors import BadRequest

# The depth upb refuses beyond (protobuf's default recursion limit), counted the same way.
MAX_DEPTH = 100
_HEX_ID_FIELDS = frozenset({"trace_id", "span_id", "parent_span_id"})
_HEX = re.compile(r"[0-9a-fA-F]*")
_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_CACHE_LIMIT = 1 << 16  # distinct KeyValues kept (cleared when full)
_CACHED_TEXT = 512  # bytes of JSON: a larger KeyValue is encoded each time

Encode = Callable[[Any, int], bytes]  # (JSON value, nesting depth) → wire payload


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _SMALL[n]
    n &= 0xFFFF_FFFF_FFFF_FFFF  # negative int32/int64: ten bytes, two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


class _Invalid(ValueError):
    """A value that breaks the OTLP/JSON rules; `where` is filled in on the way out (the
    path is built only for an error, not for every field)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.where: list[str] = []


# -- scalar values ------------------------------------------------------------------------
def _integer(value: Any, lo: int, hi: int) -> int:
    kind = type(value)
    n: int
    if kind is int:
        n = value
    elif (kind is str and _INTEGER.fullmatch(value)) or (kind is float and value.is_integer()):
        n = int(value)
    else:
        raise _Invalid(f"{value!r} is not an integer")
    if not lo <= n <= hi:
        raise _Invalid(f"{n} is out of range {lo}…{hi}")
    return n


def _double(value: Any) -> float:
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if kind is str:
        special = _SPECIAL_DOUBLES.get(value)
        if special is not None:
            return special
        if _NUMBER.fullmatch(value):
            return float(value)
    raise _Invalid(f"{value!r} is not a number")


def _varint_encoder(lo: int, hi: int) -> Encode:
    def encode(value: Any, depth: int) -> bytes:
        return _varint(_integer(value, lo, hi))

    return encode


def _zigzag_encoder(lo: int, hi: int) -> Encode:
    def encode(value: Any, depth: int) -> bytes:
        n = _integer(value, lo, hi)
        return _varint((n << 1) ^ (n >> 63))

    return encode


def _fixed_encoder(fmt: str, lo: int, hi: int) -> Encode:
    pack = struct.Struct(fmt).pack

    def encode(value: Any, depth: int) -> bytes:
        return pack(_integer(value, lo, hi))

    return encode


def _float_encoder(fmt: str) -> Encode:
    pack = struct.Struct(fmt).pack

    def encode(value: Any, depth: int) -> bytes:
        number = _double(value)
        try:
            return pack(number)
        except OverflowError as exc:  # a double beyond a float's range
            raise _Invalid(f"{value!r} is out of range for a float") from exc

    return encode


def _bool(value: Any, depth: int) -> bytes:
    if type(value) is not bool:
        raise _Invalid(f"{value!r} is not true or false")
    return _SMALL[value]


def _string(value: Any, depth: int) -> bytes:
    if type(value) is not str:
        raise _Invalid(f"{value!r} is not a string")
    try:
        data = value.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate escape
        raise _Invalid("the string is not valid Unicode") from exc
    return _varint(len(data)) + data


def _base64(value: Any, depth: int) -> bytes:
    if type(value) is not str:
        raise _Invalid(f"{value!r} is not a base64 string")
    text = value.rstrip("=")
    altchars = b"-_" if "-" in text or "_" in text else None
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars, validate=True)
    except binascii.Error as exc:
        raise _Invalid(f"{value!r} is not base64") from exc
    return _varint(len(data)) + data


def _hex(value: Any, depth: int) -> bytes:
    if type(value) is not str or len(value) % 2 or not _HEX.fullmatch(value):
        raise _Invalid(
            f"{value!r} is not a hex string (OTLP/JSON encodes trace and span ids as hex, "
            "not base64)",
        )
    data = bytes.fromhex(value)
    return _varint(len(data)) + data


_I32, _I64 = (-(1 << 31), (1 << 31) - 1), (-(1 << 63), (1 << 63) - 1)
_U32, _U64 = (0, (1 << 32) - 1), (0, (1 << 64) - 1)
_T = FieldDescriptor
_SCALARS: dict[int, tuple[int, Encode]] = {  # field type → (wire type, encoder)
    _T.TYPE_INT32: (0, _varint_encoder(*_I32)),
    _T.TYPE_INT64: (0, _varint_encoder(*_I64)),
    _T.TYPE_UINT32: (0, _varint_encoder(*_U32)),
    _T.TYPE_UINT64: (0, _varint_encoder(*_U64)),
    _T.TYPE_SINT32: (0, _zigzag_encoder(*_I32)),
    _T.TYPE_SINT64: (0, _zigzag_encoder(*_I64)),
    _T.TYPE_BOOL: (0, _bool),
    _T.TYPE_FIXED32: (5, _fixed_encoder("<I", *_U32)),
    _T.TYPE_SFIXED32: (5, _fixed_encoder("<i", *_I32)),
    _T.TYPE_FLOAT: (5, _float_encoder("<f")),
    _T.TYPE_FIXED64: (1, _fixed_encoder("<Q", *_U64)),
    _T.TYPE_SFIXED64: (1, _fixed_encoder("<q", *_I64)),
    _T.TYPE_DOUBLE: (1, _float_encoder("<d")),
}


def _enum_encoder(field: FieldDescriptor) -> Encode:
    numbers = {v.name: v.number for v in field.enum_type.values}

    def encode(value: Any, depth: int) -> bytes:
        if type(value) is str and not _INTEGER.fullmatch(value):
            number = numbers.get(value)
            return b"" if number is None else _varint(number)  # unknown names are ignored
        return _varint(_integer(value, *_I32))

    return encode


# -- messages -----------------------------------------------------------------------------
class _Field:
    __slots__ = ("encode", "key_value", "message", "oneof", "packed", "presence", "repeated", "tag")

    def __init__(self, field: FieldDescriptor, message: JsonMessage | None, encode: Encode) -> None:
        self.repeated = field.is_repeated
        self.presence = not self.repeated and field.has_presence  # written even when default
        wire = 2 if message is not None or field.type in (_T.TYPE_STRING, _T.TYPE_BYTES) else None
        if wire is None and field.enum_type is not None:
            wire = 0
        if wire is None:
            wire = _SCALARS[field.type][0]
        self.packed = self.repeated and field.is_packed
        self.tag = _varint(field.number << 3 | (2 if self.packed else wire))
        self.encode = encode
        self.message = message
        self.oneof = field.containing_oneof.name if field.containing_oneof else None
        self.key_value = message is not None and message.full_name.endswith(".KeyValue")


class JsonMessage:
    """A message type's fields, by JSON name and proto name."""

    def __init__(self, descriptor: Descriptor) -> None:
        self.full_name = descriptor.full_name
        self.fields: dict[str, _Field] = {}


def compile_message(descriptor: Descriptor) -> JsonMessage:
    """The encoding table of `descriptor` and every message type it contains."""
    return _compile(descriptor, {})


def _compile(descriptor: Descriptor, done: dict[str, JsonMessage]) -> JsonMessage:
    if descriptor.full_name in done:
        return done[descriptor.full_name]
    table = done[descriptor.full_name] = JsonMessage(descriptor)
    for field in descriptor.fields:
        message = None
        if field.type == _T.TYPE_MESSAGE:
            message = _compile(field.message_type, done)
            encode = _message_encoder(message)
        elif field.type == _T.TYPE_STRING:
            encode = _string
        elif field.type == _T.TYPE_BYTES:
            encode = _hex if field.name in _HEX_ID_FIELDS else _base64
        elif field.type == _T.TYPE_ENUM:
            encode = _enum_encoder(field)
        else:
            encode = _SCALARS[field.type][1]
        entry = _Field(field, message, encode)
        table.fields[field.json_name] = table.fields[field.name] = entry
    return table


def _message_encoder(table: JsonMessage) -> Encode:
    def encode(value: Any, depth: int) -> bytes:
        data = encode_fields(table, value, depth + 1)
        return _varint(len(data)) + data

    return encode


_kv_cache: dict[bytes, bytes] = {}


def _key_values(field: _Field, items: list[Any], depth: int) -> Iterator[bytes]:
    """KeyValue elements with their length prefix, each distinct small one encoded once:
    its compact JSON text (orjson, in C) is the cache key."""
    encode, cache, dumps = field.encode, _kv_cache, orjson.dumps
    for i, element in enumerate(items):
        text = dumps(element)
        data = cache.get(text)
        if data is None:
            try:
                if element is None:
                    raise _Invalid("null is not allowed in an array")
                data = encode(element, depth)
            except _Invalid as exc:
                exc.where.append(f"[{i}]")
                raise
            if len(text) <= _CACHED_TEXT:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[text] = data
        yield data


def encode_request(table: JsonMessage, doc: Any) -> bytes:
    """The wire bytes of the request `table` describes, from its parsed JSON `doc`;
    BadRequest naming where the first broken value is (`resourceSpans[0].scopeSpans…`)."""
    try:
        return encode_fields(table, doc, 1)
    except _Invalid as exc:
        where = "".join(reversed(exc.where)).lstrip(".") or "the request"
        raise BadRequest(f"invalid OTLP/JSON: {where}: {exc}") from None


def encode_fields(table: JsonMessage, value: Any, depth: int) -> bytes:
    """The wire bytes of the message `table` describes, from its JSON object `value`."""
    if type(value) is not dict:
        raise _Invalid(f"expected an object for {table.full_name}, got {type(value).__name__}")
    if depth > MAX_DEPTH:
        raise BadRequest(
            f"invalid OTLP/JSON: nesting deeper than the limit of {MAX_DEPTH} messages"
        )
    out: list[bytes] = []
    oneofs: set[str] = set()
    fields = table.fields
    for key, item in value.items():
        field = fields.get(key)
        if field is None or item is None:
            continue
        try:
            if field.oneof is not None:
                if field.oneof in oneofs:
                    raise _Invalid(f"more than one value of the oneof {field.oneof!r}")
                oneofs.add(field.oneof)
            if not field.repeated:
                data = field.encode(item, depth)
                # proto3 leaves a scalar at its default off the wire, unless the field has
                # presence (a message, a oneof member, an `optional` scalar)
                if field.presence or _nonzero(data):
                    out.append(field.tag)
                    out.append(data)
            elif type(item) is not list:
                raise _Invalid(f"expected an array, got {type(item).__name__}")
            elif field.packed:
                data = b"".join(_elements(field, item, depth))
                if data:
                    out += (field.tag, _varint(len(data)), data)
            else:
                elements = _key_values if field.key_value else _elements
                for data in elements(field, item, depth):
                    out.append(field.tag)
                    out.append(data)
        except _Invalid as exc:
            exc.where.append(f".{key}")
            raise
    return b"".join(out)


def _elements(field: _Field, items: list[Any], depth: int) -> Iterator[bytes]:
    encode = field.encode
    for i, element in enumerate(items):
        try:
            if element is None:
                raise _Invalid("null is not allowed in an array")
            yield encode(element, depth)
        except _Invalid as exc:
            exc.where.append(f"[{i}]")
            raise


def _nonzero(data: bytes) -> bool:
    """Whether an encoded scalar differs from its default (0, "", b"", false, +0.0): all
    of those, and only those, encode as zero bytes."""
    return bool(data.strip(b"\x00"))
