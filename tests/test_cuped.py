"""CUPED: the adjusted metrics regressed on each user's requests before their first
exposure (analysis/adjustment.py, analysis/stats/cuped.py), against an oracle recomputed
from the rows written to the lake, with the rule that no post-exposure request is a
covariate."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from flagscope.analysis.diff import run_diff
from flagscope.analysis.result import DiffOptions
from flagscope.analysis.stats import mix
from flagscope.analysis.stats.cuped import CovariateMoments, regression_adjusted
from flagscope.analysis.stats.estimate import pooled_floor
from tests.synthetic import NOW, request, span, write

START, END = NOW - timedelta(hours=2), NOW + timedelta(minutes=1)
LOOKBACK = timedelta(days=3)


def _pre_request(rng: random.Random, user: str, ms: float, error: bool, at) -> dict:
    """A request without the flag: a root SERVER span carrying the user id."""
    return span(f"{rng.getrandbits(128):032x}", user=user, ms=ms, error=error, at=at)


def production_lake(
    path: Path, seed: int, users: int = 900, early: bool = False, noise_after: bool = False
):
    """Users with a persistent latency level and error propensity, seen before and after
    their first exposure; returns the lake and per-user (variant, pre, post) rows.
    `early`: every user was first exposed 5 h before the window (an evaluated request
    then); `noise_after`: and sent a slow failing request 1 h before the window — after
    their exposure, so never a covariate."""
    rng, ids = random.Random(seed), random.Random(seed + 1)  # ids apart: same data either way
    rows, truth = [], {}
    for i in range(users):
        user = f"u{i}"
        variant = "on" if rng.random() < 0.3 else "off"
        level = rng.lognormvariate(0, 0.6)
        propensity = min(1.0, 0.02 * rng.lognormvariate(0, 1.2))
        exposed = START + timedelta(seconds=rng.random() * 3600)
        if early:
            exposed = START - timedelta(hours=5)
            rows += request(user, variant, at=exposed)
        pre, post = [], []
        for _ in range(rng.randint(0, 12)):  # some users have no history at all
            at = exposed - timedelta(seconds=rng.random() * LOOKBACK.total_seconds())
            ms, err = 100 * level * rng.lognormvariate(0, 0.4), rng.random() < propensity
            rows.append(_pre_request(ids, user, ms, err, at))
            pre.append((ms, err))
        for k in range(rng.randint(1, 10)):
            at = max(exposed, START) + timedelta(seconds=k * 60)
            ms, err = 100 * level * rng.lognormvariate(0, 0.4), rng.random() < propensity
            rows += request(user, variant, ms=ms, error=err, at=at)
            post.append((ms, err))
        if noise_after:
            # after exposure but before the window: never a covariate (nor compared)
            rows.append(_pre_request(ids, user, 9_000.0, True, START - timedelta(hours=1)))
        if rng.random() < 0.1:  # history older than the look-back: not a covariate
            rows.append(
                _pre_request(ids, user, 50_000.0, True, exposed - LOOKBACK - timedelta(hours=1))
            )
        truth[user] = (variant, pre, post)
    return write(path, rows), truth


def oracle(truth: dict, metric: str, adjust: bool = True) -> dict[str, float]:
    """Numpy from the generator's own records: each user deleted in turn from the post
    and the pre-exposure ratio (jackknife pseudo-changes φ, ψ), pooled θ (0 without
    `adjust`), the adjusted difference and its standard error ("raw_var": the variance
    before latency's pooled floor)."""

    def left_out(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # R - R_(i); a user without (pre-exposure) requests changes nothing
        keep = (y.sum() - y) > 0
        out = np.zeros_like(x)
        out[keep] = x.sum() / y.sum() - (x.sum() - x[keep]) / (y.sum() - y[keep])
        return out

    cohorts = {}
    for name, variant in (("t", "on"), ("c", "off")):
        users = [(pre, post) for v, pre, post in truth.values() if v == variant]
        column = 0 if metric == "mean_latency" else 1
        x = np.array([sum(float(r[column]) for r in post) for _, post in users])
        y = np.array([float(len(post)) for _, post in users])
        xp = np.array([sum(float(r[column]) for r in pre) for pre, _ in users])
        yp = np.array([float(len(pre)) for pre, _ in users])
        phi, psi = left_out(x, y), left_out(xp, yp)
        cohorts[name] = (
            len(users),
            x.sum() / y.sum(),
            xp.sum() / yp.sum(),
            phi,
            psi,
            yp.sum(),
            xp.sum(),
        )

    def jk(n: int, a: np.ndarray, b: np.ndarray) -> float:
        return float((n - 1) / n * ((a - a.mean()) @ (b - b.mean())))

    cov = sum(jk(v[0], v[3], v[4]) for v in cohorts.values())
    var_pre = sum(jk(v[0], v[4], v[4]) for v in cohorts.values())
    theta = cov / var_pre if adjust else 0.0
    pooled = (cohorts["t"][6] + cohorts["c"][6]) / (cohorts["t"][5] + cohorts["c"][5])
    est = {k: v[1] - theta * (v[2] - pooled) for k, v in cohorts.items()}
    var = {
        k: jk(v[0], v[3], v[3]) - 2 * theta * jk(v[0], v[3], v[4]) + theta**2 * jk(v[0], v[4], v[4])
        for k, v in cohorts.items()
    }
    raw_var = var["t"] + var["c"]
    if metric == "mean_latency":  # latency's variances are floored at the pooled share
        n = {k: v[0] for k, v in cohorts.items()}
        per_user = sum(n[k] ** 2 * var[k] for k in var) / sum(n.values())
        var = {k: max(var[k], per_user / n[k]) for k in var}
    return {
        "diff": est["t"] - est["c"],
        "se": math.sqrt(var["t"] + var["c"]),
        "theta": theta,
        "raw_var": raw_var,
    }


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return production_lake(tmp_path_factory.mktemp("cuped"), 11)


@pytest.mark.parametrize("metric", ["error_rate", "mean_latency"])
def test_cuped_matches_the_oracle_and_cuts_the_variance(lake, metric) -> None:
    path, truth = lake
    plain = run_diff(path, DiffOptions("f", START, END))
    cuped = run_diff(path, DiffOptions("f", START, END, pre_exposure=LOOKBACK))
    before = {m.metric: m.estimate for m in plain.adjusted}[metric]
    after = {m.metric: m.estimate for m in cuped.adjusted}[metric]
    expected = oracle(truth, metric)
    assert after.diff == pytest.approx(expected["diff"], rel=1e-9, abs=1e-12)
    assert after.se == pytest.approx(expected["se"], rel=1e-9)
    assert cuped.cuped is not None
    assert cuped.cuped[metric]["theta"] == pytest.approx(expected["theta"], rel=1e-9)
    # CUPED's own reduction, of the variance before latency's floor (which may take back
    # some of it from the reported interval)
    reduction = 1 - expected["raw_var"] / oracle(truth, metric, adjust=False)["raw_var"]
    assert reduction == pytest.approx(cuped.cuped[metric]["variance_reduction"], rel=1e-9)
    assert after.se <= before.se
    print(f"\n{metric}: CUPED removed {reduction:.1%} of the variance")
    assert reduction > {"error_rate": 0.15, "mean_latency": 0.3}[metric], reduction
    assert plain.cuped is None


def test_requests_after_the_first_exposure_are_never_a_covariate(tmp_path) -> None:
    """The same lake plus, for every user, a slow failing request after their first
    exposure (outside the window): the CUPED result does not move; a look-back read from
    the window's start instead of each user's exposure would take it in."""
    a, _ = production_lake(tmp_path / "a", 12, early=True)
    b, _ = production_lake(tmp_path / "b", 12, early=True, noise_after=True)
    ra = run_diff(a, DiffOptions("f", START, END, pre_exposure=LOOKBACK))
    rb = run_diff(b, DiffOptions("f", START, END, pre_exposure=LOOKBACK))
    for ma, mb in zip(ra.adjusted, rb.adjusted, strict=True):
        assert ma.estimate.diff == pytest.approx(mb.estimate.diff, rel=1e-12)
        assert ma.estimate.se == pytest.approx(mb.estimate.se, rel=1e-12)


@pytest.mark.simulation
def test_cuped_intervals_keep_their_coverage_and_shrink() -> None:
    """Seeded A/A at the influence-function level: users' post and pre metrics correlated
    through a per-user effect. Coverage of the adjusted 95 % interval stays within a
    binomial band of 0.95 and its width shrinks by about sqrt(1 - ρ²)."""
    rng = np.random.default_rng(5)
    reps, covered, widths = 2000, 0, []
    for _ in range(reps):
        moments, raw = {}, []
        for side, n in (("t", 300), ("c", 700)):
            effect = rng.lognormal(0, 0.6, size=n)
            req, req_pre = 1 + rng.poisson(5, size=n), rng.poisson(6, size=n)
            x = rng.gamma(4 * req, effect / 4)
            xp = rng.gamma(4 * np.maximum(req_pre, 1), effect / 4) * (req_pre > 0)
            ratio, ratio_pre = x.sum() / req.sum(), xp.sum() / req_pre.sum()
            phi = (x - ratio * req) / (req.sum() - req)  # each user's leave-one-out change
            psi = (xp - ratio_pre * req_pre) / (req_pre.sum() - req_pre)
            moments[side] = CovariateMoments(
                n, ratio, ratio_pre, phi.sum(), psi.sum(), phi @ phi, phi @ psi, psi @ psi
            )
            raw.append((xp.sum(), req_pre.sum()))
        pooled = (raw[0][0] + raw[1][0]) / (raw[0][1] + raw[1][1])
        adjusted = regression_adjusted(moments["t"], moments["c"], pooled)
        diff = adjusted.treatment[0] - adjusted.control[0]
        se = math.sqrt(adjusted.treatment[1] + adjusted.control[1])
        covered += abs(diff) <= 1.959964 * se
        widths.append(1 - adjusted.variance_reduction)
    lo, hi = 0.95 - 3.3 * math.sqrt(0.95 * 0.05 / reps), 0.95 + 3.3 * math.sqrt(0.95 * 0.05 / reps)
    assert lo <= covered / reps <= hi, covered / reps
    assert np.mean(widths) < 0.6  # more than 40 % of the variance removed


def test_the_covariate_is_re_weighted_to_the_same_route_mix(tmp_path) -> None:
    """Users call a fast and a slow route in their own proportions, before exposure and
    after: the covariate is each cohort's pre-exposure latency re-weighted to the metric's
    pooled route mix, and the SQL's θ and estimates equal the Python reference
    (`stats.mix` influences for φ and ψ, `stats.cuped`) on the generator's records."""
    rng, ids = random.Random(21), random.Random(22)
    rows, units = [], {"on": [], "off": []}
    for i in range(700):
        user, variant = f"u{i}", ("on" if rng.random() < 0.4 else "off")
        level, slow_share = rng.lognormvariate(0, 0.6), rng.random()
        exposed = START + timedelta(seconds=rng.random() * 3600)
        post: dict[str, list[float]] = {}
        pre: dict[str, list[float]] = {}
        for when, into in (("pre", pre), ("post", post)):
            for k in range(rng.randint(1 if when == "post" else 0, 8)):
                route = "/slow" if rng.random() < slow_share else "/fast"
                ms = (400 if route == "/slow" else 40) * level * rng.lognormvariate(0, 0.3)
                cell = into.setdefault(("frontend", f"GET {route}"), [0.0, 0.0])
                cell[0], cell[1] = cell[0] + ms, cell[1] + 1
                if when == "pre":
                    at = exposed - timedelta(hours=1 + rng.random() * 48)
                    trace = f"{ids.getrandbits(128):032x}"
                    rows.append(span(trace, user=user, ms=ms, route=route, at=at))
                else:
                    at = exposed + timedelta(seconds=k * 30)
                    rows += request(user, variant, ms=ms, route=route, at=at)
        units[variant].append(
            ({k: tuple(v) for k, v in post.items()}, {k: tuple(v) for k, v in pre.items()})
        )
    result = run_diff(
        write(tmp_path / "lake", rows), DiffOptions("f", START, END, pre_exposure=LOOKBACK)
    )

    def side(variant: str, which: int) -> list[dict]:
        return [u[which] for u in units[variant]]

    weights = mix.pooled_weights(
        mix.stratum_totals(side("on", 0)), mix.stratum_totals(side("off", 0))
    )
    moments = {}
    for variant in ("on", "off"):
        post_lin = mix.linearize(mix.stratum_totals(side(variant, 0)), weights)
        pre_lin = mix.linearize(mix.stratum_totals(side(variant, 1)), weights)
        phi = [post_lin.influence(p) for p, _ in units[variant]]
        psi = [pre_lin.influence(q) for _, q in units[variant]]
        moments[variant] = CovariateMoments(
            len(phi), post_lin.estimate, pre_lin.estimate, sum(phi), sum(psi),
            sum(a * a for a in phi), sum(a * b for a, b in zip(phi, psi, strict=True)),
            sum(b * b for b in psi),
        )  # fmt: skip
    expected = regression_adjusted(moments["on"], moments["off"], 0.0)
    got = {m.metric: m.estimate for m in result.adjusted}["mean_latency"]
    assert result.cuped is not None
    assert result.cuped["mean_latency"]["theta"] == pytest.approx(expected.theta, rel=1e-9)
    assert got.diff == pytest.approx(expected.treatment[0] - expected.control[0], rel=1e-9)
    # latency's variances are floored at the pooled share (stats.estimate.pooled_floor)
    floored = pooled_floor(
        expected.treatment[1], len(units["on"]), expected.control[1], len(units["off"])
    )
    assert got.se**2 == pytest.approx(sum(floored), rel=1e-9)
    assert result.cuped["mean_latency"]["variance_reduction"] > 0.3


def test_a_window_without_users_gets_the_unadjusted_answer(tmp_path) -> None:
    """No compared request names a user (each trace is its own unit): there is no one to
    look back on, and the diff answers as without CUPED instead of failing."""
    rows = []
    for i in range(60):
        at = START + timedelta(minutes=i, seconds=1)
        rows += request(None, "on" if i % 2 else "off", at=at, ms=100.0 + i)
    lake = write(tmp_path / "lake", rows)
    plain = run_diff(lake, DiffOptions("f", START, END))
    cuped = run_diff(lake, DiffOptions("f", START, END, pre_exposure=LOOKBACK))
    assert cuped.treatment.requests == plain.treatment.requests == 30
    assert cuped.verdict == plain.verdict
