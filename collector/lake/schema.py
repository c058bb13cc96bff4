"""The wide event: one row per span, log record or metric data point, its columns and the join keys.

DESIGN contract 2 keeps the hex ids for people; the keys (`KEY_COLUMNS`) are derived from
them for the analysis, in Python when rows are converted (`span_key`, `is_entry`) and in
SQL for files written before the keys existed (`derived_keys`, `with_keys`). Both
derivations live here so they cannot drift apart.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

SPAN_KIND_SERVER = 2

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
        ("kind", pa.int32()),  # OTLP enums are int32 on the wire: unknown values kept
        ("duration_ms", pa.float64()),
        ("status_code", pa.int32()),
        ("status_message", pa.string()),
        ("is_error", pa.bool_()),
        ("http_method", pa.string()),
        ("http_route", pa.string()),
        ("http_status_code", pa.int32()),
        ("user_id", pa.string()),
        ("flags", pa.map_(pa.string(), pa.string())),
        ("is_test", pa.bool_()),
        ("test_reason", pa.string()),
        ("severity_number", pa.int32()),
        ("severity_text", pa.string()),
        ("body", pa.string()),
        ("attributes", pa.string()),
        ("resource_attributes", pa.string()),
        ("span_events", pa.string()),
        ("span_links", pa.string()),
        ("dropped_attributes_count", pa.int64()),  # uint32 on the wire
        # What OTLP carries beside the above (issue 10 point 14): kept so that nothing a
        # client sent is lost, though the analysis does not read it.
        ("otlp_flags", pa.int64()),  # Span.flags / LogRecord.flags (W3C trace flags, fixed32)
        ("dropped_events_count", pa.int64()),
        ("dropped_links_count", pa.int64()),
        ("scope_attributes", pa.string()),
        ("resource_schema_url", pa.string()),
        ("scope_schema_url", pa.string()),
        # Metric data points (signal 'metric', one row per point; README "Metrics"): `name`
        # is the metric's, `time` the point's time, `attributes` the point's.
        ("metric_type", pa.string()),  # gauge, sum, histogram, exponential_histogram, summary
        ("metric_unit", pa.string()),
        ("metric_description", pa.string()),
        ("start_time", _ts),  # start_time_unix_nano: where a cumulative/delta point began
        ("value", pa.float64()),  # gauge and sum points (an integer point as a double too)
        ("value_int", pa.int64()),  # an integer point's exact value
        ("is_monotonic", pa.bool_()),  # sum
        ("aggregation_temporality", pa.int32()),  # sum, histograms: 1 delta, 2 cumulative
        ("point_count", pa.int64()),  # histograms, summary
        ("point_sum", pa.float64()),
        ("point_min", pa.float64()),
        ("point_max", pa.float64()),
        ("buckets", pa.string()),  # JSON: the histogram's buckets or the summary's quantiles
        ("exemplars", pa.string()),  # JSON
        # Join keys for the analysis, derived from the columns above (DESIGN contract 2
        # keeps the hex ids for people): decoding 32-character strings dominated a cohort
        # diff, while 16 fixed bytes and an integer read and hash several times faster.
        ("trace_key", pa.uuid()),  # the trace id's 16 bytes (Parquet UUID)
        ("span_key", pa.int64()),  # the span id's 8 bytes, big-endian, signed
        ("is_entry", pa.bool_()),  # a request (contract 3): see is_entry() below
    ]
)
KEY_COLUMNS = ("trace_key", "span_key", "is_entry")


def span_key(span_id: bytes) -> int | None:
    return int.from_bytes(span_id, "big", signed=True) if len(span_id) == 8 else None


# The span an OpenFeature SpanHook starts when a flag is evaluated outside any active span
# (a background worker, a script): a root span, but the evaluation, not a request.
EVALUATION_SPAN_NAME = "feature_flag.evaluation"


def is_entry(kind: int | None, parent_span_id: bytes | str | None, name: str | None = None) -> bool:
    """A request (DESIGN contract 3): a SERVER span, or a root span that is not a flag
    evaluation's own span."""
    return kind == SPAN_KIND_SERVER or (not parent_span_id and name != EVALUATION_SPAN_NAME)


def derived_keys(
    trace_id: str = "trace_id",
    span_id: str = "span_id",
    signal: str = "signal",
    kind: str = "kind",
    parent_span_id: str = "parent_span_id",
    name: str = "name",
) -> dict[str, str]:
    """SQL for the join keys (convert.KEY_COLUMNS) from the hex ids and the other columns,
    for files written before the keys existed (and for bench/make_lake.py)."""
    as_uint = f"CASE WHEN length({span_id}) = 16 THEN TRY_CAST('0x' || {span_id} AS UBIGINT) END"
    return {
        "trace_key": f"TRY_CAST({trace_id} AS UUID)",
        "span_key": (
            f"({as_uint}::HUGEINT - CASE WHEN {as_uint} >= 9223372036854775808 "
            "THEN 18446744073709551616 ELSE 0 END)::BIGINT"
        ),
        "is_entry": (
            f"coalesce({signal} = 'span' AND ({kind} = 2 "
            f"OR (coalesce({parent_span_id}, '') = '' "
            f"AND {name} IS DISTINCT FROM '{EVALUATION_SPAN_NAME}')), false)"
        ),
    }


def with_keys(table: pa.Table) -> pa.Table:
    """`table` (SCHEMA's other columns) with KEY_COLUMNS appended, derived by the same SQL
    as the views use (`derived_keys`): for rows written before the keys existed."""
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")  # rows come back in their order
        con.execute("SET arrow_lossless_conversion = true")  # UUIDs as Arrow UUIDs
        con.register("_rows", table)
        keys = con.sql(
            "SELECT "
            + ", ".join(f"{sql} AS {name}" for name, sql in derived_keys().items())
            + " FROM _rows"
        ).to_arrow_table()
    finally:
        con.close()
    table = table.drop_columns([name for name in KEY_COLUMNS if name in table.column_names])
    for name in KEY_COLUMNS:
        table = table.append_column(name, keys[name].cast(SCHEMA.field(name).type))
    return table
