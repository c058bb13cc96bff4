"""Cohort formation (DESIGN contract 3) and the diff's statistics on lakes built to order."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from flagscope.analysis.diff import choose_variants, run_diff
from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.result import DiffOptions, TrafficFilter
from flagscope.analysis.verdict import Thresholds, Verdict
from tests.synthetic import NOW, population, request, span, write

START, END = NOW - timedelta(hours=2), NOW + timedelta(minutes=1)


def options(**kw) -> DiffOptions:
    return DiffOptions(kw.pop("flag", "f"), START, END, **kw)


def test_a_flag_evaluated_in_a_child_span_labels_the_root_request(tmp_path):
    rows = request("u1", "on", ms=300) + request("u2", "off", ms=100) + request("u3", None)
    result = run_diff(write(tmp_path, rows), options(thresholds=_lenient()))
    assert (result.treatment.requests, result.baseline.requests) == (1, 1)
    assert result.treatment.mean_ms == pytest.approx(300)  # the root's latency, not the child's
    assert result.baseline.mean_ms == pytest.approx(100)


def test_test_traffic_is_excluded_by_trace_and_by_user(tmp_path):
    rows = (
        request("u1", "on")
        + request("u2", "off")
        + request("u3", "on", test_root="test_user=true")  # marker only on the root
        + request("qa-1", "on", test_child="user_id matches qa-*")  # marker only on the child
        + request("qa-1", "on")  # the same tester, unmarked trace: excluded by user
    )
    lake = write(tmp_path, rows)
    result = run_diff(lake, options(thresholds=_lenient()))
    assert (result.treatment.requests, result.baseline.requests) == (1, 1)
    assert result.excluded["test_requests"] == 3
    assert result.excluded["test_users"] == 2
    included = run_diff(lake, options(test_mode=TrafficFilter.INCLUDE, thresholds=_lenient()))
    assert included.treatment.requests == 4
    only = run_diff(lake, options(test_mode=TrafficFilter.ONLY, thresholds=_lenient()))
    assert (only.treatment.requests, only.baseline.requests) == (3, 0)


def test_a_test_marked_record_without_a_trace_excludes_only_its_user(tmp_path):
    log = {
        **span("", user="staff-9", test="test_user=true"),
        "signal": "log",
        "trace_id": None,
        "span_id": None,
        "kind": None,
        "duration_ms": None,
    }
    rows = (
        request("u1", "on", ms=200)
        + request("u2", "off")
        + request("u3", "on")
        + request("staff-9", "on")  # unmarked, but the user is a tester
        + [log]
    )
    result = run_diff(write(tmp_path, rows), options(thresholds=_lenient()))
    assert (result.treatment.requests, result.baseline.requests) == (2, 1)
    assert result.excluded["test_requests"] == 1
    assert result.excluded["test_users"] == 1


def test_crossover_users_keep_their_first_variant(tmp_path):
    rows = (
        request("u1", "on", at=NOW - timedelta(minutes=50))
        + request("u1", "off", at=NOW - timedelta(minutes=40))
        + request("u2", "off")
        + request("u3", "on")
    )
    result = run_diff(write(tmp_path, rows), options(thresholds=_lenient()))
    assert result.excluded["crossover_users"] == 1
    assert result.excluded["crossover_requests"] == 1
    assert (result.treatment.requests, result.baseline.requests) == (2, 1)
    assert (result.treatment.users, result.baseline.users) == (2, 1)
    # the share is of the compared users, u1 counted once (it was 1 of 4, not 1 of 3)
    check = next(h for h in result.health if h.name == "crossover_users")
    assert "1 users saw both variants (33.3%" in check.detail


def test_a_trace_that_evaluated_the_flag_twice_takes_the_first_evaluation(tmp_path):
    first = request(None, "on", at=NOW - timedelta(minutes=30))  # no user on the first one
    trace = first[0]["trace_id"]
    later = span(
        trace,
        kind=1,
        parent=first[0]["span_id"],
        service="payments",
        user="u9",
        flags={"f": "off"},
        at=NOW - timedelta(minutes=29),
    )
    rows = [later, *first, *request("u2", "off"), *request("u3", "on")]  # stored out of order
    result = run_diff(write(tmp_path, rows), options(thresholds=_lenient()))
    assert (result.treatment.requests, result.baseline.requests) == (2, 1)
    # the unit is the first evaluation that names a user: u9, not the trace
    assert result.excluded["requests_without_user"] == 0
    assert result.treatment.users == 2


def test_requests_without_a_user_count_their_trace_as_the_unit(tmp_path):
    rows = request(None, "on") + request(None, "on") + request("u2", "off")
    result = run_diff(write(tmp_path, rows), options(thresholds=_lenient()))
    assert result.treatment.users == 2
    assert result.excluded["requests_without_user"] == 2


def test_the_result_gives_its_tables_as_polars_frames(tmp_path):
    result = run_diff(write(tmp_path, request("u1", "on") + request("u2", "off")), options())
    assert result.cohorts_frame()["requests"].to_list() == [1, 1]
    assert set(result.metrics_frame()["metric"]) == {
        "error_rate",
        "mean_latency",
        "p50_latency",
        "p90_latency",
        "p95_latency",
        "p99_latency",
    }
    assert result.breakdown_frame()["route"].to_list() == ["GET /checkout"] * 2


def test_a_retried_span_is_counted_once(tmp_path):
    rows = request("u1", "on") + request("u2", "off")
    result = run_diff(write(tmp_path, [*rows, dict(rows[0])]), options(thresholds=_lenient()))
    assert result.treatment.requests == 1


def test_service_and_route_narrow_the_comparison(tmp_path):
    rows = (
        request("u1", "on", route="/a")
        + request("u1", "on", route="/b", method="POST")
        + request("u2", "off", route="/a")
        + request("u2", "off", route="/b", method="POST")
    )
    lake = write(tmp_path, rows)
    assert run_diff(lake, options(route="/a", thresholds=_lenient())).treatment.requests == 1
    assert run_diff(lake, options(route="POST /b", thresholds=_lenient())).treatment.requests == 1
    with pytest.raises(
        AnalysisError, match="--service 'nope' is not in the lake; known: 'frontend'"
    ):
        run_diff(lake, options(service="nope", thresholds=_lenient()))
    # a route the lake has, but not in the service asked for: named as such
    with pytest.raises(AnalysisError, match="of service 'frontend'; known: 'GET /a', 'POST /b'"):
        run_diff(lake, options(service="frontend", route="/c", thresholds=_lenient()))


def test_variant_defaults_and_choices():
    assert choose_variants("f", {"off": 5, "on": 5}, None, None) == ("on", "off")
    assert choose_variants("f", {"false": 5, "true": 5}, None, None) == ("true", "false")
    assert choose_variants("f", {"a": 5, "b": 5, "c": 5}, "c", "a") == ("c", "a")
    assert choose_variants("f", {"blue": 5, "control": 5}, None, None) == ("blue", "control")
    with pytest.raises(AnalysisError, match="choose the treatment with --variant"):
        choose_variants("f", {"a": 5, "b": 5, "c": 5}, None, None)
    with pytest.raises(AnalysisError, match="variants seen: a, b"):
        choose_variants("f", {"a": 5, "b": 5}, "z", None)


def test_an_unknown_flag_names_the_closest_known_one(tmp_path):
    lake = write(tmp_path, request("u1", "on", flag="new-checkout"))
    with pytest.raises(AnalysisError, match=r"did you mean 'new-checkout'.*flagscope flags"):
        run_diff(lake, options(flag="new-chekout"))


def test_an_empty_window_says_what_the_lake_holds(tmp_path):
    lake = write(tmp_path, request("u1", "on") + request("u2", "off"))
    result = run_diff(lake, DiffOptions("f", START - timedelta(days=9), START - timedelta(days=8)))
    assert result.verdict is Verdict.NO_DATA and "the lake holds" in result.reason


# -- statistics through the whole diff ----------------------------------------------------------
def test_a_route_mix_shift_does_not_fake_a_latency_change(tmp_path):
    # 'on' users go to the slow route more often; each route is equally fast in both cohorts.
    rng = random.Random(5)
    rows = population(rng, 1200, routes={"/slow": (0.6, 0.3), "/fast": (0.4, 0.7)})
    result = run_diff(write(tmp_path, rows), options())
    raw = {m.metric: m for m in result.metrics}["mean_latency"]
    adjusted = {m.metric: m for m in result.adjusted}["mean_latency"]
    assert raw.judgement.verdict is Verdict.REGRESSION  # Simpson's paradox, unadjusted
    assert adjusted.estimate.diff_lo < 0 < adjusted.estimate.diff_hi
    assert result.verdict is not Verdict.REGRESSION, result.reason


def test_swapping_cohorts_flips_every_difference(tmp_path):
    rng = random.Random(6)
    lake = write(tmp_path, population(rng, 800, ms_on=120, err_on=0.04))
    a = run_diff(lake, options(variant="on", baseline="off"))
    b = run_diff(lake, options(variant="off", baseline="on"))
    for ma, mb in zip(a.metrics + a.adjusted, b.metrics + b.adjusted, strict=True):
        assert ma.estimate.diff == pytest.approx(-mb.estimate.diff)
        assert ma.estimate.diff_lo == pytest.approx(-mb.estimate.diff_hi, rel=1e-6, abs=1e-9)
        assert ma.estimate.p_value == pytest.approx(mb.estimate.p_value, rel=1e-6)


def test_an_injected_regression_is_found_and_intervals_contain_estimates(tmp_path):
    rng = random.Random(7)
    result = run_diff(write(tmp_path, population(rng, 1500, ms_on=140, err_on=0.06)), options())
    assert result.verdict is Verdict.REGRESSION
    for m in result.metrics + result.adjusted:
        e = m.estimate
        assert e.diff_lo <= e.diff <= e.diff_hi and 0 <= e.p_value <= 1


def test_sequential_intervals_are_wider(tmp_path):
    rng = random.Random(8)
    lake = write(tmp_path, population(rng, 600))
    fixed = run_diff(lake, options())
    always = run_diff(lake, options(sequential=True))
    for f, s in zip(fixed.metrics, always.metrics, strict=True):
        assert s.estimate.sequential
        assert s.estimate.diff_hi - s.estimate.diff_lo > f.estimate.diff_hi - f.estimate.diff_lo
    # the per-route correction runs on the always-valid p-values (a q-value is never below
    # the p-value it corrects)
    routes = [m for stratum in always.breakdown for m in stratum.metrics]
    assert routes and all(m.estimate.sequential for m in routes)
    assert all(m.q_value >= m.estimate.p_value for m in routes)


def test_no_errors_in_baseline_and_some_in_treatment_is_never_a_pass(tmp_path):
    rng = random.Random(9)
    rows = population(rng, 400, err_on=0.0, err_off=0.0)
    rows += request("user-extra", "on", error=True)
    lake = write(tmp_path, rows)
    result = run_diff(lake, options())
    error_rate = {m.metric: m for m in result.metrics}["error_rate"]
    assert error_rate.judgement.verdict is not Verdict.PASS
    assert result.verdict is not Verdict.PASS
    # with thresholds so wide that the interval alone would pass, the rule still holds
    wide = run_diff(lake, options(thresholds=Thresholds(error_rate_pp=5.0, latency_pct=50.0)))
    error_rate = {m.metric: m for m in wide.metrics}["error_rate"]
    assert error_rate.judgement.verdict is Verdict.INCONCLUSIVE
    assert "never a pass" in error_rate.judgement.reason
    assert wide.verdict is not Verdict.PASS


def test_sample_ratio_mismatch_makes_the_comparison_unhealthy(tmp_path):
    rng = random.Random(10)
    lake = write(tmp_path, population(rng, 1000, share_on=0.5))
    result = run_diff(lake, options(expected_split={"on": 0.2, "off": 0.8}))
    assert result.srm is not None and result.srm.alert
    assert result.verdict is Verdict.UNHEALTHY and "configured split" in result.reason


def _lenient():
    from flagscope.analysis.verdict import Thresholds

    return Thresholds(min_users=1)


def test_aware_window_times_are_taken_as_utc(tmp_path):
    from datetime import UTC, timezone

    lake = write(tmp_path, request("u1", "on") + request("u2", "off"))
    plus_two = timezone(timedelta(hours=2))
    aware = DiffOptions(
        "f",
        START.replace(tzinfo=UTC).astimezone(plus_two),
        END.replace(tzinfo=UTC).astimezone(plus_two),
        thresholds=_lenient(),
    )
    assert (aware.start, aware.end) == (START, END)
    assert run_diff(lake, aware).treatment.requests == 1


@pytest.mark.parametrize(
    ("treatment", "decisive"), [(150.0, Verdict.REGRESSION), (50.0, Verdict.IMPROVEMENT)]
)
def test_a_route_verdict_must_survive_benjamini_hochberg_both_ways(treatment, decisive):
    from flagscope.analysis.stats import Method
    from flagscope.analysis.stats.estimate import normal_estimate
    from flagscope.analysis.verdict import Thresholds, judge

    est = normal_estimate(100.0, treatment, 1.0, 1.0, 0.05, Method.DELTA)
    users, errors = (500, 500), (0.0, 0.0)
    assert judge("mean_latency", est, Thresholds(), users, errors).verdict is decisive
    assert judge("mean_latency", est, Thresholds(), users, errors, 0.01).verdict is decisive
    gated = judge("mean_latency", est, Thresholds(), users, errors, 0.2)
    assert gated.verdict is Verdict.INCONCLUSIVE
    assert gated.reason.startswith("not significant after Benjamini–Hochberg (q = 0.2)")
