"""Invariants of flagscope.analysis.stats under arbitrary inputs (hypothesis): swapping cohorts
flips signs, intervals contain their estimates, p-values are probabilities, and no
input — however degenerate — raises or yields NaN."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from flagscope.analysis.stats import (
    Estimate,
    Method,
    RatioStats,
    SrmResult,
    Status,
    benjamini_hochberg,
    error_rate_difference,
    quantile_difference,
    quantile_interval_from_samples,
    rare_difference,
    ratio_difference,
    sequential_estimate,
    srm_test,
    wilson_interval,
)

# Local settings (no global profile): no example database on disk, no deadline.
examples = settings(max_examples=150, deadline=None, database=None)

ALPHAS = st.sampled_from([0.01, 0.05, 0.1, 0.3])


@st.composite
def cohorts(draw: st.DrawFn, max_users: int = 25) -> RatioStats:
    """Per-user (errors, requests) with errors <= requests, summed like the engine."""
    users = draw(st.lists(st.integers(1, 40), max_size=max_users))
    errors = [draw(st.integers(0, r)) for r in users]
    return RatioStats.from_users([float(e) for e in errors], [float(r) for r in users])


ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
raw_stats = st.builds(
    RatioStats, st.integers(-3, 50), ANY_FLOAT, ANY_FLOAT, ANY_FLOAT, ANY_FLOAT, ANY_FLOAT
)


def assert_well_formed(est: Estimate) -> None:
    assert isinstance(est.status, Status)
    for f in fields(est):
        value = getattr(est, f.name)
        if isinstance(value, float):
            assert math.isfinite(value), f.name
    assert 0.0 <= est.p_value <= 1.0
    assert est.diff_lo <= est.diff <= est.diff_hi
    assert est.rel_lo <= est.rel <= est.rel_hi
    assert est.se >= 0.0


def assert_mirrored(a: Estimate, b: Estimate) -> None:
    """b is a with the cohorts swapped."""
    assert a.status.has_interval == b.status.has_interval
    tol = 1e-9 * (1.0 + abs(a.diff_lo) + abs(a.diff_hi))
    assert math.isclose(a.diff, -b.diff, abs_tol=tol)
    assert math.isclose(a.diff_lo, -b.diff_hi, abs_tol=tol)
    assert math.isclose(a.diff_hi, -b.diff_lo, abs_tol=tol)
    assert math.isclose(a.p_value, b.p_value, rel_tol=1e-6, abs_tol=1e-12)
    assert a.method == b.method


@pytest.mark.parametrize("difference", [ratio_difference, error_rate_difference])
@examples
@given(cohorts(), cohorts(), ALPHAS)
def test_swapping_cohorts_flips_signs_and_stays_well_formed(difference, t, c, alpha) -> None:
    forward, backward = difference(t, c, alpha), difference(c, t, alpha)
    assert_well_formed(forward)
    assert_well_formed(backward)
    assert_mirrored(forward, backward)


@st.composite
def busy_cohort(draw: st.DrawFn, rate: float) -> RatioStats:
    """40–200 users with 10–30 requests each around an error rate: the delta-method path."""
    requests = [draw(st.integers(10, 30)) for _ in range(draw(st.integers(40, 200)))]
    errors = [draw(st.integers(0, int(r * rate * 2))) for r in requests]
    return RatioStats.from_users([float(e) for e in errors], [float(r) for r in requests])


@examples
@given(
    st.floats(0.1, 0.3).flatmap(lambda r: st.tuples(busy_cohort(r), busy_cohort(r * 1.1))), ALPHAS
)
def test_interval_excludes_zero_exactly_when_p_is_below_alpha(cohorts_tc, alpha) -> None:
    est = error_rate_difference(*cohorts_tc, alpha)
    assume(est.method is Method.DELTA and est.has_interval and abs(est.p_value - alpha) > 1e-6)
    assert (est.p_value < alpha) == (not est.diff_lo <= 0.0 <= est.diff_hi)


@examples
@given(raw_stats, raw_stats, st.floats(allow_nan=True, allow_infinity=True))
# found by this test once: the smallest subnormal alpha halves to 0 in z_value
@example(RatioStats(2, 0.0, 1.0, 0.0, 0.0, 0.0), RatioStats(2, 0.0, 1.0, 0.0, 0.0, 0.0), 5e-324)
def test_any_sums_and_alpha_give_a_result_never_nan(t, c, alpha) -> None:
    for est in (ratio_difference(t, c, alpha), error_rate_difference(t, c, alpha)):
        assert_well_formed(est)


@examples
@given(ANY_FLOAT, ANY_FLOAT, ANY_FLOAT, ANY_FLOAT, ALPHAS)
def test_rare_difference_never_nan(x_t, n_t, x_c, n_c, alpha) -> None:
    assert_well_formed(rare_difference(x_t, n_t, x_c, n_c, alpha))


@examples
@given(st.integers(0, 10_000), st.integers(1, 10_000), st.integers(0, 10_000), ALPHAS)
def test_rare_difference_never_has_zero_width(x_t, n_t, x_c, alpha) -> None:
    x_t, n_c = min(x_t, n_t), n_t + 7
    x_c = min(x_c, n_c)
    est = rare_difference(x_t, n_t, x_c, n_c, alpha)
    assert est.diff_hi - est.diff_lo > 0.0
    assert_mirrored(est, rare_difference(x_c, n_c, x_t, n_t, alpha))


@examples
@given(st.integers(0, 5000), st.integers(0, 5000), ALPHAS)
def test_wilson_interval_contains_the_estimate(x, extra, alpha) -> None:
    n = x + extra
    lo, hi = wilson_interval(x, n, alpha)
    assert 0.0 <= lo <= hi <= 1.0
    if n:
        assert lo <= x / n <= hi
        assert hi > lo


finite = st.floats(-1e6, 1e6)


@examples
@given(finite, st.floats(0, 1e3), st.floats(0, 1e3), finite, st.floats(0, 1e3),
       st.floats(0, 1e3), ALPHAS)  # fmt: skip
def test_quantile_difference_swap_flips_signs(t, t_down, t_up, c, c_down, c_up, alpha) -> None:
    forward = quantile_difference(0.95, t, t - t_down, t + t_up, c, c - c_down, c + c_up, alpha)
    backward = quantile_difference(0.95, c, c - c_down, c + c_up, t, t - t_down, t + t_up, alpha)
    assert_well_formed(forward)
    assert_well_formed(backward)
    assert_mirrored(forward, backward)


latency_users = st.lists(st.lists(st.floats(0, 1e5, allow_nan=False), max_size=8), max_size=15)


@examples
@given(latency_users, st.sampled_from([0.5, 0.9, 0.95, 0.99]), ALPHAS)
def test_quantile_interval_contains_the_estimate(users, p, alpha) -> None:
    got = quantile_interval_from_samples(users, p, alpha)
    assert isinstance(got.status, Status)
    assert got.lo <= got.estimate <= got.hi
    assert 0.0 <= got.p_lo <= got.p_hi <= 1.0
    assert all(math.isfinite(v) for v in (got.estimate, got.lo, got.hi))


@examples
@given(cohorts(), cohorts(), st.integers(0, 100_000), ALPHAS)
def test_sequential_interval_contains_the_fixed_one(t, c, n, alpha) -> None:
    fixed = ratio_difference(t, c, alpha)
    seq = sequential_estimate(fixed, n)
    assert_well_formed(seq)
    assert seq.sequential
    assert seq.diff_lo <= fixed.diff_lo and seq.diff_hi >= fixed.diff_hi
    assert seq.p_value >= fixed.p_value or not fixed.has_interval


@examples
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=30))
def test_benjamini_hochberg_is_monotone_and_capped(p_values) -> None:
    q = benjamini_hochberg(p_values)
    assert len(q) == len(p_values)
    assert all(0.0 <= v <= 1.0 for v in q)
    cleaned = [1.0 if math.isnan(p) else min(1.0, max(0.0, p)) for p in p_values]
    for i in range(len(q)):
        assert q[i] >= cleaned[i]
        for j in range(len(q)):
            if cleaned[i] <= cleaned[j]:
                assert q[i] <= q[j]


@examples
@given(
    st.dictionaries(st.sampled_from("abcd"), st.integers(-5, 10**9), max_size=4),
    st.dictionaries(st.sampled_from("abcde"), st.floats(allow_nan=True), max_size=5),
)
def test_srm_never_raises_and_p_is_a_probability(observed, shares) -> None:
    result = srm_test(observed, shares)
    assert isinstance(result, SrmResult)
    assert isinstance(result.status, Status)
    assert math.isfinite(result.chi2) and result.chi2 >= 0.0
    assert 0.0 <= result.p_value <= 1.0
