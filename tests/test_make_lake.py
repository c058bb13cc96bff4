"""The synthetic lake generator of the benchmarks (bench/make_lake.py): the collector's
schema and layout, the cohort structure and the injected effect, visible with plain SQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.make_lake import Effect, make_lake, read_manifest
from flagscope.collector.lake.schema import INPUT_SCHEMA, SCHEMA, TRACE_KEY
from flagscope.collector.lake.write import write_table
from tests.helpers import query

END = datetime(2026, 1, 15, 12, 30, tzinfo=UTC)
EVENTS = 40_000
FLAG = "new-checkout"
ROLLOUT = 0.2
EFFECT = Effect(latency=0.30, errors=0.02)

# Trace-level cohorts, test traffic excluded by trace and by user (DESIGN contract 3).
COHORTS = f"""
WITH assigned AS (
  SELECT trace_id, min(element_at(flags, '{FLAG}')[1]) AS variant,
         min(user_id) AS user_id
  FROM events WHERE element_at(flags, '{FLAG}')[1] IS NOT NULL GROUP BY trace_id
), test_users AS (
  SELECT DISTINCT user_id FROM events WHERE is_test AND user_id IS NOT NULL
), test_traces AS (
  SELECT DISTINCT trace_id FROM events
  WHERE is_test OR user_id IN (SELECT user_id FROM test_users)
), requests AS (
  SELECT a.variant, a.user_id, e.service_name, e.http_method, e.http_route, e.duration_ms,
         e.is_error
  FROM events e JOIN assigned a USING (trace_id)
  WHERE e.signal = 'span' AND (e.kind = 2 OR e.parent_span_id IS NULL)
    AND e.trace_id NOT IN (SELECT trace_id FROM test_traces)
)
"""


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    lake_dir = tmp_path_factory.mktemp("synthetic") / "lake"
    make_lake(lake_dir, EVENTS, seed=1, flag=FLAG, rollout=ROLLOUT, effect=EFFECT, end=END)
    return lake_dir, read_manifest(lake_dir)


def test_the_lake_has_the_collectors_schema_and_layout(generated, tmp_path: Path) -> None:
    lake_dir, _ = generated
    # A lake the collector's own writer made from a converted-shape table.
    reference = tmp_path / "collector-lake"
    one = {name: [None] for name in INPUT_SCHEMA.names}
    one.update(
        time=[1_700_000_000_000_000_000],
        signal=["span"],
        event_id=["a" * 48],
        flags=[[("k", "v")]],
        is_test=[False],
    )
    write_table(reference, pa.Table.from_pydict(one, schema=INPUT_SCHEMA), "w-000000000001-000")
    assert query(lake_dir, "DESCRIBE events") == query(reference, "DESCRIBE events")
    assert [r[0] for r in query(lake_dir, "DESCRIBE events")] == [*SCHEMA.names, TRACE_KEY]

    files = sorted(lake_dir.glob("**/*.parquet"))
    assert files and not list(lake_dir.glob("**/*.tmp"))
    for path in files:
        rel = path.relative_to(lake_dir).as_posix()
        assert re.fullmatch(r"date=\d{4}-\d{2}-\d{2}/hour=\d{2}/bench-\d{12}-000\.parquet", rel), (
            rel
        )
        assert pq.read_schema(path).equals(SCHEMA), path  # types and nullability, exactly
    # Every row lies in its file's hour partition, as the collector's writer puts it.
    misplaced = query(
        lake_dir,
        f"""
        SELECT count(*) FROM read_parquet('{lake_dir}/**/*.parquet', filename = true)
        WHERE NOT contains(filename, strftime(time, 'date=%Y-%m-%d/hour=%H/'))""",
    )
    assert misplaced == [(0,)]


def test_size_window_and_ids(generated) -> None:
    lake_dir, manifest = generated
    ((count, distinct, first, last),) = query(
        lake_dir, "SELECT count(*), count(DISTINCT event_id), min(time), max(time) FROM events_raw"
    )
    assert abs(count - EVENTS) < 0.03 * EVENTS
    assert distinct == count == manifest["events"]
    assert datetime.fromisoformat(manifest["start"]) <= first.replace(tzinfo=UTC)
    assert (
        last.replace(tzinfo=UTC) < datetime.fromisoformat(manifest["end"]) == END.replace(minute=0)
    )
    ((bad_ids,),) = query(
        lake_dir,
        """
        SELECT count(*) FROM events WHERE NOT regexp_full_match(trace_id, '[0-9a-f]{32}')
          OR NOT regexp_full_match(span_id, '[0-9a-f]{16}')
          OR (signal = 'span' AND event_id <> trace_id || span_id)
          OR (signal = 'log' AND NOT regexp_full_match(event_id, '[0-9a-f]{32}'))""",
    )
    assert bad_ids == 0
    # One root per trace: a SERVER span of shop-frontend with its route, status and latency.
    ((traces, roots, good_roots),) = query(
        lake_dir,
        """
        SELECT count(DISTINCT trace_id), count(*) FILTER (signal = 'span' AND parent_span_id IS NULL),
               count(*) FILTER (signal = 'span' AND parent_span_id IS NULL AND kind = 2
                                AND service_name = 'shop-frontend' AND http_route IS NOT NULL
                                AND http_status_code IS NOT NULL AND duration_ms > 0)
        FROM events""",
    )
    assert traces == roots == good_roots
    # Nulls where the collector leaves them: logs have no span fields, spans no log fields.
    ((wrong,),) = query(
        lake_dir,
        """
        SELECT count(*) FROM events WHERE flags IS NULL OR is_test IS NULL
          OR (signal = 'log' AND (kind IS NOT NULL OR duration_ms IS NOT NULL OR severity_number IS NULL))
          OR (signal = 'span' AND (severity_number IS NOT NULL OR observed_time IS NOT NULL
                                   OR duration_ms IS NULL OR end_time IS NULL))""",
    )
    assert wrong == 0
    assert {r[0] for r in query(lake_dir, "SELECT DISTINCT signal FROM events")} == {"span", "log"}
    flags = {r[0] for r in query(lake_dir, "SELECT DISTINCT unnest(map_keys(flags)) FROM events")}
    assert flags == {FLAG, "dark-mode", "recs-v2"}


def test_cohort_shares_follow_the_rollout(generated) -> None:
    lake_dir, _ = generated
    ((on_users, users, crossover),) = query(
        lake_dir,
        COHORTS
        + """
        SELECT count(DISTINCT user_id) FILTER (variant = 'on'), count(DISTINCT user_id),
               (SELECT count(*) FROM (SELECT user_id FROM requests GROUP BY 1
                                      HAVING count(DISTINCT variant) > 1))
        FROM requests""",
    )
    assert users > 300
    assert abs(on_users / users - ROLLOUT) < 0.05
    assert crossover == 0
    # The flag is evaluated on the cart and checkout routes only, in checkout-service.
    where = set(
        query(
            lake_dir,
            f"""
        SELECT DISTINCT e.signal, e.service_name FROM events e
        WHERE element_at(flags, '{FLAG}')[1] IS NOT NULL""",
        )
    )
    assert where == {("span", "checkout-service"), ("log", "checkout-service")}
    routes = {
        r[0]
        for r in query(
            lake_dir,
            COHORTS
            + """
        SELECT DISTINCT http_method || ' ' || http_route FROM requests
        WHERE service_name = 'shop-frontend'""",
        )
    }
    assert routes == {"GET /cart", "POST /cart", "POST /checkout"}


def test_the_injected_effect_is_on_one_route(generated) -> None:
    lake_dir, _ = generated
    stats = {
        (route, variant): (n, p95, errors)
        for route, variant, n, p95, errors in query(
            lake_dir,
            COHORTS
            + """
            SELECT http_method || ' ' || http_route, variant, count(*),
                   quantile_cont(duration_ms, 0.95), avg(is_error::INTEGER)
            FROM requests WHERE service_name = 'shop-frontend' GROUP BY ALL""",
        )
    }
    on, off = stats[("POST /checkout", "on")], stats[("POST /checkout", "off")]
    assert on[0] > 150 and off[0] > 600
    assert 1.30 - 0.15 < on[1] / off[1] < 1.30 + 0.15
    assert 0.0 < on[2] - off[2] < 0.05  # +2 pp injected
    for route in ("GET /cart", "POST /cart"):  # no effect there
        assert 0.85 < stats[(route, "on")][1] / stats[(route, "off")][1] < 1.15


def test_test_traffic_is_marked(generated) -> None:
    lake_dir, _ = generated
    # QA users: every row of theirs is test traffic, and they are all inside the flag.
    ((qa_rows, qa_unmarked, qa_off),) = query(
        lake_dir,
        f"""
        SELECT count(*), count(*) FILTER (NOT is_test OR test_reason IS NULL),
               count(*) FILTER (element_at(flags, '{FLAG}')[1] = 'off')
        FROM events WHERE user_id LIKE 'qa-%'""",
    )
    assert qa_rows > 100 and qa_unmarked == 0 and qa_off == 0
    ((test_roots_without_reason,),) = query(
        lake_dir,
        """
        SELECT count(*) FROM events WHERE is_test <> (test_reason IS NOT NULL)""",
    )
    assert test_roots_without_reason == 0
    # Staff testers: marked on some requests only (exclusion by user needed).
    ((marked, unmarked),) = query(
        lake_dir,
        """
        SELECT count(*) FILTER (is_test), count(*) FILTER (NOT is_test)
        FROM events WHERE user_id LIKE 'emp-%' AND parent_span_id IS NULL AND signal = 'span'""",
    )
    assert marked > 0 and unmarked > 0
    # Monitors: the marker is on the root only (exclusion by trace needed).
    ((monitor_rows, monitor_marked, marked_roots),) = query(
        lake_dir,
        """
        SELECT count(*), count(*) FILTER (is_test),
               (SELECT count(*) FROM events r WHERE r.parent_span_id IS NULL AND r.signal = 'span'
                  AND r.is_test AND r.trace_id IN (SELECT trace_id FROM events WHERE user_id LIKE 'monitor-%'))
        FROM events WHERE user_id LIKE 'monitor-%'""",
    )
    assert monitor_rows > 0 and monitor_marked == 0 and marked_roots == monitor_rows
    # Without exclusion the cohorts would hold test users; with it, none.
    ((leaked,),) = query(
        lake_dir,
        COHORTS
        + """
        SELECT count(*) FROM requests
        WHERE user_id LIKE 'qa-%' OR user_id LIKE 'emp-%' OR user_id LIKE 'monitor-%'""",
    )
    assert leaked == 0


def fingerprint(lake_dir: Path) -> tuple:
    files = sorted(p.relative_to(lake_dir).as_posix() for p in lake_dir.glob("**/*.parquet"))
    digest = query(
        lake_dir,
        "SELECT count(*), md5(string_agg(e::VARCHAR, '|' ORDER BY event_id)) FROM events_raw e",
    )
    return tuple(files), digest[0]


def test_a_seed_gives_the_same_lake(tmp_path: Path) -> None:
    files, content = fingerprint(_small(tmp_path / "a", seed=7))
    assert (files, content) == fingerprint(_small(tmp_path / "b", seed=7))
    # The rows do not depend on how they are split into files (nor on worker processes).
    split_files, split_content = fingerprint(
        _small(tmp_path / "c", seed=7, rows_per_file=300, threads=1)
    )
    assert split_content == content and len(split_files) > len(files)
    assert fingerprint(_small(tmp_path / "d", seed=8))[1] != content


def _small(lake_dir: Path, seed: int, **kwargs) -> Path:
    make_lake(lake_dir, 2_000, seed=seed, end=END, hours=3, **kwargs)
    return lake_dir
