"""`--engine spark` (issue 12 point 4): the cohort stage as Spark SQL over the same lake
gives the DuckDB stage's counts and sufficient statistics, and so the same verdict.

Two lakes: the recorded sample lake, and one built to order — bench/make_lake.py's traffic
(testers by trace and by user, monitors, several services) with, added, crossover users,
traces that evaluated the flag twice with different variants, evaluations that name no
user, anonymous requests, a second entry span per trace, and a whole file delivered twice
(retried spans). Spark runs in one session for the module (local mode, two cores) and the
tests skip, naming the fix, only where no Java runtime can be found.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flagscope.analysis.cli import main
from flagscope.analysis.cohorts import CohortQuery, CohortSums, Evaluations, UnitSums
from flagscope.analysis.schedule.config import parse_config
from flagscope.analysis.spark import cohorts as spark_cohorts
from flagscope.analysis.spark import session as spark_session
from flagscope.analysis.stats import RatioStats
from flagscope.collector.errors import FlagscopeError
from flagscope.collector.lake.read import connect, fetch
from tests import synthetic
from tests.helpers import SHORT_LIVED_JVM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from make_lake import make_lake

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "lake"
FLAG = "new-checkout"
REL = 1e-9  # floating sums are added in another order; every count is compared exactly


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    if not spark_session.java_found():
        pytest.skip(
            "no Java runtime for Spark: `make test` installs Debian's default-jre-headless "
            "when run as root; else apt-get install default-jre-headless, or set JAVA_HOME"
        )
    pytest.importorskip("pyspark.sql", reason="pyspark: pip install -e '.[test]'")
    # small data: no adaptive re-planning and no code generation, which only cost time here
    tuning = {
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "2",
        "spark.sql.adaptive.enabled": "false",
        "spark.sql.codegen.wholeStage": "false",
        "spark.driver.extraJavaOptions": SHORT_LIVED_JVM,
    }
    session = spark_session.session("local[2]", **tuning)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _extra_rows(at: datetime) -> list[dict[str, Any]]:
    """Traffic the bench lake does not have, each trace at its own instants (a tie in the
    first evaluation's time would leave the first variant to chance in either engine)."""
    clock = iter(at + timedelta(milliseconds=37 * i) for i in range(10_000))
    rows: list[dict[str, Any]] = []

    def trace(user: str | None, variants: list[str], *, eval_user: bool = True, **kw: Any):
        root = synthetic.span(f"{next(synthetic._ids):032x}", user=user, at=next(clock), **kw)
        trace_id, root_id = root["trace_id"], root["span_id"]
        rows.append(root)
        for variant in variants:  # the first evaluation decides the trace's variant
            rows.append(
                synthetic.span(
                    trace_id,
                    kind=1,
                    parent=root_id,
                    service="checkout-service",
                    user=user if eval_user else None,
                    flags={FLAG: variant},
                    at=next(clock),
                )
            )
        # a second entry span (another service's SERVER span): in the breakdown, not overall
        rows.append(
            synthetic.span(trace_id, parent=root_id, service="orders", route="/orders",
                           ms=kw.get("ms", 100.0) * 0.6, user=None, at=next(clock))
        )  # fmt: skip

    for i in range(40):
        # crossovers: first on, later off (their off requests are left out), and back
        trace(f"cross-{i}", ["on"], ms=90.0 + i, error=i % 7 == 0)
        trace(f"cross-{i}", ["off"], ms=80.0 + i)
        trace(f"cross-{i}", ["on", "off"], ms=70.0 + i)
        # several evaluations in one trace, the first one deciding
        trace(f"twice-{i}", ["off", "on", "off"], ms=120.0 + 3 * i, error=i % 5 == 0)
        # the evaluation names nobody: the request's user is the unit (OpenFeature JS)
        trace(f"js-{i}", ["on" if i % 2 else "off"], eval_user=False, ms=60.0 + 2 * i)
        # anonymous requests: each trace its own unit
        trace(None, ["on" if i % 3 else "off"], ms=50.0 + i, route="/")
        # the same latency many times: ties at the quantile cuts
        trace(f"tie-{i}", ["on" if i % 4 else "off"], ms=100.0)
    for i in range(6):
        # testers: one marked request excludes every request of theirs
        trace(f"tester-{i}", ["on"], test="test_user=true" if i % 2 else None)
        trace(f"tester-{i}", ["on"], test="test_user=true")
        trace(f"staff-{i}", ["off"], ms=200.0)  # untouched: a control for the tests
    return rows


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, datetime, datetime]:
    lake = tmp_path_factory.mktemp("built") / "lake"
    end = datetime(2026, 11, 30, 12, 0)
    info = make_lake(lake, 30_000, seed=7, hours=2, end=end, rows_per_file=6_000)
    start = datetime.fromisoformat(info.start).replace(tzinfo=None)
    synthetic.write(lake, _extra_rows(start + timedelta(minutes=5)), "syn-000000000001-000")
    first = sorted(lake.glob("date=*/hour=*/bench-*.parquet"))[0]
    shutil.copy(first, first.with_name("retry-000000000001-000.parquet"))  # retried spans
    return lake, start, end


def _sample_window() -> tuple[datetime, datetime]:
    first, last = fetch(SAMPLE, "SELECT min(time), max(time) FROM events_raw")[1][0]
    return first - timedelta(hours=1), last + timedelta(hours=1)


def _both(spark: Any, lake: Path, q: CohortQuery) -> tuple[tuple, tuple]:
    """(variants, exclusions, unit sums) from each engine."""
    con = connect(lake)
    try:
        evaluations = Evaluations.collect(con, q.flag, q.start, q.end)
        labelled = evaluations.label(q)
        duck = (evaluations.variants, labelled.excluded, labelled.unit_sums())
    finally:
        con.close()

    def work(session: Any) -> tuple:
        evaluations = spark_cohorts.Evaluations.collect(session, q.flag, q.start, q.end)
        labelled = evaluations.label(q)
        return evaluations.variants, labelled.excluded, labelled.unit_sums()

    return duck, spark_session.run(lake, work, spark)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


def assert_same_ratio(got: RatioStats, want: RatioStats, where: str, integral: bool) -> None:
    """Counts (n; and sums of integers: requests, errors, requests below a cut) exactly."""
    assert got.n == want.n, where
    for name in ("sum_x", "sum_y", "sum_x2", "sum_y2", "sum_xy"):
        a, b = getattr(got, name), getattr(want, name)
        exact = integral or name == "sum_y" or name == "sum_y2"
        assert (a == b) if exact else _close(a, b), (where, name, a, b)
    assert (got.leave_one_out is None) == (want.leave_one_out is None), where
    if want.leave_one_out is not None and got.leave_one_out is not None:
        for a, b in zip(got.leave_one_out, want.leave_one_out, strict=True):
            assert math.isclose(a, b, rel_tol=1e-7, abs_tol=1e-12), (where, a, b)


def assert_same_sums(got: CohortSums, want: CohortSums) -> None:
    where = f"{want.cohort} {want.service_name} {want.route}"
    assert (got.cohort, got.service_name, got.route) == (want.cohort, want.service_name, want.route)
    assert got.grid.keys() == want.grid.keys()
    for p, value in want.grid.items():
        assert _close(got.grid[p], value), (where, p, got.grid[p], value)
    assert_same_ratio(got.errors, want.errors, f"{where} errors", integral=True)
    assert_same_ratio(got.latency, want.latency, f"{where} latency", integral=False)
    for k, (a, b) in enumerate(zip(got.below_quantile, want.below_quantile, strict=True)):
        assert_same_ratio(a, b, f"{where} below q{k}", integral=True)


def assert_same_unit_sums(got: UnitSums, want: UnitSums) -> None:
    assert set(got.overall) == set(want.overall) == {"treatment", "baseline"}
    for cohort, sums in want.overall.items():
        assert_same_sums(got.overall[cohort], sums)
    assert len(got.strata) == len(want.strata) >= 2
    for a, b in zip(got.strata, want.strata, strict=True):
        assert_same_sums(a, b)
    assert got.adjusted.keys() == want.adjusted.keys() == {"error_rate", "mean_latency"}
    for metric, by_cohort in want.adjusted.items():
        assert got.adjusted[metric].keys() == by_cohort.keys()
        for cohort, m in by_cohort.items():
            g = got.adjusted[metric][cohort]
            assert g.units == m.units, (metric, cohort)
            for name in ("estimate", "variance", "stratified"):
                a, b = getattr(g, name), getattr(m, name)
                assert math.isclose(a, b, rel_tol=1e-7), (metric, cohort, name, a, b)


def test_the_sample_lake_gives_the_same_cohorts_in_spark(spark: Any) -> None:
    start, end = _sample_window()
    duck, got = _both(spark, SAMPLE, CohortQuery(FLAG, "on", "off", start, end))
    assert got[0] == duck[0] and sum(duck[0].values()) > 100
    assert got[1] == duck[1]
    assert_same_unit_sums(got[2], duck[2])


QUERIES = {
    "default": {},
    "one service": {"service": "checkout-service"},
}


@pytest.mark.parametrize("case", list(QUERIES))
def test_a_lake_built_to_order_gives_the_same_cohorts_in_spark(
    spark: Any, built: tuple[Path, datetime, datetime], case: str
) -> None:
    lake, start, end = built
    q = CohortQuery(FLAG, "on", "off", start, end, **QUERIES[case])
    duck, got = _both(spark, lake, q)
    assert got[0] == duck[0]
    assert got[1] == duck[1]
    excluded = duck[1]
    if case == "default":  # what the lake was built to hold is there, and counted
        assert excluded.crossover_users >= 40 and excluded.crossover_requests >= 40
        assert excluded.test_users > 6 and excluded.test_requests > 0
        assert excluded.requests_without_user > 40
        assert {f.name for f in fields(excluded)} == set(excluded.as_dict())
    assert_same_unit_sums(got[2], duck[2])


def _diff(capsys: pytest.CaptureFixture[str], lake: Path, *args: str) -> tuple[int, str]:
    code = main(["diff", "--lake", str(lake), "--flag", FLAG, "--format", "json", *args])
    return code, capsys.readouterr().out


def test_diff_with_engine_spark_prints_the_duckdb_verdict(
    spark: Any, built: tuple[Path, datetime, datetime], capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    lake, start, end = built
    window = (
        "--from",
        start.isoformat(),
        "--to",
        end.isoformat(),
        "--expected-split",
        "on=0.2,off=0.8",
    )
    duck_code, duck_out = _diff(capsys, lake, *window)
    spark_code, spark_out = _diff(capsys, lake, *window, "--engine", "spark")
    duck, got = json.loads(duck_out), json.loads(spark_out)
    assert (spark_code, got["verdict"], got["reason"]) == (
        duck_code,
        duck["verdict"],
        duck["reason"],
    )
    assert got["cohorts"] == duck["cohorts"] or _same_numbers(got["cohorts"], duck["cohorts"])
    routes = [(b["service"], b["route"], b["only_in"]) for b in got["breakdown"]]
    assert routes == [(b["service"], b["route"], b["only_in"]) for b in duck["breakdown"]]
    assert len(routes) > 2
    for a, b in zip(got["breakdown"], duck["breakdown"], strict=True):
        assert [m["verdict"] for m in a["metrics"]] == [m["verdict"] for m in b["metrics"]]
    assert got["excluded"] == duck["excluded"]


def _same_numbers(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_numbers(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def _run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flagscope", *args], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip


def test_engine_spark_without_java_names_the_fix(tmp_path: Path) -> None:
    """No JVM is started: the message names `make java` and JAVA_HOME, exit 2, no traceback."""
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}  # no java on the PATH, no JAVA_HOME
    done = _run_cli("diff", "--lake", str(SAMPLE), "--flag", FLAG, "--engine", "spark", env=env)
    assert done.returncode == 2, done.stderr
    assert "make java" in done.stderr and "JAVA_HOME" in done.stderr
    assert "Traceback" not in done.stderr


def test_cuped_with_engine_spark_is_a_usage_error_naming_duckdb() -> None:
    with pytest.raises(FlagscopeError, match="--engine duckdb"):
        main_args = ["diff", "--lake", str(SAMPLE), "--flag", FLAG, "--cuped", "--engine", "spark"]
        from flagscope.analysis.cli import _options, build_parser

        _options(build_parser().parse_args(main_args))


def test_a_scheduled_report_names_its_engine() -> None:
    doc = {
        "reports": {"engine": "spark", "flag": [{"flag": FLAG}, {"flag": "b", "engine": "duckdb"}]}
    }
    config = parse_config(doc)
    now = datetime(2026, 12, 1)
    assert [r.options(now).engine for r in config.reports] == ["spark", "duckdb"]
    with pytest.raises(FlagscopeError, match='engine = "spark"'):
        parse_config({"reports": {"flag": [{"flag": FLAG, "engine": "sparc"}]}})
    with pytest.raises(FlagscopeError, match="--engine duckdb"):
        parse_config({"reports": {"flag": [{"flag": FLAG, "engine": "spark", "cuped": "7d"}]}})
