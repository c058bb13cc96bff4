"""The wide event: one row per span, log record or metric data point, its columns and the join keys.

The files are read as they are by DuckDB, Polars, pandas/pyarrow and Spark (issue 12), so
every column has a type all of them know: times are UTC-adjusted microsecond timestamps
(Spark reads no nanosecond timestamps) beside the exact nanoseconds OTLP carries
(`NANOS`: `time_unix_nano`, …), and the trace key is two int64 halves (Spark reads no
Parquet UUID). flagscope's views (`read`) show the times at nanosecond precision and the
trace key as one UUID, as before.

DESIGN contract 2 keeps the hex ids for people; the keys (`KEY_COLUMNS`) are derived from
them for the analysis, in Python when rows are converted (`trace_key_halves`, `span_key`,
`is_entry`) and in SQL for files written before the keys existed (`derived_keys`). Both
derivations live here so they cannot drift apart. `complete()` turns a table in an older
form (or in `INPUT_SCHEMA`, as test and benchmark builders write it) into `SCHEMA`.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SPAN_KIND_SERVER = 2

_ts = pa.timestamp("us", tz="UTC")  # Parquet TIMESTAMP(MICROS, isAdjustedToUTC=true)
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
        # diff, while integers read and hash several times faster. The trace id's 16 bytes
        # are two big-endian signed halves, which every engine reads and joins on; the
        # views make them one UUID again (`trace_key_sql`), as fast as a Parquet UUID was.
        ("trace_key_hi", pa.int64()),  # the trace id's bytes 0–7
        ("trace_key_lo", pa.int64()),  # the trace id's bytes 8–15
        ("span_key", pa.int64()),  # the span id's 8 bytes, big-endian, signed
        ("is_entry", pa.bool_()),  # a request (contract 3): see is_entry() below
        # The times above to the nanosecond, as OTLP sends them (`*_unix_nano`, its names).
        ("time_unix_nano", pa.int64()),
        ("end_time_unix_nano", pa.int64()),
        ("observed_time_unix_nano", pa.int64()),
        ("start_time_unix_nano", pa.int64()),
    ]
)
KEY_COLUMNS = ("trace_key_hi", "trace_key_lo", "span_key", "is_entry")
# Each timestamp column and the integer column with its exact nanoseconds.
NANOS = {
    "time": "time_unix_nano",
    "end_time": "end_time_unix_nano",
    "observed_time": "observed_time_unix_nano",
    "start_time": "start_time_unix_nano",
}
# The views' one trace key (a UUID, as files before issue 12 stored it): not in the files.
TRACE_KEY = "trace_key"
# What a builder of wide events fills (the converter, tests, benchmarks): SCHEMA without
# what `complete()` derives, times as naive UTC nanoseconds (the lake's form before).
INPUT_SCHEMA = pa.schema(
    [
        pa.field(f.name, pa.timestamp("ns")) if f.name in NANOS else f
        for f in SCHEMA
        if f.name not in KEY_COLUMNS and f.name not in NANOS.values()
    ]
)
# Columns whose values hardly repeat: a dictionary page only costs space and read time.
UNIQUE_COLUMNS = (
    "event_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    *NANOS,
    *NANOS.values(),
    *KEY_COLUMNS[:3],
)
DICTIONARY_COLUMNS = [name for name in SCHEMA.names if name not in UNIQUE_COLUMNS]


def span_key(span_id: bytes) -> int | None:
    return int.from_bytes(span_id, "big", signed=True) if len(span_id) == 8 else None


def trace_key_of(trace_id: bytes) -> tuple[int, int]:
    """(trace_key_hi, trace_key_lo) of one 16-byte trace id, as `trace_key_halves`."""
    return (
        int.from_bytes(trace_id[:8], "big", signed=True),
        int.from_bytes(trace_id[8:], "big", signed=True),
    )


def trace_key_halves(ids: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(trace_key_hi, trace_key_lo) of 16-byte trace ids (fixed_size_binary(16), or a UUID
    array as files before issue 12 held them): big-endian signed halves, null where the
    id is."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], pa.binary(16))
    if isinstance(ids, pa.ExtensionArray):
        ids = ids.storage
    ids = ids.cast(pa.binary(16))
    data = ids.buffers()[1]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    raw = raw[ids.offset * 16 : (ids.offset + len(ids)) * 16].reshape(-1, 16)
    mask = None if ids.null_count == 0 else np.asarray(ids.is_null())
    hi = raw[:, :8].copy().view(">i8").reshape(-1).astype(np.int64)
    lo = raw[:, 8:].copy().view(">i8").reshape(-1).astype(np.int64)
    return pa.array(hi, pa.int64(), mask=mask), pa.array(lo, pa.int64(), mask=mask)


def lake_time(nanos: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The UTC timestamp column for integer nanoseconds since the epoch (microseconds,
    the sub-microsecond part kept in the `*_unix_nano` column beside it)."""
    micros = pc.divide(nanos.cast(pa.int64()), pa.scalar(1000, pa.int64()))
    return micros.cast(_ts)


def trace_key_sql(hi: str = "trace_key_hi", lo: str = "trace_key_lo") -> str:
    """SQL for the trace key as one UUID (the 16 bytes big-endian) from its two halves,
    null when they are; about as fast for DuckDB as a UUID column (issue 12, measured on
    the 10 M bench lake)."""
    mask = "18446744073709551615"  # a half's 64 bits, unsigned
    return (
        f"((({hi}::HUGEINT & {mask})::UHUGEINT << 64) | ({lo}::HUGEINT & {mask})::UHUGEINT)::UUID"
    )


# The span an OpenFeature SpanHook starts when a flag is evaluated outside any active span
# (a background worker, a script): a root span, but the evaluation, not a request.
EVALUATION_SPAN_NAME = "feature_flag.evaluation"


def is_entry(kind: int | None, parent_span_id: bytes | str | None, name: str | None = None) -> bool:
    """A request (DESIGN contract 3): a SERVER span, or a root span that is not a flag
    evaluation's own span."""
    return kind == SPAN_KIND_SERVER or (not parent_span_id and name != EVALUATION_SPAN_NAME)


def _signed_sql(hex_digits: str) -> str:
    """SQL: 16 hex digits as a big-endian signed int64 (null if they are not)."""
    as_uint = f"TRY_CAST('0x' || {hex_digits} AS UBIGINT)"
    return (
        f"({as_uint}::HUGEINT - CASE WHEN {as_uint} >= 9223372036854775808 "
        "THEN 18446744073709551616 ELSE 0 END)::BIGINT"
    )


def derived_keys(
    trace_id: str = "trace_id",
    span_id: str = "span_id",
    signal: str = "signal",
    kind: str = "kind",
    parent_span_id: str = "parent_span_id",
    name: str = "name",
) -> dict[str, str]:
    """SQL for the join keys (KEY_COLUMNS) from the hex ids and the other columns, for
    files written before the keys existed (and for bench/make_lake.py)."""
    trace_hex = f"CASE WHEN regexp_full_match({trace_id}, '[0-9a-fA-F]{{32}}') THEN {trace_id} END"
    return {
        "trace_key_hi": _signed_sql(f"substr({trace_hex}, 1, 16)"),
        "trace_key_lo": _signed_sql(f"substr({trace_hex}, 17, 16)"),
        "span_key": _signed_sql(f"CASE WHEN length({span_id}) = 16 THEN {span_id} END"),
        "is_entry": (
            f"coalesce({signal} = 'span' AND ({kind} = 2 "
            f"OR (coalesce({parent_span_id}, '') = '' "
            f"AND {name} IS DISTINCT FROM '{EVALUATION_SPAN_NAME}')), false)"
        ),
    }


def _sql_keys(table: pa.Table, names: list[str]) -> pa.Table:
    """The key columns `names`, derived from `table`'s hex ids by `derived_keys` (the SQL
    the views use for files without them)."""
    sources = ("trace_id", "span_id", "signal", "kind", "parent_span_id", "name")
    rows = pa.table(
        {
            s: table[s]
            if s in table.column_names
            else pa.nulls(table.num_rows, INPUT_SCHEMA.field(s).type)
            for s in sources
        }
    )
    sql = derived_keys()
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")  # rows come back in their order
        con.register("_rows", rows)
        return con.sql(
            "SELECT " + ", ".join(f"{sql[n]} AS {n}" for n in names) + " FROM _rows"
        ).to_arrow_table()
    finally:
        con.close()


def _nanoseconds(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Integer nanoseconds of a time column in any form the lake has held."""
    if pa.types.is_timestamp(column.type):
        return column.cast(pa.timestamp("ns", tz=column.type.tz)).cast(pa.int64())
    return column.cast(pa.int64())


def complete(table: pa.Table) -> pa.Table:
    """`table` in SCHEMA, from any form the lake's files have had or `INPUT_SCHEMA`: the
    nanosecond columns from naive nanosecond times, the trace key halves from a UUID
    `trace_key` or the hex ids, the other keys from the hex ids, narrower integer types
    widened, absent columns null."""
    if table.schema.equals(SCHEMA):
        return table
    names = set(table.column_names)
    n = table.num_rows
    columns: dict[str, pa.ChunkedArray | pa.Array] = {}
    for stamp, nanos in NANOS.items():
        if nanos in names:
            columns[nanos] = table[nanos]
        elif stamp in names:
            columns[nanos] = _nanoseconds(table[stamp])
        else:
            columns[nanos] = pa.nulls(n, pa.int64())
        columns[stamp] = lake_time(columns[nanos])
    if "trace_key_hi" not in names and TRACE_KEY in names:
        columns["trace_key_hi"], columns["trace_key_lo"] = trace_key_halves(table[TRACE_KEY])
    derive = [k for k in KEY_COLUMNS if k not in names and k not in columns]
    if derive:
        keys = _sql_keys(table, derive)
        columns.update({k: keys[k] for k in derive})
    for field in SCHEMA:
        if field.name not in columns:
            columns[field.name] = (
                table[field.name] if field.name in names else pa.nulls(n, field.type)
            )
    return ids_left_to_keys(pa.table([columns[f.name].cast(f.type) for f in SCHEMA], schema=SCHEMA))


# The files leave `trace_id` and `span_id` null where the keys give them back exactly (28
# bytes an event at 10 M, issue 12); the views spell them (`read.define_views`), through
# DuckDB's UUID text: 2.5× faster than printf('%016x%016x', …) over 10 M keys, and the
# same text (README gives printf to readers of the files).
TRACE_ID_SQL = f"coalesce(trace_id, replace(({trace_key_sql()})::VARCHAR, '-', ''))"
SPAN_ID_SQL = (
    "coalesce(span_id, replace(right("
    "((span_key::HUGEINT & 18446744073709551615)::UHUGEINT)::UUID::VARCHAR, 17), '-', ''))"
)


def ids_left_to_keys(table: pa.Table) -> pa.Table:
    """`table` (in SCHEMA) with `trace_id` and `span_id` null where its keys hold them: a
    key derived from (or stored beside) a lowercase hex id spells it exactly. An id the
    keys cannot hold (not 16 or 8 bytes), or spelled otherwise (upper case, from a builder
    or an old file), stays stored."""
    for name, key in (("trace_id", "trace_key_hi"), ("span_id", "span_key")):
        ids = table[name]
        spelled = pc.and_(pc.is_valid(table[key]), pc.equal(ids, pc.utf8_lower(ids)))
        kept = pc.if_else(pc.fill_null(spelled, False), pa.scalar(None, pa.string()), ids)
        table = table.set_column(SCHEMA.get_field_index(name), name, kept)
    return table
