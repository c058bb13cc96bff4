"""The lake's join keys (trace_key_hi/lo, span_key, is_entry): written by the collector,
derived for files from before they existed (or from before issue 12, with a UUID trace key
and naive nanosecond times), and the same either way."""

from __future__ import annotations

import random

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from flagscope.analysis.diff import run_diff
from flagscope.collector.config import Settings
from flagscope.collector.convert import Converter
from flagscope.collector.lake.maintain import compact
from flagscope.collector.lake.read import connect, fetch
from flagscope.collector.lake.schema import (
    INPUT_SCHEMA,
    KEY_COLUMNS,
    NANOS,
    SCHEMA,
    SPAN_ID_SQL,
    TRACE_ID_SQL,
    TRACE_KEY,
    complete,
    derived_keys,
    is_entry,
    span_key,
)
from flagscope.collector.lake.write import write_table
from flagscope.collector.otlp import SIGNAL_CODES, TRACES
from flagscope.collector.tagging import Tagger
from tests.helpers import query
from tests.synthetic import request, write
from tests.test_cohorts import _lenient, options

TRACE = bytes.fromhex("ff00112233445566778899aabbccddee")
ROOT = bytes.fromhex("8000000000000001")  # high bit set: a negative span_key
CHILD = bytes.fromhex("0123456789abcdef")


def _converted() -> pa.Table:
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for span_id, parent, kind in (
        (ROOT, b"", 1),
        (CHILD, ROOT, 2),
        (b"\x00" * 7 + b"\x09", CHILD, 3),
    ):
        span = spans.add(
            trace_id=TRACE,
            span_id=span_id,
            parent_span_id=parent,
            kind=kind,
            name="s",
            start_time_unix_nano=1,
            end_time_unix_nano=2,
        )
        span.attributes.add(key="k").value.string_value = "v"
    records = [(SIGNAL_CODES[TRACES.name], req.SerializeToString())]
    return Converter(Tagger.from_settings(Settings())).table(records)


def halves(trace_id: bytes) -> tuple[int, int]:
    """The trace key's two halves: the id's bytes 0–7 and 8–15, big-endian, signed."""
    return tuple(int.from_bytes(trace_id[i : i + 8], "big", signed=True) for i in (0, 8))


def spelled(table: pa.Table) -> pa.Table:
    """`table` (SCHEMA) with the hex ids the files leave to the keys filled in, as every
    file held them before they were left null."""
    con = duckdb.connect()
    con.register("stored", table)
    hexes = con.sql(
        f"SELECT {TRACE_ID_SQL} AS trace_id, {SPAN_ID_SQL} AS span_id FROM stored"
    ).to_arrow_table()
    for name in ("trace_id", "span_id"):
        table = table.set_column(SCHEMA.get_field_index(name), name, hexes[name])
    return table


def older(table: pa.Table, keys: bool) -> pa.Table:
    """`table` (SCHEMA) as files held it before issue 12: times as naive nanosecond
    timestamps, no `*_unix_nano` columns, and the trace key as a UUID (`keys`) or, as
    before issue 10, no keys at all; the hex ids stored."""
    table = spelled(table)
    columns = {}
    for field in SCHEMA:
        name = field.name
        if name in NANOS:
            columns[name] = table[NANOS[name]].cast(pa.timestamp("ns"))
        elif name not in NANOS.values() and name not in KEY_COLUMNS:
            columns[name] = table[name]
    if keys:
        raw = [
            None
            if hi is None
            else hi.to_bytes(8, "big", signed=True) + lo.to_bytes(8, "big", signed=True)
            for hi, lo in zip(
                table["trace_key_hi"].to_pylist(), table["trace_key_lo"].to_pylist(), strict=True
            )
        ]
        storage = pa.array(raw, pa.binary(16))
        columns[TRACE_KEY] = pa.ExtensionArray.from_storage(pa.uuid(), storage)
        columns["span_key"] = table["span_key"]
        columns["is_entry"] = table["is_entry"]
    return pa.table(columns)


def test_the_collector_writes_the_ids_as_keys():
    table = _converted()
    assert table.schema.equals(SCHEMA)
    hi, lo = halves(TRACE)
    assert (table["trace_key_hi"].to_pylist(), table["trace_key_lo"].to_pylist()) == (
        [hi] * 3,
        [lo] * 3,
    )
    assert table["span_key"].to_pylist() == [-(2**63) + 1, 0x0123456789ABCDEF, 9]
    # root (an INTERNAL span without parent) and SERVER spans are requests; the CLIENT span not
    assert table["is_entry"].to_pylist() == [True, True, False]


def test_older_files_get_the_collectors_keys():
    table = _converted()
    assert table["trace_id"].null_count == table["span_id"].null_count == 3  # left to the keys
    assert spelled(table)["span_id"].to_pylist() == [ROOT.hex(), CHILD.hex(), "0" * 15 + "9"]
    keyless = spelled(table).drop_columns(list(KEY_COLUMNS))
    for form in (keyless, older(table, True), older(table, False)):
        assert complete(form).equals(table)


def test_sql_derives_the_same_keys_from_the_hex_ids(tmp_path):
    table = _converted()
    path = tmp_path / "keys.parquet"
    pq.write_table(spelled(table), path)
    derived = derived_keys()
    checks = ", ".join(f"{name} = {derived[name]}" for name in KEY_COLUMNS)
    rows = duckdb.sql(f"SELECT {checks} FROM read_parquet('{path}')").fetchall()
    assert rows == [(True,) * len(KEY_COLUMNS)] * 3


def _one_file(directory) -> tuple[str, pa.Table]:
    """`_traffic()` written as one keyed lake file: (its partition, its table)."""
    (path,) = write(directory, _traffic()).glob("**/*.parquet")
    return str(path.parent.relative_to(directory)), pq.read_table(path)


def _put(directory, partition: str, table: pa.Table, name: str, legacy: bool | str) -> None:
    """A file in `partition` as written before the keys existed (`legacy`), before issue 12
    (`legacy="uuid"`), or now."""
    (directory / partition).mkdir(parents=True, exist_ok=True)
    form = older(table, keys=legacy == "uuid") if legacy else table
    pq.write_table(form, directory / partition / f"{name}.parquet")


def _traffic() -> list[dict]:
    """80 rows of 40 traces, with random 128-bit trace ids and 64-bit span ids (half of
    them negative as span keys), and one retried entry span."""
    rng = random.Random(7)
    rows = []
    for i in range(40):
        rows += request(f"u{i}", "on" if i % 2 else "off", ms=100 + 5 * (i % 7), error=i % 9 == 0)
    ids: dict[str, str] = {}

    def fresh(old: str | None, bits: int) -> str | None:
        return (
            None if old is None else ids.setdefault(old, f"{rng.getrandbits(bits):0{bits // 4}x}")
        )

    for row in rows:
        row["trace_id"] = fresh(row["trace_id"], 128)
        row["span_id"] = fresh(row["span_id"], 64)
        row["parent_span_id"] = fresh(row["parent_span_id"], 64)
        row["event_id"] = row["trace_id"] + row["span_id"]
    return [*rows[:41], dict(rows[40]), *rows[41:]]  # row 40 is a root span: sent twice


def _rounded(value):
    """`value` with every float rounded to 10 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def test_a_lake_from_before_the_keys_gives_the_same_diff(tmp_path):
    partition, table = _one_file(tmp_path / "new")
    expected = run_diff(tmp_path / "new", options(thresholds=_lenient())).to_dict()
    assert expected["cohorts"]["treatment"]["requests"] == 20  # the retry counted once
    half = 41  # between a trace's root span and its retried copy
    want = query(tmp_path / "new", "SELECT * FROM events_raw ORDER BY event_id, span_id")

    lakes = []
    for legacy in (True, "uuid"):
        old = tmp_path / f"old-{legacy}"  # every file in the older form
        _put(old, partition, table, "old-000000000001-000", legacy=legacy)
        mixed = tmp_path / f"mixed-{legacy}"  # one file from before, one from after
        _put(mixed, partition, table.slice(0, half), "mix-000000000001-000", legacy=legacy)
        _put(mixed, partition, table.slice(half), "mix-000000000002-000", legacy=False)
        # the file from before listed after one from now: the views, defined quickly over
        # the first file listed (read.wide_rows), meet it only at the query, then again
        late = tmp_path / f"late-{legacy}"
        _put(late, partition, table.slice(0, half), "late-000000000001-000", legacy=False)
        _put(late, partition, table.slice(half), "late-000000000002-000", legacy=legacy)
        lakes += [old, mixed, late]
    for directory in lakes:
        got = run_diff(directory, options(thresholds=_lenient())).to_dict()
        for key in ("verdict", "cohorts", "metrics", "breakdown", "excluded"):
            # the same numbers, up to the order DuckDB sums them in (last bits of a float)
            assert _rounded(got[key]) == _rounded(expected[key]), (directory.name, key)
        # every column as the collector writes it now, times to the nanosecond
        assert query(directory, "SELECT * FROM events_raw ORDER BY event_id, span_id") == want
        # one row per span in `events`, the retried copy too when it is in the other form
        assert query(directory, "SELECT count(*) FROM events") == [(len(want) - 1,)]
        # and through `fetch` (every reader's path), whose views are first defined quickly
        # (read.wide_rows) and, meeting the older file, again thoroughly
        rows = fetch(directory, "SELECT * FROM events_raw ORDER BY event_id, span_id")[1]
        assert rows == want, directory.name


def test_a_lake_that_gets_its_first_keyed_file_while_open_keeps_every_key(tmp_path):
    partition, table = _one_file(tmp_path / "new")
    directory = tmp_path / "lake"
    _put(directory, partition, table, "w-000000000001-000", legacy=True)
    con = connect(directory)  # the views are defined now, before the keyed file
    _put(directory, partition, table, "w-000000000002-000", legacy=False)  # e.g. upgraded
    rows = con.execute(
        "SELECT count(*), count(trace_key), count(span_key), count(time_unix_nano) FROM events_raw"
    )
    assert rows.fetchall() == [(2 * table.num_rows,) * 4]
    con.close()


def test_compaction_gives_older_files_their_keys(tmp_path):
    partition, table = _one_file(tmp_path / "new")
    directory = tmp_path / "lake"
    _put(directory, partition, table.slice(0, 30), "w-000000000001-000", legacy=True)
    _put(directory, partition, table.slice(30), "w-000000000002-000", legacy=False)
    compact(directory, min_files=2, target_rows=10_000, writer="w")
    (merged,) = directory.glob("**/*.parquet")
    assert pq.read_schema(merged).equals(SCHEMA)
    assert pq.read_table(merged).equals(table)


def test_compaction_rewrites_each_file_from_before_issue_12_in_the_current_form(tmp_path):
    """Even one file alone, or one too large to merge: then every engine reads the lake."""
    partition, table = _one_file(tmp_path / "new")
    directory = tmp_path / "lake"
    _put(directory, partition, table, "w-000000000001-000", legacy="uuid")
    _put(directory, "date=2020-01-01/hour=00", table, "w-000000000002-000", legacy=True)
    _put(directory, "date=2020-01-01/hour=01", table, "other-000000000003-000", legacy=True)
    assert compact(directory, min_files=8, target_rows=10, writer="w") == 2
    for path in directory.glob("**/compact-w-*.parquet"):
        assert pq.read_table(path).equals(table), path
    # another writer's file is left to that writer (the views still read it)
    (theirs,) = directory.glob("**/other-*.parquet")
    assert "time_unix_nano" not in pq.read_schema(theirs).names


def _without_keys(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pydict(
        {f.name: [r.get(f.name) for r in rows] for f in INPUT_SCHEMA}, schema=INPUT_SCHEMA
    )


def test_odd_ids_get_the_keys_the_collector_would_give(tmp_path):
    rows = request("u1", "on")  # a root and a child
    odd = [
        dict(rows[0], span_id="9"),
        dict(rows[0], span_id="zz" * 8),
        dict(rows[0], span_id="0" * 16, parent_span_id="", kind=1),
    ]
    keys = complete(_without_keys(rows + odd)).select(list(KEY_COLUMNS)).to_pylist()
    assert [k["span_key"] for k in keys[2:]] == [None, None, span_key(bytes(8))]  # 8 bytes or none
    assert keys[4]["is_entry"] is is_entry(1, b"")  # an empty parent is no parent
    assert {(k["trace_key_hi"], k["trace_key_lo"]) for k in keys} == {
        halves(bytes.fromhex(rows[0]["trace_id"]))
    }


def test_entry_spans_without_a_span_key_are_never_merged(tmp_path):
    rows = request("u2", "off") + request("u3", "on")
    root = rows[0]
    rows += [
        dict(root, span_id="1", event_id=root["trace_id"] + "1"),
        dict(root, span_id="2", event_id=root["trace_id"] + "2"),
        dict(root),
    ]  # and a real retry, so that de-duplication runs
    write_table(tmp_path, _without_keys(rows), "x-000000000001-000")
    result = run_diff(tmp_path, options(thresholds=_lenient()))
    assert result.baseline.requests == 3  # the root once, both key-less entry spans


def test_a_flag_evaluations_own_root_span_is_not_a_request(tmp_path):
    """Issue 10 point 5: OpenFeature's SpanHook, evaluating outside an active span, starts a
    root INTERNAL span `feature_flag.evaluation`; a worker doing that must not add ~0 ms
    requests. Python and SQL derivations agree, and the diff counts only real requests."""
    assert is_entry(1, b"", "feature_flag.evaluation") is False
    assert is_entry(2, b"", "feature_flag.evaluation") is True  # a SERVER span stays one
    assert is_entry(1, b"", "GET /checkout") is True
    rows = request("u1", "on") + request("u2", "off")
    evaluation = dict(
        rows[1],
        span_id=f"{0xE7:016x}",
        parent_span_id=None,
        kind=1,
        name="feature_flag.evaluation",
        duration_ms=0.01,
    )
    keys = complete(_without_keys([*rows, evaluation])).select(list(KEY_COLUMNS)).to_pylist()
    assert [k["is_entry"] for k in keys] == [True, False, True, False, False]
    workers = [dict(evaluation, trace_id=f"{0xB0 + i:032x}", user_id=f"w{i}") for i in range(5)]
    lake = write(tmp_path, [*rows, *workers])
    result = run_diff(lake, options(thresholds=_lenient()))
    assert (result.treatment.requests, result.baseline.requests) == (1, 1)
