"""The lake as every engine reads it (issue 12 point 1): DuckDB, Polars, pandas/pyarrow and
Spark 4 read the files as they are — no reader options, no schema given — and answer the
README's per-variant query with the same numbers as `flagscope query`; and each reads the
times as the UTC instants the collector was sent.

Two lakes: the recorded sample lake (sample_data/, sample_data/record.py), and one a real
collector writes here from the sample shop's traffic and from spans at known instants,
with a torn temporary file left in it as a crash leaves one. Spark runs in one test (one
JVM, local mode) and skips, naming the fix, only where no Java runtime can be found.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from flagscope.collector.lake.layout import partitions, temporary
from flagscope.collector.lake.read import fetch
from tests.helpers import SHORT_LIVED_JVM, RunningCollector, make_settings
from tests.otlp_requests import kv, new_span_id, new_trace_id, post

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sample_data"))
import shop

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "lake"
FLAG = "new-checkout"
# README's per-variant query, as `flagscope query` runs it over the view `events`; the
# README says it runs as it is in DuckDB and Spark SQL over a view `events` of the files.
_QUERY = re.search(
    r'flagscope query "(WITH v AS \(.*?)"\n', (ROOT / "README.md").read_text(), re.DOTALL
)
assert _QUERY, 'README.md has no per-variant `flagscope query "WITH v AS (…"` example'
PER_VARIANT = _QUERY[1]
# Spans sent with these start times (ns since the epoch, UTC): a sub-microsecond part, and
# one a nanosecond before an hour ends (its microseconds must not round into the next hour).
KNOWN_NS = (1_767_323_045_123_456_789, 1_767_326_399_999_999_999)


def _known_spans() -> bytes:
    request = trace_service_pb2.ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", "instants"))
    spans = rs.scope_spans.add().spans
    for start in KNOWN_NS:
        spans.add(
            trace_id=new_trace_id(),
            span_id=new_span_id(),
            name="GET /instant",
            kind=2,
            start_time_unix_nano=start,
            end_time_unix_nano=start + 1_000,
        )
    return request.SerializeToString()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake a real collector just wrote: shop traffic and the spans at KNOWN_NS, and a
    torn temporary file in one partition (a crash mid-write)."""
    data_dir = tmp_path_factory.mktemp("fresh")
    running = RunningCollector(make_settings(data_dir, max_request_bytes=8 * 1024 * 1024))
    running.start()
    try:
        shop.run(running.http_url, running.grpc_target, shop.ShopConfig(users=80, requests=400))
        assert post(running, "/v1/traces", _known_spans()).status == 200
    finally:
        running.stop()  # drains the WAL into the lake
    lake = running.lake
    temporary(partitions(lake)[0] / "test-000000009999-000.parquet").write_bytes(b"PAR1 torn")
    return lake


@pytest.fixture(params=["sample", "fresh"])
def lake(request: pytest.FixtureRequest) -> Path:
    return SAMPLE if request.param == "sample" else request.getfixturevalue("fresh")


# -- each engine: the per-variant numbers, and every row's time as the engine reads it -----
Numbers = dict[str, tuple[Any, ...]]  # variant → requests, errors, error rate, mean, p95
Times = dict[str, tuple[int, int]]  # row identity → (µs since the epoch as read, time_unix_nano)
# A row's identity as every engine can name it: the files leave event_id null for spans,
# whose identity is their keys.
KEYS = ("trace_key_hi", "trace_key_lo", "span_key")
IDENTITY = (
    "coalesce(event_id, concat_ws(':', " + ", ".join(f"CAST({k} AS STRING)" for k in KEYS) + "))"
)
# README's spelling of the hex trace id from its keys, in DuckDB and in Spark SQL
HEX_TRACE_ID = {
    "duckdb": "printf('%016x%016x', trace_key_hi, trace_key_lo)",
    "spark": "lower(concat(lpad(hex(trace_key_hi), 16, '0'), lpad(hex(trace_key_lo), 16, '0')))",
}
HEX_SPAN_ID = {
    "duckdb": "printf('%016x', span_key)",
    "spark": "lower(lpad(hex(span_key), 16, '0'))",
}


def spelled_ids(sql: Any, engine: str) -> set[tuple[str, str]]:
    """(trace id, span id) of every span, spelled from the keys as README says."""
    rows = sql(
        f"SELECT DISTINCT {HEX_TRACE_ID[engine]}, {HEX_SPAN_ID[engine]} FROM events "
        "WHERE signal = 'span'"
    )
    return {tuple(row) for row in rows}


def ids_in_views(lake: Path) -> set[tuple[str, str]]:
    return set(
        fetch(lake, "SELECT DISTINCT trace_id, span_id FROM events WHERE signal = 'span'")[1]
    )


def _numbers(rows: list[tuple[Any, ...]]) -> Numbers:
    return {row[0]: tuple(row[1:]) for row in rows}


def by_flagscope(lake: Path) -> Numbers:
    """`flagscope query`: the SQL over flagscope's `events` view."""
    return _numbers(fetch(lake, PER_VARIANT)[1])


def by_duckdb(lake: Path) -> tuple[Numbers, Times]:
    con = duckdb.connect()  # DuckDB as it comes: the machine's time zone, no settings
    try:
        con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{lake}/**/*.parquet')")
        numbers = _numbers(con.execute(PER_VARIANT).fetchall())
        kinds = con.execute("SELECT DISTINCT typeof(time) FROM events").fetchall()
        assert kinds == [("TIMESTAMP WITH TIME ZONE",)]
        rows = con.execute(f"SELECT {IDENTITY}, epoch_us(time), time_unix_nano FROM events")
        times = {e: (us, ns) for e, us, ns in rows.fetchall()}
        assert spelled_ids(lambda q: con.execute(q).fetchall(), "duckdb") == ids_in_views(lake)
        return numbers, times
    finally:
        con.close()


def _flag(flags: pl.Expr) -> pl.Expr:
    """The flag's variant in a `flags` map (Polars reads a Parquet map as `pl.Map`)."""
    return flags.map.get(FLAG)


def by_polars(lake: Path) -> tuple[Numbers, Times]:
    events = pl.scan_parquet(f"{lake}/**/*.parquet")
    variant = (
        events.filter(_flag(pl.col("flags")).is_not_null())
        .group_by("trace_key_hi", "trace_key_lo")
        .agg(_flag(pl.col("flags")).min().alias("variant"))
    )
    requests = (
        events.join(variant, on=["trace_key_hi", "trace_key_lo"])
        .filter(pl.col("is_entry") & ~pl.col("is_test"))
        .select("trace_key_hi", "trace_key_lo", "span_key", "variant", "is_error", "duration_ms")
        .unique()
    )
    numbers = (
        requests.group_by("variant")
        .agg(
            pl.len().alias("requests"),
            pl.col("is_error").cast(pl.Int64).sum().alias("errors"),
            pl.col("is_error").cast(pl.Int64).mean().alias("error_rate"),
            pl.col("duration_ms").mean().alias("mean_ms"),
            pl.col("duration_ms").quantile(0.95, interpolation="linear").alias("p95_ms"),
        )
        .sort("variant")
        .collect()
    )
    identity = pl.coalesce("event_id", pl.concat_str(*KEYS, separator=":"))
    times = events.select(identity.alias("id"), "time", "time_unix_nano").collect()
    assert times.schema["time"] == pl.Datetime("us", "UTC")
    micros = times.with_columns(pl.col("time").dt.epoch("us"))
    return _numbers(numbers.rows()), {e: (us, ns) for e, us, ns in micros.rows()}


def by_pandas(lake: Path) -> tuple[Numbers, Times]:
    events = pd.read_parquet(lake)  # the directory, through pyarrow datasets
    flags = events["flags"].map(lambda m: dict(m).get(FLAG) if m is not None else None)
    keys = ["trace_key_hi", "trace_key_lo"]
    variant = (
        events.assign(variant=flags)
        .dropna(subset=["variant"])
        .groupby(keys, as_index=False)["variant"]
        .min()
    )
    requests = events.merge(variant, on=keys)
    requests = requests[requests["is_entry"] & ~requests["is_test"]]
    columns = ["trace_key_hi", "trace_key_lo", "span_key", "variant", "is_error", "duration_ms"]
    requests = requests[columns].drop_duplicates()
    grouped = requests.assign(err=requests["is_error"].astype("int64")).groupby("variant")
    rows = [
        (v, len(g), int(g["err"].sum()), g["err"].mean(), g["duration_ms"].mean(),
         g["duration_ms"].quantile(0.95))
        for v, g in sorted(grouped)
    ]  # fmt: skip
    assert str(events["time"].dtype) == "datetime64[us, UTC]"
    micros = events["time"].astype("int64")  # the instant, whatever the machine's zone
    keys = events[list(KEYS)].astype("string").agg(":".join, axis=1)
    identity = events["event_id"].fillna(keys)
    return _numbers(rows), dict(
        zip(identity, zip(micros, events["time_unix_nano"], strict=True), strict=True)
    )


def assert_same_numbers(got: Numbers, want: Numbers, engine: str) -> None:
    assert set(got) == set(want) == {"on", "off"}, (engine, got, want)
    for variant, values in want.items():
        counts, others = values[:2], values[2:]
        assert tuple(got[variant][:2]) == counts, (engine, variant, got[variant], values)
        for a, b in zip(got[variant][2:], others, strict=True):
            assert math.isclose(a, b, rel_tol=1e-9), (engine, variant, got[variant], values)


def assert_utc_instants(times: Times, lake: Path, engine: str) -> None:
    """Every row's time is its nanoseconds' instant in UTC, to the microsecond; in the
    fresh lake, the spans at KNOWN_NS are there at those instants."""
    wrong = {e: t for e, t in times.items() if t[0] != t[1] // 1000}
    assert not wrong, (engine, list(wrong.items())[:3])
    if lake != SAMPLE:
        found = sorted(ns for _, ns in times.values() if ns in KNOWN_NS)
        assert found == list(KNOWN_NS), engine


def test_duckdb_polars_and_pandas_read_the_lake_as_it_is(lake: Path) -> None:
    want = by_flagscope(lake)
    assert want["on"][0] > 0 and want["off"][0] > want["on"][0]  # the shop's 20 % rollout
    for engine, read in (("duckdb", by_duckdb), ("polars", by_polars), ("pandas", by_pandas)):
        numbers, times = read(lake)
        assert_same_numbers(numbers, want, engine)
        assert_utc_instants(times, lake, engine)
        assert len(times) == fetch(lake, "SELECT count(*) FROM events_raw")[1][0][0], engine


def test_date_and_hour_come_from_the_partition_paths_as_the_readme_says(fresh: Path) -> None:
    """Not columns of the files: DuckDB (hive partitioning detected), pandas/pyarrow and
    Spark (below) add them; Polars with hive_partitioning=True."""
    glob = f"{fresh}/**/*.parquet"
    assert {"date", "hour"} <= set(duckdb.sql(f"SELECT * FROM read_parquet('{glob}')").columns)
    assert {"date", "hour"} <= set(pd.read_parquet(fresh, columns=["date", "hour"]).columns)
    assert not {"date", "hour"} & set(pl.scan_parquet(glob).collect_schema().names())
    hive = pl.scan_parquet(glob, hive_partitioning=True).collect_schema().names()
    assert {"date", "hour"} <= set(hive)


# -- Spark --------------------------------------------------------------------------------
def _java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """Spark 4 in local mode, one core; nothing set that changes how Parquet is read."""
    if _java() is None:
        pytest.skip(
            "no Java runtime for Spark: `make test` installs Debian's default-jre-headless "
            "when run as root; else apt-get install default-jre-headless, or set JAVA_HOME"
        )
    sql = pytest.importorskip("pyspark.sql", reason="pyspark: pip install -e '.[test]'")
    session = (
        sql.SparkSession.builder.master("local[1]")
        .appName("flagscope-test-engines")
        .config("spark.ui.enabled", "false")  # no web UI port; speed, not how files are read
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.driver.extraJavaOptions", SHORT_LIVED_JVM)  # speed, not reading
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def by_spark(spark: Any, lake: Path) -> tuple[Numbers, Times, list[str]]:
    from pyspark.sql.types import TimestampType

    events = spark.read.parquet(str(lake))  # the directory, no options, no schema
    assert isinstance(events.schema["time"].dataType, TimestampType)  # UTC-adjusted, not NTZ
    events.createOrReplaceTempView("events")
    numbers = _numbers([tuple(row) for row in spark.sql(PER_VARIANT).collect()])
    rows = spark.sql(f"SELECT {IDENTITY}, unix_micros(time), time_unix_nano FROM events").collect()
    assert spelled_ids(lambda q: spark.sql(q).collect(), "spark") == ids_in_views(lake)
    return numbers, {r[0]: (r[1], r[2]) for r in rows}, events.columns


def test_spark_reads_the_lake_as_it_is(spark: Any, fresh: Path) -> None:
    for lake in (SAMPLE, fresh):
        numbers, times, columns = by_spark(spark, lake)
        assert_same_numbers(numbers, by_flagscope(lake), f"spark {lake.name}")
        assert_utc_instants(times, lake, "spark")
        assert len(times) == fetch(lake, "SELECT count(*) FROM events_raw")[1][0][0]
        assert {"date", "hour"} <= set(columns)  # partition discovery, from the paths


def test_the_known_instants_read_as_utc_datetimes_in_every_engine(fresh: Path) -> None:
    """The instants themselves, not only their agreement with `time_unix_nano`."""
    want = [datetime.fromtimestamp(ns // 10**9, UTC).replace(microsecond=ns // 1000 % 10**6)
            for ns in KNOWN_NS]  # fmt: skip
    where = f"time_unix_nano IN {KNOWN_NS}"
    glob = f"{fresh}/**/*.parquet"
    duck = duckdb.sql(f"SELECT time FROM read_parquet('{glob}') WHERE {where} ORDER BY 1")
    assert [t.astimezone(UTC) for (t,) in duck.fetchall()] == want
    polars = pl.scan_parquet(glob).filter(pl.col("time_unix_nano").is_in(list(KNOWN_NS)))
    assert sorted(polars.select("time").collect()["time"].to_list()) == want
    table = pa.Table.from_pandas(
        pd.read_parquet(fresh, filters=[("service_name", "=", "instants")])
    )
    assert sorted(table["time"].to_pylist()) == want
    # flagscope's views: naive UTC, nanoseconds exact
    assert fetch(fresh, f"SELECT epoch_ns(time) FROM events WHERE {where} ORDER BY 1")[1] == [
        (ns,) for ns in KNOWN_NS
    ]
