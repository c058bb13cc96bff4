"""Request bytes → a validated OTLP export request, ready for the write-ahead log.

The ack path does only what is needed to answer truthfully: decompress within the size
limit, parse (protobuf with upb, or OTLP/JSON by `otlp_json`), and drop the items that can
never be stored (bad ids), reporting them as `partial_success`. Turning items into wide
events happens later, off the ack path (`flagscope.collector.convert`).
"""

from __future__ import annotations

import functools
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from google.protobuf.message import DecodeError, Message

from flagscope.collector.caps import NO_CAPS, AttributeCaps
from flagscope.collector.caps import apply as caps_apply
from flagscope.collector.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from flagscope.collector.otlp import JSON, MAX_TIME_NS, PROTOBUF, Signal, data_points
from flagscope.collector.otlp_json import JsonMessage, compile_message, encode_request
from flagscope.collector.otlp_json_fast import FAST_WRITERS

ENCODINGS = ("identity", "gzip", "deflate")
_CHUNK = 256 * 1024
# How many rejected items are described one by one in partial_success.error_message.
_MAX_DESCRIBED = 5


@dataclass(frozen=True)
class Prepared:
    """What the ack path stores and answers: the normalized protobuf payload and counts."""

    payload: bytes  # protobuf ExportXServiceRequest holding only valid items; b"" if none
    accepted: int
    rejected: int
    error_message: str


def media_type(content_type: str | None) -> str:
    """The content type without parameters, or 415 if it is not one OTLP defines."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind in (PROTOBUF, JSON):
        return kind
    shown = content_type or "none"
    raise UnsupportedMediaType(f"unsupported Content-Type {shown!r}; send {PROTOBUF} or {JSON}")


def check_encoding(encoding: str | None) -> str:
    name = (encoding or "identity").strip().lower()
    if name not in ENCODINGS:
        raise UnsupportedMediaType(
            f"unsupported Content-Encoding {encoding!r}; supported: gzip, deflate, identity"
        )
    return name


def decompress(
    body: bytes, encoding: str, limit: int, reserve: Callable[[int], None] | None = None
) -> bytes:
    """Inflate at most `limit` bytes; a bomb costs `limit` of memory, never its inflated size.
    `reserve(n)` is told of each inflated chunk before it is kept (the in-flight budget)."""
    if encoding == "identity":
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
        return body
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    size = 0
    data = body
    try:
        while True:
            chunk = inflater.decompress(data, min(_CHUNK, limit + 1 - size))
            if reserve is not None:
                reserve(len(chunk))
            size += len(chunk)
            parts.append(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body inflates beyond the limit of {limit} bytes")
            data = inflater.unconsumed_tail
            if inflater.eof or (not data and not chunk):
                break
        if not inflater.eof:
            raise BadRequest(f"{encoding} stream is truncated")
        if inflater.unused_data:
            raise BadRequest(f"unexpected bytes after the end of the {encoding} stream")
    except zlib.error as exc:
        raise BadRequest(f"corrupt {encoding} stream: {exc}") from exc
    return b"".join(parts)


def parse(signal: Signal, body: bytes, content_type: str) -> Message:
    """Parse a request body; BadRequest with a message a client developer can act on."""
    return _parse_wire(signal, body, content_type)[0]


def _parse_wire(signal: Signal, body: bytes, content_type: str) -> tuple[Message, bytes]:
    """The parsed request and the protobuf bytes it was parsed from (for JSON, those
    written from it: stored as they are unless an item is changed or dropped)."""
    wire = _json_wire(signal, body) if content_type == JSON else body
    try:
        return signal.request_type.FromString(wire), wire
    except DecodeError as exc:
        # the same limits (nesting depth, UTF-8) for JSON as for a protobuf body
        raise BadRequest(_describe_decode_error(signal, exc)) from exc


def _describe_decode_error(signal: Signal, exc: Exception) -> str:
    text = str(exc)
    name = signal.request_type.DESCRIPTOR.name
    if "UTF-8" in text:
        return f"invalid protobuf {name}: a string field holds invalid UTF-8"
    if "MaxDepth" in text:
        return f"invalid protobuf {name}: nesting deeper than the limit of 100 messages"
    return f"invalid protobuf {name}: {text.rsplit(': ', 1)[-1]}"


def _json_wire(signal: Signal, body: bytes) -> bytes:
    if not body.strip():
        return b""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise BadRequest("invalid OTLP/JSON: the body must be a JSON object")
    return encode_request(_json_table(signal), doc)


@functools.cache
def _json_table(signal: Signal) -> JsonMessage:
    return compile_message(signal.request_type.DESCRIPTOR, FAST_WRITERS)


def _id_problem(value: bytes, size: int, name: str, required: bool) -> str | None:
    if not value:
        return f"{name} is missing" if required else None
    if len(value) != size:
        return f"{name} has {len(value)} bytes, expected {size}"
    if not any(value):
        return f"{name} is all zeros"
    return None


_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)


def _span_problem(span: Message) -> str | None:
    trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
    if (  # the common case, checked without function calls (this runs for every span)
        len(trace_id) == 16
        and len(span_id) == 8
        and trace_id != _ZERO_TRACE
        and span_id != _ZERO_SPAN
        and (not parent or (len(parent) == 8 and parent != _ZERO_SPAN))
        and 0 < span.start_time_unix_nano <= MAX_TIME_NS
    ):
        return None
    return (
        _id_problem(trace_id, 16, "trace_id", True)
        or _id_problem(span_id, 8, "span_id", True)
        or _id_problem(parent, 8, "parent_span_id", False)
        or _time_problem(span.start_time_unix_nano, "start_time_unix_nano")
    )


def _time_problem(value: int, name: str) -> str | None:
    # A span is placed in time by its start: without one it would be stored in 1970 and
    # expired at once by retention, so it is refused where the client can see it.
    if value == 0:
        return f"{name} is missing"
    if value > MAX_TIME_NS:
        return f"{name} {value} is beyond the year 2262"
    return None


def _point_problem(point: Message) -> str | None:
    """A metric data point is placed in time by its `time_unix_nano` (required by the data
    model); an exemplar's ids, when set, must be ids."""
    problem = _time_problem(point.time_unix_nano, "time_unix_nano")
    if problem is None and point.start_time_unix_nano > MAX_TIME_NS:
        problem = f"start_time_unix_nano {point.start_time_unix_nano} is beyond the year 2262"
    for exemplar in getattr(point, "exemplars", ()) if problem is None else ():
        problem = _id_problem(exemplar.trace_id, 16, "exemplar trace_id", False) or _id_problem(
            exemplar.span_id, 8, "exemplar span_id", False
        )
        if problem is not None:
            break
    return problem


def _log_problem(record: Message) -> str | None:
    return _id_problem(record.trace_id, 16, "trace_id", False) or _id_problem(
        record.span_id, 8, "span_id", False
    )


def _stamp_log(record: Message, received_ns: int) -> bool:
    """Fill in a log record's missing or unstorable times; True if it changed.

    The OTLP log data model: `observed_time` is when the collection system saw the record
    (a receiver sets it when absent), and `time` is optional — readers use the observed
    time then. A time beyond what the lake can store counts as absent.
    """
    changed = False
    if not 0 < record.observed_time_unix_nano <= MAX_TIME_NS:
        record.observed_time_unix_nano = received_ns
        changed = True
    if record.time_unix_nano > MAX_TIME_NS:
        record.time_unix_nano = 0
        changed = True
    return changed


def prepare(
    signal: Signal,
    body: bytes,
    content_type: str,
    received_ns: int | None = None,
    caps: AttributeCaps = NO_CAPS,
) -> Prepared:
    """Parse and validate `body` (already decompressed); drop items that cannot be stored,
    give log records without a usable observed time the receive time, and apply the
    attribute caps if there are any."""
    request, wire = _parse_wire(signal, body, content_type)
    traces, metrics = signal.name == "traces", signal.name == "metrics"
    cut = caps_apply(request, signal, caps) if caps.on else None
    problem_of = _span_problem if traces else _point_problem if metrics else _log_problem
    received_ns = time.time_ns() if received_ns is None else received_ns
    accepted = rejected = 0
    stamped = False
    problems: list[str] = []
    for r_index, resource in enumerate(getattr(request, signal.resources)):
        for s_index, scope in enumerate(getattr(resource, signal.scopes)):
            # an item is a span or log record; for metrics, a data point of a metric, and a
            # metric without a name refuses all its points
            groups = (
                [
                    (
                        f" metric {m_index}",
                        data_points(m),
                        None if m.name else "the metric has no name",
                    )
                    for m_index, m in enumerate(scope.metrics)
                ]
                if metrics
                else [("", getattr(scope, signal.items), None)]
            )
            for where, items, every_item in groups:
                bad = []
                for i_index, item in enumerate(items):
                    problem = every_item or problem_of(item)
                    if problem is not None:
                        bad.append(i_index)
                        if len(problems) < _MAX_DESCRIBED:
                            problems.append(
                                f"resource {r_index} scope {s_index}{where} item {i_index}: "
                                + problem
                            )
                    elif not (traces or metrics) and _stamp_log(item, received_ns):
                        stamped = True
                for i_index in reversed(bad):
                    del items[i_index]
                accepted += len(items)
                rejected += len(bad)
            if metrics:  # a metric left without points stores nothing: drop it
                for m_index in reversed(range(len(scope.metrics))):
                    if not data_points(scope.metrics[m_index]):
                        del scope.metrics[m_index]
    messages = []
    if rejected:
        more = f"; and {rejected - len(problems)} more" if rejected > len(problems) else ""
        messages.append(f"rejected {rejected} {signal.item}: " + "; ".join(problems) + more)
    if cut:
        messages.append(cut.message(caps))
    message = "; ".join(messages)
    if not accepted:
        payload = b""
    elif rejected or stamped or cut:
        payload = request.SerializeToString()
    else:
        payload = wire
    return Prepared(payload, accepted, rejected, message)
