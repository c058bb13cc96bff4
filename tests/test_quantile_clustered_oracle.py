"""One cohort's cluster-aware quantile standard error against independent oracles.

flagscope (analysis/stats/quantiles.py) follows Deng, Knoblich & Lu 2018 (KDD) §4: the rank
interval p -/+ c sigma for F = sum b_i / sum n_i (users as clusters, b_i = a user's requests
at or below the estimate, n_i the user's requests) is mapped back through the empirical
type-7 quantile function Q, and quantile_difference reads the cohort's SE off the interval:

    SE_ours = (Q(p + c sigma) - Q(p - c sigma)) / (2 c),

with sigma^2 the delete-one-user jackknife variance of F and c = t_{0.975, users - 1} (the
paper has the delta-method variance and z; the two agree as users grow many).

GrowthBook's gbstats (`QuantileClusteredStatistic`, the same in 0.8.0 and in its current
source) uses the delta-method variance of F (`get_cluster_variance`, equal to
`RatioStats.variance()`) and another map. Its warehouse query evaluates Q at the i.i.d.
(binomial) rank interval nu -/+ h, h = z sqrt(nu (1 - nu) / n*), for n* = 100, 200, 400, ...
and keeps the largest n* below N (N = requests in the cohort); then

    variance_init = (n*/N) (N - 1) ((Q(nu + h) - Q(nu - h)) / (2 z))^2 * sigma_d^2 / (nu (1 - nu) / N)
    SE_gb^2 = variance_init / N        (its t-test divides `variance` by `n` = N),

i.e. the i.i.d. outer-interval SE rescaled from n* to N, times the square roots of the design
effect sigma_d^2 / (nu (1 - nu) / N) and of (N - 1) / N. Both estimate sigma / f(q); they read
the slope of Q (the reciprocal density) in different places: gbstats over the narrow i.i.d.
window -/+ h, flagscope over the clustered window -/+ c sigma, about sqrt(deff N / n*) times
wider. Where Q is linear over both windows they agree up to sqrt((N - 1) / N) and the ratio of
the two variances of F (checked below, exactly). On clustered latencies they do not: over a
convex tail the wide secant overstates the slope and the narrow window, which sits inside one
heavy user's clump of near-equal latencies more often than not, understates it; with 200 users
and user levels N(0, 1) the median of SE_gb / SE_ours was 0.82 at p95 and 0.63 at p99, its 5th
percentile 0.27 (the audit's "up to 2.3x" is one draw of that spread; measured on the
audited delta-method version, which the jackknife and t only widen).

Which is right, by coverage (seeded simulations with known quantiles, run outside the suite):
both hold 95 % without clustering; with strong clustering gbstats' interval of an A/A
difference covered 81-95 % (heavy-tailed counts, latency correlated with activity), flagscope's
96-99 % from 200 users on — conservative, never below nominal there; a cluster bootstrap
sided with gbstats (85-96 %). One cohort's interval under-covers with either (76-92 % at p95
and p99 for flagscope, 58-90 % for gbstats): the delta/jackknife variance of F at a tail
rank, which both share, is too small when a few heavy users hold the tail. The seeded check at the
end is sized to run within make test.

gbstats is optional: the tests that call it skip when `gbstats.models.statistics` cannot be
imported. It needs pydantic 2 and nothing else from its pins: `pip install --no-deps
gbstats==0.8.0` beside numpy 2 imports and runs (its numpy<2 and pandas<2 pins serve modules
these tests do not import).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from scipy import stats

from flagscope.analysis.stats import (
    RatioStats,
    Status,
    quantile_difference,
    quantile_interval_from_samples,
)

ALPHA = 0.05
Z = NormalDist().inv_cdf(1 - ALPHA / 2)
REL = 1e-12
# GrowthBook's warehouse evaluates the i.i.d. bounds for these n* (back-end
# experimentQueries/constants N_STAR_VALUES) and keeps the largest one below N.
N_STAR_VALUES = tuple(100 * 2**k for k in range(20))
MU, NOISE = math.log(100.0), 0.5  # log latency = MU + user level + N(0, NOISE^2)


def _cohort(rng: np.random.Generator, users: int, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Clustered latencies: requests per user 1 + ceil(LogNormal(log 8, 1.2)) (mean ~17, a
    long right tail), a per-user level N(0, tau^2) on the log scale. Counts and levels are
    independent, so the request-level distribution is LogNormal(MU, sqrt(tau^2 + NOISE^2))
    exactly and its quantiles are known (:func:`_true_quantile`)."""
    sizes = 1 + np.ceil(np.exp(rng.normal(math.log(8), 1.2, users))).astype(np.int64)
    owner = np.repeat(np.arange(users), sizes)
    levels = tau * rng.standard_normal(users)
    return np.exp(MU + levels[owner] + NOISE * rng.standard_normal(owner.size)), sizes


def _true_quantile(tau: float, p: float) -> float:
    return math.exp(MU + math.hypot(tau, NOISE) * NormalDist().inv_cdf(p))


def _per_user(values: np.ndarray, sizes: np.ndarray) -> list[list[float]]:
    return [part.tolist() for part in np.split(values, np.cumsum(sizes)[:-1])]


def _below(values: np.ndarray, sizes: np.ndarray, q: float) -> np.ndarray:
    owner = np.repeat(np.arange(sizes.size), sizes)
    return np.bincount(owner, weights=(values <= q).astype(float), minlength=sizes.size)


def _delta_variance(b: np.ndarray, n: np.ndarray) -> float:
    """Deng, Knoblich & Lu 2018 §2, delta method for a ratio of means in its moment form:
    Var(S/N) = (1/K) (s_S^2 / mu_N^2 - 2 mu_S s_SN / mu_N^3 + mu_S^2 s_N^2 / mu_N^4), with
    sample (K - 1) moments of the per-user sums S = b, N = n."""
    cov = np.cov(np.vstack([b, n]), ddof=1)
    mu_s, mu_n = b.mean(), n.mean()
    return float(
        (cov[0, 0] / mu_n**2 - 2 * mu_s * cov[0, 1] / mu_n**3 + mu_s**2 * cov[1, 1] / mu_n**4)
        / b.size
    )


def _jackknife_variance(b: np.ndarray, n: np.ndarray) -> float:
    """Delete-one-user jackknife (Efron & Stein 1981): recompute F without each user."""
    k = b.size
    deleted = (b.sum() - b) / (n.sum() - n)
    return float((k - 1) / k * np.sum((deleted - deleted.mean()) ** 2))


def _oracle_interval(values: np.ndarray, sizes: np.ndarray, p: float) -> tuple[float, ...]:
    """Independent numpy rendering of §4 with the library's variance and critical value:
    (q_hat, lo, hi, critical value)."""
    q = float(np.quantile(values, p, method="linear"))
    sigma = math.sqrt(_jackknife_variance(_below(values, sizes, q), sizes.astype(float)))
    c = float(stats.t.isf(ALPHA / 2, sizes.size - 1))
    ranks = np.clip([p - c * sigma, p + c * sigma], 0.0, 1.0)
    lo, hi = np.quantile(values, ranks, method="linear")
    return q, float(lo), float(hi), c


def _gbstats_inputs(values: np.ndarray, sizes: np.ndarray, p: float) -> dict[str, Any]:
    """What GrowthBook's SQL hands `QuantileClusteredStatistic` for an event quantile."""
    total = values.size
    n_star = max([v for v in N_STAR_VALUES if v < total] or [N_STAR_VALUES[0]])
    h = Z * math.sqrt(p * (1 - p) / n_star)
    lower, upper = np.quantile(values, [max(p - h, 1e-8), min(p + h, 1 - 1e-8)], method="linear")
    q = float(np.quantile(values, p, method="linear"))
    b, n = _below(values, sizes, q), sizes.astype(float)
    return {
        "n": int(total),
        "n_star": int(n_star),
        "nu": p,
        "quantile_hat": q,
        "quantile_lower": float(lower),
        "quantile_upper": float(upper),
        "main_sum": float(b.sum()),
        "main_sum_squares": float((b * b).sum()),
        "denominator_sum": float(n.sum()),
        "denominator_sum_squares": float((n * n).sum()),
        "main_denominator_sum_product": float((b * n).sum()),
        "n_clusters": int(sizes.size),
    }


@pytest.fixture(scope="module")
def gbstats() -> ModuleType:
    return pytest.importorskip("gbstats.models.statistics")


def _optional_gbstats() -> ModuleType | None:
    try:
        import gbstats.models.statistics as module
    except ImportError:
        return None
    return module


def _gbstats_se(gbstats: ModuleType, values: np.ndarray, sizes: np.ndarray, p: float) -> float:
    stat = gbstats.QuantileClusteredStatistic(**_gbstats_inputs(values, sizes, p))
    return math.sqrt(stat.variance / stat.n)


def _ours_se(values: np.ndarray, sizes: np.ndarray, p: float) -> float:
    """One cohort's SE as quantile_difference reads it (its difference with a copy of itself
    has SE sqrt(2) SE_ours)."""
    got = quantile_interval_from_samples(_per_user(values, sizes), p, ALPHA)
    assert got.status is Status.OK
    users = int(sizes.size)
    est = quantile_difference(
        p, got.estimate, got.lo, got.hi, *(got.estimate, got.lo, got.hi), ALPHA, users, users
    )
    return est.se / math.sqrt(2)


# --- flagscope against the paper -------------------------------------------------------------


@pytest.mark.parametrize("p", [0.5, 0.95, 0.99])
def test_outer_interval_and_se_match_an_independent_numpy_oracle(p: float) -> None:
    values, sizes = _cohort(np.random.default_rng(11 + round(100 * p)), 300, 1.0)
    got = quantile_interval_from_samples(_per_user(values, sizes), p, ALPHA)
    q, lo, hi, c = _oracle_interval(values, sizes, p)
    assert got.status is Status.OK and got.p_lo > 0.0 and got.p_hi < 1.0
    assert (got.estimate, got.lo, got.hi) == pytest.approx((q, lo, hi), rel=1e-9)
    # quantile_difference reads each cohort's SE off that interval as (hi - lo) / (2 c).
    assert _ours_se(values, sizes, p) == pytest.approx((hi - lo) / (2 * c), rel=1e-9)


@pytest.mark.parametrize("p", [0.5, 0.95, 0.99])
def test_ratio_variance_is_the_papers_delta_method(p: float) -> None:
    values, sizes = _cohort(np.random.default_rng(17), 200, 1.0)
    b, n = _below(values, sizes, float(np.quantile(values, p))), sizes.astype(float)
    ours = RatioStats.from_users(b.tolist(), n.tolist())
    assert ours.variance() == pytest.approx(_delta_variance(b, n), rel=1e-9)
    assert ours.sampling_variance() == pytest.approx(_jackknife_variance(b, n), rel=1e-9)


# --- flagscope against gbstats ---------------------------------------------------------------


@pytest.mark.parametrize("p", [0.5, 0.95, 0.99])
def test_gbstats_cluster_variance_is_the_delta_variance(gbstats: ModuleType, p: float) -> None:
    values, sizes = _cohort(np.random.default_rng(21), 200, 1.0)
    inputs = _gbstats_inputs(values, sizes, p)
    stat = gbstats.QuantileClusteredStatistic(**inputs)
    b = _below(values, sizes, inputs["quantile_hat"])
    ours = RatioStats.from_users(b.tolist(), sizes.astype(float).tolist())
    assert stat.get_cluster_variance == pytest.approx(ours.variance(), rel=1e-9)


@pytest.mark.parametrize("p", [0.5, 0.95, 0.99])
def test_gbstats_se_is_the_iid_outer_interval_times_root_design_effect(
    gbstats: ModuleType, p: float
) -> None:
    """Pins the formula in the module docstring: if gbstats changes it, this says so."""
    values, sizes = _cohort(np.random.default_rng(31), 200, 1.0)
    inputs = _gbstats_inputs(values, sizes, p)
    total, n_star = inputs["n"], inputs["n_star"]
    b = _below(values, sizes, inputs["quantile_hat"])
    iid_se = (inputs["quantile_upper"] - inputs["quantile_lower"]) / (2 * Z)
    deff = _delta_variance(b, sizes.astype(float)) / (p * (1 - p) / total)
    expected = math.sqrt(n_star / total * (total - 1) / total * deff) * iid_se
    assert n_star < total <= 2 * n_star
    assert _gbstats_se(gbstats, values, sizes, p) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("p", [0.5, 0.9, 0.95])
def test_gbstats_and_ours_agree_where_the_quantile_function_is_linear(
    gbstats: ModuleType, p: float
) -> None:
    """Evenly spaced latencies make Q exactly linear, so where the slope is read does not
    matter: SE_gb / SE_ours = sqrt((N - 1) / N) * sigma_delta / sigma_jackknife exactly (the
    first factor is gbstats' `(n - 1)` over its t-test's `n`, the second the two variances
    of F), however strong the clustering. Each user's requests are adjacent in the sorted
    order here (maximal clustering, design effect ~ sum n_i^2 / N)."""
    rng = np.random.default_rng(41)
    sizes = 1 + rng.geometric(1 / 15, size=400)
    values = 10.0 + 0.25 * np.arange(sizes.sum(), dtype=float)  # user i owns a contiguous block
    total = values.size
    b, n = _below(values, sizes, float(np.quantile(values, p))), sizes.astype(float)
    got = quantile_interval_from_samples(_per_user(values, sizes), p, ALPHA)
    assert _delta_variance(b, n) / (p * (1 - p) / total) > 10
    assert got.p_lo > 0.0 and got.p_hi < 1.0
    expected = math.sqrt((total - 1) / total * _delta_variance(b, n) / _jackknife_variance(b, n))
    ratio = _gbstats_se(gbstats, values, sizes, p) / _ours_se(values, sizes, p)
    assert ratio == pytest.approx(expected, rel=1e-9)


# --- which one covers: seeded A/A simulation under strong clustering --------------------------


@pytest.mark.simulation
def test_strongly_clustered_aa_differences_cover_with_ours_and_less_with_gbstats() -> None:
    """A/A, 200 users per cohort, user levels N(0, 1) on the log scale (intra-user
    correlation of log latency 0.8), heavy-tailed request counts. flagscope's p95 and p99
    difference intervals must not be anti-conservative: coverage at or above the lower end
    of the 99.9 % binomial band around 95 % (2,000-replicate runs: 98-99 %). gbstats' SE,
    where importable, is smaller (median ratio to ours ~0.8 at p95, ~0.6 at p99) and covers
    less on the same data (2,000-replicate runs: 92-95 %)."""
    rng = np.random.default_rng(20261201)
    gb = _optional_gbstats()
    reps, users, tau = 300, 200, 1.0
    covered = dict.fromkeys((0.95, 0.99), 0)
    covered_gb = dict.fromkeys(covered, 0)
    ratios: dict[float, list[float]] = {p: [] for p in covered}
    for _ in range(reps):
        cohorts = [_cohort(rng, users, tau) for _ in range(2)]
        for p in covered:
            t, c = (quantile_interval_from_samples(_per_user(*x), p, ALPHA) for x in cohorts)
            est = quantile_difference(
                p, t.estimate, t.lo, t.hi, c.estimate, c.lo, c.hi, ALPHA, users, users
            )
            covered[p] += est.diff_lo <= 0.0 <= est.diff_hi
            if gb is not None:
                se_t, se_c = (_gbstats_se(gb, *x, p) for x in cohorts)
                covered_gb[p] += abs(t.estimate - c.estimate) <= Z * math.hypot(se_t, se_c)
                ratios[p].append(math.hypot(se_t, se_c) / est.se)
    band_lo = float(stats.binom.ppf(0.0005, reps, 1 - ALPHA)) / reps
    print(f"\nA/A clustered: ours {covered}, gbstats {covered_gb} of {reps}")
    for p, hits in covered.items():
        assert hits / reps >= band_lo, (p, hits / reps)
        if gb is not None:
            assert covered_gb[p] < hits
            assert float(np.median(ratios[p])) < 0.9
