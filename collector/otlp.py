"""OTLP message types per signal, and the encodings of responses and error bodies.

Responses use the request's content type (OTLP/HTTP spec): protobuf or JSON. Error bodies
are `google.rpc.Status`; back-pressure adds a `google.rpc.RetryInfo` detail for gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# Error messages are capped so a response never approaches the 4 MiB gRPC default
# receive limit of clients, however many items were rejected (OTLP-RECEIVER item 30).
MAX_MESSAGE_CHARS = 16_384
# OTLP times are unsigned 64-bit nanoseconds; the lake's timestamps are signed (Arrow,
# Parquet, every engine), so a time from the year 2262 on cannot be stored as a time.
MAX_TIME_NS = 2**63 - 1


@dataclass(frozen=True)
class Signal:
    name: str  # "traces" | "logs"
    item: str  # "spans" | "log records", for messages
    request_type: type[Message]
    response_type: type[Message]
    rejected_field: str  # field of partial_success
    grpc_service: str


TRACES = Signal(
    "traces",
    "spans",
    trace_service_pb2.ExportTraceServiceRequest,
    trace_service_pb2.ExportTraceServiceResponse,
    "rejected_spans",
    "opentelemetry.proto.collector.trace.v1.TraceService",
)
LOGS = Signal(
    "logs",
    "log records",
    logs_service_pb2.ExportLogsServiceRequest,
    logs_service_pb2.ExportLogsServiceResponse,
    "rejected_log_records",
    "opentelemetry.proto.collector.logs.v1.LogsService",
)
SIGNALS = {"traces": TRACES, "logs": LOGS}
SIGNAL_CODES = {"traces": 1, "logs": 2}  # as stored in WAL records
SIGNAL_BY_CODE = {code: SIGNALS[name] for name, code in SIGNAL_CODES.items()}


def trim(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 20] + " … (message trimmed)"


def response_message(signal: Signal, rejected: int, error_message: str) -> Message:
    response = signal.response_type()
    if rejected or error_message:
        setattr(response.partial_success, signal.rejected_field, rejected)
        response.partial_success.error_message = trim(error_message)
    return response


def encode_message(message: Message, content_type: str) -> bytes:
    if content_type == JSON:
        return orjson.dumps(json_format.MessageToDict(message))
    encoded: bytes = message.SerializeToString()  # protobuf's Message is untyped
    return encoded


def status_message(code: int, message: str, retry_after_s: int | None = None) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=trim(message))
    if retry_after_s is not None:
        info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after_s))
        status.details.add().Pack(info)
    return status
