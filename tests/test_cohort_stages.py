"""The cohort SQL's three stages (analysis/cohorts.py), each checked on its own against a
plain-Python reading of the documented rules over the very rows written to the lake.

The rows are production-like on purpose: a few heavy users and many light ones, requests
crossing services (a trace with entry spans in two services, child spans that are not
requests), rare errors, heavy-tailed latencies, testers and test-marked traces, crossover
users, anonymous requests, retried duplicates, several (service, route) strata, and
traffic just outside the window. The lake is built twice from one seed: with one
evaluation per trace, and with traces that evaluated the flag twice, since the SQL takes
a different path for each.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from flagscope.analysis.cohorts import (
    BASELINE,
    QUANTILES,
    STRATA_SQL,
    TREATMENT,
    CohortQuery,
    CohortSums,
    Evaluations,
    Exclusions,
    UnitSums,
    quantile_grid,
)
from flagscope.analysis.result import TrafficFilter
from flagscope.analysis.stats import RatioStats, mix
from flagscope.collector.lake.read import connect
from tests.synthetic import NOW, request, span, write

FLAG = "new-checkout"
START, END = NOW - timedelta(hours=2), NOW + timedelta(minutes=1)
SLACK = timedelta(hours=1)  # evaluations and test marks are looked for this far around the window
TREATMENT_VARIANT, BASELINE_VARIANT = "on", "off"
COHORT_NAME = {TREATMENT: "treatment", BASELINE: "baseline"}

Row = dict[str, Any]
Unit = tuple[str, str]  # ("user", id) or ("trace", trace id)


def _ns(moment: datetime) -> int:
    return int(moment.replace(tzinfo=UTC).timestamp() * 1e9)


# -- the generator ------------------------------------------------------------------------------

# (service, method, http_route, span name, base latency ms); None where the span lacks it.
ENDPOINTS = (
    ("frontend", "GET", "/checkout", "GET /checkout", 120.0),
    ("frontend", "POST", "/checkout", "POST /checkout", 300.0),
    ("frontend", "GET", "/cart", "GET /cart", 40.0),
    ("search", "GET", "/search", "GET /search", 80.0),
    ("frontend", "GET", None, "legacy_handler", 60.0),  # route from the span name
    ("inventory", None, None, "grpc.Inventory/Reserve", 25.0),  # no HTTP method at all
    (None, "GET", "/health", "GET /health", 5.0),  # no service: 'unknown_service'
)
ENDPOINT_WEIGHTS = (30, 8, 20, 15, 4, 6, 3)


@dataclass
class Generator:
    rng: random.Random
    rows: list[Row] = field(default_factory=list)
    variants: dict[str, str] = field(default_factory=dict)  # each user's variant

    def _id(self, bits: int) -> str:
        return f"{self.rng.getrandbits(bits) | 1:0{bits // 4}x}"

    def in_window(self) -> datetime:
        return START + timedelta(seconds=self.rng.uniform(60, 7100))

    def latency(self, base: float, user_factor: float) -> float:
        spike = 20.0 if self.rng.random() < 0.02 else 1.0
        return base * user_factor * self.rng.lognormvariate(0, 0.7) * spike

    def trace(
        self,
        *,
        at: datetime,
        variant: str | None,
        root_user: str | None,
        eval_user: str | None,
        user_factor: float = 1.0,
        error_rate: float = 0.03,
        second_entry: bool = False,
        client_child: bool = False,
        marker_root: str | None = None,
        marker_eval: str | None = None,
        marker_child: str | None = None,
        eval_in_log: bool = False,
        flag: str = FLAG,
    ) -> list[Row]:
        """One trace: an entry span, maybe a second entry span in another service, maybe a
        client call (not a request), and the flag's evaluation in a child span (or a log
        record) of another service."""
        rng = self.rng
        service, method, route, name, base = rng.choices(ENDPOINTS, ENDPOINT_WEIGHTS)[0]
        trace, root_id = self._id(128), self._id(64)
        root = span(
            trace,
            span_id=root_id,
            service=service or "",
            route=route or "",
            method=method or "",
            ms=self.latency(base, user_factor),
            error=rng.random() < error_rate,
            user=root_user,
            test=marker_root,
            at=at,
        )
        root.update(service_name=service, http_method=method, http_route=route, name=name)
        rows = [root]

        def later(max_ms: float = 30.0) -> datetime:
            return at + timedelta(microseconds=rng.randint(100, int(max_ms * 1000)))

        if second_entry:  # a SERVER span under the root, in another service: a request too
            rows.append(
                span(
                    trace,
                    kind=2,
                    parent=root_id,
                    span_id=self._id(64),
                    service="payments",
                    route="/pay",
                    method="POST",
                    ms=self.latency(70.0, user_factor),
                    error=rng.random() < error_rate,
                    user=root_user,
                    at=later(),
                )
            )
        if client_child or marker_child:  # a CLIENT span with a parent: not a request
            rows.append(
                span(
                    trace,
                    kind=3,
                    parent=root_id,
                    span_id=self._id(64),
                    service=service or "frontend",
                    route="/internal/price",
                    ms=self.latency(15.0, 1.0),
                    test=marker_child,
                    at=later(),
                )
            )
        if variant is not None:
            evaluation = span(
                trace,
                kind=1,
                parent=root_id,
                span_id=self._id(64),
                service="checkout",
                ms=3.0,
                user=eval_user,
                flags={flag: variant},
                test=marker_eval,
                at=later(),
            )
            if eval_in_log:  # an OpenFeature hook's log record in the root's context
                evaluation.update(
                    signal="log",
                    kind=None,
                    duration_ms=None,
                    span_id=root_id,
                    parent_span_id=None,
                    event_id=f"{trace}log{self._id(32)}",
                )
            rows.append(evaluation)
        self.rows += rows
        return rows

    def user(self, user: str, variant: str, requests: int, **kw: Any) -> None:
        """A user's requests in the window; sometimes only one of the evaluation and the
        entry span carries the user id (the unit is then the one that does)."""
        self.variants[user] = variant
        factor = self.rng.lognormvariate(0, 0.4)
        for _ in range(requests):
            u = self.rng.random()
            root_user = None if 0.1 <= u < 0.2 else user
            eval_user = None if u < 0.1 else user
            self.trace(
                at=self.in_window(),
                variant=variant,
                root_user=root_user,
                eval_user=eval_user,
                user_factor=factor,
                second_entry=self.rng.random() < 0.1,
                client_child=self.rng.random() < 0.3,
                **kw,
            )


def production_rows(seed: int, *, twice: bool) -> list[Row]:
    g = Generator(random.Random(seed))
    rng = g.rng
    for i in range(4):  # heavy users
        g.user(f"heavy-{i}", rng.choice(["on", "off"]), rng.randint(25, 45))
    for i in range(60):  # light users, a few of whose traces a synthetic monitor marked
        variant = rng.choice(["on", "off"])
        g.user(f"user-{i}", variant, 1 + min(int(rng.expovariate(0.7)), 6))
        if i % 20 == 3:
            g.trace(
                at=g.in_window(),
                variant=variant,
                root_user=f"user-{i}",
                eval_user=f"user-{i}",
                marker_child="user_agent.synthetic.type=bot",  # on a span without a user
            )
    for i in range(3):  # a third variant: counted by stage 1, compared by nobody
        g.user(f"beta-{i}", "beta", 2)
    for _ in range(10):  # no user anywhere: the trace is the unit
        g.trace(at=g.in_window(), variant=rng.choice(["on", "off"]), root_user=None, eval_user=None)
    g.trace(  # the flag evaluated in a log record, not a span
        at=g.in_window(),
        variant=g.variants["user-1"],
        root_user="user-1",
        eval_user="user-1",
        eval_in_log=True,
    )

    # testers: marked on every event; marked on one trace only; marked by a log record only
    for _ in range(4):
        g.trace(
            at=g.in_window(),
            variant="on",
            root_user="qa-1",
            eval_user="qa-1",
            marker_root="user_id matches qa-*",
            marker_eval="user_id matches qa-*",
        )
    g.trace(at=g.in_window(), variant="off", root_user="staff-7", eval_user="staff-7")
    g.trace(
        at=g.in_window(),
        variant="off",
        root_user="staff-7",
        eval_user="staff-7",
        marker_root="test_user=true",
    )
    g.user("staff-9", "on", 2)
    log = span("", user="staff-9", test="test_user=true", at=g.in_window())
    log.update(signal="log", trace_id=None, span_id=None, kind=None, duration_ms=None)
    g.rows.append(log)

    # crossover users: evaluated both variants; each keeps the first
    base = START + timedelta(minutes=10)
    for k, variant in enumerate(["on"] * 3 + ["off"] * 3):
        g.trace(
            at=base + timedelta(minutes=k),
            variant=variant,
            root_user="cross-1",
            eval_user="cross-1",
        )
    for k, variant in enumerate(["off", "off", "on", "on", "on"]):
        g.trace(
            at=base + timedelta(minutes=30 + k),
            variant=variant,
            root_user="cross-2",
            eval_user="cross-2",
            marker_child="user_agent.synthetic.type=test" if k == 3 else None,
        )

    # outside the window: just before it (its evaluation within the slack), long before, after
    g.trace(
        at=START - timedelta(minutes=20), variant="on", root_user="early-1", eval_user="early-1"
    )
    g.trace(at=START - timedelta(hours=3), variant="off", root_user="early-2", eval_user="early-2")
    g.trace(at=END + timedelta(minutes=10), variant="on", root_user="late-1", eval_user="late-1")
    # traffic that never evaluated this flag
    g.trace(at=g.in_window(), variant=None, root_user="user-2", eval_user=None)
    g.trace(at=g.in_window(), variant="on", root_user="user-4", eval_user="user-4", flag="other")

    # retries: a client delivered an entry span twice (and, in one lake, an evaluation)
    entries = [r for r in g.rows if r["signal"] == "span" and r["kind"] == 2]
    g.rows += [dict(entries[5]), dict(entries[-40])]
    if twice:
        # the first evaluation names no user, a later one names a user of the other variant:
        # the trace is treatment, its unit that user
        first = g.trace(at=g.in_window(), variant="on", root_user=None, eval_user=None)
        later = dict(first[-1], span_id=g._id(64), user_id="solo-1", flags=[(FLAG, "off")])
        later.update(time=later["time"] + 5_000_000, event_id=first[0]["trace_id"] + "again")
        g.rows.insert(0, later)  # stored out of order
        # a heavy user's span that evaluated the flag twice, and a retried copy of that
        variant = g.variants["heavy-0"]
        *_, evaluation = g.trace(
            at=g.in_window(), variant=variant, root_user="heavy-0", eval_user="heavy-0"
        )
        again = dict(evaluation, time=evaluation["time"] + 2_000_000)
        again["event_id"] += "again"
        g.rows += [again, dict(again)]
        # a later evaluation names another user (same variant): the unit is the first one named
        variant = g.variants["heavy-1"]
        *_, evaluation = g.trace(
            at=g.in_window(), variant=variant, root_user=None, eval_user="heavy-1"
        )
        other = dict(evaluation, time=evaluation["time"] + 1_000_000, user_id="solo-2")
        g.rows.append(dict(other, span_id=g._id(64), event_id=evaluation["event_id"] + "b"))
    return g.rows


# -- the oracle: the documented rules in plain Python -------------------------------------------


@dataclass(frozen=True)
class Request:
    cohort: str
    unit: Unit
    service_name: str
    route: str
    duration_ms: float
    err: int
    is_test: bool
    crossed: bool
    no_user: bool
    trace: str = ""
    order: tuple[bool, int, str] = (False, 0, "")  # (has a parent, start, span id): edge first
    edge: bool = False  # set by Oracle.compared(): the trace's edge among compared requests

    @property
    def key(self) -> tuple[str, str, float, int, str]:
        return (self.service_name, self.route, self.duration_ms, self.err, self.cohort)


def _variant(row: Row, flag: str) -> str | None:
    return dict(row["flags"] or []).get(flag)


class Oracle:
    """Stages 1 and 2 as the module docstring of analysis/cohorts.py states them; where it
    is silent (what stage 1 counts, how an excluded request is tallied: a crossed test
    request as a test request) as the stages' own docstrings and the report's fields say."""

    def __init__(self, rows: list[Row], q: CohortQuery) -> None:
        self.q = q
        lo, hi = _ns(q.start - SLACK), _ns(q.end + SLACK)
        self.start, self.end = _ns(q.start), _ns(q.end)
        self.evaluations = sorted(
            (
                r
                for r in rows
                if r["trace_id"] and _variant(r, q.flag) is not None and lo <= r["time"] < hi
            ),
            key=lambda r: r["time"],
        )
        compared = {q.treatment: "treatment", q.baseline: "baseline"}
        by_trace: dict[str, list[Row]] = defaultdict(list)
        by_user: dict[str, list[Row]] = defaultdict(list)
        for e in self.evaluations:
            by_trace[e["trace_id"]].append(e)
            if e["user_id"] is not None:
                by_user[e["user_id"]].append(e)
        # a trace's cohort: its first evaluation; its unit: the first evaluation naming a user
        self.trace_cohort: dict[str, str] = {}
        self.trace_user: dict[str, str | None] = {}
        for trace, evals in by_trace.items():
            _assert_first_is_unambiguous(evals, q.flag)
            variant = _variant(evals[0], q.flag)
            if variant in compared:
                self.trace_cohort[trace] = compared[variant]
                self.trace_user[trace] = next((e["user_id"] for e in evals if e["user_id"]), None)
        marked = [r for r in rows if r["is_test"]]
        self.test_traces = {r["trace_id"] for r in marked if r["trace_id"] and lo <= r["time"] < hi}
        self.testers = {r["user_id"] for r in marked if r["user_id"]}  # ever marked
        # crossover users: the unit saw both compared variants — as the evaluations naming
        # it say, and, where a trace's evaluations name nobody, as the requests carrying its
        # user id say (before any --service / --route filter); the first compared variant
        # is kept, other variants count for nothing
        seen: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for user, evals in by_user.items():
            seen[user] += [
                (e["time"], compared[v]) for e in evals if (v := _variant(e, q.flag)) in compared
            ]
        for r in rows:
            trace = r["trace_id"]
            known = trace in self.trace_cohort and self.trace_user[trace] is None
            if known and r["user_id"] and self._entry_in_window(r):
                seen[r["user_id"]].append((r["time"], self.trace_cohort[trace]))
        self.first_cohort = {
            user: min(times)[1] for user, times in seen.items() if len({c for _, c in times}) == 2
        }
        # a trace whose evaluations name nobody: the user id its first entry span carries
        self.trace_request_user: dict[str, str] = {}
        for r in sorted(rows, key=lambda row: row["time"]):
            trace = r["trace_id"]
            anonymous = trace in self.trace_cohort and self.trace_user[trace] is None
            if anonymous and r["user_id"] and self._entry_in_window(r):
                self.trace_request_user.setdefault(trace, r["user_id"])
        self.labelled = self._label(rows)

    def _entry_in_window(self, r: Row) -> bool:
        entry = r["signal"] == "span" and (r["kind"] == 2 or not r["parent_span_id"])
        return entry and self.start <= r["time"] < self.end and r["duration_ms"] is not None

    def variants(self) -> dict[str | None, int]:
        """Stage 1: distinct units per variant among the window's evaluations (the user the
        evaluation names, else its trace: stage 1 has not joined the requests yet)."""
        units: dict[str | None, set[Unit]] = defaultdict(set)
        for e in self.evaluations:
            if self.start <= e["time"] < self.end:
                unit = ("user", e["user_id"]) if e["user_id"] else ("trace", e["trace_id"])
                units[_variant(e, self.q.flag)].add(unit)
        return {v: len(us) for v, us in units.items()}

    def _label(self, rows: list[Row]) -> list[Request]:
        q, seen, labelled = self.q, set(), []
        for r in rows:
            if not self._entry_in_window(r):
                continue
            if r["trace_id"] not in self.trace_cohort or (r["trace_id"], r["span_id"]) in seen:
                continue  # not in a compared variant, or a retried copy
            seen.add((r["trace_id"], r["span_id"]))
            path = r["http_route"] if r["http_route"] is not None else r["name"]
            route = f"{r['http_method'] or ''} {path}".strip()
            if q.service is not None and r["service_name"] != q.service:
                continue
            if q.route is not None and q.route not in (path, route):
                continue
            cohort = self.trace_cohort[r["trace_id"]]
            user = (
                self.trace_user[r["trace_id"]]
                or r["user_id"]
                or self.trace_request_user.get(r["trace_id"])
            )
            labelled.append(
                Request(
                    cohort=cohort,
                    unit=("user", user) if user else ("trace", r["trace_id"]),
                    service_name=r["service_name"] or "unknown_service",
                    route=route,
                    duration_ms=r["duration_ms"],
                    err=int(r["is_error"]),
                    is_test=r["trace_id"] in self.test_traces or user in self.testers,
                    crossed=user in self.first_cohort and cohort != self.first_cohort[user],
                    no_user=user is None,
                    trace=r["trace_id"],
                    order=(bool(r["parent_span_id"]), r["time"], r["span_id"]),
                )
            )
        return labelled

    def excluded(self) -> Exclusions:
        tests = [r for r in self.labelled if r.is_test]
        return Exclusions(
            test_requests=len(tests),
            test_users=len({r.unit for r in tests}),
            crossover_requests=sum(r.crossed and not r.is_test for r in self.labelled),
            crossover_users=len(self.first_cohort),
            requests_without_user=sum(r.no_user for r in self.labelled),
        )

    def compared(self) -> list[Request]:
        keep: Callable[[Request], bool] = {
            TrafficFilter.EXCLUDE: lambda r: not r.is_test,
            TrafficFilter.INCLUDE: lambda r: True,
            TrafficFilter.ONLY: lambda r: r.is_test,
        }[self.q.test_mode]
        kept = [r for r in self.labelled if not r.crossed and keep(r)]
        # the trace's edge: its root entry span, else its earliest; with --service or
        # --route every entry span of what was asked for counts
        first: dict[str, tuple[bool, int, str]] = {}
        for r in kept:
            first[r.trace] = min(first.get(r.trace, r.order), r.order)
        narrowed = self.q.service is not None or self.q.route is not None
        return [replace(r, edge=narrowed or r.order == first[r.trace]) for r in kept]


def _assert_first_is_unambiguous(evals: list[Row], flag: str) -> None:
    """The generator never lets two different evaluations of a trace tie for first."""
    tied = {(_variant(e, flag), e["user_id"]) for e in evals if e["time"] == evals[0]["time"]}
    assert len(tied) == 1, evals


@dataclass
class UnitTotals:
    req: int = 0
    err: int = 0
    lat: float = 0.0
    below: list[int] = field(default_factory=lambda: [0] * len(QUANTILES))


def expected_sums(requests: list[Request], cuts: list[float]) -> dict[str, RatioStats]:
    """errors, latency and below_quantile[k] from per-user totals (requests as denominator),
    a request counting as below when its latency is at most cuts[k]."""
    per_unit: dict[Unit, UnitTotals] = defaultdict(UnitTotals)
    for r in requests:
        t = per_unit[r.unit]
        t.req, t.err, t.lat = t.req + 1, t.err + r.err, t.lat + r.duration_ms
        for k, cut in enumerate(cuts):
            t.below[k] += r.duration_ms <= cut
    totals = list(per_unit.values())
    ys = [float(t.req) for t in totals]
    out = {
        "errors": RatioStats.from_users([float(t.err) for t in totals], ys),
        "latency": RatioStats.from_users([t.lat for t in totals], ys),
    }
    for k in range(len(QUANTILES)):
        out[f"below{k}"] = RatioStats.from_users([float(t.below[k]) for t in totals], ys)
    return out


# -- fixtures and helpers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Lake:
    path: Path
    rows: list[Row]


@pytest.fixture(
    scope="module", params=[False, True], ids=["one-evaluation-per-trace", "traces-evaluated-twice"]
)
def lake(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Lake:
    rows = production_rows(20240611, twice=request.param)
    per_trace = Counter(
        r["trace_id"] for r in rows if r["trace_id"] and _variant(r, FLAG) is not None
    )
    assert (max(per_trace.values()) > 1) is request.param  # the SQL path this lake takes
    return Lake(write(tmp_path_factory.mktemp("lake"), rows), rows)


@pytest.fixture
def con(lake: Lake) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = connect(lake.path)
    yield connection
    connection.close()


def query(**kw: Any) -> CohortQuery:
    return CohortQuery(FLAG, TREATMENT_VARIANT, BASELINE_VARIANT, START, END, **kw)


def compared_rows(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return con.execute(
        "SELECT r.cohort, r.unit, r.stratum, s.service_name, s.route, r.duration_ms, r.err "
        f"FROM fs_requests r JOIN ({STRATA_SQL}) s USING (stratum)"
    ).fetchall()


def row_key(row: tuple[Any, ...]) -> tuple[str, str, float, int, str]:
    cohort, _unit, _stratum, service, route, ms, err = row
    return (service, route, ms, int(err), COHORT_NAME[cohort])


def partition(groups: dict[Any, list[tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
    """Groups of row keys, independent of what identifies each group."""
    return sorted(tuple(sorted(keys)) for keys in groups.values())


def assert_ratio(actual: RatioStats, expected: RatioStats, what: str) -> None:
    assert actual.n == expected.n, what
    for name in ("sum_x", "sum_y", "sum_x2", "sum_y2", "sum_xy"):
        got, want = getattr(actual, name), getattr(expected, name)
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), (what, name, got, want)
    # the jackknife's leave-one-out sums (the SQL's second pass)
    assert (actual.leave_one_out is None) == (expected.leave_one_out is None), what
    if expected.leave_one_out is not None and actual.leave_one_out is not None:
        for got, want in zip(actual.leave_one_out, expected.leave_one_out, strict=True):
            assert math.isclose(got, want, rel_tol=1e-7, abs_tol=1e-12), (what, got, want)


# -- stage 1 ------------------------------------------------------------------------------------


def test_stage_1_counts_distinct_units_per_variant_in_the_window(lake, con):
    """Units per variant decide which variants are compared; evaluations in the slack
    around the window, of other flags or without a trace must not count."""
    evaluations = Evaluations.collect(con, FLAG, START, END)
    expected = Oracle(lake.rows, query()).variants()
    assert evaluations.variants == expected
    assert set(expected) == {"on", "off", "beta"}  # the generator reached every variant


# -- stage 2 ------------------------------------------------------------------------------------


def test_stage_2_reports_each_exclusion_as_counted_in_python(lake, con):
    """Every field of Exclusions: test requests and units (by trace and by user), crossover
    requests and users, requests whose unit is their trace."""
    labelled = Evaluations.collect(con, FLAG, START, END).label(query())
    expected = Oracle(lake.rows, query()).excluded()
    assert labelled.excluded == expected
    assert all(expected.as_dict().values())  # the generator produced every kind


def test_stage_2_compares_exactly_the_requests_python_labels(lake, con):
    """The compared set row by row (entry spans only, retried copies once, route and service
    as documented), its split into units, and strata one per (service, route)."""
    Evaluations.collect(con, FLAG, START, END).label(query())
    got = compared_rows(con)
    expected = Oracle(lake.rows, query()).compared()
    assert sorted(map(row_key, got)) == sorted(r.key for r in expected)

    by_unit: dict[Any, list[Any]] = defaultdict(list)
    for row in got:
        by_unit[row[1]].append(row_key(row))
    expected_by_unit: dict[Any, list[Any]] = defaultdict(list)
    for r in expected:
        expected_by_unit[r.unit].append(r.key)
    assert partition(by_unit) == partition(expected_by_unit)

    strata: dict[tuple[str, str], set[int]] = defaultdict(set)
    for _cohort, _unit, stratum, service, route, _ms, _err in got:
        strata[(service, route)].add(stratum)
    assert all(len(s) == 1 for s in strata.values())
    assert len(set().union(*strata.values())) == len(strata)
    assert {"unknown_service", "inventory", "payments"} <= {s for s, _ in strata}
    assert {"GET legacy_handler", "grpc.Inventory/Reserve", "POST /pay"} <= {r for _, r in strata}


@pytest.mark.parametrize("mode", [TrafficFilter.INCLUDE, TrafficFilter.ONLY])
def test_stage_2_test_traffic_filter_changes_the_compared_set_as_predicted(lake, con, mode):
    """INCLUDE adds the test requests back (crossed ones stay out), ONLY keeps nothing else."""
    Evaluations.collect(con, FLAG, START, END).label(query(test_mode=mode))
    got = sorted(map(row_key, compared_rows(con)))
    expected = sorted(r.key for r in Oracle(lake.rows, query(test_mode=mode)).compared())
    excluding = sorted(r.key for r in Oracle(lake.rows, query()).compared())
    assert got == expected
    assert got != excluding and got  # the mode made a difference, and left something


@pytest.mark.parametrize(
    "narrow",
    [{"service": "payments"}, {"route": "/checkout"}, {"route": "POST /checkout"}],
    ids=["service", "route-path", "route-with-method"],
)
def test_stage_2_service_and_route_narrow_the_compared_set(lake, con, narrow):
    """--service matches the service, --route the route's path or method and path."""
    Evaluations.collect(con, FLAG, START, END).label(query(**narrow))
    got = sorted(map(row_key, compared_rows(con)))
    assert got == sorted(r.key for r in Oracle(lake.rows, query(**narrow)).compared())
    assert got


def _temp_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
        "AND table_catalog = 'temp'"
    ).fetchall()
    return {name for (name,) in rows}


def test_stage_2_lets_go_of_what_stage_3_does_not_read(lake, con):
    """The evaluations, traces and entry spans (~3 GB at 100 M events, which pushed stage
    3 to spill) are gone once the compared requests are; with CUPED, which reads each
    compared user's first request, the labelled entry spans stay."""
    labelled = Evaluations.collect(con, FLAG, START, END).label(query())
    names = _temp_names(con)
    assert "fs_requests" in names
    assert not names & {"fs_evals", "fs_traces", "fs_entries", "fs_labelled"}
    assert set(labelled.unit_sums().overall) == {"treatment", "baseline"}
    cuped = replace(query(), pre_exposure=timedelta(hours=1))
    Evaluations.collect(con, FLAG, START, END).label(cuped)
    names = _temp_names(con)
    assert {"fs_entries", "fs_labelled"} <= names and "fs_evals" not in names
    assert con.execute("SELECT count(*) FROM fs_labelled").fetchall()[0][0] > 0


# -- stage 3 ------------------------------------------------------------------------------------


def _stage_3(lake: Lake, con: duckdb.DuckDBPyConnection) -> tuple[UnitSums, list[Request]]:
    sums = Evaluations.collect(con, FLAG, START, END).label(query()).unit_sums()
    return sums, Oracle(lake.rows, query()).compared()


def _check(sums: CohortSums, requests: list[Request], what: str) -> None:
    cuts = [sums.grid[round(p, 6)] for p in QUANTILES]
    expected = expected_sums(requests, cuts)
    assert (sums.users, sums.requests) == (len({r.unit for r in requests}), len(requests)), what
    assert_ratio(sums.errors, expected["errors"], f"{what} errors")
    assert_ratio(sums.latency, expected["latency"], f"{what} latency")
    assert len(sums.below_quantile) == len(QUANTILES)
    for k, p in enumerate(QUANTILES):
        assert_ratio(sums.below_quantile[k], expected[f"below{k}"], f"{what} below p{p}")


def test_stage_3_overall_sums_match_per_user_totals(lake, con):
    """Per cohort: users, requests, and the delta method's sums for errors, latency and the
    requests at or below the cohort's own quantile estimates, per user across strata."""
    sums, compared = _stage_3(lake, con)
    assert set(sums.overall) == {"treatment", "baseline"}
    for cohort, cohort_sums in sums.overall.items():
        assert (cohort_sums.service_name, cohort_sums.route) == (None, None)
        _check(cohort_sums, [r for r in compared if r.cohort == cohort and r.edge], cohort)


def test_stage_3_stratum_sums_match_per_user_totals(lake, con):
    """Per (service, route) and cohort, in that order: the same sums within the stratum,
    the cut being the stratum's own quantile estimate."""
    sums, compared = _stage_3(lake, con)
    cells: dict[tuple[str, str, str], list[Request]] = defaultdict(list)
    for r in compared:
        cells[(r.service_name, r.route, r.cohort)].append(r)
    keys = [(s.service_name, s.route, s.cohort) for s in sums.strata]
    assert keys == sorted(cells)
    for s in sums.strata:
        _check(
            s, cells[(s.service_name, s.route, s.cohort)], f"{s.service_name} {s.route} {s.cohort}"
        )


def test_stage_3_grid_is_the_empirical_quantile_function(lake, con):
    """The grid (probability → ms) the quantile cuts and intervals are read from is the
    linearly interpolated sample quantile of each cohort and each stratum."""
    sums, compared = _stage_3(lake, con)
    probabilities = list(quantile_grid())
    cells = [
        (s, [r for r in compared if r.cohort == c and r.edge]) for c, s in sums.overall.items()
    ]
    cells += [
        (
            s,
            [
                r
                for r in compared
                if (r.service_name, r.route, r.cohort) == (s.service_name, s.route, s.cohort)
            ],
        )
        for s in sums.strata
    ]
    for s, requests in cells:
        expected = np.quantile([r.duration_ms for r in requests], probabilities, method="linear")
        assert list(s.grid) == probabilities
        np.testing.assert_allclose(list(s.grid.values()), expected, rtol=1e-12)


# -- rules an outside audit found the SQL breaking (crossover by the request's unit, testers ever) --


def _stage_2_alone(tmp_path: Path, rows: list[Row]) -> tuple[Exclusions, list[tuple[Any, ...]]]:
    con = connect(write(tmp_path, rows))
    try:
        labelled = Evaluations.collect(con, "f", START, END).label(
            CohortQuery("f", "on", "off", START, END)
        )
        return labelled.excluded, compared_rows(con)
    finally:
        con.close()


def test_a_user_known_only_from_the_request_in_one_variant_is_still_a_crossover_user(tmp_path):
    """The unit is the evaluation's user, else the request's; a unit in both cohorts breaks
    the independence of the cohorts, so such a user must keep the first variant."""
    first = request("u1", "on", ms=300, at=NOW - timedelta(minutes=50))
    second = request("u1", "off", ms=400, at=NOW - timedelta(minutes=40))
    second[1]["user_id"] = None  # the evaluation has no targeting key; the entry span has u1
    rows = first + second + request("u2", "off") + request("u3", "on")
    excluded, got = _stage_2_alone(tmp_path, rows)
    cohorts_per_unit = Counter(unit for unit, _cohort in {(row[1], row[0]) for row in got})
    assert max(cohorts_per_unit.values()) == 1
    assert (excluded.crossover_users, excluded.crossover_requests) == (1, 1)


def test_a_crossover_user_first_seen_in_a_third_variant_keeps_the_first_compared_one(tmp_path):
    """Only the requests under the second of the compared variants the user saw are dropped."""
    rows = (
        request("u1", "beta", at=NOW - timedelta(minutes=60))
        + request("u1", "on", ms=300, at=NOW - timedelta(minutes=50))
        + request("u1", "off", ms=400, at=NOW - timedelta(minutes=40))
        + request("u2", "off", ms=100)
    )
    excluded, got = _stage_2_alone(tmp_path, rows)
    assert sorted(map(row_key, got)) == [
        ("frontend", "GET /checkout", 100.0, 0, "baseline"),
        ("frontend", "GET /checkout", 300.0, 0, "treatment"),
    ]
    assert excluded.crossover_requests == 1


def test_a_user_marked_as_a_tester_before_the_window_is_excluded(tmp_path):
    """A tester's unmarked requests are test traffic however long ago the mark was seen."""
    mark = span(f"{1:032x}", user="staff-1", test="test_user=true", at=START - timedelta(hours=3))
    rows = [mark, *request("staff-1", "on"), *request("u2", "off"), *request("u3", "on")]
    excluded, got = _stage_2_alone(tmp_path, rows)
    assert (excluded.test_requests, excluded.test_users) == (1, 1)
    assert len(got) == 2


def test_stage_3_adjusted_moments_match_the_reference_on_edge_requests(lake, con):
    """Pass 3: each cohort's route-mix adjusted error rate and mean latency, and their
    linearised variances, equal `stats.mix` run in Python on the oracle's edge requests
    (strata: the edge's service and route; each user's strata summed together)."""
    sums, compared = _stage_3(lake, con)
    edges = [r for r in compared if r.edge]
    per_unit: dict[tuple[str, Unit], dict[tuple[str, str], list[float]]] = defaultdict(dict)
    for r in edges:
        cell = per_unit[(r.cohort, r.unit)].setdefault((r.service_name, r.route), [0, 0, 0])
        cell[0] += r.err
        cell[1] += r.duration_ms
        cell[2] += 1
    for metric, column in (("error_rate", 0), ("mean_latency", 1)):
        cohorts = {
            cohort: [
                {k: (v[column], float(v[2])) for k, v in strata.items()}
                for (c, _unit), strata in per_unit.items()
                if c == cohort
            ]
            for cohort in ("treatment", "baseline")
        }
        totals = {c: mix.stratum_totals(units) for c, units in cohorts.items()}
        weights = mix.pooled_weights(totals["treatment"], totals["baseline"])
        for cohort, units in cohorts.items():
            estimate, variance, _ = mix.cohort_from_units(units, weights)
            got = sums.adjusted[metric][cohort]
            assert got.units == len(units)
            assert math.isclose(got.estimate, estimate, rel_tol=1e-9), (metric, cohort)
            assert math.isclose(got.variance, variance, rel_tol=1e-7), (metric, cohort)


def test_a_request_through_three_services_is_one_request_overall_and_one_per_service(tmp_path):
    """What the end user experienced: a checkout crossing three services is one request
    (and one error, if the edge failed) overall, and one entry span in each service's
    breakdown row."""
    rows = []
    for i in range(6):
        for variant in ("on", "off"):
            trace = f"{(i * 2 + (variant == 'on')) + 1:032x}"
            user = f"{variant}-{i}"
            edge = span(
                trace,
                service="frontend",
                route="/checkout",
                ms=300,
                error=True,
                user=user,
                flags={"f": variant},
                span_id=f"{1:016x}",
            )
            cart = span(
                trace,
                service="cart",
                route="/cart",
                ms=120,
                error=True,
                parent=f"{1:016x}",
                span_id=f"{2:016x}",
            )
            pay = span(
                trace,
                service="payments",
                route="/pay",
                ms=80,
                error=True,
                parent=f"{2:016x}",
                span_id=f"{3:016x}",
            )
            rows += [edge, cart, pay]
    con = connect(write(tmp_path, rows))
    try:
        sums = (
            Evaluations.collect(con, "f", START, END)
            .label(CohortQuery("f", "on", "off", START, END))
            .unit_sums()
        )
    finally:
        con.close()
    for cohort in ("treatment", "baseline"):
        overall = sums.overall[cohort]
        assert (overall.requests, overall.errors.sum_x) == (6, 6.0)
        assert overall.latency.sum_x == pytest.approx(6 * 300.0)
        per_service = {s.service_name: s.requests for s in sums.strata if s.cohort == cohort}
        assert per_service == {"frontend": 6, "cart": 6, "payments": 6}


def test_a_downstream_entry_span_without_a_user_id_is_counted_under_the_traces_user(tmp_path):
    """The evaluation names nobody and only the edge span carries enduser.id: the downstream
    service's entry span belongs to the same user, not to a unit of its own (the audit saw
    800 users counted as 1,757)."""
    rows = []
    for i in range(4):
        for variant in ("on", "off"):
            trace = f"{i * 2 + (variant == 'on') + 1:032x}"
            edge = span(trace, service="frontend", user=f"{variant}-{i}", span_id=f"{1:016x}")
            down = span(trace, service="cart", route="/cart", parent=f"{1:016x}",
                        flags={"f": variant}, span_id=f"{2:016x}")  # fmt: skip
            rows += [edge, down]
    excluded, got = _stage_2_alone(tmp_path, rows)
    assert excluded.requests_without_user == 0
    units = {(row[3], row[1]) for row in got}  # (service, unit)
    assert len({u for _, u in units}) == 8  # one unit per user, across both services


@pytest.mark.parametrize(
    "rootless", [0, 3, 12], ids=["all-rooted", "a-few-rootless", "all-rootless"]
)
def test_each_traces_edge_is_its_root_else_its_earliest_request(tmp_path, rootless):
    """The edge (the overall numbers' one request per trace) is the trace's root entry
    span, else its earliest; with every trace rooted, a few not (a caller outside the lake,
    a trace with two roots) and none rooted, as the SQL takes a different path for each."""
    rows, expected = [], {"on": 0.0, "off": 0.0}
    for i in range(12):
        for variant in ("on", "off"):
            trace = f"{(i * 2 + (variant == 'on')) + 1:032x}"
            at = NOW - timedelta(minutes=40 - i)
            # the downstream span starts first when the caller is outside the lake
            times = [at + timedelta(milliseconds=ms) for ms in (5, 0, 9)]
            outside = i < rootless
            parents = [f"{9:016x}" if outside else None, f"{1:016x}", f"{2:016x}"]
            if not outside and i == 11:
                parents[1] = None  # two roots: the earlier one is the edge
            for k, (service, ms) in enumerate(
                (("frontend", 300.0), ("cart", 120.0), ("pay", 80.0))
            ):
                rows.append(
                    span(
                        trace,
                        service=service,
                        ms=ms + i,
                        user=f"{variant}-{i}",
                        flags={"f": variant} if k == 0 else None,
                        parent=parents[k],
                        span_id=f"{k + 1:016x}",
                        at=times[k],
                    )
                )
            rooted = [k for k in range(3) if parents[k] is None]
            edge = min(rooted or range(3), key=lambda k: times[k])
            expected[variant] += (300.0, 120.0, 80.0)[edge] + i
    con = connect(write(tmp_path, rows))
    try:
        labelled = Evaluations.collect(con, "f", START, END).label(
            CohortQuery("f", "on", "off", START, END)
        )
        odd = con.execute("SELECT count(*) FROM fs_odd_traces").fetchall()[0][0]
        sums = labelled.unit_sums()
    finally:
        con.close()
    assert odd == 2 * (rootless + (rootless < 12))  # the traces without exactly one root
    for variant, cohort in (("on", "treatment"), ("off", "baseline")):
        overall = sums.overall[cohort]
        assert overall.requests == 12
        assert overall.latency.sum_x == pytest.approx(expected[variant])
