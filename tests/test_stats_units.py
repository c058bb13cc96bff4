"""Behaviour of flagscope.analysis.stats at the edges: rare events, degenerate inputs, statuses,
health checks, and the package's import discipline."""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path

import pytest

from flagscope.analysis.stats import (
    SRM_ALERT_P_VALUE,
    Method,
    RatioStats,
    Status,
    benjamini_hochberg,
    bounded_by_data,
    choose_error_method,
    error_rate_difference,
    quantile_difference,
    quantile_interval_from_samples,
    rare_difference,
    ratio_difference,
    sequential_estimate,
    sequential_stretch,
    srm_test,
)

STATS_DIR = Path(__file__).resolve().parents[1] / "analysis" / "stats"


def _users(errors: list[int], requests: list[int]) -> RatioStats:
    return RatioStats.from_users([float(e) for e in errors], [float(r) for r in requests])


# --- rare events -------------------------------------------------------------------------


def test_zero_error_baseline_with_strong_evidence_excludes_zero() -> None:
    control = _users([0] * 500, [20] * 500)
    treatment = _users([1] * 40 + [0] * 460, [20] * 500)  # 40 errors from 40 users
    est = error_rate_difference(treatment, control)
    assert est.method is Method.NEWCOMBE
    assert est.status is Status.ZERO_BASELINE  # relative change undefined, absolute valid
    assert est.has_interval and not est.has_relative
    assert est.diff_lo > 0.0
    assert est.p_value < 0.05


def test_zero_error_baseline_with_weak_evidence_is_wide_not_a_pass() -> None:
    control = _users([0] * 200, [5] * 200)
    treatment = _users([1, 1] + [0] * 198, [5] * 200)
    est = error_rate_difference(treatment, control)
    assert est.diff_lo < 0.0 < est.diff_hi
    assert est.diff_hi > 2 * est.diff  # the interval leaves room for real harm


def test_errors_from_a_single_user_are_weak_evidence() -> None:
    # 40 errors, all from one user: about one independent piece of evidence, not 40.
    control = _users([0] * 500, [20] * 500)
    treatment = _users([20, 20] + [0] * 498, [20] * 500)
    est = error_rate_difference(treatment, control)
    assert est.method is Method.NEWCOMBE
    assert est.diff_lo <= 0.0


def test_no_errors_in_either_cohort_gives_a_nonzero_width_interval() -> None:
    est = error_rate_difference(_users([0] * 300, [10] * 300), _users([0] * 300, [10] * 300))
    assert est.diff == 0.0 and est.p_value == 1.0
    assert est.diff_lo < 0.0 < est.diff_hi


def test_plenty_of_events_use_the_delta_method() -> None:
    treatment = _users([1, 2, 0, 3] * 100, [10, 12, 8, 20] * 100)
    control = _users([1, 1, 0, 2] * 100, [10, 12, 8, 20] * 100)
    assert choose_error_method(treatment, control) is Method.DELTA
    assert error_rate_difference(treatment, control).method is Method.DELTA


def test_rare_difference_relative_interval_brackets_the_ratio() -> None:
    est = rare_difference(9, 1000, 3, 1000)
    assert est.status is Status.OK
    assert est.rel == pytest.approx(2.0)
    assert -1.0 <= est.rel_lo < 2.0 < est.rel_hi  # a ratio of rates is never negative
    assert est.diff_lo < 0.0 and est.rel_lo < 0.0  # 9 vs 3 in 1000: not significant


# --- degenerate inputs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("treatment", "control", "status"),
    [
        (RatioStats(0, 0, 0, 0, 0, 0), _users([1, 2], [5, 5]), Status.NO_DATA),
        (_users([1], [5]), _users([1, 2], [5, 5]), Status.TOO_FEW_USERS),
        (_users([1, 2], [10, 20]), _users([3, 4], [30, 40]), Status.ZERO_VARIANCE),
        (RatioStats(3, float("nan"), 1, 1, 1, 1), _users([1, 2], [5, 5]), Status.INVALID_INPUT),
        (_users([1, 2], [5, 5]), RatioStats(2, 0, 0, 0, 0, 0), Status.NO_DATA),
    ],
)
def test_ratio_difference_degenerate_inputs_give_a_status(treatment, control, status) -> None:
    est = ratio_difference(treatment, control)
    assert est.status is status
    assert not est.has_interval
    assert est.p_value == 1.0


def test_zero_control_mean_reports_zero_baseline() -> None:
    est = ratio_difference(_users([1, 3, 0], [5, 5, 5]), _users([0, 0, 0], [5, 5, 5]))
    assert est.status is Status.ZERO_BASELINE
    assert (est.rel, est.rel_lo, est.rel_hi) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, float("nan")])
def test_invalid_alpha_is_a_status_not_an_exception(alpha: float) -> None:
    assert ratio_difference(_users([1, 2], [5, 6]), _users([2, 1], [5, 7]), alpha).status is (
        Status.INVALID_INPUT
    )


def test_quantile_interval_statuses() -> None:
    assert quantile_interval_from_samples([], 0.95).status is Status.NO_DATA
    assert quantile_interval_from_samples([[1.0, 2.0]], 0.95).status is Status.TOO_FEW_USERS
    same = quantile_interval_from_samples([[5.0, 5.0], [5.0], [5.0]], 0.5)
    assert same.status is Status.ZERO_VARIANCE
    assert quantile_interval_from_samples([[1.0], [2.0]], 1.5).status is Status.INVALID_INPUT


def test_a_quantile_with_too_few_requests_beyond_it_is_not_bounded() -> None:
    """40 users of 5 requests: 2 beyond the p99. Its rank interval reaches rank 1, where
    the interval would end at the sample maximum: TOO_FEW_IN_TAIL, not an interval."""
    users = [[float(10 * u + r) for r in range(5)] for u in range(40)]
    assert quantile_interval_from_samples(users, 0.99).status is Status.TOO_FEW_IN_TAIL
    assert quantile_interval_from_samples(users, 0.5).status is Status.OK
    many = [[float(10 * u + r) for r in range(5)] for u in range(2000)]  # 100 beyond it
    assert quantile_interval_from_samples(many, 0.99).status is Status.OK


def test_bounded_by_data_reads_the_widened_rank_interval() -> None:
    assert bounded_by_data(0.99, 0.009) and not bounded_by_data(0.99, 0.011)
    assert not bounded_by_data(0.99, 0.006, stretch=1.7)  # the always-valid widening
    assert bounded_by_data(0.5, 0.2, stretch=2.4) and not bounded_by_data(0.5, 0.2, stretch=2.6)
    assert not bounded_by_data(0.5, math.inf)
    # at the tuning point: sqrt(2 (v + 1) / v log(sqrt(v + 1) / alpha)) / z, v = 7.936
    assert sequential_stretch(1000, 0.05, 1000) == pytest.approx(1.5486, abs=1e-4)
    assert sequential_stretch(12, 0.05, 1000) > 4 and sequential_stretch(1e9, 0.05, 1000) >= 1


def test_quantile_difference_statuses() -> None:
    assert quantile_difference(0.95, 5, 5, 5, 5, 5, 5).status is Status.ZERO_VARIANCE
    assert quantile_difference(0.95, 5, 6, 7, 5, 4, 6).status is Status.INVALID_INPUT
    too_few = quantile_difference(0.95, 5, 4, 6, 5, 4, 6, users_t=1, users_c=40)
    assert too_few.status is Status.TOO_FEW_USERS


# --- sequential --------------------------------------------------------------------------


def test_sequential_estimate_widens_and_marks_the_result() -> None:
    fixed = ratio_difference(_users([1, 2, 0, 3] * 50, [10] * 200), _users([1] * 200, [10] * 200))
    seq = sequential_estimate(fixed, 400)
    assert seq.sequential and not fixed.sequential
    assert seq.diff == fixed.diff
    assert seq.diff_lo < fixed.diff_lo and seq.diff_hi > fixed.diff_hi
    assert seq.rel_lo < fixed.rel_lo and seq.rel_hi > fixed.rel_hi
    assert seq.p_value > fixed.p_value


def test_sequential_estimate_passes_degenerate_results_through() -> None:
    fixed = ratio_difference(RatioStats(0, 0, 0, 0, 0, 0), _users([1, 2], [3, 4]))
    seq = sequential_estimate(fixed, 10)
    assert seq.status is Status.NO_DATA and seq.sequential


# --- SRM and BH --------------------------------------------------------------------------


def test_srm_alerts_only_below_the_threshold() -> None:
    balanced = srm_test({"on": 5030, "off": 4970}, {"on": 0.5, "off": 0.5})
    skewed = srm_test({"on": 5300, "off": 4700}, {"on": 0.5, "off": 0.5})
    assert SRM_ALERT_P_VALUE == 0.001
    assert not balanced.alert and balanced.p_value > 0.5
    assert skewed.alert and skewed.p_value < 1e-8
    assert skewed.df == 1


def test_srm_normalises_shares_and_counts_missing_variants_as_zero() -> None:
    a = srm_test({"on": 200, "off": 800}, {"on": 20, "off": 80})
    assert a.chi2 == pytest.approx(0.0) and a.p_value == pytest.approx(1.0)
    b = srm_test({"on": 1000}, {"on": 0.5, "off": 0.5})
    assert b.status is Status.OK and b.alert


@pytest.mark.parametrize(
    ("observed", "shares", "status"),
    [
        ({}, {"on": 0.5, "off": 0.5}, Status.NO_DATA),
        ({"on": 10}, {"on": 1.0}, Status.INVALID_INPUT),
        ({"on": 10, "x": 3}, {"on": 0.5, "off": 0.5}, Status.INVALID_INPUT),
        ({"on": -1, "off": 3}, {"on": 0.5, "off": 0.5}, Status.INVALID_INPUT),
        ({"on": 1, "off": 3}, {"on": 0.0, "off": 1.0}, Status.INVALID_INPUT),
    ],
)
def test_srm_bad_inputs_give_a_status(observed, shares, status) -> None:
    result = srm_test(observed, shares)
    assert result.status is status
    assert not result.alert


def test_benjamini_hochberg_textbook_example() -> None:
    # m = 4: sorted p (0.01, 0.03, 0.04, 0.2) -> (0.04, 0.0533, 0.0533, 0.2).
    q = benjamini_hochberg([0.04, 0.01, 0.2, 0.03])
    assert q == pytest.approx([0.05333333, 0.04, 0.2, 0.05333333])
    assert benjamini_hochberg([]) == []
    assert benjamini_hochberg([float("nan"), 0.01]) == [1.0, 0.02]


# --- import discipline -------------------------------------------------------------------


def test_stats_package_imports_only_the_standard_library_and_itself() -> None:
    allowed = set(sys.stdlib_module_names) | {"flagscope"}
    for path in STATS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] in allowed, (path.name, name)
                if name.startswith("flagscope"):
                    assert name.startswith("flagscope.analysis.stats"), (path.name, name)


def test_srm_shares_whose_sum_overflows_are_invalid_input_not_an_error() -> None:
    """Found by hypothesis: fsum of the shares raised OverflowError."""
    result = srm_test({"a": 10, "b": 12}, {"a": 2.83e296, "b": 1.80e308})
    assert result.status is Status.INVALID_INPUT
    assert srm_test({"a": 10, "b": 12}, {"a": 1e300, "b": 1e300}).status is Status.OK
