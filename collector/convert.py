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

from flagscope.collector.lake.schema import (
    NANOS,
    SCHEMA,
    SPAN_KIND_SERVER,
    ids_left_to_keys,
    is_entry,
    lake_time,
    span_key,
    trace_key_halves,
)
from flagscope.collector.otlp import MAX_TIME_NS, METRICS, SIGNAL_BY_CODE, TRACES, metric_type
from flagscope.collector.rawproto import AttributeCache, TraceRequest
from flagscope.collector.tagging import FLAG_EVENT_NAMES, Tagger, evaluation

STATUS_ERROR = 2
SEVERITY_ERROR = 17  # OTLP SeverityNumber ERROR..ERROR4 = 17..20, FATAL = 21..24
SEVERITY_MAX = 24


# -- AnyValue → JSON-ready Python values, and back ------------------------------------------
# Strings, integers, booleans, finite doubles, arrays and kvlists are plain JSON. JSON has no
# literal for bytes or a non-finite double: those are stored as OTLP/JSON's AnyValue objects,
# {"bytesValue": "<base64>"} and {"doubleValue": "NaN" | "Infinity" | "-Infinity"}, so they
# never read as the strings "NaN" or a base64 text (issue 10 point 14). A kvlist that would
# read as one of those objects (a single key among WRAPPERS) is stored as
# {"kvlistValue": {...}}. So every stored value decodes to what was sent (`stored_value`).
WRAPPERS = frozenset({"bytesValue", "doubleValue", "kvlistValue"})


def _double(value: float) -> float | dict[str, str]:
    if math.isfinite(value):
        return value
    return {
        "doubleValue": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    }


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
        kvlist = {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
        return {"kvlistValue": kvlist} if len(kvlist) == 1 and kvlist.keys() <= WRAPPERS else kvlist
    if kind == "bytes_value":
        return {"bytesValue": base64.b64encode(v.bytes_value).decode("ascii")}
    return None


_SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def stored_value(value: Any) -> Any:
    """The value a stored (JSON-decoded) attribute stands for: bytes for {"bytesValue"},
    a float for {"doubleValue"} and a kvlist's dict for {"kvlistValue"}, recursively; the
    inverse of `any_value` (a reader's and the round-trip test's)."""
    if isinstance(value, list):
        return [stored_value(x) for x in value]
    if isinstance(value, dict):
        if len(value) == 1 and value.keys() <= WRAPPERS:
            ((wrapper, inner),) = value.items()
            if wrapper == "bytesValue":
                return base64.b64decode(inner)
            if wrapper == "doubleValue":
                return _SPECIAL_DOUBLES[inner]
            return {k: stored_value(x) for k, x in inner.items()}
        return {k: stored_value(x) for k, x in value.items()}
    return value


def attributes(kvs: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def _json(value: Any) -> bytes:
    # Kept as UTF-8 bytes: Arrow takes them as binary and views them as strings without
    # re-encoding (several times cheaper than building a string array from str objects).
    # orjson's result keeps a 4 KiB buffer; an exact-size copy keeps memory per row small.
    return memoryview(orjson.dumps(value)).tobytes()


def _hex(value: bytes) -> str | None:
    return value.hex() if value else None


# -- promoted columns: the value when it has the semantic conventions' type, else null ------
# An attribute of another type (`http.route` as an integer, `service.name` as a list) stays
# in `attributes`/`resource_attributes` as data; the typed column is null for it, so one
# odd value never stops a conversion (DESIGN "A record never stops the lake").
def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _http_status(attrs: dict[str, Any]) -> int | None:
    """An HTTP status code (100–599) from the current or the old attribute name."""
    code = attrs.get("http.response.status_code", attrs.get("http.status_code"))
    if isinstance(code, str) and code.isascii() and code.isdigit() and len(code) == 3:
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599:
        return code
    return None


def _method(attrs: dict[str, Any]) -> str | None:
    return _text(attrs.get("http.request.method", attrs.get("http.method")))


def _nanos(value: int) -> int | None:
    """A time the lake can store (signed 64-bit nanoseconds), or None."""
    return value if 0 < value <= MAX_TIME_NS else None


JSON_COLUMNS = frozenset(
    {
        "body",
        "attributes",
        "resource_attributes",
        "scope_attributes",
        "span_events",
        "span_links",
        "buckets",
        "exemplars",
    }
)

# Columns each signal fills row by row; every other column of SCHEMA is null for it. Times
# come as integer nanoseconds (the `*_unix_nano` columns and the timestamps derive from
# them) and the trace id as its 16 bytes (split into the trace key's halves).
TRACE_BYTES = "trace_id_bytes"
SPAN_FIELDS = (
    "time",
    "end_time",
    "event_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "trace_state",
    "service_name",
    "scope_name",
    "scope_version",
    "name",
    "kind",
    "duration_ms",
    "status_code",
    "status_message",
    "is_error",
    "http_method",
    "http_route",
    "http_status_code",
    "user_id",
    "flags",
    "is_test",
    "test_reason",
    "attributes",
    "resource_attributes",
    "span_events",
    "span_links",
    "dropped_attributes_count",
    "otlp_flags",
    "dropped_events_count",
    "dropped_links_count",
    "scope_attributes",
    "resource_schema_url",
    "scope_schema_url",
    TRACE_BYTES,
    "span_key",
    "is_entry",
)
LOG_FIELDS = (
    "time",
    "observed_time",
    "event_id",
    "trace_id",
    "span_id",
    "service_name",
    "scope_name",
    "scope_version",
    "name",
    "is_error",
    "http_method",
    "http_route",
    "http_status_code",
    "user_id",
    "flags",
    "is_test",
    "test_reason",
    "severity_number",
    "severity_text",
    "body",
    "attributes",
    "resource_attributes",
    "dropped_attributes_count",
    "otlp_flags",
    "scope_attributes",
    "resource_schema_url",
    "scope_schema_url",
    TRACE_BYTES,
    "span_key",
)
METRIC_FIELDS = (
    "time",
    "start_time",
    "event_id",
    "service_name",
    "scope_name",
    "scope_version",
    "name",
    "metric_type",
    "metric_unit",
    "metric_description",
    "value",
    "value_int",
    "is_monotonic",
    "aggregation_temporality",
    "point_count",
    "point_sum",
    "point_min",
    "point_max",
    "buckets",
    "exemplars",
    "attributes",
    "resource_attributes",
    "otlp_flags",
    "scope_attributes",
    "resource_schema_url",
    "scope_schema_url",
)


def _table(fields: tuple[str, ...], rows: list[tuple[Any, ...]], signal: str) -> pa.Table:
    n = len(rows)
    columns = dict(zip(fields, zip(*rows, strict=False), strict=True)) if rows else {}
    derived: dict[str, pa.Array] = {}
    for stamp, nanos in NANOS.items():
        if stamp in columns:
            derived[nanos] = pa.array(columns[stamp], type=pa.int64())
            derived[stamp] = lake_time(derived[nanos])
    if TRACE_BYTES in columns:
        ids = pa.array(columns[TRACE_BYTES], type=pa.binary(16))
        derived["trace_key_hi"], derived["trace_key_lo"] = trace_key_halves(ids)
    arrays = []
    for field in SCHEMA:
        if field.name in derived:
            arrays.append(derived[field.name])
        elif field.name in JSON_COLUMNS and field.name in columns:
            arrays.append(pa.array(columns[field.name], type=pa.binary()).view(pa.string()))
        elif field.name == "is_entry" and field.name not in columns:
            arrays.append(pa.array([False] * n, type=field.type))
        elif field.name in columns:
            arrays.append(pa.array(columns[field.name], type=field.type))
        elif field.name == "signal":
            arrays.append(pa.array([signal] * n, type=field.type))
        else:
            arrays.append(pa.nulls(n, type=field.type))
    return ids_left_to_keys(pa.Table.from_arrays(arrays, schema=SCHEMA))


def _link(link: Any, link_attributes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "trace_id": link.trace_id.hex(),
        "span_id": link.span_id.hex(),
        "attributes": link_attributes(link.attributes),
    }
    for name in ("trace_state", "flags", "dropped_attributes_count"):  # only when set
        value = getattr(link, name)
        if value:
            entry[name] = value
    return entry


def _scope_columns(scoped: Any) -> tuple[Any, ...]:
    """(scope_name, scope_version, scope_attributes JSON, scope_schema_url) of a
    ScopeSpans, ScopeLogs or ScopeMetrics."""
    scope = scoped.scope
    return (
        scope.name or None,
        scope.version or None,
        _json(attributes(scope.attributes)) if scope.attributes else None,
        scoped.schema_url or None,
    )


def _point_values(kind: str, point: Any) -> tuple[Any, ...]:
    """(value, value_int, count, sum, min, max, buckets JSON) of one data point."""
    if kind in ("gauge", "sum"):
        if point.WhichOneof("value") == "as_int":
            return float(point.as_int), point.as_int, None, None, None, None, None
        return point.as_double, None, None, None, None, None, None
    total = point.sum if kind == "summary" or point.HasField("sum") else None
    if kind == "summary":
        quantiles = [{"quantile": q.quantile, "value": q.value} for q in point.quantile_values]
        return None, None, point.count, total, None, None, _json({"quantiles": quantiles})
    low = point.min if point.HasField("min") else None
    high = point.max if point.HasField("max") else None
    if kind == "histogram":
        shape: dict[str, Any] = {
            "bounds": list(point.explicit_bounds),
            "counts": list(point.bucket_counts),
        }
    else:
        shape = {
            "scale": point.scale,
            "zero_count": point.zero_count,
            "zero_threshold": point.zero_threshold,
            "positive": {
                "offset": point.positive.offset,
                "counts": list(point.positive.bucket_counts),
            },
            "negative": {
                "offset": point.negative.offset,
                "counts": list(point.negative.bucket_counts),
            },
        }
    return None, None, point.count, total, low, high, _json(shape)


def _exemplar(exemplar: Any) -> dict[str, Any]:
    kind = exemplar.WhichOneof("value")
    entry: dict[str, Any] = {
        "time": exemplar.time_unix_nano,
        "value": exemplar.as_int if kind == "as_int" else exemplar.as_double,
    }
    if exemplar.trace_id:
        entry["trace_id"] = exemplar.trace_id.hex()
    if exemplar.span_id:
        entry["span_id"] = exemplar.span_id.hex()
    if exemplar.filtered_attributes:
        entry["filtered_attributes"] = attributes(exemplar.filtered_attributes)
    return entry


class Unconvertible(ValueError):
    """An item the lake cannot hold (the lake writer quarantines it, DESIGN "The lake")."""


class Converter:
    def __init__(self, tagger: Tagger) -> None:
        self.tagger = tagger
        # Span, event and link attributes come as raw KeyValue bytes (flagscope.collector.rawproto).
        self._cache = AttributeCache(any_value)

    def table(self, records: Iterable[tuple[int, bytes]]) -> pa.Table:
        """WAL records (signal code, protobuf payload) → one table of wide events."""
        spans: list[tuple[Any, ...]] = []
        logs: list[tuple[Any, ...]] = []
        points: list[tuple[Any, ...]] = []
        for code, payload in records:
            signal = SIGNAL_BY_CODE[code]
            if signal is TRACES:
                self._spans(TraceRequest.FromString(payload), spans)
            elif signal is METRICS:
                self._metrics(signal.request_type.FromString(payload), points)
            else:
                self._logs(signal.request_type.FromString(payload), logs)
        parts = [
            _table(fields, rows, name)
            for fields, rows, name in (
                (SPAN_FIELDS, spans, "span"),
                (LOG_FIELDS, logs, "log"),
                (METRIC_FIELDS, points, "metric"),
            )
            if rows
        ]
        if not parts:
            return _table(SPAN_FIELDS, [], "span")
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    # -- spans ----------------------------------------------------------------------
    def _spans(self, request: Any, rows: list[tuple[Any, ...]]) -> None:
        span_row = self._span_row
        append = rows.append
        tagger_marker = self.tagger.resource_marker
        for rs in request.resource_spans:
            resource = attributes(rs.resource.attributes)
            service = _text(resource.get("service.name"))
            context = (tagger_marker(resource), _json(resource), service, rs.schema_url or None)
            for ss in rs.scope_spans:
                scope = _scope_columns(ss)
                for span in ss.spans:
                    append(span_row(span, context, scope))

    def _span_row(
        self, span: Any, context: tuple[Any, ...], scope: tuple[Any, ...]
    ) -> tuple[Any, ...]:
        resource_reason, resource_json, service, resource_schema_url = context
        tagger = self.tagger
        span_attributes = self._cache.attributes
        attrs = span_attributes(span.attributes)
        flags: dict[str, str] = {}
        tagger.attribute_flags(attrs, flags)
        events_json = None
        event_context: dict[str, Any] = {}
        span_events = span.events  # (each access to a repeated field builds a wrapper)
        if span_events:
            events = []
            for event in span_events:
                event_attrs = span_attributes(event.attributes)
                event_name = event.name
                if event_name in FLAG_EVENT_NAMES:
                    found = evaluation(event_attrs)
                    if found:
                        flags[found[0]] = found[1]
                    if not event_context:  # the first evaluation's context names the user
                        event_context = event_attrs
                entry = {
                    "name": event_name,
                    "time_unix_nano": event.time_unix_nano,
                    "attributes": event_attrs,
                }
                if event.dropped_attributes_count:
                    entry["dropped_attributes_count"] = event.dropped_attributes_count
                events.append(entry)
            events_json = _json(events)
        links_json = None
        span_links = span.links
        if span_links:
            links_json = _json([_link(link, span_attributes) for link in span_links])
        user_id = tagger.user_id(attrs, event_context)
        reason = tagger.test_reason(attrs, resource_reason, user_id)
        raw_trace_id = span.trace_id
        raw_span_id = span.span_id
        raw_parent_id = span.parent_span_id
        # The keys hold ids of the usual lengths (`ids_left_to_keys` would drop their hex).
        # (Decoding refuses spans with other lengths; a span id of another length from an
        # older WAL keeps its hex, a trace id could not be stored in any case.)
        trace_id = None if len(raw_trace_id) == 16 else raw_trace_id.hex()
        span_id = None if len(raw_span_id) == 8 else raw_span_id.hex()
        start = span.start_time_unix_nano  # in range: checked at decode time
        end = _nanos(span.end_time_unix_nano)
        kind = span.kind
        name = span.name
        status = span.status
        status_code = status.code
        http_status = _http_status(attrs)
        return (
            start,
            end,
            None,  # event_id, and the ids below in the files: derived by the views (read.py)
            trace_id,
            span_id,
            _hex(raw_parent_id),
            span.trace_state or None,
            service,
            scope[0],
            scope[1],
            name,
            kind,
            (end - start) / 1e6 if end is not None and end >= start else None,
            status_code,
            status.message or None,
            status_code == STATUS_ERROR
            or (kind == SPAN_KIND_SERVER and http_status is not None and http_status >= 500),
            _method(attrs),
            _text(attrs.get("http.route")),
            http_status,
            user_id,
            list(flags.items()),
            reason is not None,
            reason,
            _json(attrs),
            resource_json,
            events_json,
            links_json,
            span.dropped_attributes_count,
            span.flags or None,
            span.dropped_events_count or None,
            span.dropped_links_count or None,
            scope[2],
            resource_schema_url,
            scope[3],
            raw_trace_id,
            span_key(raw_span_id),
            is_entry(kind, raw_parent_id, name),
        )

    # -- metrics --------------------------------------------------------------------
    def _metrics(self, request: Any, rows: list[tuple[Any, ...]]) -> None:
        for rm in request.resource_metrics:
            resource = attributes(rm.resource.attributes)
            context = (
                _text(resource.get("service.name")),
                _json(resource),
                rm.schema_url or None,
                rm.resource.SerializeToString(),
            )
            for sm in rm.scope_metrics:
                scope = (*_scope_columns(sm), sm.scope.SerializeToString())
                for metric in sm.metrics:
                    self._metric_rows(metric, context, scope, rows)

    def _metric_rows(
        self, metric: Any, context: tuple[Any, ...], scope: tuple[Any, ...], rows: list[Any]
    ) -> None:
        service, resource_json, resource_schema_url, resource_bytes = context
        scope_name, scope_version, scope_json, scope_schema_url, scope_bytes = scope
        kind = metric_type(metric)
        if kind is None:
            return
        data = getattr(metric, kind)
        monotonic = data.is_monotonic if kind == "sum" else None
        temporality = data.aggregation_temporality if kind not in ("gauge", "summary") else None
        for point in data.data_points:
            when = _nanos(point.time_unix_nano)
            if when is None:  # decode refuses these: only a WAL written otherwise has one
                raise Unconvertible("a metric data point without a storable time")
            # Data points have no id: a digest of resource, scope, metric identity and the
            # point identifies a retried duplicate.
            digest = hashlib.blake2b(digest_size=16)
            for part in (resource_bytes, scope_bytes, metric.name.encode(), kind.encode()):
                digest.update(part)
            digest.update(point.SerializeToString())
            value, value_int, count, total, low, high, buckets = _point_values(kind, point)
            exemplars = getattr(point, "exemplars", ())
            rows.append(
                (
                    when,
                    _nanos(point.start_time_unix_nano),
                    digest.hexdigest(),
                    service,
                    scope_name,
                    scope_version,
                    metric.name,
                    kind,
                    metric.unit or None,
                    metric.description or None,
                    value,
                    value_int,
                    monotonic,
                    temporality,
                    count,
                    total,
                    low,
                    high,
                    buckets,
                    _json([_exemplar(e) for e in exemplars]) if exemplars else None,
                    _json(attributes(point.attributes)),
                    resource_json,
                    point.flags or None,
                    scope_json,
                    resource_schema_url,
                    scope_schema_url,
                )
            )

    # -- logs -----------------------------------------------------------------------
    def _logs(self, request: Any, rows: list[tuple[Any, ...]]) -> None:
        tagger = self.tagger
        for rl in request.resource_logs:
            resource = attributes(rl.resource.attributes)
            resource_json = _json(resource)
            resource_reason = tagger.resource_marker(resource)
            service = _text(resource.get("service.name"))
            resource_bytes = rl.resource.SerializeToString()
            resource_schema_url = rl.schema_url or None
            for sl in rl.scope_logs:
                scope_name, scope_version, scope_json, scope_schema_url = _scope_columns(sl)
                scope_bytes = sl.scope.SerializeToString()
                for record in sl.log_records:
                    attrs = attributes(record.attributes)
                    flags: dict[str, str] = {}
                    tagger.attribute_flags(attrs, flags)
                    user_id = tagger.user_id(attrs)
                    reason = tagger.test_reason(attrs, resource_reason, user_id)
                    # Logs have no id of their own: a digest of resource, scope and record
                    # identifies a retried duplicate.
                    digest = hashlib.blake2b(digest_size=16)
                    digest.update(resource_bytes)
                    digest.update(scope_bytes)
                    digest.update(record.SerializeToString())
                    # Decode time gave every record a storable observed time; records
                    # from before that rule may still lack one (then the time is None).
                    observed = _nanos(record.observed_time_unix_nano)
                    when = _nanos(record.time_unix_nano) or observed
                    if when is None:
                        raise Unconvertible("a log record without a storable time")
                    severity = record.severity_number
                    body = any_value(record.body) if record.HasField("body") else None
                    rows.append(
                        (
                            when,
                            observed,
                            digest.hexdigest(),
                            _hex(record.trace_id),
                            _hex(record.span_id),
                            service,
                            scope_name,
                            scope_version,
                            record.event_name or _text(attrs.get("event.name")),
                            SEVERITY_ERROR <= severity <= SEVERITY_MAX,
                            _method(attrs),
                            _text(attrs.get("http.route")),
                            _http_status(attrs),
                            user_id,
                            list(flags.items()),
                            reason is not None,
                            reason,
                            severity,
                            record.severity_text or None,
                            None if body is None else _json(body),
                            _json(attrs),
                            resource_json,
                            record.dropped_attributes_count,
                            record.flags or None,
                            scope_json,
                            resource_schema_url,
                            scope_schema_url,
                            record.trace_id if len(record.trace_id) == 16 else None,
                            span_key(record.span_id),
                        )
                    )
