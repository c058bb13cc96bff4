"""The narrow tables beside each lake file (issue 12 point 2): the cohort diff reads them and
must answer exactly as the wide rows do.

Lakes are built to order three ways — rows written as the lake writers write them
(tests/test_cohort_stages.py's production-like traffic: retried duplicates, crossover
users, testers marked by trace and by user, traces that evaluated the flag twice, flag
evaluations in log records, other flags, spans that are not requests, traffic just outside
the window, and spans that arrive in a later file than their trace's root), the
benchmark's generator (bench/make_lake.py), and a real collector fed by the OpenTelemetry
SDK's exporters — and each answer of the narrow path (Exclusions, CohortSums, UnitSums,
the verdict) is held against the wide path's on the same lake. Also: old lakes without
the tables, compaction, replay and retention keeping them in step with their files,
engines reading the lake not seeing them, hour-partition pruning, the memory limit.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.make_lake import make_lake
from flagscope.analysis.cli import main
from flagscope.analysis.cohorts import TABLES_ENV, CohortQuery, Evaluations
from flagscope.analysis.diff import run_diff
from flagscope.analysis.result import DiffOptions, TrafficFilter
from flagscope.collector.errors import LakeQueryError
from flagscope.collector.lake import narrow, narrow_views, testers
from flagscope.collector.lake.layout import GLOB, files_between, partition_hour, partitions
from flagscope.collector.lake.maintain import compact, expire
from flagscope.collector.lake.narrow import REQUESTS, SCHEMAS, companion, companions, has_companions
from flagscope.collector.lake.read import connect, fetch, sql_literal
from flagscope.collector.lake.resources import MEMORY_ENV, THREADS_ENV, memory_limit
from tests.helpers import RunningCollector, make_settings
from tests.otlp_requests import post
from tests.synthetic import request, write
from tests.test_cohort_stages import END, FLAG, START, production_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sample_data"))
import shop

Row = dict[str, Any]


# -- comparing answers --------------------------------------------------------------------
def assert_same(wide: Any, narrow: Any, where: str = "") -> None:
    """Equal field by field; floats to 1e-9 relative (DuckDB's parallel sums add in an
    order that varies from run to run, on either path)."""
    if dataclasses.is_dataclass(wide) and not isinstance(wide, type):
        assert type(wide) is type(narrow), where
        for f in dataclasses.fields(wide):
            assert_same(getattr(wide, f.name), getattr(narrow, f.name), f"{where}.{f.name}")
    elif isinstance(wide, dict):
        assert isinstance(narrow, dict) and wide.keys() == narrow.keys(), where
        for key in wide:
            assert_same(wide[key], narrow[key], f"{where}[{key!r}]")
    elif isinstance(wide, list | tuple):
        assert isinstance(narrow, list | tuple) and len(wide) == len(narrow), where
        for i, (a, b) in enumerate(zip(wide, narrow, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(wide, float) and isinstance(narrow, float):
        assert math.isclose(wide, narrow, rel_tol=1e-9, abs_tol=1e-12), (where, wide, narrow)
    else:
        assert wide == narrow, (where, wide, narrow)


def stages(lake: Path, tables: str, q: CohortQuery) -> tuple[Any, ...]:
    """Every stage's result on `tables`: units per variant, what was excluded, the sums."""
    con = connect(lake)
    try:
        evaluations = Evaluations.collect(con, q.flag, q.start, q.end, tables=tables)
        labelled = evaluations.label(q)
        return evaluations.variants, labelled.excluded, labelled.unit_sums()
    finally:
        con.close()


def assert_paths_agree(lake: Path, q: CohortQuery) -> tuple[Any, ...]:
    wide = stages(lake, "wide", q)
    narrow = stages(lake, "narrow", q)
    assert_same(wide, narrow, "stages")
    return narrow


def query(**kw: Any) -> CohortQuery:
    return CohortQuery(FLAG, "on", "off", START, END, **kw)


QUERIES = [
    query(),
    query(test_mode=TrafficFilter.INCLUDE),
    query(test_mode=TrafficFilter.ONLY),
    query(service="payments"),
    query(route="POST /checkout"),
]


def write_in_files(lake: Path, rows: list[Row], seed: int) -> list[Path]:
    """`rows` as a lake writer stores a stream of them: in four files (WAL segments), a
    trace's root span usually in a later one than its children (roots end last), some
    spans later still, and a retried batch stored twice."""
    rng = random.Random(seed)
    files: list[list[Row]] = [[], [], [], []]
    for row in rows:
        late = rng.random() < 0.15
        root = row["signal"] == "span" and not row["parent_span_id"]
        files[3 if late else (2 if root else rng.randint(0, 1))].append(row)
    files[1] += rng.sample(files[0], k=min(25, len(files[0])))  # a client's retry
    for seq, part in enumerate(files, 1):
        write(lake, part, name=f"syn-{seq:012d}-000")
    return sorted(lake.glob(GLOB))


@pytest.fixture(
    scope="module", params=[False, True], ids=["one-evaluation-per-trace", "traces-evaluated-twice"]
)
def production(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("production")
    write_in_files(lake, production_rows(20240611, twice=request.param), seed=7)
    return lake


# -- the answers ----------------------------------------------------------------------------
def test_the_lake_writers_write_each_files_narrow_tables(production):
    files = sorted(production.glob(GLOB))
    assert len(files) >= 4 and all(has_companions(f) for f in files)


@pytest.mark.parametrize("q", QUERIES, ids=["exclude", "include", "only", "service", "route"])
def test_narrow_tables_give_the_wide_rows_answers(production, q):
    """Units, exclusions (test, crossover, without a user) and every per-user sum."""
    variants, excluded, sums = assert_paths_agree(production, q)
    assert {"on", "off"} <= set(variants) and sums.overall and sums.strata
    if q.test_mode is TrafficFilter.EXCLUDE and q.service is None and q.route is None:
        assert all(excluded.as_dict().values())  # the traffic has every kind of exclusion


def test_a_route_filter_matches_each_requests_own_path(tmp_path):
    """Two kinds of request share a stratum (service frontend, route 'GET /x') but not a
    path: one with method GET and route /x, one with its name 'GET /x' alone. --route /x
    counts the first kind only, --route 'GET /x' both, on either path and from kept
    summaries: the requests carry an entry key (service, route, path) besides the
    stratum's."""
    rows = []
    for i in range(30):
        for variant in ("on", "off"):
            at = START + timedelta(minutes=i, seconds=1)
            rows += request(f"u{i}-{variant}", variant, flag=FLAG, route="/x", at=at)
            named = request(f"v{i}-{variant}", variant, flag=FLAG, route="/x", at=at)
            named[0].update(http_method=None, http_route=None)  # its name: "GET /x"
            rows += named
    write(tmp_path, rows)
    for route, requests in (("/x", 30), ("GET /x", 60)):
        _, _, sums = assert_paths_agree(tmp_path, query(route=route))
        assert {c: s.requests for c, s in sums.overall.items()} == {
            "treatment": requests,
            "baseline": requests,
        }, route
        assert {(s.service_name, s.route) for s in sums.strata} == {("frontend", "GET /x")}
        kept = tmp_path / "summaries"  # the same from kept per-hour summaries
        options = DiffOptions(FLAG, START, END, route=route)
        for result in (run_diff(tmp_path, options, summaries=kept), run_diff(tmp_path, options)):
            assert (result.treatment.requests, result.baseline.requests) == (requests, requests)


def test_entries_are_named_from_the_files_that_name_them(tmp_path, monkeypatch):
    """The names of the window's entries are read a few files at a time until each has
    one: a route only one file has is named, a damaged entries table of a file after every
    name was found is never opened, and a key no table names is an error."""
    monkeypatch.setattr(narrow_views, "_FIRST_BATCH", 1)  # batches of 1, 4, 16 files
    hour = START.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    for i in range(7):  # 7 files of one hour partition
        rows = []
        for n in range(6):
            at = hour + timedelta(minutes=i, seconds=n)
            rows += request(f"u{i}-{n}", ("on", "off")[n % 2], flag=FLAG, at=at)
            if i == 3:  # in the 4th file only: the second batch
                rows += request(f"r{n}", ("on", "off")[n % 2], flag=FLAG, route="/rare", at=at)
        write(tmp_path, rows, name=f"syn-{i + 1:012d}-000")
    files = sorted(tmp_path.glob(GLOB))
    assert len(files) == 7 and files == files_between(tmp_path, START, END)
    expected = stages(tmp_path, "wide", query())
    kept = companion(files[-1], narrow.ENTRIES).read_bytes()
    companion(files[-1], narrow.ENTRIES).write_bytes(b"damaged")  # the third batch's
    variants, excluded, sums = stages(tmp_path, "narrow", query())
    assert_same(expected, (variants, excluded, sums))
    assert {s.route for s in sums.strata} == {"GET /checkout", "GET /rare"}
    # a key that no entries table names would drop its requests: an error, not a diff
    companion(files[-1], narrow.ENTRIES).write_bytes(kept)
    pq.write_table(narrow.ENTRIES_SCHEMA.empty_table(), companion(files[3], narrow.ENTRIES))
    with pytest.raises(LakeQueryError, match="no entries table"):
        stages(tmp_path, "narrow", query())


def test_a_lake_without_narrow_tables_gives_the_same_answers(production, tmp_path):
    """Files written before the narrow tables (or by a crash between a file and its
    tables) are read through the same projection from the wide rows: an old lake, and a
    lake half old, half new."""
    expected = stages(production, "wide", query())
    old = tmp_path / "old"
    shutil.copytree(production, old)
    files = sorted(old.glob(GLOB))
    for path in files[::2]:
        for table in companions(path):
            table.unlink()
    assert_same(expected, stages(old, "narrow", query()), "half old")
    for path in files[1::2]:
        for table in companions(path):
            table.unlink()
    assert not any(has_companions(f) for f in files)
    assert_same(expected, stages(old, "narrow", query()), "old")


# The requests table as written before it held the strata's keys (`narrow.LEGACY_REQUESTS`).
LEGACY_REQUESTS_SQL = (
    "COPY (SELECT time_unix_nano, trace_key_hi, trace_key_lo, span_key, "
    "coalesce(parent_span_id, '') = '' AS root, service_name, http_method, http_route, name, "
    "duration_ms, is_error, user_id FROM read_parquet({wide}) WHERE is_entry) TO {legacy} "
    "(FORMAT parquet)"
)


def test_requests_tables_from_before_their_keys_are_read_then_replaced(production, tmp_path):
    """A file whose requests table holds the strings (no keys, no entries table) is read
    through that table, not its wide file, with the same answers; compaction writes the new
    tables for it and removes the old one (also where a crash left both)."""
    expected = stages(production, "wide", query())
    lake = tmp_path / "lake"
    shutil.copytree(production, lake)
    files = sorted(lake.glob(GLOB))
    con = duckdb.connect()
    for path in files[::2]:
        companion(path, REQUESTS).unlink()
        companion(path, narrow.ENTRIES).unlink()
        legacy = companion(path, narrow.LEGACY_REQUESTS)
        con.execute(
            LEGACY_REQUESTS_SQL.format(wide=sql_literal(str(path)), legacy=sql_literal(str(legacy)))
        )
    legacy_tables = [companion(f, narrow.LEGACY_REQUESTS) for f in files[::2]]
    assert_same(expected, stages(lake, "narrow", query()), "half legacy")
    in_window = set(files_between(lake, START, END))
    (damaged, *_) = [companion(f, narrow.LEGACY_REQUESTS) for f in files[::2] if f in in_window]
    kept = damaged.read_bytes()
    damaged.write_bytes(b"damaged")  # read, not the wide file
    with pytest.raises(duckdb.Error):
        stages(lake, "narrow", query())
    damaged.write_bytes(kept)
    # a crash after the new requests table, before the old one was removed and the entries
    crashed = files[1]
    shutil.copy(legacy_tables[0], companion(crashed, narrow.LEGACY_REQUESTS))
    companion(crashed, narrow.ENTRIES).unlink()
    legacy_tables.append(companion(crashed, narrow.LEGACY_REQUESTS))
    compact(lake, min_files=10**6, target_rows=10**6, writer="syn")  # merges nothing
    assert all(has_companions(f) for f in files) and not any(p.exists() for p in legacy_tables)
    assert_same(expected, stages(lake, "narrow", query()), "replaced")


def unmarked_user(lake: Path) -> str:
    """A user the flag's evaluations name on a request in the window, never marked a tester."""
    _, rows = fetch(
        lake,
        "SELECT min(e.user_id) FROM events_raw e JOIN events_raw r USING (trace_id) "
        "WHERE r.is_entry AND r.time >= $start AND r.time < $end AND e.flags[$flag] = 'on' "
        "AND e.user_id NOT IN (SELECT user_id FROM events_raw WHERE is_test AND user_id "
        "IS NOT NULL)",
        {"flag": FLAG, "start": START, "end": END},
    )
    return str(rows[0][0])


def test_testers_marked_long_before_the_window_come_from_their_own_tables(production, tmp_path):
    """A user marked as a tester once, days before the window, is excluded on both paths.
    The narrow path learns it from that hour's testers table, not its evaluations (damaged
    here: reading every partition's evaluations made a diff cost more as the lake aged),
    and a file from before the testers tables gets its testers from its evaluations."""
    lake = tmp_path / "lake"
    shutil.copytree(production, lake)
    user = unmarked_user(lake)
    before = stages(lake, "wide", query())[1]
    far = write(
        lake,
        request(user, None, test_root="staff", at=START - timedelta(days=3)),
        name="syn-000000000050-000",
    )
    (old,) = [f for f in far.glob(GLOB) if f.name.startswith("syn-000000000050")]
    assert has_companions(old) and old.parent not in {
        f.parent for f in files_between(lake, START - timedelta(days=1), END)
    }
    expected = stages(lake, "wide", query())
    assert expected[1].test_users == before.test_users + 1
    companion(old, "evaluations").write_bytes(b"damaged")
    assert_same(expected, stages(lake, "narrow", query()), "testers table")
    companion(old, "evaluations").unlink()
    for path in sorted(lake.glob(GLOB)):
        companion(path, "testers").unlink()  # written before the testers tables
    assert_same(expected, stages(lake, "narrow", query()), "from the evaluations")


def test_a_long_running_reader_keeps_each_files_testers_until_the_file_changes(
    production, tmp_path
):
    """Testers read once are kept (the guard's looks, the web view), by the file's identity:
    a testers table rewritten under its name (as a replay does) is read again."""
    lake = tmp_path / "lake"
    shutil.copytree(production, lake)
    first = stages(lake, "narrow", query())
    assert_same(stages(lake, "wide", query()), first, "first")
    tables = [companion(f, "testers") for f in sorted(lake.glob(GLOB))]
    assert all(str(t) in testers._kept for t in tables)
    user = unmarked_user(lake)
    kept = pq.read_table(tables[0]).column("user_id").to_pylist()
    marked = pa.table({"user_id": pa.array([*kept, user], pa.string())})
    replaced = tables[0].with_name("replacement")
    pq.write_table(marked, replaced)
    replaced.rename(tables[0])  # a new file under the same name, one more tester in it
    again = stages(lake, "narrow", query())
    assert again[1].test_users == first[1].test_users + 1
    assert testers._kept[str(tables[0])][1] == {*kept, user}


def test_the_diff_gives_the_same_verdict_and_numbers_on_both_paths(production, monkeypatch):
    options = DiffOptions(flag=FLAG, start=START, end=END, expected_split={"on": 0.5, "off": 0.5})
    monkeypatch.setenv(TABLES_ENV, "wide")
    wide = run_diff(production, options, charts=True).to_dict()
    monkeypatch.setenv(TABLES_ENV, "narrow")
    narrow = run_diff(production, options, charts=True).to_dict()
    assert_same(wide, narrow, "diff")


def test_a_diff_that_raced_compaction_lists_the_files_again(production, tmp_path, monkeypatch):
    """A file merged away between listing its tables and reading them (DuckDB: "No files
    found that match the pattern") sends the diff back to list the lake again."""
    lake = tmp_path / "lake"
    shutil.copytree(production, lake)
    options = DiffOptions(flag=FLAG, start=START, end=END)
    expected = run_diff(production, options).to_dict()
    define, raced = narrow_views.define_views, []

    def define_then_compact(con: Any, lake_dir: Path, *args: Any) -> None:
        define(con, lake_dir, *args)
        if not raced:  # as compaction: the merged file and its tables, then the old gone
            old = sorted(lake.glob(GLOB))[-1]  # not the first listed: DuckDB holds that open
            merged = old.with_name("syn-000000000090-000.parquet")
            for table in SCHEMAS:
                shutil.copy(companion(old, table), companion(merged, table))
            shutil.copy(old, merged)
            for path in [*companions(old), old]:
                path.unlink()
            raced.append(old)

    monkeypatch.setattr(narrow_views, "define_views", define_then_compact)
    assert_same(expected, run_diff(lake, options).to_dict(), "after the race")
    assert raced


def test_a_tables_setting_that_is_neither_path_is_refused(production, monkeypatch):
    monkeypatch.setenv(TABLES_ENV, "narow")
    options = DiffOptions(flag=FLAG, start=START, end=END)
    with pytest.raises(Exception, match="expected 'narrow' \\(the default\\) or 'wide'"):
        run_diff(production, options)


def test_each_flags_evaluations_are_row_groups_of_their_own(production, tmp_path, monkeypatch):
    """A diff reads one flag's evaluations and the test marks: the evaluations table keeps
    each flag (and the test-marked rows) in row groups of their own, so the engines skip
    the rest by the row groups' statistics; the rows are the file's, unchanged."""
    monkeypatch.setattr(narrow, "FLAG_GROUP_ROWS", 1)  # a row group at every change
    order = [(n, "ascending") for n in ("flag", "is_test", "time_unix_nano", "trace_key_lo")]
    order += [("user_id", "ascending"), ("variant", "ascending")]
    kinds = set()
    for wide in sorted(production.glob(GLOB)):
        before = pq.read_table(companion(wide, "evaluations"))
        copy = tmp_path / wide.parent.relative_to(production) / wide.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(wide, copy)
        narrow.write_companions(copy)
        written = pq.ParquetFile(companion(copy, "evaluations"))
        after = written.read()
        assert after.sort_by(order).equals(before.sort_by(order))
        columns = written.schema_arrow.names
        groups = set()
        for index in range(written.metadata.num_row_groups):
            group = written.metadata.row_group(index)
            if group.num_rows == 0:
                continue
            stats = {n: group.column(columns.index(n)).statistics for n in ("flag", "is_test")}
            assert stats["is_test"].min == stats["is_test"].max
            flag = stats["flag"]
            assert not flag.has_min_max or flag.min == flag.max
            groups.add((stats["is_test"].min, flag.min if flag.has_min_max else None))
        rows = zip(after["is_test"].to_pylist(), after["flag"].to_pylist(), strict=True)
        assert groups == set(rows)
        kinds |= groups
    assert len({flag for _, flag in kinds}) >= 3 and {test for test, _ in kinds} == {False, True}


# -- in step with their files ---------------------------------------------------------------
def test_compaction_writes_only_the_tables_a_file_lacks(production, tmp_path):
    """A lake from before the testers tables gets them at the next compaction; its files'
    other tables stay as they are (rewriting every table of a 30-day lake would stall it)."""
    lake = tmp_path / "lake"
    shutil.copytree(production, lake)
    files = sorted(lake.glob(GLOB))
    for path in files:
        companion(path, "testers").unlink()
    kept = {f: companion(f, REQUESTS).stat().st_mtime_ns for f in files}
    compact(lake, min_files=10**6, target_rows=10**6, writer="syn")  # merges nothing
    assert all(has_companions(f) for f in files)
    assert kept == {f: companion(f, REQUESTS).stat().st_mtime_ns for f in files}
    assert_same(stages(lake, "wide", query()), stages(lake, "narrow", query()), "completed")


def test_compaction_keeps_the_narrow_tables_in_step(production, tmp_path):
    """Merged files get their tables and the inputs' go with them; a file without tables
    gets them, a table without its file is removed; the answers do not change."""
    lake = tmp_path / "lake"
    shutil.copytree(production, lake)
    expected = stages(lake, "wide", query())
    first, second, *_ = sorted(lake.glob(GLOB))
    for table in companions(second):
        table.unlink()  # a file from before the narrow tables
    orphan = companion(first.parent / "syn-000000000099-000.parquet", REQUESTS)
    shutil.copy(companion(first, REQUESTS), orphan)  # a crash between deleting the two

    assert compact(lake, min_files=2, target_rows=10**6, writer="syn") > 0
    files = sorted(lake.glob(GLOB))
    assert all(f.name.startswith("compact-syn-") for f in files)
    assert all(has_companions(f) for f in files)
    left = {p.name for p in lake.glob("**/_*.pq")}
    assert left == {c.name for f in files for c in companions(f)}  # no orphan, no input's
    assert_same(expected, stages(lake, "narrow", query()), "compacted")


def test_replay_rewrites_and_retention_removes_the_narrow_tables(tmp_path):
    rows = production_rows(3, twice=False)
    write(tmp_path, rows, name="w-000000000001-000")
    before = {p: p.read_bytes() for p in tmp_path.glob("**/_*.pq")}
    write(tmp_path, rows, name="w-000000000001-000")  # a WAL replay
    after = {p: p.read_bytes() for p in tmp_path.glob("**/_*.pq")}
    assert before.keys() == after.keys() and len(before) == len(SCHEMAS) * len(
        list(tmp_path.glob(GLOB))
    )
    assert not list(tmp_path.glob("**/*.tmp"))
    assert expire(tmp_path, retention_days=1, now=datetime.now(UTC).timestamp() + 30 * 86400)
    assert not list(tmp_path.glob("**/_*.pq")) and not partitions(tmp_path)


def test_engines_reading_the_lake_see_only_its_events(production):
    """The README's `read_parquet('<lake>/**/*.parquet')` and pandas given the directory
    read the wide rows and nothing of the narrow tables."""
    (events,) = fetch(production, "SELECT count(*) FROM events_raw")[1][0]
    glob = f"{production}/{GLOB}"
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()[0][0] == events
    frame = pd.read_parquet(production)
    assert len(frame) == events and "flag" not in frame.columns


# -- hour partitions -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("bench") / "lake"
    end = datetime(2026, 11, 30, 12, tzinfo=UTC)
    make_lake(lake, 60_000, seed=5, hours=6, end=end, rows_per_file=4_000, threads=1)
    return lake


def test_a_window_reads_only_the_hour_partitions_it_needs(bench_lake):
    hours = partitions(bench_lake)
    assert len(hours) == 6
    start, end = datetime(2026, 11, 30, 8, 30), datetime(2026, 11, 30, 9, 0, 1)
    chosen = {p.parent for p in files_between(bench_lake, start, end)}
    assert chosen == {bench_lake / "date=2026-11-30" / f"hour={h}" for h in ("08", "09")}
    assert len(files_between(bench_lake, None, None)) == len(list(bench_lake.glob(GLOB)))


def test_partition_names_parse_as_retention_parses_them(tmp_path):
    """The fast parse of the writers' names, and strptime's forms for any other (so the
    readers and retention agree on an hour); a name neither reads is always listed."""
    for day, hour in (("2026-11-30", "08"), ("2024-1-5", "3"), ("2026-W49-1", "01")):
        path = tmp_path / f"date={day}" / f"hour={hour}"
        try:
            expected = int(
                (
                    datetime.strptime(f"{day} {hour}", "%Y-%m-%d %H") - datetime(1970, 1, 1)
                ).total_seconds()
                // 3600
            )
        except ValueError:
            expected = None
        assert partition_hour(path) == expected, path


@pytest.mark.parametrize(
    ("start", "end"), [(7, 9), (9, 12), (6, 12)], ids=["middle", "last-hours", "whole-lake"]
)
def test_pruned_windows_agree_with_the_wide_rows_on_a_benchmark_lake(bench_lake, start, end):
    """The window's hours, the evaluations' hour of slack either side, and the testers
    marked anywhere in the lake: with the partitions pruned, nothing is missed."""
    day = datetime(2026, 11, 30)
    q = CohortQuery("new-checkout", "on", "off", day.replace(hour=start), day.replace(hour=end))
    _, excluded, sums = assert_paths_agree(bench_lake, q)
    assert excluded.test_requests > 0 and set(sums.overall) == {"treatment", "baseline"}


def test_a_benchmark_lake_without_narrow_tables_answers_alike(bench_lake, tmp_path):
    old = tmp_path / "old"
    end = datetime(2026, 11, 30, 12, tzinfo=UTC)
    make_lake(old, 60_000, seed=5, hours=6, end=end, rows_per_file=4_000, threads=1, narrow=False)
    assert not list(old.glob("**/_*.pq"))
    q = CohortQuery(
        "new-checkout", "on", "off", datetime(2026, 11, 30, 7), datetime(2026, 11, 30, 9)
    )
    assert_same(stages(bench_lake, "narrow", q), stages(old, "narrow", q), "old bench lake")


# -- a real collector -----------------------------------------------------------------------
@pytest.mark.socket
def test_a_collectors_lake_answers_alike_on_both_paths(tmp_path, monkeypatch):
    """The sample shop's OpenTelemetry SDK exporters send to a collector (HTTP and gRPC),
    one batch twice (a client's retry); every file it writes has its narrow tables and the
    diff is the same on both paths, before and after compaction."""
    running = RunningCollector(make_settings(tmp_path, max_request_bytes=8 * 1024 * 1024))
    running.start()
    try:
        shop.run(running.http_url, running.grpc_target, shop.ShopConfig(users=60, requests=300))
        retried = _retried_batch()
        assert post(running, "/v1/traces", retried).status == 200
        assert post(running, "/v1/traces", retried).status == 200
    finally:
        running.stop()  # drains the WAL into the lake
    lake = running.lake
    files = sorted(lake.glob(GLOB))
    assert files and all(has_companions(f) for f in files)
    first, last = fetch(lake, "SELECT min(time), max(time) FROM events_raw")[1][0]
    options = DiffOptions(flag=shop.FLAG, start=first, end=last + timedelta(seconds=1))
    results = []
    for step in ("written", "compacted"):
        if step == "compacted":
            compact(lake, min_files=1, target_rows=10**6, writer="test")
            assert all(has_companions(f) for f in lake.glob(GLOB))
        for tables in ("wide", "narrow"):
            monkeypatch.setenv(TABLES_ENV, tables)
            results.append(run_diff(lake, options))
    assert results[0].treatment.requests > 0 and results[0].baseline.requests > 0
    for result in results[1:]:
        assert_same(results[0].to_dict(), result.to_dict(), "collector")


def _retried_batch() -> bytes:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    from tests.otlp_requests import kv, new_span_id, new_trace_id

    request = trace_service_pb2.ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", "shop-frontend"))
    now = int(datetime.now(UTC).timestamp() * 1e9)
    span = rs.scope_spans.add().spans.add(
        trace_id=new_trace_id(),
        span_id=new_span_id(),
        name="POST /checkout",
        kind=2,
        start_time_unix_nano=now,
        end_time_unix_nano=now + 5_000_000,
    )
    span.attributes.append(kv("feature_flag.key", shop.FLAG))
    span.attributes.append(kv("feature_flag.result.variant", "on"))
    span.attributes.append(kv("enduser.id", "retrying-user"))
    return request.SerializeToString()


# -- memory ---------------------------------------------------------------------------------
def test_lake_queries_run_within_the_memory_limit_set(production, monkeypatch):
    monkeypatch.setenv(MEMORY_ENV, "512MB")
    (limit,) = fetch(production, "SELECT current_setting('memory_limit')")[1][0]
    assert limit in ("512.0 MB", "488.2 MiB")
    monkeypatch.delenv(MEMORY_ENV)
    (limit,) = fetch(production, "SELECT current_setting('memory_limit')")[1][0]
    assert limit != "512.0 MB"
    assert memory_limit("25%").endswith("MiB") and memory_limit("2GB") == "2GB"


def test_a_memory_limit_that_is_no_size_is_a_usage_error(production, monkeypatch, capsys):
    monkeypatch.setenv(MEMORY_ENV, "lots")
    assert main(["query", "--lake", str(production), "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert "FLAGSCOPE_MEMORY_LIMIT='lots' is not a memory size" in err and "4GB" in err
    assert "Traceback" not in err


def test_lake_queries_run_on_the_threads_set(production, monkeypatch, capsys):
    monkeypatch.setenv(THREADS_ENV, "1")
    assert fetch(production, "SELECT current_setting('threads')")[1][0][0] == 1
    monkeypatch.delenv(THREADS_ENV)
    assert fetch(production, "SELECT current_setting('threads')")[1][0][0] == os.cpu_count()
    monkeypatch.setenv(THREADS_ENV, "0")
    assert main(["query", "--lake", str(production), "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert "FLAGSCOPE_THREADS='0' is not a number of threads: set it to 1 or more" in err
    assert "Traceback" not in err
