"""Minute-level guard looks (issue 14): an A/A week replayed with the package's own
inference, and the time a regression takes to be caught through the real `Guard`.

Traffic, in both parts, is tests/production_sim.py's — heavy-tailed requests per user,
per-user latency levels and error propensities, five routes with their downstream services
— at the guard's scale: 20 % exposure, and on average 1,000 distinct users sending at least
one request in any minute (measured and printed; about 1.18 requests per active user-minute),
with the route error rates scaled to 1 % of requests overall.

aa_week     A/A over a week of minute-level looks (7 × 24 × 60 = 10,080), the guard's
            verdict at every look: `Guard.options` (one-sided always-valid bounds at
            2 × alpha, thresholds, min users, the split the flagd file would give) and
            diff.py's own estimators, verdict rules and weighted Benjamini–Hochberg family
            on the per-user sums the SQL stage would hand them (built here in numpy, like
            bench/week_replay.py). Exact and affordable in three tiers: (1) per look, for
            every decisive test (route-mix adjusted error rate and mean latency, each
            (service, route)'s error rate and p95), its point estimate against its
            threshold and its users against `min_users` — exact for the rates and means,
            a sure upper bound for the p95 (a log histogram of 1 % bins brackets the
            order statistics the quantile lies between); a test that fails there cannot
            be REGRESSION; (2) a test that passes is estimated exactly (diff.estimates /
            mix_adjusted, the always-valid widening, verdict.judge); (3) a look with a
            test judged REGRESSION is computed whole — every estimate, q-values, health
            checks, overall_verdict. Prints the share of weeks declared REGRESSION at
            some look (± Monte-Carlo SE), by the metric that fired and overall, and the
            share with a sample-ratio alert (UNHEALTHY) at some look.
detection   Lakes on disk, a file a minute, `Guard.look(spec, now)` after each minute since
            the rollout (the split from a flagd file with fractional 20/80) until the
            first REGRESSION: (i) +2 pp errors on every route, (ii) p95 and above × 1.3
            (production_sim's tail effect, median untouched), A/A as control; the
            hourly report at each hour mark — fixed horizon, two-sided alpha 0.05 (what
            `flagscope report` runs) and the scheduled one (`flagscope schedule`:
            always-valid, two-sided) — over the window so far. aa_week's replay is run
            on the same rows; how often it names the Guard's first minute is printed.

    .venv/bin/python bench/guard_watch.py --weeks 200 --runs 20

Prints the machine, the figures and the wall time; writes bench/out/guard_watch.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine
from flagscope.analysis.cohorts import QUANTILES, CohortSums, UnitSums, quantile_grid
from flagscope.analysis.diff import (
    METRICS,
    QUANTILE_METRICS,
    _breakdown,
    _final,
    _health,
    _route_estimates,
    _stretch,
    _summary,
    decisive_q_values,
    estimates,
    mix_adjusted,
    run_diff,
)
from flagscope.analysis.guard.runner import Guard, GuardSpec
from flagscope.analysis.result import DiffOptions
from flagscope.analysis.stats import (
    Estimate,
    RatioStats,
    error_rate_difference,
    sequential_estimate,
    srm_test,
)
from flagscope.analysis.stats.estimate import critical_value
from flagscope.analysis.stats.mix import Totals, jackknife_variance, linearize, pooled_weights
from flagscope.analysis.stats.sequential import sequential_stretch
from flagscope.analysis.verdict import Verdict, judge, overall_verdict
from flagscope.collector.lake.write import write_table
from tests.production_sim import (
    BASELINE,
    FLAG,
    ROUTES,
    START,
    TREATMENT,
    Traffic,
    binomial,
    draw_requests,
    draw_users,
    generate,
)

ALPHA = 0.05  # the guard's one-sided level (GuardSpec.alpha)
WEEK = 7 * 24 * 60
SPLIT = {TREATMENT: 0.2, BASELINE: 0.8}
# Route error rates × 3.47: 1.0 % of edge requests overall (production_sim's are 0.29 %).
ROUTES_1PCT = tuple(replace(r, error_rate=r.error_rate * 0.01 / 0.00288) for r in ROUTES)
# Users per hour of window for ~1,000 distinct active users a minute (production_sim's
# sessions wrap round the window, so a short window needs more users per hour).
USERS_PER_HOUR = {168: 7_080, 2: 7_420}
EXCLUDED = {"crossover_users": 0, "crossover_requests": 0}
GRID = quantile_grid()
STRATUM_METRICS = ("error_rate", "mean_latency", "p95_latency")
OUT = Path(__file__).resolve().parent / "out" / "guard_watch.json"


def guard_traffic(hours: int) -> Traffic:
    return Traffic(users=USERS_PER_HOUR[hours] * hours, hours=hours, routes=ROUTES_1PCT)


def guard_options(end_minute: int) -> DiffOptions:
    """What `Guard.look` at START + end_minute asks run_diff (flagd split 20/80)."""
    spec = GuardSpec(FLAG, variant=TREATMENT, baseline=BASELINE, since=START, alpha=ALPHA)
    spec = replace(spec, expected_split=SPLIT)
    return Guard(Path(), [spec], Path()).options(spec, START, START + timedelta(minutes=end_minute))


# -- rows: one per entry span --------------------------------------------------------------
@dataclass(frozen=True)
class Rows:
    """Entry spans (what cohorts.py counts); `stratum` indexes `endpoints` ((service,
    "METHOD route")), `minute` counts from START, `edge`: the trace's root, its request."""

    unit: np.ndarray
    minute: np.ndarray
    stratum: np.ndarray
    edge: np.ndarray
    treated: np.ndarray
    ms: np.ndarray
    err: np.ndarray
    endpoints: tuple[tuple[str, str], ...]
    in_order: bool = False  # sorted by minute

    def where(self, mask: np.ndarray | slice) -> Rows:
        fields = {f: getattr(self, f)[mask] for f in _FIELDS}
        return Rows(**fields, endpoints=self.endpoints, in_order=self.in_order)

    def before(self, minute: int) -> Rows:
        """What a look at the end of minute `minute` - 1 sees."""
        if self.in_order:
            end = np.searchsorted(self.minute, np.array(minute, self.minute.dtype))
            return self.where(slice(0, int(end)))
        if not self.minute.size or int(self.minute.max()) < minute:
            return self
        return self.where(self.minute < minute)


_FIELDS = ("unit", "minute", "stratum", "edge", "treated", "ms", "err")


def endpoints_of(traffic: Traffic) -> tuple[tuple[str, str], ...]:
    return tuple((s, f"{m} {r}") for route in traffic.routes for s, m, r in route.servers)


def simulated_rows(traffic: Traffic, rng: np.random.Generator) -> Rows:
    """production_sim's users and requests, and each request's downstream SERVER spans as
    its `_spans` makes them: each hop a U(0.6, 0.95) client then U(0.9, 0.99) server
    fraction of its parent's duration; a failure starts at a uniform hop and reaches every
    span above it. Built in (stratum, minute) order."""
    edge = draw_requests(traffic, draw_users(traffic, rng), rng)
    minute = np.floor(edge["hours"] * 60).astype(np.int16)
    by_minute = np.argsort(minute, kind="stable")  # 16-bit keys: radix sorts
    order = by_minute[np.argsort(edge["route"][by_minute].astype(np.int16), kind="stable")]
    req = {k: v[order] for k, v in edge.items() if k in ("user", "route", "treated", "ms", "error")}
    minute = minute[order]
    total = int(np.array([len(r.servers) for r in traffic.routes])[req["route"]].sum())
    rows = Rows(
        np.empty(total, np.int32), np.empty(total, np.int16), np.empty(total, np.int16),
        np.zeros(total, bool), np.empty(total, bool), np.empty(total), np.empty(total, bool),
        endpoints_of(traffic), in_order=False,
    )  # fmt: skip
    at, stratum = 0, 0
    bounds = np.searchsorted(req["route"], np.arange(len(traffic.routes) + 1))
    for r, route in enumerate(traffic.routes):
        mine = slice(bounds[r], bounds[r + 1])
        count, depth = bounds[r + 1] - bounds[r], len(route.servers)
        origin = (rng.random(count) * depth).astype(np.int64)
        ms = req["ms"][mine].astype(float)
        for hop in range(depth):
            if hop:
                ms = ms * rng.uniform(0.6, 0.95, count) * rng.uniform(0.9, 0.99, count)
            block = slice(at, at + count)
            rows.unit[block], rows.minute[block] = req["user"][mine], minute[mine]
            rows.stratum[block], rows.edge[block] = stratum, hop == 0
            rows.treated[block], rows.ms[block] = req["treated"][mine], ms
            rows.err[block] = req["error"][mine] & (hop <= origin)
            at, stratum = at + count, stratum + 1
    return rows


def table_rows(table: pa.Table) -> Rows:
    """The entry spans of a lake table as cohorts.py labels them: a trace's variant and
    unit from its evaluation of FLAG; a span's minute since START its own, or its trace's
    evaluation's when later — a lake filled a minute at a time by start time does not yet
    hold the evaluation of a trace still running at the look (often a slow one), and
    without it the trace's other spans are not compared either."""
    flags = table["flags"].combine_chunks()
    variant = pc.map_lookup(flags, pa.scalar(FLAG), "first").to_numpy(zero_copy_only=False)
    evaluated = np.array([v is not None for v in variant])
    _, trace = np.unique(table["trace_id"].to_numpy(zero_copy_only=False), return_inverse=True)
    users = table["user_id"].to_numpy(zero_copy_only=False)
    _, unit_of = np.unique(users[evaluated].astype(str), return_inverse=True)
    trace_unit = np.full(trace.max() + 1, -1, np.int64)
    trace_unit[trace[evaluated]] = unit_of
    trace_treated = np.zeros(trace.max() + 1, bool)
    trace_treated[trace[evaluated]] = variant[evaluated] == TREATMENT
    ns = table["time"].cast(pa.int64()).to_numpy()
    minute = (ns - START_NS) // 60_000_000_000
    # a trace is labelled once its evaluation is in the lake (a lake written by start time)
    labelled_from = np.zeros(trace.max() + 1, np.int64)
    labelled_from[trace[evaluated]] = minute[evaluated]
    parent = table["parent_span_id"].is_null().to_numpy(zero_copy_only=False)
    entry = (table["kind"].to_numpy() == 2) | parent
    methods = table["http_method"].fill_null("").to_numpy(zero_copy_only=False)
    paths = pc.coalesce(table["http_route"], table["name"]).to_numpy(zero_copy_only=False)
    services = table["service_name"].to_numpy(zero_copy_only=False)
    labels = [(s, f"{m} {p}".strip()) for s, m, p in zip(services, methods, paths, strict=True)]
    keep = np.flatnonzero(entry & (trace_unit[trace] >= 0))
    endpoints = tuple(sorted({labels[i] for i in keep}))
    index = {e: k for k, e in enumerate(endpoints)}
    rows = Rows(
        trace_unit[trace[keep]].astype(np.int32),
        np.maximum(minute[keep], labelled_from[trace[keep]]).astype(np.int16),
        np.array([index[labels[i]] for i in keep], np.int16),
        parent[keep],
        trace_treated[trace[keep]],
        table["duration_ms"].to_numpy()[keep].astype(float),
        table["is_error"].to_numpy(zero_copy_only=False)[keep].astype(bool),
        endpoints,
    )
    return rows


# -- what the SQL stage hands the statistics, in numpy -------------------------------------
def ratio_stats(x: np.ndarray, y: np.ndarray) -> RatioStats:
    """RatioStats.from_users in numpy: the sums over users, and the leave-one-out sums
    (cohorts.py computes them when a cohort has two users or more)."""
    total_x, total_y = float(x.sum()), float(y.sum())
    loo = None
    if x.size >= 2 and total_y > 0 and bool(np.all(total_y - y > 0)):
        r = (x - total_x / total_y * y) / (total_y - y)
        loo = (float(r.sum()), float(r @ r))
    return RatioStats(x.size, total_x, total_y, float(x @ x), float(y @ y), float(x @ y), loo)


def cohort_sums(
    cohort: str, where: tuple[str, str] | None, rows: Rows, metrics: Sequence[str] = METRICS
) -> CohortSums:
    """One cohort's (or one cohort's share of a stratum's) CohortSums from its rows; only
    the sums `metrics` read are computed (errors always: they count the users), the
    others are left empty."""
    _, unit = np.unique(rows.unit, return_inverse=True)
    n = int(unit.max()) + 1 if unit.size else 0
    req = np.bincount(unit, minlength=n).astype(float)
    empty = RatioStats(n, 0.0, float(req.sum()), 0.0, 0.0, 0.0)
    latency = (
        ratio_stats(np.bincount(unit, rows.ms, n), req) if "mean_latency" in metrics else empty
    )
    grid: dict[float, float] = {}
    below = [empty] * len(QUANTILES)
    wanted = [k for k, name in enumerate(QUANTILE_METRICS) if name in metrics]
    if wanted:
        grid = dict(zip(GRID, np.quantile(rows.ms, GRID).tolist(), strict=True))
        for k in wanted:
            cut = grid[round(QUANTILES[k], 6)]
            below[k] = ratio_stats(np.bincount(unit, rows.ms <= cut, n), req)
    return CohortSums(
        cohort,
        None if where is None else where[0],
        None if where is None else where[1],
        ratio_stats(np.bincount(unit, rows.err, n), req),
        latency,
        tuple(below),
        grid,
    )


def adjusted_moments(edge: Rows) -> dict[str, dict[str, Any]]:
    """adjustment.adjusted_moments without a covariate: per metric and cohort the
    post-stratified ratio (stats.mix.linearize on pooled weights) and the jackknife of
    each unit's leave-one-out change φ over the strata it called."""
    from flagscope.analysis.adjustment import AdjustedMoments

    strata = int(edge.stratum.max()) + 1
    key = edge.unit.astype(np.int64) * strata + edge.stratum
    cells: dict[tuple[str, bool], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    totals: dict[tuple[str, bool], dict[int, Totals]] = {}
    for treated in (True, False):
        mine = edge.treated == treated
        keys, inv = np.unique(key[mine], return_inverse=True)
        y = np.bincount(inv).astype(float)
        for metric, values in (("error_rate", edge.err[mine]), ("mean_latency", edge.ms[mine])):
            x = np.bincount(inv, values.astype(float))
            s = keys % strata
            cells[metric, treated] = (keys // strata, s, x, y)
            totals[metric, treated] = {
                int(k): Totals(float(a), float(b))
                for k, a, b in zip(
                    range(strata), np.bincount(s, x, strata), np.bincount(s, y, strata), strict=True
                )
                if b > 0
            }
    out: dict[str, dict[str, Any]] = {}
    for metric in ("error_rate", "mean_latency"):
        weights = pooled_weights(totals[metric, True], totals[metric, False])
        for treated, name in ((True, "treatment"), (False, "baseline")):
            lin = linearize(totals[metric, treated], weights)
            units, s, x, y = cells[metric, treated]
            w, ratio, total = (
                np.array(
                    [lin.strata[int(k)][i] if int(k) in lin.strata else 0.0 for k in range(strata)]
                )
                for i in range(3)
            )
            term = w[s] * (x - ratio[s] * y) / np.where(total[s] > y, total[s] - y, total[s])
            _, per_unit = np.unique(units, return_inverse=True)
            phi = np.bincount(per_unit, term)
            if lin.missing:
                ux, uy = np.bincount(per_unit, x), np.bincount(per_unit, y)
                rest = np.where(lin.total_y > uy, lin.total_y - uy, lin.total_y)
                phi += lin.missing * (ux - lin.overall * uy) / rest
            variance = jackknife_variance(phi.size, float(phi.sum()), float(phi @ phi))
            out.setdefault(metric, {})[name] = AdjustedMoments(
                lin.estimate, variance, phi.size, lin.estimate
            )
    return out


def unit_sums(rows: Rows, strata: bool = True) -> UnitSums:
    """cohorts.LabelledRequests.unit_sums on `rows`; without `strata`, the cohorts as a
    whole and the adjusted moments only."""
    edge = rows.where(rows.edge)
    overall = {
        name: cohort_sums(name, None, edge.where(edge.treated == treated))
        for treated, name in ((True, "treatment"), (False, "baseline"))
        if np.any(edge.treated == treated)
    }
    cells = []
    for s, where in enumerate(rows.endpoints if strata else ()):
        for treated, name in ((False, "baseline"), (True, "treatment")):
            part = rows.where((rows.stratum == s) & (rows.treated == treated))
            if part.unit.size:  # what the breakdown estimates and summarises
                cells.append(cohort_sums(name, where, part, STRATUM_METRICS))
    cells.sort(key=lambda c: (c.service_name or "", c.route or "", c.cohort))
    adjusted = adjusted_moments(edge) if len(overall) == 2 else {}
    return UnitSums(overall, tuple(cells), adjusted)


# -- the verdict of one look ----------------------------------------------------------------
@dataclass(frozen=True)
class LookVerdict:
    verdict: Verdict
    fired: tuple[str, ...]  # decisive tests judged REGRESSION: "adjusted error_rate", …


def family(name: str) -> str:
    """ "adjusted error_rate", "route p95_latency", … from a decisive test's name."""
    if "(route-mix adjusted)" in name:
        return "adjusted " + name.split()[1]
    return "route " + name.split()[-1]


def look_verdict(rows: Rows, minute: int) -> LookVerdict:
    """diff._run after the SQL stage, on the rows before `minute` (guard options)."""
    options = guard_options(minute)
    sums = unit_sums(rows.before(minute))
    if set(sums.overall) != {"treatment", "baseline"}:
        return LookVerdict(Verdict.NO_DATA, ())
    t, c = sums.overall["treatment"], sums.overall["baseline"]
    treatment, base = _summary(t, TREATMENT), _summary(c, BASELINE)
    users = (treatment.users, base.users)
    errors = (t.errors.sum_x, c.errors.sum_x)
    limits = options.thresholds
    plain = _final(
        estimates(t, c, options.alpha, stretch=_stretch(options, sum(users))), sum(users), options
    )
    mixed = _final(mix_adjusted(sums, options.alpha), sum(users), options)
    routes = _route_estimates(sums, options)
    q_overall, q_routes = decisive_q_values(
        [e.p_value for e in mixed.values()],
        [e.p_value for route in routes for e in route.estimates.values()],
    )
    adjusted = [
        (f"overall {m} (route-mix adjusted)", judge(m, e, limits, users, errors, q))
        for (m, e), q in zip(mixed.items(), q_overall, strict=True)
    ]
    breakdown = _breakdown(routes, iter(q_routes), TREATMENT, BASELINE, options)
    routes_judged = [
        (f"{s.service} {s.route} {m.metric}", m.judgement, s) for s in breakdown for m in s.metrics
    ]
    decisive = adjusted + [(name, j) for name, j, _ in routes_judged]
    ruled_out = adjusted + [
        (f"overall {m}", judge(m, e, limits, users, errors)) for m, e in plain.items()
    ]
    ruled_out += [
        (name, j)
        for name, j, s in routes_judged
        if min(s.treatment.users, s.baseline.users) >= limits.min_users
    ]
    health, _ = _health(options, treatment, base, EXCLUDED)
    broken = [(h.name, h.detail) for h in health if not h.ok and h.name != "sample_size"]
    verdict, _ = overall_verdict(decisive, ruled_out, broken)
    fired = tuple(family(n) for n, j in decisive if j.verdict is Verdict.REGRESSION)
    return LookVerdict(verdict, fired if verdict is Verdict.REGRESSION else ())


# -- the tiers ------------------------------------------------------------------------------
Test = tuple[
    str, int
]  # ("adjusted error_rate" | "adjusted mean_latency", -1) or ("route …", stratum)
BIN, BINS = 0.01, 500  # log-ms histogram of a stratum: 1 % bins from its median up to × 140
EPS = 1e-9  # floating-point slack on a threshold (numpy sums against math.fsum)


class Week:
    """Rows in (stratum, minute) order, each stratum's a slice (tiers 1 and 2 read them),
    and the edge requests picked out when first asked for."""

    def __init__(self, rows: Rows) -> None:
        key = rows.stratum.astype(np.int64) * (int(rows.minute.max(initial=0)) + 1) + rows.minute
        if not bool(np.all(np.diff(key) >= 0)):
            by_minute = np.argsort(rows.minute, kind="stable")  # 16-bit keys: radix sorts
            order = by_minute[np.argsort(rows.stratum[by_minute], kind="stable")]
            rows = Rows(**{f: getattr(rows, f)[order] for f in _FIELDS}, endpoints=rows.endpoints)
        self.rows = rows
        strata = np.arange(len(rows.endpoints) + 1, dtype=rows.stratum.dtype)
        self.bounds = np.searchsorted(rows.stratum, strata)
        self._edge: Rows | None = None

    def stratum(self, s: int) -> Rows:
        """The stratum's rows, in minute order."""
        part = self.rows.where(slice(self.bounds[s], self.bounds[s + 1]))
        return replace(part, in_order=True)

    @property
    def edge(self) -> Rows:
        if self._edge is None:
            self._edge = self.rows.where(self.rows.edge)
        return self._edge


def _cumulative(
    index: np.ndarray, weights: np.ndarray | None, looks: int, cells: int
) -> np.ndarray:
    """(looks, cells): the sum of `weights` (or the count) over rows before each look."""
    counts = np.bincount(index, weights, looks * cells).reshape(looks, cells)
    return np.cumsum(counts, axis=0)


def _first_seen(key: np.ndarray, minute: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct key's first minute (the keys in ascending order)."""
    never = np.iinfo(np.int32).max
    first = np.full(int(key.max()) + 1, never, np.int32)
    np.minimum.at(first, key, minute.astype(np.int32))
    seen = np.flatnonzero(first < never)
    return seen, first[seen].astype(np.int64)


def _p95_upper(week: Week, looks: int) -> np.ndarray:
    """(looks, strata): an upper bound of each stratum's relative p95 difference at each
    look. The type-7 quantile lies between the order statistics k = floor((N - 1) p) and
    k + 1, so between the lower edge of the log-histogram bin holding the k-th and the
    upper edge of the bin holding the (k + 1)-th: treatment's upper end over baseline's
    lower end. Bins of 1 % from the stratum's median up (below it: one bin reaching 0)."""
    out = np.full((looks, len(week.rows.endpoints)), np.inf)
    for s in range(len(week.rows.endpoints)):
        mine = week.stratum(s).before(looks)
        if not mine.unit.size:
            continue
        origin = math.log(float(np.median(mine.ms[:: max(1, mine.ms.size // 20_000)])))
        bins = np.clip(np.floor((np.log(mine.ms) - origin) / BIN) + 1, 0, BINS - 1).astype(np.int64)
        flat = (mine.minute.astype(np.int64) * 2 + mine.treated) * BINS + bins
        counts = np.bincount(flat, minlength=looks * 2 * BINS).reshape(looks, 2, BINS)
        for look in range(1, looks):  # rows in place: faster than cumsum along axis 0
            counts[look] += counts[look - 1]
        cdf = np.cumsum(counts, axis=2)
        n = cdf[..., -1]
        k = np.floor(np.maximum(n - 1, 0) * 0.95).astype(np.int64)
        k1 = np.minimum(k + 1, np.maximum(n - 1, 0))
        lo_bin = (cdf <= k[..., None]).sum(axis=2)
        hi_bin = (cdf <= k1[..., None]).sum(axis=2)
        lower = np.where(lo_bin == 0, -np.inf, origin + (lo_bin - 1) * BIN)
        upper = np.where(hi_bin >= BINS - 1, np.inf, origin + hi_bin * BIN)
        with np.errstate(invalid="ignore", over="ignore"):
            out[:, s] = np.expm1(upper[:, 1] - lower[:, 0])
    return out


@dataclass(frozen=True)
class Screen:
    """Tier 1 over every look at once: the decisive tests that may be REGRESSION at each
    look (point estimate at or beyond its threshold, min_users in both cohorts), and the
    users per cohort (for the sample-ratio check)."""

    candidates: dict[int, list[Test]]
    users: np.ndarray  # (looks, 2): treatment, baseline

    @classmethod
    def of(cls, week: Week, looks: int) -> Screen:
        rows = week.rows.before(looks)  # look m sees minutes 0 … m - 1
        thresholds = guard_options(1).thresholds
        strata, cells = len(rows.endpoints), 2 * len(rows.endpoints)
        flat = (rows.minute.astype(np.int64) * strata + rows.stratum) * 2 + rows.treated
        req = _cumulative(flat, None, looks, cells)
        err = _cumulative(flat, rows.err.astype(float), looks, cells)
        edge = rows.edge
        lat = _cumulative(flat[edge], rows.ms[edge], looks, cells)
        ereq = _cumulative(flat[edge], None, looks, cells)
        eerr = _cumulative(flat[edge], rows.err[edge].astype(float), looks, cells)
        treated_of = np.zeros(int(rows.unit.max()) + 1, bool)
        treated_of[rows.unit] = rows.treated
        unit, first = _first_seen(rows.unit[edge], rows.minute[edge])
        users = _cumulative(first * 2 + (~treated_of[unit]), None, looks, 2).astype(np.int64)
        overall_ok = users.min(axis=1) >= thresholds.min_users
        found: dict[int, list[Test]] = {}

        def mark(ok: np.ndarray, test: Test) -> None:
            for look in np.flatnonzero(ok) + 1:
                found.setdefault(int(look), []).append(test)

        with np.errstate(invalid="ignore", divide="ignore"):
            for metric, x, limit in (
                ("error_rate", eerr, thresholds.error_rate_pp / 100),
                ("mean_latency", lat, thresholds.latency_pct / 100),
            ):
                t = _post_stratified(x[:, 1::2], ereq[:, 1::2], ereq[:, 0::2])
                c = _post_stratified(x[:, 0::2], ereq[:, 0::2], ereq[:, 1::2])
                value = t - c if metric == "error_rate" else t / c - 1
                mark(overall_ok & (value >= limit - EPS), (f"adjusted {metric}", -1))
            rate = err / req
            # a stratum's users are at most its requests: fewer requests than min_users
            # in a cohort is too few users there
            route_users = np.minimum(req[:, 1::2], req[:, 0::2]) >= thresholds.min_users
            one_sided = (req[:, 1::2] == 0) != (req[:, 0::2] == 0)
            diff = rate[:, 1::2] - rate[:, 0::2]
            p95 = _p95_upper(week, looks)
            for s in range(strata):
                bad = route_users[:, s] & (diff[:, s] >= thresholds.error_rate_pp / 100 - EPS)
                mark(bad | (one_sided[:, s] & overall_ok), ("route error_rate", s))
                slow = route_users[:, s] & (p95[:, s] >= thresholds.latency_pct / 100 - EPS)
                mark(slow | (one_sided[:, s] & overall_ok), ("route p95_latency", s))
        return cls(found, users)


def _post_stratified(x: np.ndarray, y: np.ndarray, other_y: np.ndarray) -> np.ndarray:
    """Σ_s w_s X_s / Y_s with w_s the pooled share of requests (stats.mix), a stratum the
    cohort lacks imputed at its overall ratio, at every look."""
    w = (y + other_y) / (y + other_y).sum(axis=1, keepdims=True)
    present = y > 0
    ratio = np.where(present, x / np.where(present, y, 1), 0.0)
    overall = x.sum(axis=1) / y.sum(axis=1)
    estimate: np.ndarray = (w * ratio).sum(axis=1) + (w * ~present).sum(axis=1) * overall
    return estimate


def regresses(week: Week, minute: int, test: Test) -> bool:
    """Tier 2: one decisive test estimated exactly and judged without its q-value. The
    multiple-testing correction can only turn a REGRESSION into INCONCLUSIVE (judge), so
    a test not judged REGRESSION here is not REGRESSION in the look either."""
    options = guard_options(minute)
    kind, s = test
    if kind.startswith("adjusted"):
        metric = kind.split()[1]
        sums = unit_sums(week.edge.before(minute), strata=False)
        if len(sums.overall) < 2:
            return False
        t, c = sums.overall["treatment"], sums.overall["baseline"]
        est = _final(mix_adjusted(sums, options.alpha), t.users + c.users, options)[metric]
        users = (t.users, c.users)
    else:
        metric = kind.split()[1]
        part = week.stratum(s).before(minute)
        if part.treated.all() or not part.treated.any():
            return True  # a route only one cohort called: the whole look decides
        where = week.rows.endpoints[s]
        t = cohort_sums("treatment", where, part.where(part.treated), (metric,))
        c = cohort_sums("baseline", where, part.where(~part.treated), (metric,))
        found = estimates(t, c, options.alpha, (metric,), _stretch(options, t.users + c.users))
        est = _final(found, t.users + c.users, options)[metric]
        users = (t.users, c.users)
    errors = (t.errors.sum_x, c.errors.sum_x)
    return judge(metric, est, options.thresholds, users, errors).verdict is Verdict.REGRESSION


@dataclass(frozen=True)
class Replay:
    """One replayed stretch of looks: the first REGRESSION, what fired at some look, and
    what the tiers did."""

    looks: int
    first_regression: int | None
    regression_looks: int
    fired: tuple[str, ...]  # test families judged REGRESSION in a REGRESSION look
    first_srm_alert: int | None
    candidates: int  # tier-2 estimates
    exact_looks: int  # tier-3 looks
    seconds: float


def replay(rows: Rows, looks: int, stop_at_first: bool = False) -> Replay:
    """The guard's verdict at looks 1..`looks` (a look after each minute)."""
    began = time.perf_counter()
    week = Week(rows)
    screen = Screen.of(week, looks)
    first = None
    fired: set[str] = set()
    tested = exact = regressions = 0
    for minute, tests in sorted(screen.candidates.items()):
        tested += len(tests)
        if not any(regresses(week, minute, test) for test in tests):
            continue
        exact += 1
        found = look_verdict(rows, minute)
        if found.verdict is Verdict.REGRESSION:
            regressions += 1
            first = minute if first is None else first
            fired.update(found.fired)
            if stop_at_first:
                break
    alerts = [
        k + 1
        for k, (t, c) in enumerate(screen.users.tolist())
        if t + c and srm_test({TREATMENT: t, BASELINE: c}, SPLIT).alert
    ]
    return Replay(
        looks, first, regressions, tuple(sorted(fired)), alerts[0] if alerts else None, tested, exact,
        time.perf_counter() - began,
    )  # fmt: skip


def active_users_per_minute(rows: Rows) -> tuple[float, float]:
    """Mean distinct users, and requests, in a minute (edge requests)."""
    edge = rows.where(rows.edge)
    minutes = int(edge.minute.max()) + 1
    pairs = np.sort(edge.minute.astype(np.int64) * (int(edge.unit.max()) + 1) + edge.unit)
    distinct = 1 + np.count_nonzero(np.diff(pairs))
    return distinct / minutes, edge.unit.size / minutes


# -- part a: A/A weeks ---------------------------------------------------------------------
def aa_week(args: tuple[int, int, int]) -> dict[str, Any]:
    seed, rep, looks = args
    rows = simulated_rows(guard_traffic(168), np.random.default_rng([seed, rep]))
    found = replay(rows, looks)
    out = dataclass_dict(found) | {"rep": rep}
    if rep == 0:
        out["users_per_minute"], out["requests_per_minute"] = active_users_per_minute(rows)
        out["rows"] = int(rows.unit.size)
    return out


def dataclass_dict(value: Any) -> dict[str, Any]:
    return {k: getattr(value, k) for k in value.__dataclass_fields__}


def report_aa(weeks: list[dict[str, Any]], looks: int) -> dict[str, Any]:
    n = len(weeks)
    first = weeks[0]
    print(
        f"\nA/A: {n} weeks × {looks:,} minute looks; {first['users_per_minute']:,.0f} distinct "
        f"users and {first['requests_per_minute']:,.0f} requests a minute (week 0; "
        f"{first['rows']:,} entry spans), 20 % exposure, the guard's one-sided alpha {ALPHA}"
    )
    families = (
        "adjusted error_rate",
        "adjusted mean_latency",
        "route error_rate",
        "route p95_latency",
    )
    figures: dict[str, Any] = {}
    print(f"{'declared REGRESSION at some look':38} {'share of weeks':>16}  weeks  guarantee")
    for name in (*families, "any metric (the verdict)"):
        hits = sum(
            1
            for w in weeks
            if (name in w["fired"] if name in families else w["first_regression"] is not None)
        )
        figure = binomial(hits, n)
        figures[name] = figure
        print(f"{name:38} {figure['rate']:>8.3f} ± {figure['se']:.3f}  {hits:>5}  ≤ {ALPHA}")
    srm = binomial(sum(w["first_srm_alert"] is not None for w in weeks), n)
    figures["srm_alert"] = srm
    print(
        f"{'sample-ratio alert (UNHEALTHY, no action)':38} {srm['rate']:>8.3f} ± {srm['se']:.3f}  {srm['count']:>5}"
    )
    tier2 = np.mean([w["candidates"] for w in weeks])
    tier3 = np.mean([w["exact_looks"] for w in weeks])
    seconds = np.mean([w["seconds"] for w in weeks])
    print(
        f"per week: {tier2:,.0f} tests estimated exactly (tier 2), {tier3:,.1f} looks computed "
        f"whole (tier 3), {seconds:.1f} s of replay"
    )
    alarms = [
        {
            k: w[k]
            for k in ("rep", "first_regression", "regression_looks", "fired", "first_srm_alert")
        }
        for w in weeks
        if w["first_regression"] is not None or w["first_srm_alert"] is not None
    ]
    for alarm in alarms:
        print(f"  week {alarm['rep']}: {alarm}")
    return figures | {
        "weeks": n, "looks": looks, "tier2_per_week": tier2, "tier3_per_week": tier3,
        "alarms": alarms,
    }  # fmt: skip


# -- null walks: the error-rate rule alone, vectorised ---------------------------------------
@dataclass(frozen=True)
class Walks:
    """Null walks of the guard's error-rate test at every look: 1,000 new users a minute,
    one request each, errors Bernoulli(`rate`), treatment by a fair 20 % coin."""

    walks: int
    looks: int
    crossed: np.ndarray  # first look whose one-sided always-valid lower bound was > 0 (0: none)
    regression: np.ndarray  # first look verdict.judge called REGRESSION
    fixed_crossed: np.ndarray  # the same walks read with the fixed-horizon lower bound
    exact: int  # looks estimated by the package (rare events, near the bound, the sample)
    replica_error: float  # largest |bound - package's| over the sampled looks, in se units


def _error_estimate(x_t: int, n_t: int, x_c: int, n_c: int, options: DiffOptions) -> Estimate:
    """The package's sequential estimate for users of one request each (the jackknife
    sums have a closed form: Σ r_i = 0, Σ r_i² = n R (1 - R) / (n - 1)²)."""

    def stats(x: int, n: int) -> RatioStats:
        r = x / n
        return RatioStats(n, x, n, x, n, x, (0.0, n * r * (1 - r) / (n - 1) ** 2))

    fixed = error_rate_difference(stats(x_t, n_t), stats(x_c, n_c), options.alpha)
    return sequential_estimate(
        fixed, n_t + n_c, options.alpha, options.expected_users, one_sided=options.one_sided
    )


def null_walks(
    walks: int, seed: int, looks: int = WEEK, rate: float = 0.01, sample: int = 200
) -> Walks:
    """The bound at each look from a numpy replica of the package's arithmetic (delta
    method with the jackknife variance R (1 - R) / (n - 1) per cohort; the always-valid
    half-width sqrt(n) margin(n) se, `sequential_stretch` for n users); where events are
    rare (Newcombe), where the replica's bound is within 1 % of 0, and at `sample` random
    looks, the package's `error_rate_difference`, `sequential_estimate` and `judge`
    decide (a look further below 0 cannot be REGRESSION)."""
    options = guard_options(looks)
    n = 1000 * np.arange(1, looks + 1)
    reach = np.array(
        [sequential_stretch(int(k), options.alpha, options.expected_users, 1.0, True) for k in n]
    )
    z = critical_value(2 * ALPHA)  # the fixed-horizon one-sided bound at alpha
    rng = np.random.default_rng(seed)
    crossed, regression, fixed = (np.zeros(walks, np.int64) for _ in range(3))
    exact, worst = 0, 0.0

    def first(hit: np.ndarray) -> np.ndarray:
        return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)

    for a in range(0, walks, 250):
        b = min(a + 250, walks)
        n_t = np.cumsum(rng.binomial(1000, 0.2, (b - a, looks)), axis=1)
        n_c = n - n_t
        x_t = np.cumsum(rng.binomial(np.diff(n_t, axis=1, prepend=0), rate), axis=1)
        x_c = np.cumsum(rng.binomial(np.diff(n_c, axis=1, prepend=0), rate), axis=1)
        r_t, r_c = x_t / n_t, x_c / n_c
        se = np.sqrt(r_t * (1 - r_t) / (n_t - 1) + r_c * (1 - r_c) / (n_c - 1))
        lo = r_t - r_c - reach * se
        deff = np.maximum(1.0, n / (n - 1))
        rare = np.zeros_like(lo, bool)
        for x, m in ((x_t, n_t), (x_c, n_c)):
            rare |= (x / deff < 10) | ((m - x) / deff < 10) | (x == 0) | (x == m)
        near = rare | (lo > -0.01 * reach * se)
        picked = set(rng.integers(0, lo.size, sample * (b - a) // walks + 1).tolist())
        bound = lo.copy()
        judged = np.zeros_like(lo, bool)
        for flat in sorted(set(np.flatnonzero(near).tolist()) | picked):
            w, k = divmod(flat, looks)
            counts = (int(x_t[w, k]), int(n_t[w, k]), int(x_c[w, k]), int(n_c[w, k]))
            est = _error_estimate(*counts, guard_options(k + 1))
            if flat in picked and not rare[w, k]:
                worst = max(worst, abs(est.diff_lo - lo[w, k]) / se[w, k])
            bound[w, k] = est.diff_lo if est.has_interval else -np.inf
            verdict = judge(
                "error_rate", est, options.thresholds, counts[1::2], (counts[0], counts[2])
            ).verdict
            judged[w, k] = verdict is Verdict.REGRESSION
            exact += 1
        crossed[a:b], regression[a:b] = first(bound > 0), first(judged)
        fixed[a:b] = first(r_t - r_c - z * se > 0)
    return Walks(walks, looks, crossed, regression, fixed, exact, worst)


# -- part b: detection through the real Guard ---------------------------------------------
SCENARIOS: dict[str, dict[str, float]] = {
    "errors_2pp": {"error_pp": 2.0},
    "p95_30pct": {"tail_factor": 1.3},
    "aa": {},
}
HORIZON = 120  # minutes of lake a run writes: two hourly reports
FLAGD = {
    "flags": {
        FLAG: {
            "state": "ENABLED",
            "variants": {TREATMENT: True, BASELINE: False},
            "defaultVariant": BASELINE,
            "targeting": {"fractional": [{"var": "targetingKey"}, [TREATMENT, 20], [BASELINE, 80]]},
        }
    }
}
START_NS = round((START - START.replace(year=1970, month=1, day=1)).total_seconds()) * 10**9


def report_options(minute: int, scheduled: bool) -> DiffOptions:
    """The hourly report at START + minute: `flagscope report` (fixed horizon, two-sided
    alpha 0.05) over the window so far, or `flagscope schedule`'s (always-valid, two-sided,
    the 24 h window ending then)."""
    end = START + timedelta(minutes=minute)
    start = end - timedelta(hours=24) if scheduled else START
    return DiffOptions(
        FLAG, start, end, variant=TREATMENT, baseline=BASELINE, sequential=scheduled,
        expected_split=SPLIT,
    )  # fmt: skip


def detection(args: tuple[str, int, int]) -> dict[str, Any]:
    """One seeded run: a lake written a minute at a time, the Guard's look after each
    minute until its first REGRESSION (every minute for A/A), both hourly reports at each
    hour mark until theirs; then the replay of the same rows."""
    scenario, seed, rep = args
    traffic = guard_traffic(2)
    if SCENARIOS[scenario]:
        traffic = traffic.with_effect(**SCENARIOS[scenario])
    table = generate(traffic, np.random.default_rng([seed, rep])).table.sort_by("time")
    minute_of = (table["time"].cast(pa.int64()).to_numpy() - START_NS) // 60_000_000_000
    bounds = np.searchsorted(minute_of, np.arange(HORIZON + 1))
    found: dict[str, int | None] = {"guard": None, "fixed": None, "scheduled": None}
    verdicts: Counter[str] = Counter()
    seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="guard-watch-") as tmp:
        lake, flagd = Path(tmp) / "lake", Path(tmp) / "flags.flagd.json"
        flagd.write_text(json.dumps(FLAGD, indent=2))
        spec = GuardSpec(
            FLAG, variant=TREATMENT, baseline=BASELINE, since=START, flagd_file=flagd, alpha=ALPHA
        )
        guard = Guard(lake, [spec], Path(tmp) / "guard")  # state: audit log, looks
        for minute in range(1, HORIZON + 1):
            part = table.slice(bounds[minute - 1], bounds[minute] - bounds[minute - 1])
            write_table(lake, part, f"sim-{minute:012d}-000")
            if found["guard"] is None:
                began = time.perf_counter()
                outcome = guard.look(spec, START + timedelta(minutes=minute))
                seconds.append(time.perf_counter() - began)
                verdicts[outcome.verdict.value if outcome.verdict else "failed"] += 1
                if outcome.verdict is Verdict.REGRESSION:
                    found["guard"] = minute
            if minute % 60 == 0:
                for name in ("fixed", "scheduled"):
                    options = report_options(minute, name == "scheduled")
                    if (
                        found[name] is None
                        and run_diff(lake, options).verdict is Verdict.REGRESSION
                    ):
                        found[name] = minute
            if scenario != "aa" and None not in found.values():
                break
        rolled_back = "targeting" not in json.loads(flagd.read_text())["flags"][FLAG]
    replayed = replay(table_rows(table), found["guard"] or HORIZON, stop_at_first=True)
    return found | {
        "scenario": scenario,
        "rep": rep,
        "rolled_back": rolled_back,
        "replay": replayed.first_regression,
        "verdicts": dict(verdicts),
        "look_seconds": float(np.mean(seconds)),
    }


def _minutes(values: Sequence[int | None]) -> tuple[str, str]:
    """Median and p90 (the smallest minute by which 90 % of runs had fired) as text;
    a run that never fired counts as later than any."""
    ranked = sorted(math.inf if v is None else v for v in values)

    def at(q: float) -> str:
        value = ranked[max(0, math.ceil(q * len(ranked)) - 1)]
        return f"> {HORIZON}" if value == math.inf else f"{value:g}"

    return at(0.5), at(0.9)


def report_detection(runs: list[dict[str, Any]]) -> dict[str, Any]:
    print(
        f"\nDetection through the real Guard (a look a minute, lakes on disk, {HORIZON} min "
        "of traffic a run); minutes after the rollout began:"
    )
    print(
        f"{'scenario':11} {'runs':>4}  {'guard median / p90':>18}  {'hourly report':>14}  "
        f"{'hourly scheduled':>16}  {'report / guard':>14}  replay agrees"
    )
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        mine = [r for r in runs if r["scenario"] == scenario]
        if not mine:
            continue
        guard, fixed, scheduled = (
            _minutes([r[k] for r in mine]) for k in ("guard", "fixed", "scheduled")
        )
        agree = sum(r["replay"] == r["guard"] for r in mine)
        fired = [r["guard"] for r in mine if r["guard"] is not None]
        reports = [r["fixed"] for r in mine if r["fixed"] is not None]
        ratio = (
            f"{float(np.median(reports)) / float(np.median(fired)):.0f}×"
            if fired and reports
            else "–"
        )
        print(
            f"{scenario:11} {len(mine):>4}  {guard[0]:>8} / {guard[1]:<7}  {fixed[0]:>6} / {fixed[1]:<5}"
            f"  {scheduled[0]:>8} / {scheduled[1]:<5}  {ratio:>14}  {agree} of {len(mine)}"
        )
        verdicts: Counter[str] = Counter()
        for r in mine:
            verdicts.update(r["verdicts"])
        out[scenario] = {
            "runs": len(mine),
            "guard": [r["guard"] for r in mine],
            "fixed": [r["fixed"] for r in mine],
            "scheduled": [r["scheduled"] for r in mine],
            "replay_agrees": agree,
            "rolled_back": sum(r["rolled_back"] for r in mine),
            "verdicts": dict(verdicts),
            "look_seconds": float(np.mean([r["look_seconds"] for r in mine])),
        }
        print(f"{'':11} guard verdicts over {sum(verdicts.values())} looks: {dict(verdicts)}")
    return out


def report_walks(found: Walks) -> dict[str, Any]:
    crossed = binomial(int(np.count_nonzero(found.crossed)), found.walks)
    regression = binomial(int(np.count_nonzero(found.regression)), found.walks)
    fixed = binomial(int(np.count_nonzero(found.fixed_crossed)), found.walks)
    print(
        f"\nNull walks of the error-rate test: {found.walks} walks × {found.looks:,} minute looks, "
        "1,000 new users a minute (one request each, 1 % errors), 20 % exposure"
    )
    for name, figure in (
        ("one-sided always-valid bound > 0 at some look", crossed),
        ("judged REGRESSION (and ≥ 0.5 pp) at some look", regression),
        ("fixed-horizon one-sided bound > 0 at some look", fixed),
    ):
        print(f"  {name:48} {figure['rate']:.4f} ± {figure['se']:.4f}")
    print(
        f"  {found.exact:,} looks estimated by the package; replica's largest error at the "
        f"sampled looks {found.replica_error:.1e} se"
    )
    return {"crossed": crossed, "regression": regression, "fixed_crossed": fixed}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", default="walks,aa_week,detection")
    parser.add_argument("--weeks", type=int, default=200)
    parser.add_argument("--looks", type=int, default=WEEK, help="looks a week (minutes)")
    parser.add_argument("--runs", type=int, default=20, help="seeded runs per regression")
    parser.add_argument("--aa-runs", type=int, default=10, help="A/A runs through the Guard")
    parser.add_argument("--walks", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=1414)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    began = time.perf_counter()
    print("machine:", ", ".join(f"{k} {v}" for k, v in machine().items()))
    results: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    if "walks" in parts:
        results["walks"] = report_walks(null_walks(args.walks, args.seed))
    pool = ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"))
    with pool:
        if "aa_week" in parts:
            t0 = time.perf_counter()
            jobs = [(args.seed, rep, args.looks) for rep in range(args.weeks)]
            weeks = list(pool.map(aa_week, jobs))
            results["aa_week"] = report_aa(weeks, args.looks) | {
                "seconds": time.perf_counter() - t0
            }
            print(f"aa_week: {time.perf_counter() - t0:.0f} s wall")
        if "detection" in parts:
            t0 = time.perf_counter()
            jobs = [
                (scenario, args.seed, rep)
                for scenario in SCENARIOS
                for rep in range(args.aa_runs if scenario == "aa" else args.runs)
            ]
            runs = list(pool.map(detection, jobs))
            results["detection"] = report_detection(runs) | {"seconds": time.perf_counter() - t0}
            print(f"detection: {time.perf_counter() - t0:.0f} s wall")
    elapsed = time.perf_counter() - began
    print(f"\ntotal {elapsed:.0f} s wall")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results | {"seconds": elapsed}, indent=2, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer | np.floating):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


if __name__ == "__main__":
    main()
