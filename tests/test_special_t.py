"""Student's t and the regularized incomplete beta function of
flagscope.analysis.stats.special against scipy (and exact closed forms), far into the tails,
for the fractional degrees of freedom that Welch–Satterthwaite produces."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from flagscope.analysis.stats.special import (
    regularized_incomplete_beta,
    student_t_ppf,
    student_t_sf,
    student_t_two_sided_p,
)

# Local settings (no global profile): no example database on disk, no deadline.
examples = settings(max_examples=200, deadline=None, database=None)

DFS = [0.5, 1.0, 1.5, 2.0, 3.0, 4.7, 10.0, 29.5, 100.0, 1e4, 1e7]
T_VALUES = [0.0, 0.01, 0.1, 0.5, 1.0, 1.5, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0, 8.0, 10.0]
T_VALUES += [20.0, 30.0, 50.0]
Q_VALUES = [1e-12, 1e-10, 1e-9, 1e-6, 1e-4, 1e-3, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.3, 0.4]
Q_VALUES += [0.45, 0.49, 0.5] + [1.0 - q for q in reversed(Q_VALUES)]
REL = 1e-9  # the agreement required with scipy; achieved: 1.5e-13 or better (see below)
SMALLEST_COMPARED = 1e-290  # scipy and we both underflow to 0 (or subnormals) below this


def _rel(got: float, expected: float) -> float:
    return abs(got - expected) / abs(expected) if expected else abs(got)


def test_sf_matches_scipy_on_the_grid_including_the_far_tail() -> None:
    worst = 0.0
    for df in DFS:
        for t in T_VALUES:
            for signed in (t, -t):
                expected = float(stats.t.sf(signed, df))
                got = student_t_sf(signed, df)
                if expected < SMALLEST_COMPARED:
                    assert got < 1e-280, (df, signed, got, expected)
                    continue
                worst = max(worst, _rel(got, expected))
                assert got == pytest.approx(expected, rel=REL, abs=0.0), (df, signed)
    # Measured: 1.5e-13 (df = 1e4, t = 30, where an ulp of t moves sf by ~t^2 ulps; against
    # mpmath both we and scipy are off by ~1e-13 there), 1e-14 or better elsewhere.
    assert worst < 1e-12


def test_two_sided_p_is_twice_the_upper_tail_without_cancellation() -> None:
    for df in DFS:
        for t in T_VALUES:
            expected = min(1.0, 2.0 * float(stats.t.sf(abs(t), df)))
            if expected < SMALLEST_COMPARED:
                continue
            for signed in (t, -t):
                assert student_t_two_sided_p(signed, df) == pytest.approx(expected, rel=REL)
    # Far beyond where 1 - cdf would be 0: df = 3, t = 1e4 gives p ~ 2e-11 with full digits.
    assert student_t_two_sided_p(1e4, 3.0) == pytest.approx(2 * stats.t.sf(1e4, 3.0), rel=1e-13)
    assert student_t_two_sided_p(0.0, 4.7) == 1.0


def test_ppf_matches_scipy_on_the_grid_down_to_1e_minus_12() -> None:
    worst = 0.0
    for df in DFS:
        for q in Q_VALUES:
            expected = float(stats.t.ppf(q, df))
            got = student_t_ppf(q, df)
            if expected == 0.0:
                assert got == 0.0
                continue
            worst = max(worst, _rel(got, expected))
            assert got == pytest.approx(expected, rel=REL, abs=0.0), (df, q)
    assert worst < 1e-13  # measured: 5e-15 (against mpmath, ~1e-14 down to q = 1e-300)
    for df in DFS:
        for q in [2.0**-40, 0.125, 0.25, 0.375]:  # 1 - q is exact: an exact mirror image
            assert student_t_ppf(1.0 - q, df) == -student_t_ppf(q, df)


def test_cauchy_and_two_degrees_of_freedom_against_closed_forms() -> None:
    """df = 1 (Cauchy) and df = 2 have exact formulas, also beyond scipy's range."""
    for t in [1e-8, 0.3, 1.0, 7.0, 1e3, 1e8, 1e200]:
        assert student_t_sf(t, 1.0) == pytest.approx(math.atan2(1.0, t) / math.pi, rel=1e-14)
        root = math.sqrt(2.0 + t * t) if t < 1e150 else t
        assert student_t_sf(t, 2.0) == pytest.approx(1.0 / (root * (root + t)), rel=1e-14)
    for q in [1e-300, 1e-30, 1e-12, 0.1, 0.3, 0.49]:
        assert student_t_ppf(q, 1.0) == pytest.approx(-1.0 / math.tan(math.pi * q), rel=1e-14)
        two = -(1.0 - 2.0 * q) / math.sqrt(2.0 * q * (1.0 - q))
        assert student_t_ppf(q, 2.0) == pytest.approx(two, rel=1e-14)
    # The same answers from the general solver at df next to 1 and 2.
    for df in (1.0, 2.0):
        for q in [1e-12, 1e-3, 0.2, 0.4]:
            near = student_t_ppf(q, df * (1 + 1e-13))
            assert near == pytest.approx(student_t_ppf(q, df), rel=1e-11)


def test_regularized_incomplete_beta_matches_scipy() -> None:
    worst = 0.0
    for a in [0.1, 0.5, 1.0, 2.5, 7.0, 14.75, 15.5, 50.0, 5e3, 5e6]:
        for b in [0.2, 0.5, 1.0, 3.0, 20.0, 200.0]:
            for x in [1e-6, 1e-3, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999, 1.0 - 1e-6]:
                expected = float(special.betainc(a, b, x))
                if expected < SMALLEST_COMPARED:
                    continue
                got = regularized_incomplete_beta(a, b, x)
                worst = max(worst, _rel(got, expected))
                assert got == pytest.approx(expected, rel=1e-10), (a, b, x)
                # The symmetry relation I_x(a, b) = 1 - I_{1-x}(b, a).
                assert got + regularized_incomplete_beta(b, a, 1.0 - x) == pytest.approx(1.0)
    assert worst < 1e-12
    assert regularized_incomplete_beta(2.0, 3.0, 0.0) == 0.0
    assert regularized_incomplete_beta(2.0, 3.0, 1.0) == 1.0
    assert regularized_incomplete_beta(1.0, 1.0, 0.25) == pytest.approx(0.25, rel=1e-15)


@examples
@given(
    df=st.floats(-0.3, 8.0).map(lambda e: 10.0**e),
    t=st.floats(0.0, 40.0),
)
def test_ppf_inverts_sf(df: float, t: float) -> None:
    """P(T <= -t) = P(T > t), so ppf(sf(t)) = -t. (For t < 0, sf(t) = 1 - small has already
    rounded the small part away, so only t >= 0 can round-trip.) The error is sf's times
    the condition number sf(t) / (t f(t)), large only near t = 0 (the absolute term)."""
    p = student_t_sf(t, df)
    if not p > 1e-300:
        return
    back = -student_t_ppf(p, df)
    assert back == pytest.approx(t, rel=1e-11, abs=1e-14)


@examples
@given(
    df=st.floats(-0.3, 8.0).map(lambda e: 10.0**e),
    log_q=st.floats(-690.0, math.log(0.5)),
)
def test_sf_inverts_ppf(df: float, log_q: float) -> None:
    q = math.exp(log_q)
    t = student_t_ppf(q, df)
    assert t <= 0.0
    if math.isinf(t):  # beyond the largest double: only for heavy tails and tiny q
        assert df < 3.0 and student_t_sf(1e308, df) > q
        return
    # cdf(t) = sf(-t) = q. An ulp of t moves sf by |d ln sf / d ln t| ulps, which is about
    # t^2 in a light tail and at most df + 1 in a heavy one.
    condition = max(1.0, min(t * t, df + 1.0))
    assert student_t_sf(-t, df) == pytest.approx(q, rel=2e-13 * condition)


def test_large_df_approaches_the_normal() -> None:
    normal = NormalDist()
    previous_gap = math.inf
    for df in [1e3, 1e5, 1e7, 1e9, 1e12, 1e15, 1e19, 1e20, 1e30, math.inf]:
        gap = 0.0
        for q in [1e-12, 1e-6, 0.01, 0.2, 0.45]:
            t = student_t_ppf(q, df)
            z = normal.inv_cdf(q)
            # A&S 26.7.5: t = z + g1(z) / df + g2(z) / df^2 + O(1 / df^3); t is beyond z.
            g1 = (z**3 + z) / 4.0
            g2 = (5.0 * z**5 + 16.0 * z**3 + 3.0 * z) / 96.0
            assert t <= z + 1e-14 * abs(z)  # up to rounding (~3e-15 relative at df = 1e19)
            expansion = g1 / df + g2 / df**2
            assert t - z == pytest.approx(expansion, rel=1e-3, abs=1e-14 * abs(z))
            gap = max(gap, abs(t - z))
        for t in [0.5, 2.0, 6.0]:
            sf_normal = 0.5 * math.erfc(t / math.sqrt(2.0))
            assert student_t_sf(t, df) == pytest.approx(sf_normal, rel=max(1e-14, 20 * t**4 / df))
        assert gap <= previous_gap
        previous_gap = gap
    assert student_t_ppf(0.025, math.inf) == normal.inv_cdf(0.025)
    assert student_t_ppf(0.975, 1e25) == normal.inv_cdf(0.975)
    assert student_t_sf(40.0, math.inf) == pytest.approx(stats.norm.sf(40.0), rel=1e-14)
    assert student_t_two_sided_p(-3.0, math.inf) == pytest.approx(2 * stats.norm.sf(3.0))


def test_invalid_input_is_nan_and_infinities_are_limits() -> None:
    nan = math.nan
    for df in [0.0, -1.0, nan, -math.inf]:
        assert math.isnan(student_t_sf(1.0, df))
        assert math.isnan(student_t_two_sided_p(1.0, df))
        assert math.isnan(student_t_ppf(0.3, df))
    for q in [0.0, 1.0, -0.1, 1.5, nan, math.inf]:
        assert math.isnan(student_t_ppf(q, 5.0))
    assert math.isnan(student_t_sf(nan, 5.0))
    assert math.isnan(student_t_two_sided_p(nan, 5.0))
    for a, b, x in [(0.0, 1.0, 0.5), (1.0, -1.0, 0.5), (1.0, 1.0, 1.5), (nan, 1.0, 0.5)]:
        assert math.isnan(regularized_incomplete_beta(a, b, x))
    assert math.isnan(regularized_incomplete_beta(1.0, 1.0, nan))
    assert math.isnan(regularized_incomplete_beta(math.inf, 1.0, 0.5))
    for df in [0.5, 7.3, math.inf]:
        assert student_t_sf(math.inf, df) == 0.0
        assert student_t_sf(-math.inf, df) == 1.0
        assert student_t_two_sided_p(math.inf, df) == 0.0
        assert student_t_two_sided_p(-math.inf, df) == 0.0
        assert student_t_sf(0.0, df) == 0.5
        assert student_t_ppf(0.5, df) == 0.0
    # Quantiles beyond the largest double, for a heavy tail.
    assert student_t_ppf(1e-300, 0.5) == -math.inf
    assert student_t_ppf(1.0 - 1e-16, 0.05) == math.inf
    assert -1e160 < student_t_ppf(1e-16, 0.1) < -1e155  # still finite
    assert student_t_sf(1e300, 0.5) == pytest.approx(stats.t.sf(1e300, 0.5), rel=1e-12)


@settings(max_examples=200, deadline=None, database=None)
@given(
    t=st.floats(allow_nan=True, allow_infinity=True),
    df=st.floats(allow_nan=True, allow_infinity=True),
    q=st.floats(allow_nan=True, allow_infinity=True),
)
def test_any_float_input_gives_a_probability_a_quantile_or_nan(
    t: float, df: float, q: float
) -> None:
    """The package convention: numeric input never raises; invalid input gives NaN."""
    for p in (student_t_sf(t, df), student_t_two_sided_p(t, df)):
        assert math.isnan(p) or 0.0 <= p <= 1.0
        assert math.isnan(p) == (math.isnan(t) or not df > 0.0)
    quantile = student_t_ppf(q, df)
    assert math.isnan(quantile) == (not (0.0 < q < 1.0 and df > 0.0))
    beta = regularized_incomplete_beta(abs(df), abs(t), q)
    assert math.isnan(beta) or 0.0 <= beta <= 1.0
