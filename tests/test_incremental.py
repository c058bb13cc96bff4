"""Incremental scheduled reports (issue 12 point 3): a window merged from kept per-hour
summaries gives a rescan's counts, verdicts and exclusions, its quantiles within the
bins' precision; kept hours are reused, late data is folded in, compaction changes
nothing, and the scheduler keeps the summaries beside its reports."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from flagscope.analysis.diff import DuckDBStage, diff_with, run_diff
from flagscope.analysis.incremental import bins
from flagscope.analysis.incremental.plan import REACH, pieces
from flagscope.analysis.incremental.stage import IncrementalStage
from flagscope.analysis.incremental.store import VERSION, Store
from flagscope.analysis.result import DiffOptions, DiffResult, TrafficFilter
from flagscope.analysis.schedule.config import parse_config
from flagscope.analysis.schedule.runner import SUMMARIES_NAME, Scheduler
from flagscope.analysis.verdict import Verdict
from flagscope.collector.lake import maintain
from flagscope.collector.lake.read import run
from tests import synthetic

DAY = datetime(2026, 11, 20)
HOURS = 6
FLAG = "new-checkout"
_names = iter(range(1, 10_000))


def _write(lake: Path, rows: list[dict[str, Any]]) -> None:
    synthetic.write(lake, rows, name=f"reports-{next(_names):012d}-000")


def _trace(
    rng: random.Random,
    at: datetime,
    user: str | None,
    variant: str | None,
    *,
    eval_user: bool = True,
    route: str = "/checkout",
    test: str | None = None,
    slower: float = 1.0,
    worse: float = 0.0,
) -> list[dict[str, Any]]:
    """A request through two services: the frontend's root SERVER span, the flag's
    evaluation on an INTERNAL child, and for /checkout a SERVER span of `payments` (an
    entry span of its own service) starting 8 ms later."""
    trace = f"{rng.getrandbits(128):032x}"
    root = f"{rng.getrandbits(64):016x}"
    ms = 60.0 * slower * rng.lognormvariate(0, 0.6) * (3.0 if route == "/checkout" else 1.0)
    error = rng.random() < 0.02 + worse
    rows = [
        synthetic.span(
            trace, span_id=root, route=route, ms=ms, error=error, user=user, test=test, at=at
        )
    ]
    if variant is not None:
        rows.append(
            synthetic.span(
                trace,
                kind=1,
                parent=root,
                service="flags",
                route="evaluate",
                ms=0.2,
                user=user if eval_user else None,
                flags={FLAG: variant},
                at=at + timedelta(milliseconds=1),
            )
        )
    if route == "/checkout":
        rows.append(
            synthetic.span(
                trace,
                parent=root,
                service="payments",
                route="/pay",
                method="POST",
                ms=ms * 0.7,
                error=error,
                at=at + timedelta(milliseconds=8),
            )
        )
    return rows


def _traffic(rng: random.Random, users: int = 500) -> list[dict[str, Any]]:
    """Six hours of a shop: users with very different request counts; `on` (30 %) is 25 %
    slower and fails 2 pp more on /checkout; crossover users, testers marked in one
    request only (in the last hour), anonymous traffic, evaluations naming nobody,
    a third variant, and traces that cross an hour boundary."""
    rows: list[dict[str, Any]] = []
    span = HOURS * 3600

    def at() -> datetime:
        return DAY + timedelta(seconds=rng.random() * span)

    for i in range(users):
        variant = "on" if rng.random() < 0.3 else "off"
        count = min(int(rng.paretovariate(1.2)), 60)
        for _ in range(count):
            route = rng.choice(("/checkout", "/cart", "/"))
            effect = variant == "on" and route == "/checkout"
            rows += _trace(
                rng,
                at(),
                f"user-{i}",
                variant,
                route=route,
                slower=1.25 if effect else 1.0,
                worse=0.02 if effect else 0.0,
            )
    for i in range(20):  # crossover: `off` in the first hours, `on` later
        for hour, variant in ((0.5, "off"), (1.7, "off"), (3.2, "on"), (4.9, "on")):
            rows += _trace(rng, DAY + timedelta(hours=hour), f"switcher-{i}", variant)
    for i in range(5):  # testers: marked on one request, in the last hour, only
        for _ in range(6):
            rows += _trace(rng, at(), f"staff-{i}", "on")
        rows += _trace(rng, DAY + timedelta(hours=5.5), f"staff-{i}", "on", test="test_user=true")
    for _ in range(60):  # anonymous
        rows += _trace(rng, at(), None, rng.choice(("on", "off")))
    for i in range(40):  # the evaluation names nobody; the request carries the user
        rows += _trace(rng, at(), f"quiet-{i}", rng.choice(("on", "off")), eval_user=False)
    for i in range(10):
        rows += _trace(rng, at(), f"beta-{i}", "beta")
    for h in range(1, HOURS):  # roots just before the hour, their payments span after it
        for i in range(6):
            moment = DAY + timedelta(hours=h) - timedelta(milliseconds=3)
            rows += _trace(rng, moment, f"edge-{i}", "on" if i % 2 else "off")
    return rows


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("incremental") / "lake"
    rows = _traffic(random.Random(12))
    rng = random.Random(3)
    rng.shuffle(rows)
    for part in range(4):  # several files per hour, as several flushes write them
        _write(root, rows[part::4])
    return root


def _options(start: datetime, end: datetime, **changes: Any) -> DiffOptions:
    return DiffOptions(flag=FLAG, start=start, end=end, sequential=True, **changes)


def _pair(
    lake: Path, options: DiffOptions, store: Path
) -> tuple[DiffResult, DiffResult, IncrementalStage]:
    """A rescan's result and the incremental one's, with the stage (its counts)."""
    full = run_diff(lake, options, charts=True)
    stage = IncrementalStage(Store(store), lake, DuckDBStage)
    merged = run(lake, lambda con: diff_with(con, options, stage, charts=True))
    return full, merged, stage


def _close(a: float, b: float, rel: float = 1e-9, absolute: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=absolute)


def assert_same(full: DiffResult, merged: DiffResult) -> None:
    """Counts, sums and verdicts identical; quantiles within the bins' precision."""
    assert merged.verdict == full.verdict, (full.reason, merged.reason)
    assert merged.excluded == full.excluded
    for a, b in ((full.treatment, merged.treatment), (full.baseline, merged.baseline)):
        assert (b.variant, b.users, b.requests, b.errors) == (
            a.variant,
            a.users,
            a.requests,
            a.errors,
        )
        assert _close(b.mean_ms, a.mean_ms)
        for name, value in a.quantiles_ms.items():
            assert abs(b.quantiles_ms[name] - value) <= bins.PRECISION * value, name
    for ours, theirs in ((merged.metrics, full.metrics), (merged.adjusted, full.adjusted)):
        for m, f in zip(ours, theirs, strict=True):
            assert m.metric == f.metric
            assert m.judgement.verdict == f.judgement.verdict, (m.metric, f.judgement, m.judgement)
            if not m.metric.startswith("p"):  # error rate and mean latency: exact sums
                assert _close(m.estimate.diff, f.estimate.diff, 1e-7)
                assert _close(m.estimate.diff_lo, f.estimate.diff_lo, 1e-7)
                assert _close(m.estimate.diff_hi, f.estimate.diff_hi, 1e-7)
    assert [(s.service, s.route) for s in merged.breakdown] == [
        (s.service, s.route) for s in full.breakdown
    ]
    for m, f in zip(merged.breakdown, full.breakdown, strict=True):
        assert (m.treatment.users, m.treatment.requests, m.treatment.errors) == (
            f.treatment.users,
            f.treatment.requests,
            f.treatment.errors,
        )
        assert (m.baseline.users, m.baseline.requests) == (f.baseline.users, f.baseline.requests)
        for mm, fm in zip(m.metrics, f.metrics, strict=True):
            assert mm.judgement.verdict == fm.judgement.verdict, (m.route, mm.metric)


def test_the_planted_lake_is_what_the_scenario_says(lake: Path, tmp_path: Path) -> None:
    full = run_diff(lake, _options(DAY, DAY + timedelta(hours=HOURS)))
    assert full.verdict is Verdict.REGRESSION
    assert full.excluded["crossover_users"] == 20
    assert full.excluded["test_users"] == 5
    assert full.excluded["requests_without_user"] > 0


WINDOWS = [
    (DAY, DAY + timedelta(hours=HOURS)),  # whole hours, as hourly runs have
    (DAY + timedelta(hours=1), DAY + timedelta(hours=5)),  # cutting traces at both ends
    (DAY + timedelta(minutes=17), DAY + timedelta(hours=5, minutes=41, seconds=30)),
    (DAY + timedelta(hours=1, minutes=59), DAY + timedelta(hours=4, minutes=1)),  # short ends
    (DAY + timedelta(hours=2, minutes=10), DAY + timedelta(hours=2, minutes=50)),  # in one hour
    (DAY - timedelta(hours=2), DAY + timedelta(hours=HOURS + 2)),  # beyond the data
]


@pytest.mark.parametrize(
    "window", WINDOWS, ids=["hours", "cut-traces", "partial", "short-ends", "inside", "wide"]
)
def test_a_merged_window_gives_the_rescans_answers(
    lake: Path, tmp_path: Path, window: tuple[datetime, datetime]
) -> None:
    options = _options(*window)
    full, merged, stage = _pair(lake, options, tmp_path / "summaries")
    assert_same(full, merged)
    kept = sum(p.whole_hour for p in pieces(*window))
    assert stage.counts.computed == kept
    # ... and from the kept summaries alone, next time
    again = IncrementalStage(Store(tmp_path / "summaries"), lake, DuckDBStage)
    assert_same(full, run(lake, lambda con: diff_with(con, options, again, charts=True)))
    assert (again.counts.computed, again.counts.reused) == (0, kept)


@pytest.mark.parametrize(
    "changes",
    [
        {"test_mode": TrafficFilter.INCLUDE},
        {"test_mode": TrafficFilter.ONLY},
        {"service": "payments"},
        {"route": "/checkout"},
        {"variant": "beta", "baseline": "off"},
    ],
    ids=["include-tests", "only-tests", "service", "route", "third-variant"],
)
def test_filters_and_test_modes_agree_too(
    lake: Path, tmp_path: Path, changes: dict[str, Any]
) -> None:
    options = _options(DAY, DAY + timedelta(hours=HOURS), **changes)
    full, merged, _ = _pair(lake, options, tmp_path / "summaries")
    assert_same(full, merged)


def test_kept_hours_are_reused_late_data_is_folded_in_compaction_changes_nothing(
    lake: Path, tmp_path: Path
) -> None:
    own = tmp_path / "lake"
    own.mkdir()
    for path in lake.rglob("*.parquet"):
        target = own / path.relative_to(lake)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    store = tmp_path / "summaries"
    options = _options(DAY, DAY + timedelta(hours=HOURS))

    _, first, stage = _pair(own, options, store)
    assert (stage.counts.computed, stage.counts.reused, stage.counts.fresh) == (HOURS, 0, 0)
    full, again, stage = _pair(own, options, store)
    assert (stage.counts.computed, stage.counts.reused) == (0, HOURS)
    assert_same(full, again)

    # late data: spans of 02:xx arriving after the hour was summarised
    rng = random.Random(99)
    late = []
    for i in range(40):
        moment = DAY + timedelta(hours=2, minutes=rng.random() * 60)
        late += _trace(rng, moment, f"late-{i}", "on", route="/checkout", slower=3.0, worse=0.2)
    _write(own, late)
    full, merged, stage = _pair(own, options, store)
    assert stage.counts.computed == 3  # 02 and its neighbours, whose reach touches it
    assert stage.counts.reused == HOURS - 3
    assert merged.treatment.requests > first.treatment.requests
    assert_same(full, merged)

    # compaction rewrites every file of every hour and keeps its rows
    assert maintain.compact(own, min_files=2, target_rows=1_000_000, writer="reports") > 0
    full, merged, stage = _pair(own, options, store)
    assert (stage.counts.computed, stage.counts.reused) == (0, HOURS)
    assert_same(full, merged)


def test_pieces_cut_the_window_at_hours_and_join_short_ends() -> None:
    cut = pieces(DAY + timedelta(minutes=59), DAY + timedelta(hours=3, minutes=1))
    assert [(p.start.hour, p.start.minute, p.end.hour, p.end.minute) for p in cut] == [
        (0, 59, 2, 0),  # 1 minute (< REACH) joined with the next hour
        (2, 0, 3, 1),
    ]
    assert timedelta(minutes=1) < REACH
    hourly = pieces(DAY, DAY + timedelta(hours=24))
    assert len(hourly) == 24 and all(p.whole_hour for p in hourly)
    assert hourly[0].first and hourly[-1].last and not hourly[1].first
    assert {p.edge_bit for p in hourly} == {1, 2, 3}


def test_binned_quantiles_are_duckdbs_within_the_precision() -> None:
    rng = random.Random(5)
    values = [rng.lognormvariate(3, 1.2) for _ in range(5000)] + [0.0] * 20
    con = duckdb.connect()
    con.execute("CREATE TABLE v AS SELECT unnest($v::DOUBLE[]) AS d", {"v": values})
    counts = con.execute(
        f"SELECT {bins.bin_sql('d')} AS b, count(*) FROM v GROUP BY 1 ORDER BY 1"
    ).fetchall()
    grid = [0.0, 0.001, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]
    exact = con.execute("SELECT quantile_cont(d, $g::DOUBLE[]) FROM v", {"g": grid}).fetchall()[0][
        0
    ]
    ours = bins.quantiles([(int(b), int(n)) for b, n in counts], grid)
    for p, e, o in zip(grid, exact, ours, strict=True):
        assert abs(o - e) <= bins.PRECISION * e + 1e-12, p
    # the requests at or below an estimate, from the bins, are the estimate's rank
    for p in (0.5, 0.95, 0.99):
        cut = bins.quantiles([(int(b), int(n)) for b, n in counts], [p])[0]
        index, share = bins.split([(int(b), int(n)) for b, n in counts], cut)
        below = sum(n for b, n in counts if b < index) + share * dict(counts).get(index, 0)
        assert abs(below - (1 + math.floor((len(values) - 1) * p))) <= 1


def test_the_scheduler_keeps_summaries_beside_its_reports(lake: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    text = f"""
[reports]
out_dir = "{out.as_posix()}"
[[reports.flag]]
flag = "{FLAG}"
window = "6h"
formats = ["json"]
"""
    config = parse_config_text(text, tmp_path)
    now = DAY + timedelta(hours=HOURS)
    kept = Scheduler(config, lake, clock=lambda: now).run_once(now=now)
    plain_config = parse_config_text(
        text.replace('window = "6h"', 'window = "6h"\nincremental = false'), tmp_path
    )
    plain = Scheduler(plain_config, lake, clock=lambda: now).run_once(now=now)
    assert kept[0].verdict == plain[0].verdict == Verdict.REGRESSION
    assert any((out / SUMMARIES_NAME).rglob("cells.parquet"))


def parse_config_text(text: str, where: Path) -> Any:
    import tomllib

    return parse_config(tomllib.loads(text), str(where / "flagscope.toml"), env={})


def test_hours_before_the_window_and_its_slack_are_forgotten(lake: Path, tmp_path: Path) -> None:
    store = tmp_path / "summaries"
    _pair(lake, _options(DAY, DAY + timedelta(hours=HOURS)), store)
    flag_dir = next((store / f"v{VERSION}" / "flags").iterdir())
    assert sorted(d.name for d in flag_dir.iterdir()) == [f"20261120T{h:02d}" for h in range(6)]
    later = _options(DAY + timedelta(hours=3), DAY + timedelta(hours=HOURS))
    full, merged, stage = _pair(lake, later, store)
    assert_same(full, merged)
    assert (stage.counts.computed, stage.counts.reused) == (0, 3)
    # 02:00 stays: the hour before the window names users' first variants
    assert sorted(d.name for d in flag_dir.iterdir()) == [f"20261120T{h:02d}" for h in range(2, 6)]
