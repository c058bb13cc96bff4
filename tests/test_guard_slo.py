"""The guard's SLO view (analysis/guard/slo.py): the burn arithmetic against hand-computed
cases, the workbook's multiwindow severity at its edges and scaled to other SLO windows,
the [[guard.slo]] settings and their errors, and the per-window counts on lakes built to
order — what was planted, test traffic excluded, scoped by service and route."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.guard import slo
from flagscope.analysis.guard.slo import CohortCounts, Counts, Severity, Slo
from flagscope.analysis.result import TrafficFilter
from tests import synthetic
from tests.report_lakes import write

FLAG = "checkout-v2"
NOW = datetime(2026, 11, 20, 12, 0)
M, H, D = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
AVAILABILITY = Slo("availability", "availability", 0.999)
LATENCY = Slo("latency", "latency", 0.99, threshold_ms=300.0)


# -- the arithmetic ----------------------------------------------------------------------
def test_burn_rate_and_time_to_exhaust_by_hand() -> None:
    # 1.44 % errors against a 99.9 % objective: 14.4× the budget; 30 d / 14.4 = 50 h
    assert slo.burn_rate(0.0144, 0.999) == pytest.approx(14.4)
    lasts = slo.time_to_exhaust(14.4, timedelta(days=30))
    assert lasts is not None and lasts / H == pytest.approx(50.0)
    assert lasts / D == pytest.approx(2.0833, abs=1e-4)
    assert slo.time_to_exhaust(0.0, timedelta(days=30)) is None
    # latency, 99 % under 300 ms: 3 % slow is 3×, the 30-day budget lasts 10 days
    assert slo.burn_rate(0.03, 0.99) == pytest.approx(3.0)
    ten = slo.time_to_exhaust(3.0, timedelta(days=30))
    assert ten is not None and ten / D == pytest.approx(10.0)
    with pytest.raises(AnalysisError, match="strictly between 0 and 1"):
        slo.burn_rate(0.01, 1.0)


def test_the_workbook_budget_shares_by_hand() -> None:
    """Each rule's threshold spends its share of a 30-day budget within its long window."""
    month = timedelta(days=30)
    assert slo.budget_consumed(14.4, H, month) == pytest.approx(0.02)
    assert slo.budget_consumed(6.0, 6 * H, month) == pytest.approx(0.05)
    assert slo.budget_consumed(3.0, D, month) == pytest.approx(0.10)
    assert slo.budget_consumed(1.0, 3 * D, month) == pytest.approx(0.10)


def test_exposure_arithmetic_at_20_percent() -> None:
    # b_T = 1.44 %, b_C = 0.1 %, s = 0.2, objective 99.9 %:
    # the flag's own burn 0.2 × 1.34 % / 0.1 % = 2.68×; the service's 0.2 × 14.4 + 0.8 × 1 = 3.68×
    assert slo.flag_burn(0.2, 0.0144, 0.001, 0.999) == pytest.approx(2.68)
    assert slo.service_burn(0.2, 0.0144, 0.001, 0.999) == pytest.approx(3.68)
    assert slo.service_burn(1.0, 0.0144, 0.001, 0.999) == pytest.approx(14.4)  # at 100 %
    assert slo.flag_burn(0.2, 0.001, 0.002, 0.999) == pytest.approx(-0.2)  # better than baseline


# -- severity ------------------------------------------------------------------------------
def _burns(**by_window: float | None) -> dict[timedelta, float | None]:
    """Every window at 0× but those named (`m5=15.0`, `h1=15.0`, `d3=…`)."""
    units = {"m": M, "h": H, "d": D}
    burns: dict[timedelta, float | None] = dict.fromkeys(slo.WINDOWS, 0.0)
    for key, burn in by_window.items():
        burns[int(key[1:]) * units[key[0]]] = burn
    return burns


def test_thresholds_are_the_workbooks_for_30_days_and_scale_with_the_window() -> None:
    def thresholds(days: int) -> list[float]:
        return [r.threshold(timedelta(days=days)) for r in slo.RULES]

    assert thresholds(30) == pytest.approx([14.4, 6.0, 3.0, 1.0])
    # 7 days: 2 % × 168 h / 1 h = 3.36, 5 % × 168 / 6 = 1.4; the tickets (0.7, 0.23) floor at 1
    assert thresholds(7) == pytest.approx([3.36, 1.4, 1.0, 1.0])
    assert thresholds(90) == pytest.approx([43.2, 18.0, 9.0, 3.0])


@pytest.mark.parametrize(
    ("long", "short", "limit", "level"),
    [
        ("h1", "m5", 14.4, Severity.PAGE),
        ("h6", "m30", 6.0, Severity.PAGE),
        ("d1", "h2", 3.0, Severity.TICKET),
        ("d3", "h6", 1.0, Severity.TICKET),
    ],
)
def test_each_rule_fires_just_above_its_threshold_over_both_windows(
    long: str, short: str, limit: float, level: Severity
) -> None:
    month = timedelta(days=30)
    above, below = limit * 1.01, limit * 0.99
    assert slo.severity(_burns(**{long: above, short: above}), month) is level
    assert slo.severity(_burns(**{long: below, short: above}), month) is Severity.NONE
    assert slo.severity(_burns(**{long: above, short: below}), month) is Severity.NONE
    assert slo.severity(_burns(**{long: above, short: None}), month) is Severity.NONE


def test_a_page_outranks_a_ticket_and_a_7_day_slo_pages_sooner() -> None:
    month, week = timedelta(days=30), timedelta(days=7)
    everything = dict.fromkeys(slo.WINDOWS, 20.0)
    assert slo.severity(everything, month) is Severity.PAGE
    fast = _burns(h1=3.4, m5=3.4)  # above 3.36 (7 d), far below 14.4 (30 d)
    assert slo.severity(fast, week) is Severity.PAGE
    assert slo.severity(fast, month) is Severity.NONE
    slow = _burns(d3=0.9, h6=0.9)  # 0.9× never exhausts a budget: no ticket at any window
    assert slo.severity(slow, week) is Severity.NONE


# -- the assessment from counts -------------------------------------------------------------
def _uniform(treatment: Counts, baseline: Counts, rollout_age: timedelta | None = None):
    return [
        (w, w if rollout_age is None else min(w, rollout_age), CohortCounts(treatment, baseline))
        for w in slo.WINDOWS
    ]


def test_an_assessment_by_hand() -> None:
    # 1,000 treatment requests with 15 errors (1.5 %: 15×), 4,000 baseline with 4 (1×)
    a = slo.assessment(AVAILABILITY, _uniform(Counts(1000, 15), Counts(4000, 4)))
    assert a.exposure == pytest.approx(0.2)
    assert a.full_burn == pytest.approx(15.0) and a.baseline_burn == pytest.approx(1.0)
    assert a.flag_burn == pytest.approx(0.2 * 14.0)  # s (b_T - b_C) / (1 - objective)
    assert a.service_burn == pytest.approx(0.2 * 15 + 0.8 * 1)
    assert a.days_to_exhaust == pytest.approx(2.0)  # 30 d / 15
    assert a.budget_spent == pytest.approx(2.8 * 3 / 30)  # the flag's own 2.8× for 3 days
    assert a.severity is Severity.PAGE
    assert a.sentence.startswith(
        "availability: at 100 % this flag would exhaust the 30-day budget in 2.0 days"
    )
    assert "at its 20 % of requests it adds 2.8×" in a.sentence and a.sentence.endswith("page")
    data = json.loads(json.dumps(a.to_dict()))
    assert data["severity"] == "page"
    assert data["days_to_exhaust_at_full_exposure"] == pytest.approx(2.0)
    assert [w["window"] for w in data["windows"]] == ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    assert data["windows"][0]["treatment"] == {
        "requests": 1000,
        "bad": 15,
        "burn": pytest.approx(15.0),
    }


def test_a_safe_budget_and_no_data_are_said_so() -> None:
    safe = slo.assessment(AVAILABILITY, _uniform(Counts(1000, 0), Counts(4000, 4)))
    assert safe.severity is Severity.NONE and safe.days_to_exhaust is None
    assert "never exhaust the 30-day budget" in safe.sentence
    assert "adds nothing over baseline" in safe.sentence
    assert safe.sentence.endswith("the budget is safe")
    empty = slo.assessment(LATENCY, _uniform(Counts(0, 0), Counts(4000, 4), rollout_age=10 * M))
    assert empty.full_burn is None and empty.severity is Severity.NONE
    assert empty.sentence == "latency: no treatment requests in the last 10m; no burn to report"
    # a slow burn at 100 % (2×, baseline as bad): a ticket, and the baseline is no better
    slow = slo.assessment(AVAILABILITY, _uniform(Counts(1000, 2), Counts(1000, 2)))
    assert slow.severity is Severity.TICKET and slow.days_to_exhaust == pytest.approx(15.0)
    assert "no faster than the baseline" in slow.sentence


# -- configuration ---------------------------------------------------------------------------
def test_slos_parse_from_guard_slo_tables() -> None:
    availability, latency = slo.parse_slos(
        [
            {"service": "checkout", "route": "POST /pay", "availability": 0.999},
            {"service": "checkout", "latency_ms": 300, "latency_objective": 0.99, "window": "7d"},
        ]
    )
    assert availability == Slo(
        "checkout POST /pay availability 99.9 %",
        "availability",
        0.999,
        "checkout",
        "POST /pay",
        None,
        timedelta(days=30),
    )
    assert latency.kind == "latency" and latency.threshold_ms == 300.0
    assert latency.objective == 0.99 and latency.window == timedelta(days=7)
    assert latency.name == "checkout latency 99 % ≤ 300 ms"
    (named,) = slo.parse_slos([{"name": "pay", "availability": 0.99}])
    assert named.name == "pay" and named.service is None and named.route is None


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"availability": 0.999}, r"\[\[guard.slo\]\] tables"),
        (["availability"], r"#1: must be a table"),
        ([{"availabilty": 0.999}], r"unknown setting 'availabilty'; did you mean 'availability'"),
        ([{"service": "checkout"}], r"give one objective: availability = 0.999, or latency_ms"),
        (
            [{"availability": 0.999, "latency_ms": 300, "latency_objective": 0.99}],
            r"give one objective",
        ),
        ([{"availability": 99.9}], r"availability = 99.9 \(99.9 %\?\).*availability = 0.999"),
        ([{"availability": True}], r"availability = True: the good fraction"),
        ([{"latency_ms": 300}], r"latency_ms needs latency_objective.*latency_objective = 0.99"),
        ([{"latency_ms": -5, "latency_objective": 0.99}], r"latency_ms = -5: a time in ms > 0"),
        ([{"availability": 0.99, "latency_objective": 0.99}], r"goes with latency_ms"),
        ([{"availability": 0.99, "window": "30x"}], r"window = '30x': expected a number and"),
        ([{"availability": 0.99, "window": 30}], r'window = 30: a duration, e.g. window = "30d"'),
        ([{"availability": 0.99, "window": "1d"}], r'window = "1d": an SLO window is at least 3d'),
        ([{"availability": 0.99, "service": 5}], r'service = 5: expected text, e.g. service = "'),
        (
            [{"availability": 0.99}, {"availability": 0.99}],
            r"'all requests availability 99 %' is declared twice",
        ),
    ],
)
def test_every_mistake_names_the_setting_and_the_fix(tables: Any, message: str) -> None:
    with pytest.raises(AnalysisError, match=message):
        slo.parse_slos(tables)


# -- the lake --------------------------------------------------------------------------------
# Ids far above those tests/synthetic.py numbers its spans with, so that none collide.
_ids = itertools.count(1 << 40)


def _trace(
    variant: str | None,
    at: datetime,
    *,
    ms: float = 100.0,
    error: bool = False,
    user: str | None = None,
    test: str | None = None,
    downstream: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """A request: a root SERVER span of `frontend GET /checkout`, a flag evaluation inside
    it (for `variant`), and optionally a downstream SERVER span of another service."""
    trace, root = f"{next(_ids):032x}", f"{next(_ids):016x}"
    user = user or f"user-{next(_ids)}"
    rows = [synthetic.span(trace, span_id=root, ms=ms, error=error, user=user, test=test, at=at)]
    if variant is not None:
        rows.append(
            synthetic.span(
                trace, kind=1, parent=root, service="flags", user=user, flags={FLAG: variant}, at=at
            )
        )
    if downstream is not None:
        rows.append(synthetic.span(trace, parent=root, at=at, **downstream))
    return rows


AGES = (5 * M, 20 * M, 50 * M, 100 * M, 5 * H, 20 * H, 2 * D)  # one inside each window


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """At each age of AGES: 3 treatment requests (1 error, 1 slow) and 6 baseline ones (no
    error, 2 slow). Besides, what must not count: traffic 4 days old and at `NOW` (the
    window is [start, now)), test traffic (a marked trace, a marked tester's other
    requests), a third variant, and requests that never evaluated the flag."""
    rows: list[dict[str, Any]] = []
    for age in (*AGES, 4 * D):
        at = NOW - age
        rows += _trace("on", at, error=True) + _trace("on", at, ms=450) + _trace("on", at)
        for i in range(6):
            rows += _trace("off", at, ms=400.0 if i < 2 else 100.0)
    rows += _trace("on", NOW, error=True, ms=900)
    rows += _trace("on", NOW - M, error=True, ms=900, test="synthetic")
    rows += _trace("on", NOW - 2 * D, test="synthetic", user="staff-1")
    rows += _trace("on", NOW - M, error=True, ms=900, user="staff-1")
    rows += _trace("beta", NOW - M, error=True, ms=900)
    rows += _trace(None, NOW - M, error=True, ms=900)
    return write(tmp_path_factory.mktemp("slo") / "lake", rows)


def _count(lake: Path, objective: Slo, starts: list[datetime]) -> list[CohortCounts]:
    return slo.count_requests(lake, objective, FLAG, "on", "off", starts, NOW)


def test_counts_per_window_are_what_was_planted(planted: Path) -> None:
    counts = _count(planted, AVAILABILITY, [NOW - w for w in slo.WINDOWS])
    # window k holds the first k + 1 ages (HEADLINE, 1 h, is itself one of the windows)
    inside = [sum(age <= w for age in AGES) for w in slo.WINDOWS]
    assert inside == [1, 2, 3, 4, 5, 6, 7]
    assert [c.treatment for c in counts] == [Counts(3 * k, k) for k in inside]
    assert [c.baseline for c in counts] == [Counts(6 * k, 0) for k in inside]
    slow = _count(planted, LATENCY, [NOW - w for w in slo.WINDOWS])
    assert [c.treatment.bad for c in slow] == inside  # 450 ms > 300 ms
    assert [c.baseline.bad for c in slow] == [2 * k for k in inside]


def test_test_traffic_counts_when_asked_for(planted: Path) -> None:
    """The marked trace and the tester's request are what the exclusion took out."""
    included = slo.count_requests(
        planted, AVAILABILITY, FLAG, "on", "off", [NOW - 5 * M], NOW, TrafficFilter.INCLUDE
    )
    assert included[0].treatment == Counts(3 + 2, 1 + 2)


def test_assess_clips_the_windows_to_the_rollout(tmp_path: Path) -> None:
    """A rollout 30 minutes old at 20 %, 2.5 % treatment errors against none: a page. Every
    window longer than 30 minutes is those 30 minutes: the baseline's errors of 45 minutes
    ago, before the rollout, count only when the windows are not clipped."""
    rows: list[dict[str, Any]] = []
    for minute in range(30):
        at = NOW - timedelta(minutes=minute, seconds=30)
        for i in range(4):
            rows += _trace("on", at, error=i == 0 and minute in (1, 11, 21))
        for _ in range(16):
            rows += _trace("off", at)
    for _ in range(10):
        rows += _trace("off", NOW - 45 * M, error=True)
    lake = write(tmp_path / "lake", rows)
    a = slo.assess(lake, AVAILABILITY, FLAG, "on", "off", NOW - 30 * M, NOW)
    by_window = {w.window: w for w in a.windows}
    assert by_window[5 * M].counts.treatment == Counts(20, 1)  # 5 % : 50×
    assert by_window[H].observed == 30 * M and by_window[3 * D].observed == 30 * M
    assert by_window[H].counts == CohortCounts(Counts(120, 3), Counts(480, 0))
    assert a.full_burn == pytest.approx(25.0) and a.exposure == pytest.approx(0.2)
    assert a.flag_burn == pytest.approx(5.0) and a.severity is Severity.PAGE
    assert "exhaust the 30-day budget in 1.2 days" in a.sentence  # 30 d / 25
    unclipped = slo.assess(lake, AVAILABILITY, FLAG, "on", "off", None, NOW)
    assert {w.window: w for w in unclipped.windows}[H].counts.baseline == Counts(490, 10)


@pytest.fixture(scope="module")
def scoped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each request passes from frontend GET /checkout to payments POST /pay; only the
    payments span fails, in 2 of 4 treatment requests and 1 of 4 baseline ones."""
    rows: list[dict[str, Any]] = []
    for variant, failed in (("on", 2), ("off", 1)):
        for i in range(4):
            pay = {"service": "payments", "route": "/pay", "method": "POST", "error": i < failed}
            rows += _trace(variant, NOW - 10 * M, downstream=pay)
    rows += _trace("on", NOW - 10 * M)  # frontend only
    return write(tmp_path_factory.mktemp("slo-scope") / "lake", rows)


def test_scope_by_service_and_route_counts_that_services_entry_spans(scoped: Path) -> None:
    start = [NOW - H]
    (overall,) = _count(scoped, AVAILABILITY, start)
    # one request per trace, its edge (the frontend span), which did not fail
    assert overall == CohortCounts(Counts(5, 0), Counts(4, 0))
    payments = CohortCounts(Counts(4, 2), Counts(4, 1))
    for scope in ({"service": "payments"}, {"route": "POST /pay"}, {"route": "/pay"}):
        (counts,) = _count(scoped, Slo("pay", "availability", 0.999, **scope), start)
        assert counts == payments, scope
    (frontend,) = _count(scoped, Slo("fe", "availability", 0.999, service="frontend"), start)
    assert frontend == CohortCounts(Counts(5, 0), Counts(4, 0))


def test_a_scope_the_lake_does_not_have_is_named(scoped: Path) -> None:
    typo = Slo("pay", "availability", 0.999, service="paymnets")
    with pytest.raises(AnalysisError, match=r"SLO 'pay': --service 'paymnets' is not in the lake"):
        _count(scoped, typo, [NOW - H])
