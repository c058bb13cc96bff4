"""Seeded simulations on clustered data: users with different request counts and
user-level random effects (error propensity, latency level).

Each rate is checked against a binomial Monte-Carlo bound: a false-alarm rate must not
exceed the 99.9 % quantile of Binomial(R, alpha) / R; a coverage must fall inside the
central 99.9 % range of Binomial(R, 1 - alpha) / R. Seeds are fixed, so results are
reproducible; the bounds say how far a correct method could drift by chance.
Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from scipy import stats

from flagscope.analysis.stats import (
    Method,
    RatioStats,
    error_rate_difference,
    quantile_difference,
    quantile_interval_from_samples,
    ratio_difference,
    sequential_estimate,
)

pytestmark = pytest.mark.simulation

ALPHA = 0.05


def _max_false_alarms(reps: int) -> float:
    return float(stats.binom.ppf(0.999, reps, ALPHA)) / reps


def _coverage_band(reps: int) -> tuple[float, float]:
    lo, hi = stats.binom.ppf([0.0005, 0.9995], reps, 1 - ALPHA)
    return float(lo) / reps, float(hi) / reps


def _errors(rng: np.random.Generator, users: int, rate: float, kappa: float = 10.0):
    """Per-user (errors, requests): requests 1 + Geometric(mean 15); each user's error
    propensity ~ Beta with mean ``rate`` and concentration ``kappa`` (small kappa =
    strong clustering; kappa = 10 gives an intra-user correlation of about 0.09)."""
    requests = 1 + rng.geometric(1 / 15, size=users)
    propensity = rng.beta(rate * kappa, (1 - rate) * kappa, size=users)
    return rng.binomial(requests, propensity).astype(float), requests.astype(float)


def _sums(x: np.ndarray, y: np.ndarray) -> RatioStats:
    """What the SQL engine hands over: count and sums per cohort."""
    return RatioStats(
        len(x),
        float(x.sum()),
        float(y.sum()),
        float((x * x).sum()),
        float((y * y).sum()),
        float((x * y).sum()),
    )


def _naive_binomial_p(t: tuple[np.ndarray, ...], c: tuple[np.ndarray, ...]) -> float:
    """Request-level two-proportion z-test (pooled), as if requests were independent."""
    table = [[t[0].sum(), t[1].sum() - t[0].sum()], [c[0].sum(), c[1].sum() - c[0].sum()]]
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def test_aa_delta_method_false_alarms_at_most_alpha_and_naive_test_inflated() -> None:
    rng = np.random.default_rng(101)
    reps = 2000
    delta_alarms = naive_alarms = covered = 0
    for _ in range(reps):
        t, c = _errors(rng, 400, 0.05), _errors(rng, 400, 0.05)
        est = ratio_difference(_sums(*t), _sums(*c), ALPHA)
        delta_alarms += est.p_value < ALPHA
        covered += est.diff_lo <= 0.0 <= est.diff_hi
        naive_alarms += _naive_binomial_p(t, c) < ALPHA
    print(f"\nA/A error rate: delta {delta_alarms / reps:.4f}, naive {naive_alarms / reps:.4f}")
    assert delta_alarms / reps <= _max_false_alarms(reps)
    lo, hi = _coverage_band(reps)
    assert lo <= covered / reps <= hi
    # The same data read request by request: the user is the unit, not the request.
    assert naive_alarms / reps > 3 * ALPHA


def test_delta_method_coverage_and_power_against_plus_2pp() -> None:
    rng = np.random.default_rng(102)
    reps = 600
    detected = covered = 0
    for _ in range(reps):
        est = ratio_difference(
            _sums(*_errors(rng, 1000, 0.07)), _sums(*_errors(rng, 1000, 0.05)), ALPHA
        )
        detected += est.p_value < ALPHA and est.diff > 0
        covered += est.diff_lo <= 0.02 <= est.diff_hi
    print(f"\n+2 pp: power {detected / reps:.3f}, coverage {covered / reps:.3f}")
    lo, hi = _coverage_band(reps)
    assert lo <= covered / reps <= hi
    assert detected / reps >= 0.9


@pytest.mark.parametrize(("rate", "kappa"), [(0.0005, 10.0), (0.002, 10.0), (0.01, 0.5)])
def test_aa_rare_event_path_false_alarms_at_most_alpha(rate: float, kappa: float) -> None:
    rng = np.random.default_rng(103)
    reps = 1500
    alarms = rare = 0
    for _ in range(reps):
        t, c = _errors(rng, 500, rate, kappa), _errors(rng, 500, rate, kappa)
        est = error_rate_difference(_sums(*t), _sums(*c), ALPHA)
        alarms += not (est.diff_lo <= 0.0 <= est.diff_hi)
        rare += est.method is Method.NEWCOMBE
    print(f"\nrare A/A rate={rate} kappa={kappa}: {alarms / reps:.4f} ({rare} Newcombe)")
    assert rare > reps // 2  # the rare path was exercised
    assert alarms / reps <= _max_false_alarms(reps)


def _latencies(rng: np.random.Generator, users: int, factor: float = 1.0) -> list[list[float]]:
    """Per-user latencies: log-latency = user effect N(log 100, 0.4) + N(0, 0.5);
    requests per user 1 + Geometric(mean 6). Requests are independent of the user
    effect, so the request-level distribution is lognormal(log 100, sqrt(0.41))."""
    requests = 1 + rng.geometric(1 / 6, size=users)
    levels = rng.normal(math.log(100), 0.4, size=users)
    return [
        (factor * np.exp(rng.normal(m, 0.5, size=k))).tolist()
        for m, k in zip(levels, requests, strict=True)
    ]


TRUE_P95 = 100 * math.exp(NormalDist().inv_cdf(0.95) * math.sqrt(0.41))


def _p95_difference(treatment: list[list[float]], control: list[list[float]]):
    t = quantile_interval_from_samples(treatment, 0.95, ALPHA)
    c = quantile_interval_from_samples(control, 0.95, ALPHA)
    return c, quantile_difference(0.95, t.estimate, t.lo, t.hi, c.estimate, c.lo, c.hi, ALPHA)


def test_aa_p95_difference_false_alarms_at_most_alpha_and_covers() -> None:
    rng = np.random.default_rng(104)
    reps = 500
    alarms = covered = 0
    for _ in range(reps):
        control, est = _p95_difference(_latencies(rng, 300), _latencies(rng, 300))
        alarms += est.p_value < ALPHA
        covered += control.lo <= TRUE_P95 <= control.hi
    print(f"\nA/A p95: false alarms {alarms / reps:.4f}, one-cohort coverage {covered / reps:.3f}")
    assert alarms / reps <= _max_false_alarms(reps)
    lo, hi = _coverage_band(reps)
    assert lo <= covered / reps <= hi


def test_p95_difference_power_and_coverage_against_plus_30_percent() -> None:
    rng = np.random.default_rng(105)
    reps = 250
    detected = covered = 0
    for _ in range(reps):
        _, est = _p95_difference(_latencies(rng, 300, 1.3), _latencies(rng, 300))
        detected += est.p_value < ALPHA and est.diff > 0
        covered += est.diff_lo <= 0.3 * TRUE_P95 <= est.diff_hi
    print(f"\n+30 % p95: power {detected / reps:.3f}, coverage {covered / reps:.3f}")
    lo, hi = _coverage_band(reps)
    assert lo <= covered / reps <= hi
    assert detected / reps >= 0.85


def _cumulative(x: np.ndarray, y: np.ndarray, ends: np.ndarray) -> list[RatioStats]:
    sums = [np.cumsum(a)[ends - 1] for a in (x, y, x * x, y * y, x * y)]
    return [RatioStats(int(e), *(float(s[i]) for s in sums)) for i, e in enumerate(ends)]


def _looks(rng: np.random.Generator, rate_t: float, looks: int = 20, per_look: int = 100):
    ends = np.arange(1, looks + 1) * per_look
    t = _cumulative(*_errors(rng, looks * per_look, rate_t), ends)
    c = _cumulative(*_errors(rng, looks * per_look, 0.05), ends)
    for a, b in zip(t, c, strict=True):
        fixed = ratio_difference(a, b, ALPHA)
        yield fixed, sequential_estimate(fixed, a.n + b.n, ALPHA)


def test_sequential_looks_keep_false_alarms_at_most_alpha_where_fixed_looks_do_not() -> None:
    rng = np.random.default_rng(106)
    reps = 600
    seq_alarms = fixed_alarms = 0
    for _ in range(reps):
        fixed_hit = seq_hit = False
        for fixed, seq in _looks(rng, 0.05):
            fixed_hit |= fixed.p_value < ALPHA
            seq_hit |= not (seq.diff_lo <= 0.0 <= seq.diff_hi) or seq.p_value < ALPHA
        fixed_alarms += fixed_hit
        seq_alarms += seq_hit
    print(f"\n20 looks A/A: sequential {seq_alarms / reps:.4f}, fixed {fixed_alarms / reps:.4f}")
    assert seq_alarms / reps <= _max_false_alarms(reps)
    assert fixed_alarms / reps > 2 * ALPHA  # peeking at fixed-horizon intervals inflates


def test_sequential_interval_still_detects_plus_2pp_by_the_last_look() -> None:
    rng = np.random.default_rng(107)
    reps = 200
    detected = 0
    for _ in range(reps):
        detected += any(seq.diff_lo > 0 for _, seq in _looks(rng, 0.07))
    print(f"\n20 looks +2 pp: sequential power {detected / reps:.3f}")
    assert detected / reps >= 0.9


@pytest.mark.parametrize("users", [50, 200])
def test_small_cohorts_with_heavy_users_keep_their_coverage(users: int) -> None:
    """50 and 200 users a cohort, 3 % of them sending 40 times the requests, per-user
    latency levels: the jackknife variance with a Welch t interval covers the true 0 in
    0.935 (50 users: one or two heavy users a cohort) and 0.938 (200) of seeded runs,
    where the delta method's z interval on the same data covers 0.79 and 0.89 — issue 9's
    small-sample honesty. Not quite 0.95 with a handful of heavy users: the bound below
    is 0.93, and the README says so."""
    rng = np.random.default_rng(118 + users)
    reps, covered, covered_delta_z = 3000, 0, 0
    z = NormalDist().inv_cdf(1 - ALPHA / 2)
    for _ in range(reps):
        cohorts = []
        for _side in range(2):
            requests = 1 + rng.geometric(1 / 8, size=users)
            requests = np.where(rng.random(users) < 0.03, 40 * requests, requests)
            latency = rng.gamma(2.0 * requests, 50.0) * rng.lognormal(-0.125, 0.5, size=users)
            cohorts.append(RatioStats.from_users(latency.tolist(), requests.astype(float).tolist()))
        est = ratio_difference(cohorts[0], cohorts[1], ALPHA)
        covered += est.diff_lo <= 0.0 <= est.diff_hi
        delta_se = math.sqrt(cohorts[0].variance() + cohorts[1].variance())
        covered_delta_z += abs(est.diff) <= z * delta_se
    lo, hi = _coverage_band(reps)
    print(
        f"\n{users} users: jackknife + t {covered / reps:.4f}, delta + z {covered_delta_z / reps:.4f}"
    )
    assert 0.93 <= covered / reps <= hi
    assert covered_delta_z / reps < lo
