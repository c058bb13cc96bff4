"""OTLP message types per signal, and the encodings of responses and error bodies.

Responses use the request's content type (OTLP/HTTP spec): protobuf or JSON. Error bodies
are `google.rpc.Status`; back-pressure adds a `google.rpc.RetryInfo` detail for gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
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
    name: str  # "traces" | "logs" | "metrics"
    item: str  # "spans" | "log records" | "data points", for messages
    request_type: type[Message]
    response_type: type[Message]
    rejected_field: str  # field of partial_success
    grpc_service: str
    # the request's nesting: resources → scopes → items (for metrics an item is a Metric,
    # whose data points are what is counted)
    resources: str
    scopes: str
    items: str


TRACES = Signal(
    "traces",
    "spans",
    trace_service_pb2.ExportTraceServiceRequest,
    trace_service_pb2.ExportTraceServiceResponse,
    "rejected_spans",
    "opentelemetry.proto.collector.trace.v1.TraceService",
    "resource_spans",
    "scope_spans",
    "spans",
)
LOGS = Signal(
    "logs",
    "log records",
    logs_service_pb2.ExportLogsServiceRequest,
    logs_service_pb2.ExportLogsServiceResponse,
    "rejected_log_records",
    "opentelemetry.proto.collector.logs.v1.LogsService",
    "resource_logs",
    "scope_logs",
    "log_records",
)
METRICS = Signal(
    "metrics",
    "data points",
    metrics_service_pb2.ExportMetricsServiceRequest,
    metrics_service_pb2.ExportMetricsServiceResponse,
    "rejected_data_points",
    "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "resource_metrics",
    "scope_metrics",
    "metrics",
)
SIGNALS = {"traces": TRACES, "logs": LOGS, "metrics": METRICS}
SIGNAL_CODES = {"traces": 1, "logs": 2, "metrics": 3}  # as stored in WAL records
SIGNAL_BY_CODE = {code: SIGNALS[name] for name, code in SIGNAL_CODES.items()}


# A Metric's data is one of these (its `data` oneof), each holding `data_points`.
METRIC_TYPES = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


def metric_type(metric: Message) -> str | None:
    """Which of METRIC_TYPES `metric` holds, None for a metric without data."""
    kind = metric.WhichOneof("data")
    return kind if kind in METRIC_TYPES else None


def data_points(metric: Message) -> Any:
    """The metric's repeated data points (empty for a metric without data)."""
    kind = metric_type(metric)
    return () if kind is None else getattr(metric, kind).data_points


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
