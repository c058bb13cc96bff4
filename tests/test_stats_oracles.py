"""flagscope.analysis.stats against independent oracles: scipy.stats on the same numbers, golden
values from the literature, and independent numpy implementations."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import optimize, special, stats

from flagscope.analysis.stats import (
    RatioStats,
    Status,
    benjamini_hochberg,
    newcombe_difference,
    newcombe_p_value,
    quantile_difference,
    quantile_interval_from_samples,
    ratio_difference,
    sequential_halfwidth,
    sequential_p_value,
    srm_test,
    wilson_interval,
)
from flagscope.analysis.stats.estimate import two_sided_p, z_value
from flagscope.analysis.stats.proportions import mover_ratio
from flagscope.analysis.stats.special import regularized_gamma_q

RNG_SEED = 20240611


# --- normal distribution helpers -------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.5, 0.1, 0.05, 0.01, 1e-4, 1e-10, 1e-100])
def test_z_value_matches_scipy_normal_quantile(alpha: float) -> None:
    assert z_value(alpha) == pytest.approx(stats.norm.isf(alpha / 2), rel=1e-12)


@pytest.mark.parametrize("z", [0.0, 0.3, -1.0, 1.959963984540054, 3.5, -6.0, 12.0, 37.0])
def test_two_sided_p_matches_scipy_normal_tail(z: float) -> None:
    assert two_sided_p(z) == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-12, abs=1e-300)


# --- Wilson and Newcombe -----------------------------------------------------------------


def test_wilson_interval_matches_scipy_binomtest() -> None:
    rng = np.random.default_rng(RNG_SEED)
    for _ in range(300):
        n = int(rng.integers(1, 5000))
        k = int(rng.integers(0, n + 1))
        alpha = float(rng.choice([0.01, 0.05, 0.1, 0.2]))
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=1 - alpha, method="wilson")
        lo, hi = wilson_interval(k, n, alpha)
        assert lo == pytest.approx(ci.low, abs=1e-12)
        assert hi == pytest.approx(ci.high, abs=1e-12)


# Newcombe 1998, "Interval estimation for the difference between independent
# proportions: comparison of eleven methods", Stat Med 17:873-890, Table II, method 10
# (hybrid score, no continuity correction), worked examples (a) and (b); the same
# values are asserted by the R package propint's test suite. Example (a) is
# 56/70 - 48/80: the difference is 0.2000 (not 0.1833) and the interval 0.0524-0.3339.
NEWCOMBE_TABLE_II = [
    ((56, 70, 48, 80), (0.2000, 0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.6000, 0.1705, 0.8090)),
]


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_TABLE_II)
def test_newcombe_matches_newcombe_1998_table_ii(
    counts: tuple[int, int, int, int], expected: tuple[float, float, float]
) -> None:
    got = newcombe_difference(*counts, alpha=0.05)
    assert got == pytest.approx(expected, abs=5e-5)


def test_newcombe_zero_counts_use_the_wilson_upper_limits() -> None:
    # 0/10 - 0/20: by method 10 the limits are -u(0/20) and +u(0/10), with the Wilson
    # upper limit for 0/n equal to z^2 / (n + z^2) (Wilson 1927) — checked with scipy.
    z2 = stats.norm.isf(0.025) ** 2
    diff, lo, hi = newcombe_difference(0, 10, 0, 20, 0.05)
    assert (diff, lo, hi) == pytest.approx((0.0, -z2 / (20 + z2), z2 / (10 + z2)), abs=1e-12)


@pytest.mark.parametrize("counts", [(56, 70, 48, 80), (9, 10, 3, 10), (7, 5000, 0, 5000)])
def test_newcombe_p_value_is_the_alpha_at_which_the_interval_touches_zero(
    counts: tuple[int, int, int, int],
) -> None:
    p = newcombe_p_value(*counts)
    _, lo, _ = newcombe_difference(*counts, alpha=p)
    assert 0 < p < 1
    assert lo == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("counts", [(56, 70, 48, 80), (3, 40, 5, 60), (1, 1000, 2, 1000)])
def test_mover_ratio_solves_its_defining_equations(counts: tuple[int, int, int, int]) -> None:
    # Donner & Zou 2012: L and U solve p_t - R p_c -/+ sqrt(...) = 0; solve them with
    # scipy's root finder instead of the closed form.
    x_t, n_t, x_c, n_c = counts
    p_t, p_c = x_t / n_t, x_c / n_c
    (l_t, u_t), (l_c, u_c) = wilson_interval(x_t, n_t), wilson_interval(x_c, n_c)

    def lower_equation(r: float) -> float:
        return p_t - r * p_c - math.hypot(p_t - l_t, r * (u_c - p_c))

    def upper_equation(r: float) -> float:
        return p_t - r * p_c + math.hypot(u_t - p_t, r * (p_c - l_c))

    lower = optimize.brentq(lower_equation, 0, p_t / p_c)
    upper = optimize.brentq(upper_equation, p_t / p_c, 1e6)
    lo, hi = mover_ratio(p_t, (l_t, u_t), p_c, (l_c, u_c))
    assert (lo, hi) == pytest.approx((lower, upper), rel=1e-9)


# --- delta method ------------------------------------------------------------------------


def test_delta_variance_golden_value() -> None:
    # Per-user (errors, requests); exact value computed with fractions from
    # sum (x_i - R y_i)^2 / ((n - 1) n ybar^2), R = 11/58 (Deng, Knoblich & Lu 2018).
    stats_ = RatioStats.from_users([1, 0, 3, 2, 0, 5], [10, 5, 12, 8, 3, 20])
    assert stats_.ratio == pytest.approx(11 / 58, rel=1e-15)
    assert stats_.variance() == pytest.approx(float(Fraction(21399, 14145620)), rel=1e-12)


def _clustered_errors(rng: np.random.Generator, users: int) -> tuple[np.ndarray, np.ndarray]:
    requests = 1 + rng.geometric(1 / 15, size=users)
    propensity = rng.beta(0.5, 9.5, size=users)
    return rng.binomial(requests, propensity).astype(float), requests.astype(float)


def _cluster_robust_variance(errors: np.ndarray, requests: np.ndarray) -> float:
    """Request-level mean with a cluster-robust (CR1) sandwich variance: rows are
    requests, residuals are summed within users — a different computation path."""
    user = np.repeat(np.arange(len(requests)), requests.astype(int))
    outcome = np.zeros(user.size)
    starts = np.concatenate([[0], np.cumsum(requests.astype(int))[:-1]])
    for start, e in zip(starts, errors.astype(int), strict=True):
        outcome[start : start + e] = 1.0
    residual = outcome - outcome.mean()
    cluster_sums = np.bincount(user, weights=residual)
    g = len(requests)
    return g / (g - 1) * float(np.sum(cluster_sums**2)) / outcome.size**2


def test_delta_variance_matches_cluster_robust_sandwich() -> None:
    rng = np.random.default_rng(RNG_SEED)
    errors, requests = _clustered_errors(rng, 500)
    ours = RatioStats.from_users(errors.tolist(), requests.tolist()).variance()
    assert ours == pytest.approx(_cluster_robust_variance(errors, requests), rel=1e-9)


def test_delta_variance_matches_user_level_bootstrap() -> None:
    rng = np.random.default_rng(RNG_SEED + 1)
    errors, requests = _clustered_errors(rng, 800)
    idx = rng.integers(0, errors.size, size=(4000, errors.size))
    boot = errors[idx].sum(axis=1) / requests[idx].sum(axis=1)
    ours = RatioStats.from_users(errors.tolist(), requests.tolist()).variance()
    assert math.sqrt(ours) == pytest.approx(float(boot.std(ddof=1)), rel=0.06)


def test_delta_variance_is_accurate_for_large_latency_sums() -> None:
    # Latencies in nanoseconds (~1e8 per request, per-user totals up to ~1e11, sums of
    # squares ~1e24) with per-user means differing by ~1 %: compare to exact fractions.
    rng = np.random.default_rng(RNG_SEED + 2)
    requests = rng.integers(50, 1000, size=300).astype(float)
    latency = (requests * 1.0e8 * rng.normal(1.0, 0.01, size=300)).round()
    ours = RatioStats.from_users(latency.tolist(), requests.tolist()).variance()
    xs = [Fraction(v) for v in latency.tolist()]
    ys = [Fraction(v) for v in requests.tolist()]
    r = sum(xs) / sum(ys)
    ybar = sum(ys) / len(ys)
    exact = sum((x - r * y) ** 2 for x, y in zip(xs, ys, strict=False)) / (
        (len(xs) - 1) * len(xs) * ybar**2
    )
    assert ours == pytest.approx(float(exact), rel=1e-9)


def _jackknife(x: np.ndarray, y: np.ndarray) -> float:
    """Delete-one-user jackknife variance of sum x / sum y, by deleting each user."""
    left_out = (x.sum() - x) / (y.sum() - y)
    return float((x.size - 1) / x.size * ((left_out - left_out.mean()) ** 2).sum())


def test_ratio_difference_interval_and_p_value_match_scipy_welch_t() -> None:
    rng = np.random.default_rng(RNG_SEED + 3)
    t_users, c_users = _clustered_errors(rng, 700), _clustered_errors(rng, 650)
    t = RatioStats.from_users(*(a.tolist() for a in t_users))
    c = RatioStats.from_users(*(a.tolist() for a in c_users))
    est = ratio_difference(t, c, alpha=0.1)
    diff = t.ratio - c.ratio
    # the jackknife over users, deleting each in turn (the library's variance), and
    # Welch–Satterthwaite degrees of freedom (Welch 1947)
    v_t, v_c = (_jackknife(*arrays) for arrays in (t_users, c_users))
    se = math.sqrt(v_t + v_c)
    df = (v_t + v_c) ** 2 / (v_t**2 / (t.n - 1) + v_c**2 / (c.n - 1))
    assert est.status is Status.OK
    assert est.df == pytest.approx(df, rel=1e-12)
    assert est.se == pytest.approx(se, rel=1e-12)
    assert est.p_value == pytest.approx(2 * stats.t.sf(abs(diff) / se, df), rel=1e-9)
    ci = stats.t.interval(0.9, df, loc=diff, scale=se)
    assert (est.diff_lo, est.diff_hi) == pytest.approx(ci, rel=1e-9)


# --- quantiles ---------------------------------------------------------------------------


def _numpy_outer_ci(users: list[list[float]], p: float, alpha: float) -> tuple[float, ...]:
    """Independent numpy version of Deng, Knoblich & Lu 2018 §4 steps 1-3."""
    flat = np.concatenate([np.asarray(u) for u in users])
    q = float(np.quantile(flat, p, method="linear"))
    below = np.array([np.count_nonzero(np.asarray(u) <= q) for u in users], dtype=float)
    sizes = np.array([len(u) for u in users], dtype=float)
    sigma = math.sqrt(_jackknife(below, sizes))  # the fraction below, users deleted in turn
    z = stats.t.isf(alpha / 2, len(users) - 1)  # a mean over users: t with n - 1 df
    p_lo, p_hi = max(0.0, p - z * sigma), min(1.0, p + z * sigma)
    lo, hi = np.quantile(flat, [p_lo, p_hi], method="linear")
    return q, float(lo), float(hi), p_lo, p_hi


def test_quantile_interval_golden_values() -> None:
    # Five users' latencies; numbers from the numpy implementation above, frozen (the rank
    # interval is Student t with 4 degrees of freedom on the jackknife variance: five users
    # are few).
    users = [[12.0, 15.5, 30.1], [8.2], [100.0, 11.0, 13.0, 14.5], [9.9, 10.1], [55.0, 60.0]]
    got = quantile_interval_from_samples(users, 0.5, 0.05)
    assert got.status is Status.OK
    assert got.estimate == pytest.approx(13.75, rel=1e-12)
    assert (got.p_lo, got.p_hi) == pytest.approx((0.10631512671481391, 0.8936848732851861))
    assert (got.lo, got.hi) == pytest.approx((9.93389327877259, 59.152668030685234))


@pytest.mark.parametrize("p", [0.5, 0.9, 0.95, 0.99])
def test_quantile_interval_matches_independent_numpy_implementation(p: float) -> None:
    rng = np.random.default_rng(RNG_SEED + int(p * 100))
    users = [
        list(np.exp(rng.normal(rng.normal(4, 0.5), 0.6, size=1 + rng.geometric(0.15))))
        for _ in range(250)
    ]
    got = quantile_interval_from_samples(users, p, 0.05)
    q, lo, hi, p_lo, p_hi = _numpy_outer_ci(users, p, 0.05)
    assert got.status is Status.OK
    assert (got.estimate, got.lo, got.hi) == pytest.approx((q, lo, hi), rel=1e-12)
    assert (got.p_lo, got.p_hi) == pytest.approx((p_lo, p_hi), rel=1e-12)


def test_quantile_difference_recovers_se_from_widths_and_matches_scipy() -> None:
    # treatment 130 in (120, 142), control 100 in (94, 108), at a normal critical value
    est = quantile_difference(0.95, 130.0, 120.0, 142.0, 100.0, 94.0, 108.0, 0.05)
    z = stats.norm.isf(0.025)
    assert est.se == pytest.approx(math.hypot(22.0 / (2 * z), 14.0 / (2 * z)), rel=1e-12)
    # the interval and the test are on the log scale
    log_se = math.hypot(math.log(142 / 120) / (2 * z), math.log(108 / 94) / (2 * z))
    rel_lo, rel_hi = 1.3 * math.exp(-z * log_se) - 1, 1.3 * math.exp(z * log_se) - 1
    assert (est.rel, est.rel_lo, est.rel_hi) == pytest.approx((0.3, rel_lo, rel_hi), rel=1e-12)
    g = math.sqrt(130 * 100)  # T - C = g (sqrt(T/C) - sqrt(C/T)), at each end of log(T/C)
    ends = [
        g
        * (math.exp(s * z * log_se / 2) * 1.3**0.5 - 1 / (math.exp(s * z * log_se / 2) * 1.3**0.5))
        for s in (-1, 1)
    ]
    assert (est.diff_lo, est.diff_hi) == pytest.approx(tuple(ends), rel=1e-12)
    assert est.p_value == pytest.approx(2 * stats.norm.sf(math.log(1.3) / log_se), rel=1e-9)


def test_quantile_difference_with_an_end_at_zero_is_linear() -> None:
    est = quantile_difference(0.95, 30.0, 0.0, 42.0, 10.0, 4.0, 18.0, 0.05)
    z = stats.norm.isf(0.025)
    se = math.hypot(42.0 / (2 * z), 14.0 / (2 * z))
    assert (est.diff_lo, est.diff_hi) == pytest.approx((20 - z * se, 20 + z * se))
    assert est.p_value == pytest.approx(2 * stats.norm.sf(20.0 / se), rel=1e-9)


# --- SRM, incomplete gamma, BH -------------------------------------------------------------


def test_regularized_gamma_q_matches_scipy() -> None:
    for a in [0.5, 1.0, 1.5, 2.0, 4.5, 10.0, 50.0, 200.0]:
        for x in [1e-6, 0.1, 0.5, 1.0, 2.0, a, a + 1, 3 * a, 10 * a + 20, 400.0]:
            expected = special.gammaincc(a, x)
            got = regularized_gamma_q(a, x)
            assert got == pytest.approx(expected, rel=1e-10, abs=1e-300), (a, x)


def test_srm_matches_scipy_chisquare_including_tiny_p_values() -> None:
    rng = np.random.default_rng(RNG_SEED + 4)
    tiny = 0
    for _ in range(400):
        k = int(rng.integers(2, 6))
        shares = rng.dirichlet(np.ones(k) * 3)
        total = int(rng.integers(10, 200_000))
        tilt = rng.dirichlet(np.ones(k) * float(rng.choice([5.0, 200.0, 1e5])))
        counts = rng.multinomial(total, 0.5 * shares + 0.5 * tilt)
        names = [f"v{i}" for i in range(k)]
        result = srm_test(
            dict(zip(names, counts.tolist(), strict=False)),
            dict(zip(names, shares.tolist(), strict=False)),
        )
        oracle = stats.chisquare(counts, f_exp=shares * total)
        assert result.status is Status.OK
        assert result.df == k - 1
        assert result.chi2 == pytest.approx(oracle.statistic, rel=1e-9)
        assert result.p_value == pytest.approx(oracle.pvalue, rel=1e-8, abs=1e-300)
        tiny += oracle.pvalue < 1e-12
    assert tiny > 20  # the comparison did reach deep into the tail


def test_benjamini_hochberg_matches_scipy() -> None:
    rng = np.random.default_rng(RNG_SEED + 5)
    for _ in range(200):
        m = int(rng.integers(1, 40))
        p = rng.uniform(0, 1, size=m) ** float(rng.choice([1.0, 3.0, 8.0]))
        if m > 3:
            p[:3] = p[0]  # ties
        assert benjamini_hochberg(p.tolist()) == pytest.approx(
            stats.false_discovery_control(p, method="bh").tolist(), rel=1e-12
        )


# --- sequential ---------------------------------------------------------------------------


def _numpy_halfwidth(sd: float, n: float, alpha: float, tuning: float) -> float:
    """Waudby-Smith et al. 2023 two-sided asymptotic CS (as gbstats), written again."""
    rho2 = (-2 * np.log(alpha) + np.log(-2 * np.log(alpha) + 1)) / tuning
    return float(
        sd * np.sqrt(2 * (n * rho2 + 1) / (n**2 * rho2) * np.log(np.sqrt(n * rho2 + 1) / alpha))
    )


@pytest.mark.parametrize("n", [10, 500, 5000, 200_000])
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
def test_sequential_halfwidth_matches_formula(n: int, alpha: float) -> None:
    assert sequential_halfwidth(2.5, n, alpha, 5000) == pytest.approx(
        _numpy_halfwidth(2.5, n, alpha, 5000), rel=1e-12
    )


def test_sequential_p_value_is_the_level_at_which_the_sequence_touches_zero() -> None:
    sd, n, alpha = 3.0, 4000, 0.05
    half = sequential_halfwidth(sd, n, alpha)
    assert sequential_p_value(half, sd, n, alpha) == pytest.approx(alpha, rel=1e-9)
    assert sequential_p_value(0.5 * half, sd, n, alpha) > alpha
    assert sequential_p_value(1.5 * half, sd, n, alpha) < alpha
