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
limits (nesting depth, UTF-8) as to a protobuf body. These writers define what is accepted;
`otlp_json_fast` can stand in for some of them (`compile_message(special=...)`): spans and
attributes written inline and memoized, falling back to these for anything unusual.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from flagscope.collector.errors import BadRequest

# The depth upb refuses beyond (protobuf's default recursion limit), counted the same way.
MAX_DEPTH = 100
_HEX_ID_FIELDS = frozenset({"trace_id", "span_id", "parent_span_id"})
_INTEGER = re.compile(r"-?[0-9]+")
# Unambiguous (no two ways to match a digit), so matching is linear in the length.
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_MAX_NUMBER_TEXT = 400  # characters: a decimal double needs far fewer
_MAX_INTEGER_TEXT = 21  # "-9223372036854775808", "18446744073709551615"
_SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

Encode = Callable[[Any, int], bytes]  # (JSON value, nesting depth) → wire payload


def varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return SMALL[n]
    if 0 < n < 0x4000:  # the length of most messages: two bytes, without the loop
        return bytes((n & 0x7F | 0x80, n >> 7))
    n &= 0xFFFF_FFFF_FFFF_FFFF  # negative int32/int64: ten bytes, two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


SMALL = [bytes((i,)) for i in range(0x80)]  # varints of 0…127


def _show(value: Any) -> str:
    """A value as an error message shows it: its repr, cut to 64 characters."""
    text = repr(value)
    return text if len(text) <= 64 else text[:60] + " …" + text[-1]


class Invalid(ValueError):
    """A value that breaks the OTLP/JSON rules; `where` is filled in on the way out (the
    path is built only for an error, not for every field)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.where: list[str] = []

    def at(self, key: str) -> Invalid:
        self.where.append(f".{key}")
        return self


# -- scalar values ------------------------------------------------------------------------
def _integer(value: Any, lo: int, hi: int) -> int:
    kind = type(value)
    n: int
    if kind is int:
        n = value
    elif (kind is str and len(value) <= _MAX_INTEGER_TEXT and _INTEGER.fullmatch(value)) or (
        kind is float and value.is_integer()
    ):
        n = int(value)
    else:
        raise Invalid(f"{_show(value)} is not an integer")
    if not lo <= n <= hi:
        raise Invalid(f"{n} is out of range {lo}…{hi}")
    return n


def _double(value: Any) -> float:
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if kind is str:
        special = _SPECIAL_DOUBLES.get(value)
        if special is not None:
            return special
        if len(value) <= _MAX_NUMBER_TEXT and _NUMBER.fullmatch(value):
            return float(value)
    raise Invalid(f"{_show(value)} is not a number")


def _varint_encoder(lo: int, hi: int) -> Encode:
    def encode(value: Any, depth: int) -> bytes:
        return varint(_integer(value, lo, hi))

    return encode


def _zigzag_encoder(lo: int, hi: int) -> Encode:
    def encode(value: Any, depth: int) -> bytes:
        n = _integer(value, lo, hi)
        return varint((n << 1) ^ (n >> 63))

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
            raise Invalid(f"{_show(value)} is out of range for a float") from exc

    return encode


def _bool(value: Any, depth: int) -> bytes:
    if type(value) is not bool:
        raise Invalid(f"{_show(value)} is not true or false")
    return SMALL[value]


def _string(value: Any, depth: int) -> bytes:
    if type(value) is not str:
        raise Invalid(f"{_show(value)} is not a string")
    try:
        data = value.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate escape
        raise Invalid("the string is not valid Unicode") from exc
    return varint(len(data)) + data


def _base64(value: Any, depth: int) -> bytes:
    if type(value) is not str:
        raise Invalid(f"{_show(value)} is not a base64 string")
    text = value.rstrip("=")
    altchars = b"-_" if "-" in text or "_" in text else None
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars, validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: a non-ASCII character
        raise Invalid(f"{_show(value)} is not base64") from exc
    return varint(len(data)) + data


def hex_id(value: Any) -> bytes | None:
    """The bytes of a hex string, or None. `fromhex` skips whitespace: a string it read
    all of is twice as long as its bytes."""
    try:
        data = bytes.fromhex(value)
    except (TypeError, ValueError):  # not a string; not hex, or not ASCII
        return None
    return data if 2 * len(data) == len(value) else None


def _hex(value: Any, depth: int) -> bytes:
    data = hex_id(value)
    if data is None:
        raise Invalid(
            f"{_show(value)} is not a hex string (OTLP/JSON encodes trace and span ids as hex, "
            "not base64)",
        )
    return varint(len(data)) + data


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
        if type(value) is str and not _INTEGER.fullmatch(value):  # a name, not a number
            number = numbers.get(value)
            return b"" if number is None else varint(number)  # unknown names are ignored
        return varint(_integer(value, *_I32))

    return encode


# -- messages -----------------------------------------------------------------------------
# A field's writer appends its tag and payload to the message's list of parts (nothing for a
# proto3 scalar at its default); a broken value raises Invalid.
Writer = Callable[[list[bytes], Any, int], None]


class JsonMessage:
    """A message type's field writers, by JSON name and by proto name."""

    def __init__(self, descriptor: Descriptor) -> None:
        self.descriptor = descriptor
        self.full_name = descriptor.full_name
        self.writers: dict[str, Writer] = {}
        self.json_names = frozenset(field.json_name for field in descriptor.fields)
        self.oneofs: dict[str, str] = {}  # member key → its oneof's name
        self.aliases: dict[str, str] = {}  # proto name → JSON name, where they differ


# Makes the writer of a repeated field of one message type from the field's tag and the
# element type's table (whose writers may still be being filled in: read them when called).
Special = Callable[[bytes, JsonMessage], Writer]


def compile_message(
    descriptor: Descriptor, special: Mapping[str, Special] | None = None
) -> JsonMessage:
    """The encoding table of `descriptor` and every message type it contains; a repeated
    field whose element type is named in `special` is written by the writer made there."""
    return _compile(descriptor, {}, special or {})


def _compile(
    descriptor: Descriptor, done: dict[str, JsonMessage], special: Mapping[str, Special]
) -> JsonMessage:
    if descriptor.full_name in done:
        return done[descriptor.full_name]
    table = done[descriptor.full_name] = JsonMessage(descriptor)
    for field in descriptor.fields:
        write = _writer(field, done, special)
        if field.name != field.json_name:
            table.aliases[field.name] = field.json_name
        for key in (field.json_name, field.name):
            table.writers[key] = write
            if field.containing_oneof is not None:
                table.oneofs[key] = field.containing_oneof.name
    return table


def _wire_type(field: FieldDescriptor) -> int:
    if field.type in (_T.TYPE_MESSAGE, _T.TYPE_STRING, _T.TYPE_BYTES):
        return 2
    return 0 if field.type == _T.TYPE_ENUM else _SCALARS[field.type][0]


def tag_of(field: FieldDescriptor) -> bytes:
    """The tag a field is written with."""
    packed = field.is_repeated and field.is_packed
    return varint(field.number << 3 | (2 if packed else _wire_type(field)))


def _writer(
    field: FieldDescriptor, done: dict[str, JsonMessage], special: Mapping[str, Special]
) -> Writer:
    tag = tag_of(field)
    if field.type == _T.TYPE_MESSAGE:
        sub = _compile(field.message_type, done, special)
        if not field.is_repeated:
            return _message_writer(tag, sub)
        make = special.get(sub.full_name)
        return _messages_writer(tag, sub) if make is None else make(tag, sub)
    encode = _scalar_encoder(field)
    if field.is_repeated and field.is_packed:
        return _packed_writer(tag, encode)
    if field.is_repeated:
        return _repeated_writer(tag, encode)
    if field.type == _T.TYPE_STRING and not field.has_presence:
        return _string_writer(tag)
    return _scalar_writer(tag, encode, field.has_presence)


def _scalar_encoder(field: FieldDescriptor) -> Encode:
    if field.type == _T.TYPE_STRING:
        return _string
    if field.type == _T.TYPE_BYTES:
        return _hex if field.name in _HEX_ID_FIELDS else _base64
    if field.type == _T.TYPE_ENUM:
        return _enum_encoder(field)
    return _SCALARS[field.type][1]


def _message_writer(tag: bytes, sub: JsonMessage) -> Writer:
    def write(out: list[bytes], item: Any, depth: int) -> None:
        data = encode_fields(sub, item, depth + 1)
        out += (tag, varint(len(data)), data)

    return write


def _messages_writer(tag: bytes, sub: JsonMessage) -> Writer:
    def write(out: list[bytes], items: Any, depth: int) -> None:
        for i, item in enumerate(array(items)):
            data = element(sub, item, i, depth)
            out += (tag, varint(len(data)), data)

    return write


def element(sub: JsonMessage, item: Any, index: int, depth: int) -> bytes:
    """One message of an array, without its tag and length."""
    try:
        if item is None:
            raise Invalid("null is not allowed in an array")
        return encode_fields(sub, item, depth + 1)
    except Invalid as exc:
        exc.where.append(f"[{index}]")
        raise


def _packed_writer(tag: bytes, encode: Encode) -> Writer:
    def write(out: list[bytes], items: Any, depth: int) -> None:
        data = b"".join(_each(encode, array(items), depth))
        if data:
            out += (tag, varint(len(data)), data)

    return write


def _repeated_writer(tag: bytes, encode: Encode) -> Writer:
    def write(out: list[bytes], items: Any, depth: int) -> None:
        for data in _each(encode, array(items), depth):
            out += (tag, data)

    return write


def _each(encode: Encode, items: list[Any], depth: int) -> Iterator[bytes]:
    for i, item in enumerate(items):
        try:
            if item is None:
                raise Invalid("null is not allowed in an array")
            yield encode(item, depth)
        except Invalid as exc:
            exc.where.append(f"[{i}]")
            raise


def _string_writer(tag: bytes) -> Writer:
    def write(out: list[bytes], item: Any, depth: int) -> None:
        if type(item) is not str:
            raise Invalid(f"{_show(item)} is not a string")
        if item:  # proto3: "" stays off the wire
            out += (tag, _string(item, depth))

    return write


def _scalar_writer(tag: bytes, encode: Encode, presence: bool) -> Writer:
    def write(out: list[bytes], item: Any, depth: int) -> None:
        data = encode(item, depth)
        # proto3 leaves a scalar at its default off the wire, unless it has presence (a
        # oneof member, an `optional` field)
        if presence or _nonzero(data):
            out += (tag, data)

    return write


def array(items: Any) -> list[Any]:
    if type(items) is not list:
        raise Invalid(f"expected an array, got {type(items).__name__}")
    return items


def encode_request(table: JsonMessage, doc: Any) -> bytes:
    """The wire bytes of the request `table` describes, from its parsed JSON `doc`;
    BadRequest naming where the first broken value is (`resourceSpans[0].scopeSpans…`)."""
    try:
        return encode_fields(table, doc, 1)
    except Invalid as exc:
        where = "".join(reversed(exc.where)).lstrip(".") or "the request"
        raise BadRequest(f"invalid OTLP/JSON: {where}: {exc}") from None


def encode_fields(table: JsonMessage, value: Any, depth: int) -> bytes:
    """The wire bytes of the message `table` describes, from its JSON object `value`."""
    if type(value) is not dict:
        raise Invalid(f"expected an object for {table.full_name}, got {type(value).__name__}")
    if depth > MAX_DEPTH:
        raise BadRequest(
            f"invalid OTLP/JSON: nesting deeper than the limit of {MAX_DEPTH} messages"
        )
    if table.oneofs:
        _check_oneofs(table.oneofs, value)
    if table.aliases and not table.aliases.keys().isdisjoint(value):
        _check_aliases(table.aliases, value)
    out: list[bytes] = []
    writers = table.writers
    for key, item in value.items():
        write = writers.get(key)
        if write is None or item is None:  # unknown keys are ignored; null is absent
            continue
        try:
            write(out, item, depth)
        except Invalid as exc:
            exc.where.append(f".{key}")
            raise
    return b"".join(out)


def _check_aliases(aliases: dict[str, str], value: dict[str, Any]) -> None:
    """One field under both its names (`traceId` and `trace_id`) is refused, as protobuf's
    JSON parser does: which one would count is not for the receiver to guess."""
    for name, json_name in aliases.items():
        if value.get(name) is not None and value.get(json_name) is not None:
            raise Invalid(f"{json_name!r} is given twice, also as {name!r}").at(name)


def _check_oneofs(oneofs: dict[str, str], value: dict[str, Any]) -> None:
    seen: set[str] = set()
    for key, item in value.items():
        name = oneofs.get(key)
        if name is not None and item is not None:
            if name in seen:
                raise Invalid(f"more than one value of the oneof {name!r}").at(key)
            seen.add(name)


def _nonzero(data: bytes) -> bool:
    """Whether an encoded scalar differs from its default (0, "", b"", false, +0.0): all
    of those, and only those, encode as zero bytes."""
    return bool(data.strip(b"\x00"))
