"""OTLP requests for receiver tests: builders for spans and logs, a plain HTTP client on a
fresh connection, and lake checks (what a request stored, or that it stored nothing)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.helpers import RunningCollector, query, wait_for_count

MiB = 1024 * 1024
PB = "application/x-protobuf"
JSON = "application/json"
TRACE_JSON_ID = "5b8efff798038103d269b633813fc60c"  # the id in the OTLP spec's examples
# google.rpc.Code the collector documents for each HTTP status (collector/errors.py)
RPC_CODE = {400: 3, 401: 16, 404: 12, 413: 8, 415: 3, 500: 13, 503: 14}
# RSS allowance on top of what a test expects the collector to hold: interpreter and


# -- requests ------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";", 1)[0].strip()


def post(
    srv: RunningCollector,
    path: str,
    body: bytes | None,
    content_type: str | None = PB,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    authorize: bool = True,
) -> Reply:
    """One request on a fresh connection; the collector's bearer token unless `authorize=False`."""
    sent: dict[str, str] = {}
    if content_type is not None:
        sent["Content-Type"] = content_type
    if authorize and srv.settings.auth_token:
        sent["Authorization"] = f"Bearer {srv.settings.auth_token}"
    sent.update(headers or {})
    conn = http.client.HTTPConnection("127.0.0.1", srv.collector.http_port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def post_until_ok(
    srv: RunningCollector, path: str, body: bytes, content_type: str = PB, timeout: float = 15.0
) -> Reply:
    """Retry on 503 as an OTLP exporter does (without honouring Retry-After, to stay fast)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = post(srv, path, body, content_type)
        if reply.status != 503 or time.monotonic() > deadline:
            return reply
        time.sleep(0.05)


def status_body(reply: Reply, content_type: str) -> status_pb2.Status:
    """The reply's `google.rpc.Status` body, required to be in `content_type`, with a message."""
    assert reply.content_type == content_type, (reply.status, reply.headers, reply.body[:200])
    if content_type == JSON:
        doc = json.loads(reply.body)
        assert isinstance(doc, dict) and set(doc) <= {"code", "message", "details"}, doc
        status = json_format.ParseDict(doc, status_pb2.Status())
    else:
        status = status_pb2.Status.FromString(reply.body)
    assert status.message, reply.body
    assert status.code == RPC_CODE[reply.status], (reply.status, status)
    return status


def assert_retry_after(reply: Reply) -> int:
    value = reply.headers.get("Retry-After")
    assert value is not None and value.isdigit(), reply.headers
    return int(value)


# -- payloads ------------------------------------------------------------------------------
def new_trace_id() -> bytes:
    return os.urandom(15) + b"\x01"  # random, and never all zeros


def new_span_id() -> bytes:
    return os.urandom(7) + b"\x01"


def kv(key: str, value: Any) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=any_value(value))


def any_value(value: Any) -> common_pb2.AnyValue:
    if isinstance(value, common_pb2.AnyValue):
        return value
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, bytes):
        return common_pb2.AnyValue(bytes_value=value)
    if isinstance(value, list):
        return common_pb2.AnyValue(
            array_value=common_pb2.ArrayValue(values=[any_value(v) for v in value])
        )
    if isinstance(value, dict):
        return common_pb2.AnyValue(
            kvlist_value=common_pb2.KeyValueList(values=[kv(k, v) for k, v in value.items()])
        )
    return common_pb2.AnyValue(string_value=value)


def make_span(
    trace_id: bytes | None = None,
    span_id: bytes | None = None,
    name: str = "op",
    attrs: dict[str, Any] | None = None,
    **fields: Any,
) -> trace_pb2.Span:
    start = fields.pop("start_time_unix_nano", time.time_ns())
    return trace_pb2.Span(
        trace_id=new_trace_id() if trace_id is None else trace_id,
        span_id=new_span_id() if span_id is None else span_id,
        name=name,
        kind=fields.pop("kind", trace_pb2.Span.SPAN_KIND_SERVER),
        start_time_unix_nano=start,
        end_time_unix_nano=fields.pop("end_time_unix_nano", start + 1_000_000),
        attributes=[kv(k, v) for k, v in (attrs or {}).items()],
        **fields,
    )


def traces(*spans: trace_pb2.Span) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(kv("service.name", "http-receiver-test"))
    scope = resource_spans.scope_spans.add()
    scope.scope.name = "tests.http"
    scope.spans.extend(spans)
    return request


def logs(*records: logs_pb2.LogRecord) -> logs_service_pb2.ExportLogsServiceRequest:
    request = logs_service_pb2.ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(kv("service.name", "http-receiver-test"))
    resource_logs.scope_logs.add().log_records.extend(records)
    return request


def one_span(trace_id: bytes | None = None) -> tuple[bytes, bytes]:
    """A valid 1-span protobuf request body and its trace id."""
    trace_id = trace_id or new_trace_id()
    return traces(make_span(trace_id)).SerializeToString(), trace_id


ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


def map_ids(node: Any, change: Any) -> None:
    """Apply `change` to every trace/span id string of a JSON document, in place (protobuf's
    JSON mapping writes them base64, OTLP/JSON hex)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ID_KEYS and isinstance(value, str):
                node[key] = change(value)
            else:
                map_ids(value, change)
    elif isinstance(node, list):
        for value in node:
            map_ids(value, change)


def base64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def hex_to_base64(value: str) -> str:
    return base64.b64encode(bytes.fromhex(value)).decode()


def otlp_json(message: Any, proto_names: bool = False, enum_numbers: bool = True) -> dict[str, Any]:
    """OTLP/JSON of a message: camelCase (or proto names), enums as integers (or names),
    ids as hex (not base64)."""
    doc = json_format.MessageToDict(
        message, preserving_proto_field_name=proto_names, use_integers_for_enums=enum_numbers
    )
    map_ids(doc, base64_to_hex)
    return doc


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def sized_request(size: int) -> tuple[bytes, bytes]:
    """A valid 1-span protobuf request of exactly `size` bytes, and its trace id."""
    trace_id = new_trace_id()
    for name_len in range(1, 6):

        def build(n: int, name_len: int = name_len) -> bytes:
            span = make_span(trace_id, name="x" * name_len, attrs={"pad": "p" * n})
            return traces(span).SerializeToString()

        guess = size - len(build(0))
        for n in range(max(0, guess - 16), guess + 1):
            body = build(n)
            if len(body) == size:
                return body, trace_id
    raise AssertionError(f"cannot build a request of exactly {size} bytes")


@cache
def gzip_of_zeros(size: int) -> bytes:
    """A valid gzip stream inflating to `size` zero bytes (size a multiple of 16 MiB)."""
    chunk = 16 * MiB
    assert size % chunk == 0
    zeros = bytes(chunk)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    # A full flush resets the window, so every chunk compresses to the same bytes.
    block = deflater.compress(zeros) + deflater.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size // chunk):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return (
        header
        + block * (size // chunk)
        + deflater.flush()
        + struct.pack("<II", crc, size & 0xFFFFFFFF)
    )


# -- the lake ------------------------------------------------------------------------------
def rows(srv: RunningCollector, where: str = "true", params: list[Any] | None = None) -> int:
    return query(srv.lake, f"select count(*) from events_raw where {where}", params)[0][0]


def wait_rows(srv: RunningCollector, where: str, params: list[Any], expected: int) -> None:
    sql = f"select count(*) from events_raw where {where}"
    found = wait_for_count(srv.lake, sql, expected, params=params)
    # What the lake writers left, should this ever fail: the WAL and the lake files.
    wal = sorted(p.name for p in srv.settings.wal_path.rglob("*") if p.is_file())
    files = sorted(p.name for p in srv.lake.rglob("*") if p.is_file())
    assert found == expected, (where, params, found, {"wal": wal, "lake": files})


def stored(srv: RunningCollector, trace_id: bytes | str, columns: str = "*") -> list[tuple]:
    hex_id = trace_id if isinstance(trace_id, str) else trace_id.hex()
    return query(
        srv.lake,
        f"select {columns} from events_raw where trace_id = ? order by span_id, signal",
        [hex_id],
    )


def stored_twice(
    srv: RunningCollector, trace_id: bytes, bodies: tuple[bytes, bytes]
) -> list[tuple]:
    """POST both JSON bodies of a one-span trace; the two rows they stored."""
    for body in bodies:
        reply = post(srv, "/v1/traces", body, JSON)
        assert reply.status == 200, reply.body
    wait_rows(srv, "trace_id = ?", [trace_id.hex()], 2)
    return stored(srv, trace_id)


def send_marker(srv: RunningCollector) -> None:
    """A valid request gets 200 and is visible in the lake (so everything acked before is)."""
    body, trace_id = one_span()
    reply = post(srv, "/v1/traces", body)
    assert reply.status == 200, (reply.status, reply.body)
    wait_rows(srv, "trace_id = ?", [trace_id.hex()], 1)


@contextlib.contextmanager
def nothing_stored(srv: RunningCollector, *ids: bytes, others: int = 0) -> Iterator[set[str]]:
    """Asserts that the requests made inside store nothing and that the server keeps serving.

    `ids` (trace or span ids, more may be added to the yielded set) must be absent after;
    `others` rows come from valid requests the block makes on purpose.
    """
    watched = {i.hex() for i in ids}
    send_marker(srv)
    before = rows(srv)
    yield watched
    send_marker(srv)
    assert rows(srv) == before + others + 1, "a rejected request stored rows"
    for hex_id in watched:
        found = rows(srv, "trace_id = ? or span_id = ?", [hex_id, hex_id])
        assert found == 0, f"id {hex_id} of a rejected request was stored"
