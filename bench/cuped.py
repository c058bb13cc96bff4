"""CUPED benchmark: what regressing the route-mix adjusted metrics on each user's requests
before their first exposure (`DiffOptions(pre_exposure=…)`, `--cuped 14d`) buys a rollout
decision, on simulated production-shaped traffic, with Monte-Carlo errors.

Every figure comes from the real `flagscope.analysis.diff.run_diff` reading a lake on disk,
run twice on the same lake — without CUPED and with a 14-day look-back — over `--reps`
seeded replicates (default 24, `--users` 3000 users a day, `--seed` 1):

  1. variance reduction of the adjusted error rate and mean latency,
     1 − (se_cuped / se_plain)² of the 24 h window, as a function of how persistent users'
     behaviour is (the log-sd σ of each user's latency level and error propensity: 0.3,
     0.6, 1.0); mean, MC standard error of the mean, sd and 10–90 % range over replicates.
     Beside it: the reduction CUPED itself reports (`result.cuped`, from the diff's own
     moments; the two differ when the error rate takes the rare-event (Newcombe) path,
     whose interval counts the rates before CUPED); the empirical one, 1 − Var(diff_cuped)
     / Var(diff_plain) across replicates (do the estimates really tighten as much as
     their standard errors say?); and a what-if in numpy on the same requests — each
     user's covariate pooled over all routes, as the diff built it before it re-weighted
     the covariate to the metric's route mix (the same numpy with the diff's own
     covariate reproduces `result.cuped`, printed as a check). And the reduction at looks 1, 3, 6, 12 and 24 h of the A/A lakes.
  2. time to verdict: 24 hourly looks, each `run_diff(sequential=True)` over the window
     from the rollout's start to the look (always-valid intervals tuned at
     `--expected-users`, default the users of the day), for a true +30 % latency on every
     treatment request, and separately +2 pp error probability. Per replicate and arm the
     first look whose overall verdict is REGRESSION (or never), and the first at which
     the targeted adjusted metric itself is REGRESSION: share of replicates decided
     within 24 looks, median look (bootstrap MC error), quartiles, users seen by then,
     and the paired comparison (CUPED earlier / same / later). Looks stop once an arm has
     decided, but the last look is always run, for the estimate at 24 h against the truth.
  3. A/A (no effect, σ = 0.6): share of replicates with a REGRESSION or IMPROVEMENT
     verdict at any of the 24 looks, with CUPED and without, paired (replicates where
     only one arm alarmed), the same for the adjusted metrics alone, and the share whose
     always-valid p-value fell to 0.05, 0.2 or 0.5 at some look (guaranteed ≤ that level:
     a more sensitive check than verdicts, which also need the practical threshold).
     CUPED must not raise any of them.

The simulated traffic (one lake per replicate and scenario; a replicate's scenarios share
their random draws, so the σ levels and effects are compared on the same users):

- A rollout day of 24 h from 2026-01-05 00:00 UTC; `--users` users come that day, each
  with 1 + Poisson(λ) requests, λ = 8 · LogNormal(−s²/2, s), s = 1.3 (heavy-tailed: the
  median user sends 5, the mean is ~9, ~20 of 3000 send 100 or more, the top 1 % ~15 % of
  the requests), at uniform times. Every request that day
  evaluates flag `new-checkout` (20 % of users `on`, for good), so a user's first request
  is their exposure.
- History: 75 % of users are returning, with Poisson(3 λ) requests at uniform times in
  the 14 days before the rollout (the rest, new users, have none; with light returning
  users who have none by chance, ~29 % of users have no history): requests without the
  flag, the covariate CUPED reads.
- Five routes with their own share, median latency and error rate (0.1–1 %, ~0.3 %
  overall); each user a Dirichlet(4 · share) preference over them.
- A request's latency: route median × the user's level L × LogNormal(0, 0.6), with
  L = LogNormal(0, σ); its error: Bernoulli(route rate × the user's propensity E (+ the
  effect)), E = LogNormal(−σ²/2, σ) of mean 1. L and E hold before and after exposure —
  σ is how persistent users are, and what CUPED can exploit.
- A request is one root SERVER span of `frontend` carrying the user id (and, on the
  rollout day, the evaluation `flags = {flag: variant}`), in the collector's schema with
  the join keys derived as it derives them. The lake is one Parquet file sorted by time
  (row groups of 16 Ki rows), written into a temporary directory and deleted after use:
  the statistics do not depend on the layout, but the collector's hourly files (360 for
  15 days) make every diff ~6× slower (2–3 s instead of ~0.4 s at 3000 users).

Prints the tables with the machine (bench/machine.py) and writes bench/out/cuped.json
(git-ignored), with the commit and the uncommitted analysis/ files measured. Run:
`.venv/bin/python bench/cuped.py` — ~1,900 diffs, ~500 CPU-seconds: about 4–5 minutes on
2 idle cores (9 min 20 s measured on a shared 2-core VM at load average ~9; a diff takes
~0.2 s of CPU at 3000 users); `--quick` (4 replicates of 1500 users) for a smoke run of a
minute or two; `--reps 100` for tighter MC errors (the A/A rates above all).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import machine
from flagscope.analysis.diff import run_diff
from flagscope.analysis.result import DiffOptions, DiffResult
from flagscope.collector.lake.schema import INPUT_SCHEMA, complete

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "cuped.json"
FLAG = "new-checkout"
START = datetime(2026, 1, 5)  # naive UTC, as the lake and DiffOptions keep it
LOOKBACK = timedelta(days=14)
HOUR_NS = 3_600_000_000_000
ROW_GROUP_ROWS = 16 * 1024
SIGMAS = (0.3, 0.6, 1.0)
METRICS = ("error_rate", "mean_latency")
DECISIVE = ("REGRESSION", "IMPROVEMENT")
MIN_P_LEVELS = (0.05, 0.2, 0.5)

# method, route, share of requests, median latency ms, error rate
ROUTES = (
    ("GET", "/", 0.35, 30.0, 0.001),
    ("GET", "/product/{id}", 0.30, 60.0, 0.002),
    ("GET", "/search", 0.15, 120.0, 0.004),
    ("POST", "/cart", 0.12, 80.0, 0.005),
    ("POST", "/checkout", 0.08, 250.0, 0.010),
)


@dataclass(frozen=True)
class Traffic:
    users: int = 3000
    sigma: float = 0.6  # log-sd of each user's latency level and error propensity
    exposure: float = 0.2  # share of users in treatment
    latency_effect: float = 0.0  # relative, on every treatment request
    error_pp: float = 0.0  # absolute, added to every treatment request's error probability
    mean_requests: float = 8.0  # λ's mean: requests per user on the rollout day, minus one
    activity_sigma: float = 1.3  # log-sd of λ across users
    returning: float = 0.75  # share of users with history
    history_days: float = 3.0  # history volume, in days of the user's own traffic
    request_sigma: float = 0.6  # per-request latency log-sd
    hours: int = 24


@dataclass(frozen=True)
class Job:
    scenario: str
    rep: int
    seed: int
    traffic: Traffic
    plan: str  # "all": every look; "until": until decided (and the last); "final": last only
    target: str | None  # the adjusted metric the effect is on
    expected_users: int


@dataclass
class Arm:
    looks: list[dict[str, Any]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


# -- the lake --------------------------------------------------------------------------
def simulate(traffic: Traffic, seed: int) -> dict[str, np.ndarray]:
    """One replicate's requests, as arrays (see the module doc); sorted by time."""
    rng = np.random.default_rng(seed)
    n, s, sigma = traffic.users, traffic.activity_sigma, traffic.sigma
    lam = traffic.mean_requests * rng.lognormal(-s * s / 2, s, n)
    n_post = 1 + rng.poisson(lam)
    n_pre = rng.poisson(lam * traffic.history_days) * (rng.random(n) < traffic.returning)
    level = rng.lognormal(0.0, 1.0, n) ** sigma  # one draw, scaled: the σ levels share it
    propensity = np.exp(sigma * rng.standard_normal(n) - sigma * sigma / 2)
    treated = rng.random(n) < traffic.exposure
    shares = np.array([r[2] for r in ROUTES])
    preference = rng.dirichlet(4 * shares, n).cumsum(axis=1)
    user = np.concatenate([np.repeat(np.arange(n), n_post), np.repeat(np.arange(n), n_pre)])
    rollout = np.arange(len(user)) < n_post.sum()
    m = len(user)
    route = np.minimum((rng.random(m)[:, None] > preference[user]).sum(axis=1), len(ROUTES) - 1)
    start_ns = int((START - datetime(1970, 1, 1)).total_seconds()) * 1_000_000_000
    day_ns, history_ns = traffic.hours * HOUR_NS, int(LOOKBACK.total_seconds() * 1e9)
    offset = rng.random(m)
    at = np.where(
        rollout,
        start_ns + (offset * day_ns).astype(np.int64),
        start_ns - 1 - (offset * history_ns).astype(np.int64),
    )
    on = rollout & treated[user]
    medians = np.array([r[3] for r in ROUTES])
    rates = np.array([r[4] for r in ROUTES])
    noise = rng.lognormal(0.0, traffic.request_sigma, m)
    ms = medians[route] * level[user] * noise * np.where(on, 1 + traffic.latency_effect, 1.0)
    p_error = np.minimum(1.0, rates[route] * propensity[user] + np.where(on, traffic.error_pp, 0))
    error = rng.random(m) < p_error
    order = np.argsort(at, kind="stable")
    return {
        "time": at[order],
        "user": user[order],
        "route": route[order],
        "ms": ms[order],
        "error": error[order],
        "rollout": rollout[order],
        "on": treated[user][order],
    }


def write_lake(lake: Path, traffic: Traffic, seed: int) -> dict[str, int]:
    """The replicate's requests as one lake file; returns what was written."""
    r = simulate(traffic, seed)
    m = len(r["time"])
    trace = [f"{i + 1:032x}" for i in range(m)]
    span = [f"{i + 1:016x}" for i in range(m)]
    methods = np.array([x[0] for x in ROUTES], dtype=object)
    paths = np.array([x[1] for x in ROUTES], dtype=object)
    names = np.array([f"{x[0]} {x[1]}" for x in ROUTES], dtype=object)
    flagged = r["rollout"]
    offsets = np.concatenate([[0], np.cumsum(flagged)]).astype(np.int32)
    variants = np.where(r["on"][flagged], "on", "off")
    flags = pa.MapArray.from_arrays(
        pa.array(offsets), pa.array([FLAG] * int(flagged.sum())), pa.array(variants.tolist())
    )
    strings = {
        "signal": "span",
        "service_name": "frontend",
        "attributes": "{}",
        "resource_attributes": "{}",
    }
    columns: dict[str, pa.Array] = {
        "time": pa.array(r["time"], pa.timestamp("ns")),
        "end_time": pa.array(r["time"] + (r["ms"] * 1e6).astype(np.int64), pa.timestamp("ns")),
        "event_id": pa.array([t + s for t, s in zip(trace, span, strict=True)]),
        "trace_id": pa.array(trace),
        "span_id": pa.array(span),
        "name": pa.array(names[r["route"]].tolist()),
        "kind": pa.array(np.full(m, 2, np.int32)),
        "duration_ms": pa.array(r["ms"]),
        "status_code": pa.array(np.where(r["error"], 2, 0).astype(np.int32)),
        "is_error": pa.array(r["error"]),
        "http_method": pa.array(methods[r["route"]].tolist()),
        "http_route": pa.array(paths[r["route"]].tolist()),
        "user_id": pa.array([f"user-{u}" for u in r["user"].tolist()]),
        "flags": flags,
        "is_test": pa.array(np.zeros(m, bool)),
        **{name: pa.array([value] * m) for name, value in strings.items()},
    }
    fields = list(INPUT_SCHEMA)
    table = pa.table(
        {f.name: columns.get(f.name, pa.nulls(m, f.type)) for f in fields},
        schema=pa.schema(fields),
    )
    path = lake / "compacted" / "cuped-bench.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(complete(table), path, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return {
        "rows": m,
        "rollout_requests": int(flagged.sum()),
        "history_requests": int(m - flagged.sum()),
        "bytes": path.stat().st_size,
    }


# -- one replicate of one scenario (a worker process) ------------------------------------
def _look(result: DiffResult, hour: int, seconds: float) -> dict[str, Any]:
    adjusted = {}
    for m in result.adjusted:
        e = m.estimate
        adjusted[m.metric] = {
            "diff": e.diff,
            "lo": e.diff_lo,
            "hi": e.diff_hi,
            "rel": e.rel,
            "se": e.se,
            "p": e.p_value,
            "method": e.method.value,
            "verdict": m.judgement.verdict.value,
        }
    return {
        "hour": hour,
        "seconds": seconds,
        "users": result.treatment.users + result.baseline.users,
        "users_treatment": result.treatment.users,
        "verdict": result.verdict.value,
        "reason": result.reason[:300],
        "adjusted": adjusted,
        "cuped": result.cuped,
    }


# -- oracle and what-if: CUPED's variance reduction in numpy (no diff) ------------------
def _loo(total: np.ndarray | float, own: np.ndarray) -> np.ndarray:
    """The leave-one-out denominator Y - y_i (Y itself for a unit that is all of it)."""
    return np.where(total > own, total - own, total)


def _centred(a: np.ndarray, b: np.ndarray) -> float:
    """The jackknife (co)variance (n - 1) / n Σ (a_i - ā)(b_i - b̄)."""
    n = a.size
    return float((n - 1) / n * ((a - a.mean()) @ (b - b.mean()))) if n > 1 else 0.0


def cuped_oracle(traffic: Traffic, seed: int, metric: str) -> dict[str, float]:
    """The variance CUPED removes from the 24 h route-mix adjusted `metric`, recomputed in
    numpy from the generator's own requests, with the jackknife moments of
    analysis/stats/mix.py and stats/cuped.py: `implemented` with the covariate as
    analysis/adjustment.py builds it — re-weighted to the metric's route mix,
    ψ_i = Σ_s w_s (x'_is − R'_s y'_is) / (Y'_s − y'_is) — a check: it must equal
    `result.cuped` (while the diff's formulas stay these); `pooled` with each user's
    pre-exposure ratio over all routes, ψ_i = (x'_i − R' y'_i) / (Y' − y'_i), as the
    diff did before (f10f878). Both with one pooled θ."""
    r = simulate(traffic, seed)
    n, k = traffic.users, len(ROUTES)
    user, route, rollout = r["user"], r["route"], r["rollout"]
    value = r["ms"] if metric == "mean_latency" else r["error"].astype(float)
    exposure = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(exposure, user[rollout], r["time"][rollout])
    lookback_ns = int(LOOKBACK.total_seconds() * 1e9)
    pre = ~rollout & (r["time"] >= exposure[user] - lookback_ns)

    def sums(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = np.zeros((n, k)), np.zeros((n, k))
        np.add.at(x, (user[mask], route[mask]), value[mask])
        np.add.at(y, (user[mask], route[mask]), 1.0)
        return x, y

    (x, y), (xp, yp) = sums(rollout), sums(pre)
    treated = np.zeros(n, bool)
    treated[user[rollout & r["on"]]] = True
    seen = y.sum(axis=1) > 0
    weights = y.sum(axis=0) / y.sum()
    out = {}
    for kind in ("implemented", "pooled"):
        parts = []
        for cohort in (treated & seen, ~treated & seen):
            xs, ys, xps, yps = x[cohort], y[cohort], xp[cohort], yp[cohort]
            total = ys.sum(axis=0)
            ratio = np.divide(xs.sum(axis=0), total, out=np.zeros(k), where=total > 0)
            phi = (weights * (xs - ratio * ys) / np.maximum(_loo(total, ys), 1e-300)).sum(axis=1)
            if kind == "pooled":
                x_pre, y_pre = xps.sum(axis=1), yps.sum(axis=1)
                r_pre = x_pre.sum() / y_pre.sum() if y_pre.sum() > 0 else 0.0
                psi = (x_pre - r_pre * y_pre) / np.maximum(_loo(y_pre.sum(), y_pre), 1e-300)
            else:
                t_pre = yps.sum(axis=0)
                r_pre_s = np.divide(xps.sum(axis=0), t_pre, out=np.zeros(k), where=t_pre > 0)
                loo = np.maximum(_loo(t_pre, yps), 1e-300)
                psi = (weights * (xps - r_pre_s * yps) / loo).sum(axis=1)
            parts.append((_centred(phi, phi), _centred(phi, psi), _centred(psi, psi)))
        v = sum(q for _, _, q in parts)
        theta = sum(c for _, c, _ in parts) / v if v > 0 else 0.0
        before = sum(a for a, _, _ in parts)
        after = sum(max(a - 2 * theta * c + theta * theta * q, 0.0) for a, c, q in parts)
        out[kind] = 1 - after / before if before > 0 else 0.0
    return out


def run_job(job: Job) -> dict[str, Any]:
    began, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="flagscope-cuped-") as tmp:
        lake = Path(tmp) / "lake"
        written = write_lake(lake, job.traffic, job.seed)
        generated = time.perf_counter() - began
        hours = job.traffic.hours
        plan = {"all": range(1, hours + 1), "until": range(1, hours + 1), "final": [hours]}
        arms: dict[str, Arm] = {"plain": Arm(), "cuped": Arm()}
        for name, lookback in (("plain", None), ("cuped", LOOKBACK)):
            arm = arms[name]
            decided = {"overall": False, "metric": False}
            for hour in plan[job.plan]:
                last = hour == hours
                if job.plan == "until" and all(decided.values()) and not last:
                    continue
                options = DiffOptions(
                    FLAG,
                    START,
                    START + timedelta(hours=hour),
                    sequential=True,
                    expected_users=job.expected_users,
                    pre_exposure=lookback,
                )
                t0 = time.perf_counter()
                result = run_diff(lake, options)
                seconds = time.perf_counter() - t0
                arm.seconds.append(seconds)
                look = _look(result, hour, seconds)
                arm.looks.append(look)
                decided["overall"] |= look["verdict"] == "REGRESSION"
                if job.target is not None:
                    target = look["adjusted"].get(job.target, {})
                    decided["metric"] |= target.get("verdict") == "REGRESSION"
    return {
        "scenario": job.scenario,
        "rep": job.rep,
        "seed": job.seed,
        "written": written,
        "generate_s": generated,
        "total_s": time.perf_counter() - began,
        "cpu_s": time.process_time() - cpu,  # this process, DuckDB's threads included
        "arms": {name: asdict(arm) for name, arm in arms.items()},
        "oracle": {m: cuped_oracle(job.traffic, job.seed, m) for m in METRICS}
        if job.scenario.startswith("aa")
        else None,
    }


# -- Monte-Carlo summaries ---------------------------------------------------------------
def finite(value: Any) -> Any:
    """The report with every non-finite float as None (JSON has no ∞ or NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def rate(count: int, n: int) -> dict[str, float]:
    p = count / n if n else math.nan
    return {"rate": p, "se": math.sqrt(p * (1 - p) / n) if n else math.nan, "count": count, "n": n}


def spread(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return {"mean": math.nan, "se": math.nan, "sd": math.nan, "p10": math.nan, "p90": math.nan}
    sd = float(a.std(ddof=1)) if a.size > 1 else math.nan
    return {
        "mean": float(a.mean()),
        "se": sd / math.sqrt(a.size) if a.size > 1 else math.nan,
        "sd": sd,
        "p10": float(np.quantile(a, 0.1)),
        "p90": float(np.quantile(a, 0.9)),
        "n": int(a.size),
    }


NEVER = math.inf


def median_with_error(values: Sequence[float], seed: int = 0) -> dict[str, float]:
    """Median look (never = ∞), its quartiles, and its Monte-Carlo uncertainty: the
    bootstrap standard error (2000 resamples; ∞ when some resample's median is never) and
    the bootstrap 5–95 % percentile interval (whose upper end may be never)."""
    a = np.asarray(values, dtype=float)
    med = float(np.median(a)) if a.size else math.nan
    if a.size < 2:
        return {"median": med, "se": math.nan, "q25": med, "q75": med, "lo": med, "hi": med}
    rng = np.random.default_rng(seed)
    boots = np.median(rng.choice(a, size=(2000, a.size), replace=True), axis=1)
    se = float(boots.std(ddof=1)) if np.all(np.isfinite(boots)) else math.inf
    return {
        "median": med,
        "se": se,
        "lo": float(np.quantile(boots, 0.05, method="lower")),
        "hi": float(np.quantile(boots, 0.95, method="higher")),
        "q25": float(np.quantile(a, 0.25, method="lower")),
        "q75": float(np.quantile(a, 0.75, method="higher")),
    }


def first_look(looks: list[dict[str, Any]], metric: str | None = None) -> dict[str, Any] | None:
    for look in looks:
        if metric is None:
            hit = look["verdict"] == "REGRESSION"
        else:
            hit = look["adjusted"].get(metric, {}).get("verdict") == "REGRESSION"
        if hit:
            return look
    return None


def variance_reduction(plain: dict[str, Any], cuped: dict[str, Any], metric: str) -> float | None:
    p, c = plain["adjusted"].get(metric), cuped["adjusted"].get(metric)
    if not p or not c or not p["se"] > 0:
        return None
    return 1 - (c["se"] / p["se"]) ** 2


def last(arm: dict[str, Any]) -> dict[str, Any]:
    return arm["looks"][-1]


def empirical_reduction(plain: Sequence[float], cuped: Sequence[float]) -> dict[str, float]:
    """1 − Var(cuped diff) / Var(plain diff) across replicates (paired: the same lakes),
    with a bootstrap standard error (2000 paired resamples): whether the standard errors
    the diff reports shrink as much as the estimates' real spread does."""
    p, c = np.asarray(plain, dtype=float), np.asarray(cuped, dtype=float)
    if p.size < 3 or p.var(ddof=1) == 0:
        return {"value": math.nan, "se": math.nan, "n": int(p.size)}
    rng = np.random.default_rng(0)
    idx = rng.integers(0, p.size, size=(2000, p.size))
    vp, vc = p[idx].var(axis=1, ddof=1), c[idx].var(axis=1, ddof=1)
    boots = 1 - vc[vp > 0] / vp[vp > 0]
    return {
        "value": float(1 - c.var(ddof=1) / p.var(ddof=1)),
        "se": float(boots.std(ddof=1)),
        "n": int(p.size),
    }


def summarize_variance(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for sigma in SIGMAS:
        reps = runs.get(f"aa_sigma{sigma}" if sigma != 0.6 else "aa", [])
        row: dict[str, Any] = {"sigma": sigma, "reps": len(reps)}
        for metric in METRICS:
            reported, internal, newcombe, theta, diffs = [], [], 0, [], ([], [])
            pooled, mismatch = [], 0.0
            for r in reps:
                if r.get("oracle") and r["arms"]["cuped"]["looks"][-1]["cuped"]:
                    o = r["oracle"][metric]
                    pooled.append(o["pooled"])
                    own = r["arms"]["cuped"]["looks"][-1]["cuped"][metric]["variance_reduction"]
                    mismatch = max(mismatch, abs(o["implemented"] - own))
                plain, cuped = last(r["arms"]["plain"]), last(r["arms"]["cuped"])
                if metric in plain["adjusted"] and metric in cuped["adjusted"]:
                    diffs[0].append(plain["adjusted"][metric]["diff"])
                    diffs[1].append(cuped["adjusted"][metric]["diff"])
                vr = variance_reduction(plain, cuped, metric)
                if vr is not None:
                    reported.append(vr)
                if cuped["cuped"] and metric in cuped["cuped"]:
                    internal.append(cuped["cuped"][metric]["variance_reduction"])
                    theta.append(cuped["cuped"][metric]["theta"])
                newcombe += cuped["adjusted"].get(metric, {}).get("method") == "NEWCOMBE"
            row[metric] = {
                "reported": spread(reported),
                "delta_method": spread(internal),
                "theta": spread(theta),
                "empirical": empirical_reduction(*diffs),
                "what_if_pooled_covariate": spread(pooled),
                "oracle_vs_result_max_abs": mismatch,
                "diff_plain": spread(diffs[0]),
                "diff_cuped": spread(diffs[1]),
                "newcombe_reps": newcombe,
            }
        out.append(row)
    return out


def summarize_by_look(reps: list[dict[str, Any]], hours: Sequence[int]) -> list[dict[str, Any]]:
    """The A/A run's variance reduction at a few looks (users arrive heavy ones first)."""
    out = []
    for hour in hours:
        row: dict[str, Any] = {"hour": hour}
        users = []
        for metric in METRICS:
            values, newcombe = [], 0
            for r in reps:
                plain = next((x for x in r["arms"]["plain"]["looks"] if x["hour"] == hour), None)
                cuped = next((x for x in r["arms"]["cuped"]["looks"] if x["hour"] == hour), None)
                if plain is None or cuped is None:
                    continue
                vr = variance_reduction(plain, cuped, metric)
                if vr is not None:
                    values.append(vr)
                newcombe += cuped["adjusted"].get(metric, {}).get("method") == "NEWCOMBE"
                if metric == METRICS[0]:
                    users.append(plain["users"])
            row[metric] = {"reported": spread(values), "newcombe_reps": newcombe}
        row["users"] = spread(users)
        out.append(row)
    return out


def summarize_verdicts(
    reps: list[dict[str, Any]], target: str, truth: dict[str, float], hours: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"reps": len(reps), "truth": truth}
    firsts: dict[str, dict[str, list[float]]] = {}
    for arm in ("plain", "cuped"):
        entry: dict[str, Any] = {}
        for kind, metric in (("overall", None), ("metric", target)):
            looks, users = [], []
            for r in reps:
                hit = first_look(r["arms"][arm]["looks"], metric)
                looks.append(float(hit["hour"]) if hit else NEVER)
                if hit:
                    users.append(hit["users"])
            firsts.setdefault(arm, {})[kind] = looks
            decided = sum(math.isfinite(x) for x in looks)
            entry[kind] = {
                "decided": rate(decided, len(looks)),
                "look": median_with_error(looks),
                "users_at_verdict": spread(users),
                "first_looks": [None if not math.isfinite(x) else int(x) for x in looks],
            }
        finals = [last(r["arms"][arm]) for r in reps]
        rel = [f["adjusted"][target]["rel"] for f in finals if target in f["adjusted"]]
        diff = [f["adjusted"][target]["diff"] for f in finals if target in f["adjusted"]]
        entry["final"] = {"hour": hours, "rel": spread(rel), "diff": spread(diff)}
        by = [
            "adjusted"
            if (hit := first_look(r["arms"][arm]["looks"]))
            and hit["adjusted"].get(target, {}).get("verdict") == "REGRESSION"
            else ("route" if hit else "never")
            for r in reps
        ]
        entry["decided_by"] = {k: by.count(k) for k in ("adjusted", "route", "never")}
        out[arm] = entry
    for kind in ("overall", "metric"):
        p, c = firsts["plain"][kind], firsts["cuped"][kind]
        saved = [a - b for a, b in zip(p, c, strict=True) if math.isfinite(a) and math.isfinite(b)]
        out[f"paired_{kind}"] = {
            "cuped_earlier": sum(b < a for a, b in zip(p, c, strict=True)),
            "same": sum(b == a for a, b in zip(p, c, strict=True)),
            "cuped_later": sum(b > a for a, b in zip(p, c, strict=True)),
            "looks_saved_when_both_decide": spread(saved),
        }
    return out


def summarize_aa(reps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"reps": len(reps)}
    alarms: dict[str, dict[str, list[bool]]] = {}
    for arm in ("plain", "cuped"):
        overall = [any(x["verdict"] in DECISIVE for x in r["arms"][arm]["looks"]) for r in reps]
        metric = [
            any(
                m["verdict"] in DECISIVE
                for x in r["arms"][arm]["looks"]
                for m in x["adjusted"].values()
            )
            for r in reps
        ]
        final = [last(r["arms"][arm])["verdict"] in DECISIVE for r in reps]
        regression = [
            any(x["verdict"] == "REGRESSION" for x in r["arms"][arm]["looks"]) for r in reps
        ]
        alarms[arm] = {"overall": overall, "metric": metric}
        # The always-valid p-value's own guarantee, P(min over looks of p ≤ a) ≤ a for
        # every a: at a = 0.2 or 0.5 it shows an inflation long before verdicts do.
        min_p = {
            metric_name: [
                min(x["adjusted"][metric_name]["p"] for x in r["arms"][arm]["looks"]) for r in reps
            ]
            for metric_name in METRICS
        }
        out[arm] = {
            "any_look": rate(sum(overall), len(reps)),
            "any_look_regression": rate(sum(regression), len(reps)),
            "any_look_adjusted_metric": rate(sum(metric), len(reps)),
            "last_look": rate(sum(final), len(reps)),
            "min_p_at_most": {
                metric_name: {
                    str(a): rate(sum(v <= a for v in values), len(values)) for a in MIN_P_LEVELS
                }
                for metric_name, values in min_p.items()
            },
        }
    for kind in ("overall", "metric"):
        p, c = alarms["plain"][kind], alarms["cuped"][kind]
        only_c = sum(b and not a for a, b in zip(p, c, strict=True))
        only_p = sum(a and not b for a, b in zip(p, c, strict=True))
        n = len(p)
        d = (only_c - only_p) / n if n else math.nan
        se = math.sqrt(max(only_c + only_p - n * d * d, 0.0)) / n if n else math.nan
        out[f"paired_{kind}"] = {
            "only_cuped": only_c,
            "only_plain": only_p,
            "difference": d,
            "se": se,
        }
    return out


# -- printing -------------------------------------------------------------------------------
def _pm(value: float, se: float, fmt: str = ".3f") -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:{fmt}} ± {se:{fmt}}" if math.isfinite(se) else f"{value:{fmt}}"


def _mean(stats: dict[str, float]) -> str:
    if not stats.get("n"):
        return "—"
    return f"{100 * stats['mean']:.1f} % ± {100 * stats['se']:.1f}"


def _spread(stats: dict[str, float]) -> str:
    if not stats.get("n"):
        return "—"
    return f"(sd {100 * stats['sd']:.1f}, {100 * stats['p10']:.0f}…{100 * stats['p90']:.0f})"


def _empirical(e: dict[str, float]) -> str:
    if not math.isfinite(e["value"]):
        return "—"
    return f"{100 * e['value']:.0f} % ± {100 * e['se']:.0f}"


def _look_text(m: dict[str, float]) -> str:
    """median (MC 90 % interval) [quartiles]; never = no verdict within the looks."""

    def look(v: float) -> str:
        return f"{v:g}" if math.isfinite(v) else "never"

    return (
        f"{look(m['median'])} (MC {look(m['lo'])}–{look(m['hi'])}) "
        f"[{look(m['q25'])}–{look(m['q75'])}]"
    )


def table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def print_report(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(
        f"\n{s['reps']} replicates, {s['users']:,} users/day, 20 % exposure, look-back "
        f"{s['lookback_days']:g} d, sequential tuned at {s['expected_users']:,} users, seed {s['seed']}"
    )
    print("\n1. Variance removed by CUPED, 24 h window: 1 − (se_cuped/se_plain)², mean ± MC se")
    rows = [
        (
            "σ",
            "metric",
            "reported",
            "(sd, 10…90 %)",
            "CUPED's own",
            "empirical",
            "Newcombe",
            "what-if: pooled ψ",
        )
    ]
    for row in report["variance_reduction"]:
        for metric, label in (("mean_latency", "mean latency"), ("error_rate", "error rate")):
            m = row[metric]
            rows.append(
                (
                    f"{row['sigma']:g}" if metric == "mean_latency" else "",
                    label,
                    _mean(m["reported"]),
                    _spread(m["reported"]),
                    _mean(m["delta_method"]),
                    _empirical(m["empirical"]),
                    f"{m['newcombe_reps']}/{row['reps']}",
                    _mean(m["what_if_pooled_covariate"]),
                )
            )
    table(rows)
    print(
        "   reported: from the two runs' standard errors; CUPED's own: result.cuped (before\n"
        "   the rare-event fallback); empirical: 1 − Var(diff_cuped) / Var(diff_plain) across\n"
        "   the replicates, bootstrap se (noisy at a few dozen); Newcombe: replicates whose\n"
        "   CUPED error rate took the rare-event path (its interval ignores CUPED); what-if:\n"
        "   numpy on the same requests, each user's covariate pooled over all routes (as\n"
        "   before it was re-weighted to the route mix; the same numpy with the diff's\n"
        f"   covariate agrees with result.cuped to {report['oracle_check']:.1e})"
    )
    if report["oracle_check"] > 1e-6:
        print(
            "   WARNING: the numpy oracle no longer reproduces result.cuped — the diff's\n"
            "   formulas changed; the what-if column is not comparable until cuped_oracle follows"
        )
    print("\n   by look (σ = 0.6, A/A lakes): users so far, variance removed")
    rows = [("look (h)", "users", "mean latency", "(sd, 10…90 %)", "error rate", "Newcombe")]
    for row in report["variance_reduction_by_look"]:
        er = row["error_rate"]
        n = row["mean_latency"]["reported"].get("n", 0)
        rows.append(
            (
                str(row["hour"]),
                f"{row['users']['mean']:,.0f}",
                _mean(row["mean_latency"]["reported"]),
                _spread(row["mean_latency"]["reported"]),
                _mean(er["reported"]),
                f"{er['newcombe_reps']}/{n}",
            )
        )
    table(rows)

    print(
        "\n2. Time to verdict (24 hourly sequential looks): first REGRESSION look, median\n"
        "   (its bootstrap 90 % MC interval) [quartiles over replicates]; users then: mean ± se"
    )
    rows = [("effect", "arm", "REGRESSION of", "decided ≤ 24", "first look", "users then")]
    effects = (
        ("latency", "mean_latency", "+30 % latency"),
        ("errors", "error_rate", "+2 pp errors"),
    )
    for name, target, label in effects:
        v = report["time_to_verdict"][name]
        for arm in ("plain", "cuped"):
            for kind, what in (("overall", "overall verdict"), ("metric", f"adjusted {target}")):
                o = v[arm][kind]
                users = o["users_at_verdict"]
                rows.append(
                    (
                        label if arm == "plain" and kind == "overall" else "",
                        arm if kind == "overall" else "",
                        what,
                        _pm(o["decided"]["rate"], o["decided"]["se"], ".2f"),
                        _look_text(o["look"]),
                        f"{users['mean']:,.0f} ± {users['se']:,.0f}" if users.get("n") else "—",
                    )
                )
    table(rows)
    print("\n   the adjusted metric's estimate at the 24 h look, mean ± MC se (sd over replicates)")
    rows = [("effect", "truth", "plain", "cuped")]
    for name, target, label in effects:
        v = report["time_to_verdict"][name]
        if target == "mean_latency":
            cells = [
                f"{100 * v[arm]['final']['rel']['mean']:+.1f} % ± {100 * v[arm]['final']['rel']['se']:.1f}"
                f" (sd {100 * v[arm]['final']['rel']['sd']:.1f})"
                for arm in ("plain", "cuped")
            ]
            rows.append((label, "+30 %", *cells))
        else:
            cells = [
                f"{100 * v[arm]['final']['diff']['mean']:+.2f} pp ± {100 * v[arm]['final']['diff']['se']:.2f}"
                f" (sd {100 * v[arm]['final']['diff']['sd']:.2f})"
                for arm in ("plain", "cuped")
            ]
            rows.append((label, "+2 pp", *cells))
    table(rows)
    for name, label in (("latency", "+30 % latency"), ("errors", "+2 pp errors")):
        v = report["time_to_verdict"][name]
        for kind, what in (("overall", "overall verdict"), ("metric", "adjusted metric")):
            p = v[f"paired_{kind}"]
            saved = p["looks_saved_when_both_decide"]
            saved_text = (
                f"; looks saved when both decide {_pm(saved['mean'], saved['se'], '.2f')}"
                if saved.get("n")
                else ""
            )
            print(
                f"   {label}, {what}: CUPED earlier in {p['cuped_earlier']}, same {p['same']}, "
                f"later {p['cuped_later']}{saved_text}"
            )
        for arm in ("plain", "cuped"):
            by = v[arm]["decided_by"]
            print(
                f"   {label}, {arm}: first REGRESSION decided by the adjusted metric "
                f"{by['adjusted']}, by a route only {by['route']}, never {by['never']}"
            )

    a = report["aa"]
    print(f"\n3. A/A (σ = 0.6, no effect, {a['reps']} replicates, 24 sequential looks)")
    rows = [
        (
            "arm",
            "REGRESSION/IMPROVEMENT at any look",
            "REGRESSION at any look",
            "adjusted metric decisive, any look",
            "at the last look",
        )
    ]
    for arm in ("plain", "cuped"):
        e = a[arm]
        rows.append(
            (
                arm,
                _pm(e["any_look"]["rate"], e["any_look"]["se"]),
                _pm(e["any_look_regression"]["rate"], e["any_look_regression"]["se"]),
                _pm(e["any_look_adjusted_metric"]["rate"], e["any_look_adjusted_metric"]["se"]),
                _pm(e["last_look"]["rate"], e["last_look"]["se"]),
            )
        )
    table(rows)
    print("\n   always-valid p-value of an adjusted metric ≤ a at any look (its guarantee: ≤ a)")
    rows = [("metric", "arm", *(f"a = {level:g}" for level in MIN_P_LEVELS))]
    for metric in METRICS:
        for arm in ("plain", "cuped"):
            cells = a[arm]["min_p_at_most"][metric]
            rows.append(
                (
                    metric if arm == "plain" else "",
                    arm,
                    *(
                        _pm(cells[str(level)]["rate"], cells[str(level)]["se"], ".2f")
                        for level in MIN_P_LEVELS
                    ),
                )
            )
    table(rows)
    for kind, what in (("overall", "overall verdict"), ("metric", "adjusted metrics")):
        p = a[f"paired_{kind}"]
        print(
            f"   paired, {what}: only CUPED alarmed in {p['only_cuped']}, only plain in "
            f"{p['only_plain']}; CUPED − plain = {_pm(p['difference'], p['se'])}"
        )
    t = report["timing"]
    print(
        f"\nper diff: plain {t['plain_s']['mean']:.2f} s, CUPED {t['cuped_s']['mean']:.2f} s "
        f"(mean over {t['diffs']} diffs); lake {t['rows']['mean']:,.0f} rows "
        f"({t['history_share']:.0%} history), generated in {t['generate_s']['mean']:.1f} s; "
        f"wall {t['wall_s']:.0f} s on {t['workers']} workers, {t['cpu_s']:.0f} CPU-s in the "
        f"workers (load average {t['load_average_1m_at_end']:.1f} at the end)"
    )
    h = report["machine"]
    print(
        f"machine: {h['cpu']}, {h['cores']} cores, {h['memory_gib']} GiB, "
        f"Python {h['python']}, duckdb {h['duckdb']}"
    )


# -- main ----------------------------------------------------------------------------------
def code_state() -> dict[str, Any]:
    """What analysis code was measured: the commit, the files changed since, and a hash
    of analysis/ as it is on disk (read-only git; others may be editing the tree)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
            )
        except OSError:
            return ""
        return done.stdout

    digest = hashlib.sha256()
    for path in sorted((ROOT / "analysis").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    changed = [line[3:] for line in git("status", "--porcelain", "--", "analysis").splitlines()]
    return {
        "commit": git("rev-parse", "HEAD").strip(),
        "changed": changed,
        "analysis_sha256": digest.hexdigest(),
    }


def jobs_for(args: argparse.Namespace) -> list[Job]:
    base = Traffic(users=args.users)
    expected = args.expected_users or args.users
    scenarios = [
        ("aa", base, "all", None),
        ("latency", replace(base, latency_effect=0.30), "until", "mean_latency"),
        ("errors", replace(base, error_pp=0.02), "until", "error_rate"),
        *(
            (f"aa_sigma{sigma}", replace(base, sigma=sigma), "final", None)
            for sigma in SIGMAS
            if sigma != base.sigma
        ),
    ]
    out = []
    for rep in range(args.reps):
        # one seed per replicate, shared by its scenarios (common random numbers)
        seed = int(np.random.SeedSequence([args.seed, rep]).generate_state(1)[0])
        for name, traffic, plan, target in scenarios:
            out.append(Job(name, rep, seed, traffic, plan, target, expected))
    # the longest first, so that the workers finish together
    order = {"aa": 0, "latency": 1, "errors": 2}
    return sorted(out, key=lambda j: (order.get(j.scenario, 3), j.rep))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=None, help="replicates (default 24)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--users", type=int, default=None, help="users a day (default 3000)")
    parser.add_argument(
        "--expected-users", type=int, default=None, help="sequential tuning (default --users)"
    )
    parser.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--quick", action="store_true", help="4 replicates of 1500 users")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 4 if args.quick else 24
    if args.users is None:
        args.users = 1500 if args.quick else 3000

    host = machine()
    print(
        f"machine: {host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB, "
        f"Python {host['python']}, duckdb {host['duckdb']}"
    )
    code = code_state()
    print(
        f"code: {code['commit'][:12]}"
        + (f" + uncommitted changes to {', '.join(code['changed'])}" if code["changed"] else "")
    )
    jobs = jobs_for(args)
    print(f"{len(jobs)} lakes ({args.reps} replicates × 5 scenarios) on {args.workers} workers")
    began = time.perf_counter()
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_job, job) for job in jobs]
        for done, future in enumerate(as_completed(futures), 1):
            r = future.result()
            results.append(r)
            diffs = sum(len(a["looks"]) for a in r["arms"].values())
            print(
                f"  [{done}/{len(jobs)}] {r['scenario']} rep {r['rep']}: {diffs} diffs, "
                f"{r['total_s']:.1f} s ({time.perf_counter() - began:.0f} s elapsed)",
                flush=True,
            )
    wall = time.perf_counter() - began
    after = code_state()
    code["changed_during_run"] = after["analysis_sha256"] != code["analysis_sha256"]
    if code["changed_during_run"]:
        print("WARNING: analysis/ changed on disk during the run (workers kept what they imported)")
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(results, key=lambda r: (r["scenario"], r["rep"])):
        runs.setdefault(r["scenario"], []).append(r)

    hours = Traffic().hours
    seconds = {
        arm: [s for r in results for s in r["arms"][arm]["seconds"]] for arm in ("plain", "cuped")
    }
    rows = [r["written"]["rows"] for r in results]
    history = sum(r["written"]["history_requests"] for r in results) / max(1, sum(rows))
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": host,
        "code": code,
        "command": " ".join(["bench/cuped.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            "reps": args.reps,
            "users": args.users,
            "seed": args.seed,
            "expected_users": args.expected_users or args.users,
            "lookback_days": LOOKBACK.total_seconds() / 86400,
            "hours": hours,
            "traffic": asdict(Traffic(users=args.users)),
            "routes": [
                dict(zip(("method", "route", "share", "median_ms", "error_rate"), r, strict=True))
                for r in ROUTES
            ],
        },
        "variance_reduction": summarize_variance(runs),
        "oracle_check": 0.0,
        "variance_reduction_by_look": summarize_by_look(runs.get("aa", []), (1, 3, 6, 12, 24)),
        "time_to_verdict": {
            "latency": summarize_verdicts(
                runs.get("latency", []), "mean_latency", {"rel": 0.30}, hours
            ),
            "errors": summarize_verdicts(
                runs.get("errors", []), "error_rate", {"diff": 0.02}, hours
            ),
        },
        "aa": summarize_aa(runs.get("aa", [])),
        "timing": {
            "plain_s": spread(seconds["plain"]),
            "cuped_s": spread(seconds["cuped"]),
            "diffs": len(seconds["plain"]) + len(seconds["cuped"]),
            "rows": spread(rows),
            "history_share": history,
            "generate_s": spread([r["generate_s"] for r in results]),
            "wall_s": wall,
            "cpu_s": sum(r["cpu_s"] for r in results),
            "workers": args.workers,
            "load_average_1m_at_end": os.getloadavg()[0],
        },
        "replicates": results,
    }
    report["oracle_check"] = max(
        (
            row[metric]["oracle_vs_result_max_abs"]
            for row in report["variance_reduction"]
            for metric in METRICS
        ),
        default=0.0,
    )
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(finite(report), indent=1, default=str) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
