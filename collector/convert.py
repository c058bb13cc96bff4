"""OTLP export requests → wide events (one row per span or log record) as an Arrow table.

This is the hot loop of ingest (DESIGN "Performance": the conversion, not the parse, is
the budget), so it is written plainly for speed: column lists filled in one pass, resource
and scope work done once per group, attributes converted once and reused for tagging.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable
from typing import Any

import orjson
import pyarrow as pa

from collector.otlp import SIGNAL_BY_CODE, TRACES
from collector.tagging import FLAG_EVENT_NAMES, Tagger, evaluation

SPAN_KIND_SERVER = 2
STATUS_ERROR = 2
SEVERITY_ERROR = 17  # OTLP SeverityNumber ERROR..ERROR4 = 17..20, FATAL = 21..24

_ts = pa.timestamp("ns")
SCHEMA = pa.schema(
    [
        ("time", _ts),
        ("end_time", _ts),
        ("observed_time", _ts),
        ("signal", pa.string()),
        ("event_id", pa.string()),
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("parent_span_id", pa.string()),
        ("trace_state", pa.string()),
        ("service_name", pa.string()),
        ("scope_name", pa.string()),
        ("scope_version", pa.string()),
        ("name", pa.string()),
        ("kind", pa.int8()),
        ("duration_ms", pa.float64()),
        ("status_code", pa.int8()),
        ("status_message", pa.string()),
        ("is_error", pa.bool_()),
        ("http_method", pa.string()),
        ("http_route", pa.string()),
        ("http_status_code", pa.int32()),
        ("user_id", pa.string()),
        ("flags", pa.map_(pa.string(), pa.string())),
        ("is_test", pa.bool_()),
        ("test_reason", pa.string()),
        ("severity_number", pa.int8()),
        ("severity_text", pa.string()),
        ("body", pa.string()),
        ("attributes", pa.string()),
        ("resource_attributes", pa.string()),
        ("span_events", pa.string()),
        ("span_links", pa.string()),
        ("dropped_attributes_count", pa.int32()),
    ]
)
COLUMNS = SCHEMA.names


# -- AnyValue → JSON-ready Python values -------------------------------------------------
# Non-finite doubles become the strings OTLP/JSON uses ("NaN", "Infinity", "-Infinity"),
# since JSON has no literal for them; bytes become base64 as in OTLP/JSON.
def _double(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def any_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "double_value":
        return _double(v.double_value)
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    return None


def attributes(kvs: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _hex(value: bytes) -> str | None:
    return value.hex() if value else None


def _http_status(attrs: dict[str, Any]) -> int | None:
    code = attrs.get("http.response.status_code", attrs.get("http.status_code"))
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    if isinstance(code, str) and code.isdigit():
        return int(code)
    return None


class Converter:
    def __init__(self, tagger: Tagger) -> None:
        self.tagger = tagger

    def table(self, records: Iterable[tuple[int, bytes]]) -> pa.Table:
        """WAL records (signal code, protobuf payload) → one table of wide events."""
        cols: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        for code, payload in records:
            signal = SIGNAL_BY_CODE[code]
            request = signal.request_type.FromString(payload)
            if signal is TRACES:
                self._spans(request, cols)
            else:
                self._logs(request, cols)
        return pa.Table.from_pydict(cols, schema=SCHEMA)

    # -- spans ----------------------------------------------------------------------
    def _spans(self, request: Any, cols: dict[str, list[Any]]) -> None:
        tagger = self.tagger
        for rs in request.resource_spans:
            resource = attributes(rs.resource.attributes)
            resource_json = _json(resource)
            service = resource.get("service.name")
            for ss in rs.scope_spans:
                scope_name = ss.scope.name or None
                scope_version = ss.scope.version or None
                for span in ss.spans:
                    self._span(span, resource, resource_json, service, scope_name, scope_version, cols, tagger)

    @staticmethod
    def _span(span, resource, resource_json, service, scope_name, scope_version, cols, tagger) -> None:  # noqa: ANN001, PLR0913
        attrs = attributes(span.attributes)
        flags: dict[str, str] = {}
        tagger.attribute_flags(attrs, flags)
        events_json = None
        event_context: dict[str, Any] = {}
        if span.events:
            events = []
            for event in span.events:
                event_attrs = attributes(event.attributes)
                if event.name in FLAG_EVENT_NAMES:
                    found = evaluation(event_attrs)
                    if found:
                        flags[found[0]] = found[1]
                    for name, value in event_attrs.items():
                        event_context.setdefault(name, value)
                events.append({
                    "name": event.name,
                    "time_unix_nano": event.time_unix_nano,
                    "attributes": event_attrs,
                })
            events_json = _json(events)
        links_json = None
        if span.links:
            links_json = _json([
                {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(),
                 "attributes": attributes(link.attributes)}
                for link in span.links
            ])
        user_id = tagger.user_id(attrs, event_context)
        reason = tagger.test_reason(attrs, resource, user_id)
        trace_id = span.trace_id.hex()
        span_id = span.span_id.hex()
        start = span.start_time_unix_nano
        end = span.end_time_unix_nano
        kind = span.kind
        status_code = span.status.code
        http_status = _http_status(attrs)
        cols["time"].append(start)
        cols["end_time"].append(end)
        cols["observed_time"].append(None)
        cols["signal"].append("span")
        cols["event_id"].append(trace_id + span_id)
        cols["trace_id"].append(trace_id)
        cols["span_id"].append(span_id)
        cols["parent_span_id"].append(_hex(span.parent_span_id))
        cols["trace_state"].append(span.trace_state or None)
        cols["service_name"].append(service)
        cols["scope_name"].append(scope_name)
        cols["scope_version"].append(scope_version)
        cols["name"].append(span.name)
        cols["kind"].append(kind)
        cols["duration_ms"].append((end - start) / 1e6 if end >= start else None)
        cols["status_code"].append(status_code)
        cols["status_message"].append(span.status.message or None)
        cols["is_error"].append(
            status_code == STATUS_ERROR
            or (kind == SPAN_KIND_SERVER and http_status is not None and http_status >= 500)
        )
        cols["http_method"].append(attrs.get("http.request.method", attrs.get("http.method")))
        cols["http_route"].append(attrs.get("http.route"))
        cols["http_status_code"].append(http_status)
        cols["user_id"].append(user_id)
        cols["flags"].append(list(flags.items()))
        cols["is_test"].append(reason is not None)
        cols["test_reason"].append(reason)
        cols["severity_number"].append(None)
        cols["severity_text"].append(None)
        cols["body"].append(None)
        cols["attributes"].append(_json(attrs))
        cols["resource_attributes"].append(resource_json)
        cols["span_events"].append(events_json)
        cols["span_links"].append(links_json)
        cols["dropped_attributes_count"].append(span.dropped_attributes_count)

    # -- logs -----------------------------------------------------------------------
    def _logs(self, request: Any, cols: dict[str, list[Any]]) -> None:
        tagger = self.tagger
        for rl in request.resource_logs:
            resource = attributes(rl.resource.attributes)
            resource_json = _json(resource)
            service = resource.get("service.name")
            resource_bytes = rl.resource.SerializeToString()
            for sl in rl.scope_logs:
                scope_name = sl.scope.name or None
                scope_version = sl.scope.version or None
                scope_bytes = sl.scope.SerializeToString()
                for record in sl.log_records:
                    attrs = attributes(record.attributes)
                    event_name = record.event_name or attrs.get("event.name") or None
                    flags: dict[str, str] = {}
                    tagger.attribute_flags(attrs, flags)
                    user_id = tagger.user_id(attrs)
                    reason = tagger.test_reason(attrs, resource, user_id)
                    # Logs have no id of their own: a digest of resource, scope and record
                    # identifies a retried duplicate.
                    digest = hashlib.blake2b(digest_size=16)
                    digest.update(resource_bytes)
                    digest.update(scope_bytes)
                    digest.update(record.SerializeToString())
                    observed = record.observed_time_unix_nano
                    severity = record.severity_number
                    body = any_value(record.body) if record.HasField("body") else None
                    cols["time"].append(record.time_unix_nano or observed)
                    cols["end_time"].append(None)
                    cols["observed_time"].append(observed or None)
                    cols["signal"].append("log")
                    cols["event_id"].append(digest.hexdigest())
                    cols["trace_id"].append(_hex(record.trace_id))
                    cols["span_id"].append(_hex(record.span_id))
                    cols["parent_span_id"].append(None)
                    cols["trace_state"].append(None)
                    cols["service_name"].append(service)
                    cols["scope_name"].append(scope_name)
                    cols["scope_version"].append(scope_version)
                    cols["name"].append(event_name)
                    cols["kind"].append(None)
                    cols["duration_ms"].append(None)
                    cols["status_code"].append(None)
                    cols["status_message"].append(None)
                    cols["is_error"].append(severity >= SEVERITY_ERROR)
                    cols["http_method"].append(attrs.get("http.request.method", attrs.get("http.method")))
                    cols["http_route"].append(attrs.get("http.route"))
                    cols["http_status_code"].append(_http_status(attrs))
                    cols["user_id"].append(user_id)
                    cols["flags"].append(list(flags.items()))
                    cols["is_test"].append(reason is not None)
                    cols["test_reason"].append(reason)
                    cols["severity_number"].append(severity)
                    cols["severity_text"].append(record.severity_text or None)
                    cols["body"].append(None if body is None else _json(body))
                    cols["attributes"].append(_json(attrs))
                    cols["resource_attributes"].append(resource_json)
                    cols["span_events"].append(None)
                    cols["span_links"].append(None)
                    cols["dropped_attributes_count"].append(record.dropped_attributes_count)
