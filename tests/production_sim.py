"""Production-shaped traffic through the real pipeline, for auditing `flagscope diff`'s
statistics end to end: a seeded generator writes a lake in the collector's schema, the
real `run_diff` reads it, and the measurement functions turn many replicates into rates
with Monte-Carlo standard errors (false alarms, interval coverage, power, detection time).

What one replicate simulates (`Traffic`, `Effect`; defaults in brackets):

- Users [2000] with heavy-tailed activity: 1 + lognormal requests (mean [10], log-sd
  [1.2]: most send a handful, a few send hundreds). Each has a random error propensity
  (a lognormal factor of mean 1, log-sd [1.0]) and latency level (a lognormal factor,
  log-sd [0.35]), a Dirichlet preference over the routes (so users call several routes,
  unevenly) and one session (start uniform in the window, length exponential [4 h],
  wrapping round the window like a daily pattern).
- Routes (`ROUTES`): five routes of the edge service `frontend` with their own error
  rates (0.1–1 %, ~0.3 % overall) and log-normal latencies. A request is one trace: the
  edge's SERVER span is the root and each downstream call is a CLIENT span of the caller
  with the callee's SERVER span under it, a chain of 1–4 services, nested in time.
- A failed request fails from a service chosen uniformly along its chain: that span and
  every span above it are errors (HTTP 500), so the edge's error rate is the route's.
- The flag `FLAG` is evaluated on one SERVER span of the trace (uniformly chosen) with
  `flags = {FLAG: variant}` and `user_id` from the targeting key, as OpenFeature's hook
  records it; the root carries `user_id` (enduser.id, set at the edge), other spans none.
  A share [0] of evaluations name no user. A user is in treatment with probability
  `exposure` [0.2], for good; the diff is asked with that split (the SRM check runs).
- Options: crossover users (a share evaluated in the other variant after a random moment
  of their session), a whale (one user with a fixed number of requests), QA testers in
  treatment (test-marked roots, many errors: the pipeline must exclude them).
- Effects on treatment requests (`Effect`), on one route or all: +Δ pp error probability;
  × every span's latency; × only the slowest requests (a ramp from 1 at a route's
  `tail_from` quantile to the full factor at `tail_full`, so p95 and up move and the
  median does not); a treatment-only route (`NEW_ROUTE`) taking a share of its requests.

`truth(traffic)` gives the true difference (absolute and relative) per metric for the
edge request overall and per route (and, for error rate, per downstream service), from
the model: zero everywhere for an A/A run. Where the pipeline counts more than the edge
request in its overall numbers (every service's entry span, as it did until the edge-only
change), its overall intervals under an effect are still compared with the edge's truth;
under A/A every truth is zero whatever the definition.

A replicate (`run_replicate`) is seeded by (seed, replicate), written with the collector's
`write_table` (hour partitions) into a temporary directory, read by `run_diff` at each
look of its plan (fixed horizon, or windows growing from START), and deleted; it returns
each look's verdict and every interval (`Interval`). The measurement functions
(`false_alarms`, `any_look_false_alarms`, `coverage`, `power`) reduce replicates to dicts
of rates with Monte-Carlo standard errors and the binomial bounds the targets are read
against (`max_false_alarm_rate`, `coverage_band`).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flagscope.analysis.diff import run_diff
from flagscope.analysis.result import DiffOptions, DiffResult
from flagscope.collector.lake.resources import THREADS_ENV
from flagscope.collector.lake.schema import INPUT_SCHEMA
from flagscope.collector.lake.write import write_table

FLAG = "new-checkout"
TREATMENT, BASELINE = "on", "off"
EDGE = "frontend"
START = datetime(2026, 1, 5)  # naive UTC, as the lake and DiffOptions keep it
QUANTILES = (0.5, 0.9, 0.95, 0.99)
LATENCY_METRICS = ("mean_latency", *(f"p{round(p * 100)}_latency" for p in QUANTILES))
DECISIVE = ("REGRESSION", "IMPROVEMENT")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    share: float  # mean share of a user's requests
    error_rate: float  # per edge request, for a user of average propensity
    median_ms: float  # edge SERVER span, for a user of average latency level
    sigma: float  # per-request log-sd (the user's level adds to it)
    calls: tuple[tuple[str, str, str], ...] = ()  # downstream chain: (service, method, route)

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def servers(self) -> tuple[tuple[str, str, str], ...]:
        """(service, method, route) of each SERVER span along the chain, edge first."""
        return ((EDGE, self.method, self.path), *self.calls)


ROUTES = (
    Route("GET", "/", 0.30, 0.001, 35.0, 0.45),
    Route("GET", "/search", 0.20, 0.002, 90.0, 0.60, (("search", "GET", "/query"),)),
    Route(
        "GET",
        "/product/{id}",
        0.30,
        0.003,
        60.0,
        0.50,
        (("catalog", "GET", "/items/{id}"), ("inventory", "GET", "/stock/{id}")),
    ),
    Route("POST", "/cart", 0.12, 0.004, 80.0, 0.50, (("cart", "POST", "/cart/items"),)),
    Route(
        "POST",
        "/checkout",
        0.08,
        0.010,
        350.0,
        0.70,
        (
            ("checkout", "POST", "/orders"),
            ("payments", "POST", "/charges"),
            ("ledger", "POST", "/entries"),
        ),
    ),
)
NEW_ROUTE = Route("GET", "/recommendations", 0.0, 0.004, 120.0, 0.60, (("recs", "GET", "/recs"),))


@dataclass(frozen=True)
class Effect:
    """What the treatment changes, on `route` (a label such as "POST /checkout") or all."""

    error_pp: float = 0.0  # + percentage points of per-request error probability
    latency_factor: float = 1.0  # × every span of the trace
    tail_factor: float = 1.0  # × the slowest requests only (see the module doc)
    # The ramp ends below p95 so that p95 and p99 sit where the density is only rescaled:
    # a ramp ending at p95 leaves it where the density is tiny, and its estimate erratic.
    tail_from: float = 0.85
    tail_full: float = 0.92
    route: str | None = None
    new_route_share: float = 0.0  # of the treatment's requests, sent to NEW_ROUTE

    @property
    def null(self) -> bool:
        return (
            self.error_pp == 0.0
            and self.latency_factor == 1.0
            and self.tail_factor == 1.0
            and self.new_route_share == 0.0
        )

    def applies(self, route: Route) -> bool:
        return self.route is None or self.route == route.label


@dataclass(frozen=True)
class Traffic:
    """One replicate's population and window (see the module doc for what each means)."""

    users: int = 2000
    hours: int = 24
    mean_requests: float = 10.0
    requests_sigma: float = 1.2
    exposure: float = 0.2
    route_concentration: float = 1.5  # Dirichlet concentration: smaller = users more focused
    user_error_sigma: float = 1.0
    user_latency_sigma: float = 0.35
    session_hours: float = 4.0
    eval_without_user: float = 0.0
    crossover: float = 0.0
    whale_requests: int = 0
    whale_variant: str | None = None  # None: drawn like anyone's
    testers: int = 0
    routes: tuple[Route, ...] = ROUTES
    effect: Effect = field(default_factory=Effect)

    def with_effect(self, **changes: Any) -> Traffic:
        return replace(self, effect=replace(self.effect, **changes))


# -- the generator ----------------------------------------------------------------------
_HEX = np.array([f"{i:02x}".encode() for i in range(256)], dtype="S2")


def _hex_ids(rng: np.random.Generator, count: int, width: int) -> np.ndarray:
    """`count` random ids of `width` bytes as lowercase hex (never all zero)."""
    raw = rng.integers(0, 256, size=(count, width), dtype=np.uint8)
    raw[:, -1] |= 1
    return _HEX[raw].view(f"S{2 * width}").ravel()


def _strings(
    index: np.ndarray, values: Sequence[str | None], mask: np.ndarray | None = None
) -> pa.Array:
    """A string column from indices into `values` (None in `values` or `mask` is null)."""
    dictionary = pa.array(list(values), pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(index, pa.int32(), mask=mask), dictionary).cast(
        pa.string()
    )


def _route_table(traffic: Traffic) -> tuple[Route, ...]:
    return (*traffic.routes, NEW_ROUTE) if traffic.effect.new_route_share > 0 else traffic.routes


def _total_sigma(traffic: Traffic, route: Route) -> float:
    """Log-sd of a route's edge latency over requests: user level and request noise."""
    return math.hypot(traffic.user_latency_sigma, route.sigma)


def treated_latency(traffic: Traffic, route: Route, ms: np.ndarray) -> np.ndarray:
    """The effect's latency transform of edge latencies `ms` (monotone, so quantiles map
    through it): the tail ramp at the route's own quantiles, then the overall factor."""
    effect = traffic.effect
    if not effect.applies(route):
        return ms
    out = np.asarray(ms, dtype=float)
    if effect.tail_factor != 1.0:
        mu, s = math.log(route.median_ms), _total_sigma(traffic, route)
        lo = mu + s * NormalDist().inv_cdf(effect.tail_from)
        hi = mu + s * NormalDist().inv_cdf(effect.tail_full)
        ramp = np.clip((np.log(out) - lo) / (hi - lo), 0.0, 1.0)
        out = out * (1.0 + (effect.tail_factor - 1.0) * ramp)
    return out * effect.latency_factor


@dataclass(frozen=True)
class Generated:
    """A replicate's lake table and its edge requests (one per trace) for checks."""

    table: pa.Table
    edge: dict[str, np.ndarray]  # user, treated, route, ms, error, tester
    users: int


def generate(traffic: Traffic, rng: np.random.Generator) -> Generated:
    users = draw_users(traffic, rng)
    edge = draw_requests(traffic, users, rng)
    return Generated(_spans(traffic, users, edge, rng), edge, len(users["n"]))


def draw_users(traffic: Traffic, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per user: requests, variant, tester, error and latency factors, route preference
    (cumulative), session and crossover moment (hours)."""
    n_routes = len(traffic.routes)
    s = traffic.requests_sigma
    mu = math.log(max(traffic.mean_requests - 0.5, 0.5)) - s * s / 2  # E[1 + floor(X)] ≈ mean
    n = 1 + np.floor(rng.lognormal(mu, s, traffic.users)).astype(np.int64)
    treated = rng.random(traffic.users) < traffic.exposure
    tester = np.zeros(traffic.users, bool)
    if traffic.whale_requests:
        whale = traffic.whale_variant
        n = np.append(n, traffic.whale_requests)
        treated = np.append(
            treated, rng.random() < traffic.exposure if whale is None else whale == TREATMENT
        )
        tester = np.append(tester, False)
    if traffic.testers:
        n = np.append(n, np.full(traffic.testers, max(3 * round(traffic.mean_requests), 1)))
        treated = np.append(treated, np.ones(traffic.testers, bool))
        tester = np.append(tester, np.ones(traffic.testers, bool))
    count = len(n)
    shares = np.array([r.share for r in traffic.routes]) / sum(r.share for r in traffic.routes)
    se = traffic.user_error_sigma
    session = np.minimum(rng.exponential(traffic.session_hours, count), traffic.hours)
    if traffic.whale_requests:
        session[traffic.users] = traffic.hours  # a bot busy all day
    start = rng.uniform(0, traffic.hours, count)
    crossing = rng.random(count) < traffic.crossover
    return {
        "n": n,
        "treated": treated,
        "tester": tester,
        "error": rng.lognormal(-se * se / 2, se, count) * np.where(tester, 20.0, 1.0),
        "latency": rng.normal(0.0, traffic.user_latency_sigma, count),
        "preference": np.cumsum(
            rng.dirichlet(traffic.route_concentration * shares * n_routes, count), axis=1
        ),
        "start": start,
        "session": session,
        "switch": np.where(crossing, (start + rng.random(count) * session) % traffic.hours, np.inf),
    }


def draw_requests(
    traffic: Traffic, users: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """One row per trace: who, when, which route, the edge latency and whether it failed."""
    routes = _route_table(traffic)
    user = np.repeat(np.arange(len(users["n"])), users["n"])
    m = len(user)
    offset = rng.random(m) * users["session"][user]
    hours = (users["start"][user] + offset) % traffic.hours
    # A crossover user is evaluated in the other variant after their switch moment.
    treated = users["treated"][user] ^ (hours >= users["switch"][user])
    cumulative = users["preference"][user]
    route = np.minimum((rng.random(m)[:, None] > cumulative).sum(axis=1), len(traffic.routes) - 1)
    if traffic.effect.new_route_share > 0:
        route[treated & (rng.random(m) < traffic.effect.new_route_share)] = len(routes) - 1
    medians = np.log([r.median_ms for r in routes])
    sigmas = np.array([r.sigma for r in routes])
    ms = np.exp(medians[route] + users["latency"][user] + sigmas[route] * rng.standard_normal(m))
    p = np.array([r.error_rate for r in routes])[route] * users["error"][user]
    for index, r in enumerate(routes):
        chosen = treated & (route == index)
        ms[chosen] = treated_latency(traffic, r, ms[chosen])
        if traffic.effect.applies(r):
            p[chosen] += traffic.effect.error_pp / 100
    return {
        "user": user,
        "hours": hours,
        "treated": treated,
        "route": route,
        "ms": ms,
        "error": rng.random(m) < p,
        "tester": users["tester"][user],
    }


def _spans(
    traffic: Traffic,
    users: dict[str, np.ndarray],
    edge: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> pa.Table:
    """The traces' spans: S1, C1, S2, C2, … per trace (a SERVER span, its CLIENT call, the
    callee's SERVER span, …), each the previous one's child, as a table in INPUT_SCHEMA."""
    routes = _route_table(traffic)
    depth = np.array([len(r.servers) for r in routes])[edge["route"]]
    length = 2 * depth - 1
    first = np.concatenate([[0], np.cumsum(length)[:-1]])
    req = np.repeat(np.arange(len(depth)), length)
    pos = np.arange(len(req)) - first[req]
    server, level = pos % 2 == 0, pos // 2  # level: the span's service along the chain
    callee = np.where(server, level, level + 1)
    # Durations: the root's, then each hop a fraction of its parent's; starts centred in
    # the parent, so that every child lies inside it.
    fraction = np.where(server, rng.uniform(0.9, 0.99, len(req)), rng.uniform(0.6, 0.95, len(req)))
    fraction[first] = edge["ms"]
    log_ms = np.cumsum(np.log(fraction))
    ms = np.exp(log_ms - np.repeat(log_ms[first] - np.log(edge["ms"]), length))
    start_ns = (
        _ns(START)
        + np.repeat((edge["hours"] * 3.6e12).astype(np.int64), length)
        + ((np.repeat(edge["ms"], length) - ms) * 5e5).astype(np.int64)
    )
    # A failure starts at a uniformly chosen hop and reaches every span above it.
    origin = np.repeat((rng.random(len(depth)) * depth).astype(np.int64), length)
    # The flag is evaluated on one SERVER span of the trace, named by its targeting key.
    evaluated_at = (rng.random(len(depth)) * depth).astype(np.int64)
    evaluation = server & (level == np.repeat(evaluated_at, length))
    named = np.repeat(rng.random(len(depth)) >= traffic.eval_without_user, length)
    user_names = [
        f"qa-{i:06d}" if tester else f"user-{i:06d}" for i, tester in enumerate(users["tester"])
    ]
    # Every (service, method, route) endpoint; route r's i-th one is hop_of[r, i].
    hops = [s for r in routes for s in r.servers]
    firsts = np.cumsum([0] + [len(r.servers) for r in routes[:-1]])
    hop_of = firsts[:, None] + np.arange(max(len(r.servers) for r in routes))[None, :]
    rows = {
        "route": edge["route"][req],
        "hop": hop_of[edge["route"][req], callee],
        "caller": hop_of[edge["route"][req], level],
        "server": server,
        "root": pos == 0,
        "start_ns": start_ns,
        "ms": ms,
        "failed": np.repeat(edge["error"], length) & (callee <= origin),
        "evaluation": evaluation,
        "variant": np.repeat(edge["treated"], length),
        "user": np.repeat(edge["user"], length),
        "has_user": (pos == 0) | (evaluation & named),
        "tester": np.repeat(edge["tester"], length) & (pos == 0),
        "trace_id": _hex_ids(rng, len(depth), 16)[req],
        "span_id": _hex_ids(rng, len(req), 8),
    }
    return _table(rows, hops, user_names)


def _table(
    rows: dict[str, np.ndarray], hops: list[tuple[str, str, str]], users: list[str]
) -> pa.Table:
    """The spans as a builder of wide events gives them (`INPUT_SCHEMA`: times as naive
    nanoseconds); `write_table` stores them in the lake's form, join keys derived as the
    collector derives them."""
    n = len(rows["ms"])
    server, hop, failed = rows["server"], rows["hop"], rows["failed"]
    services = sorted({s for s, _, _ in hops})
    service_of = np.array([services.index(s) for s, _, _ in hops])
    evaluated = rows["evaluation"]
    variants = np.where(rows["variant"][evaluated], TREATMENT, BASELINE)

    def timestamps(ns: np.ndarray) -> pa.Array:
        return pa.array(ns, pa.int64()).cast(pa.timestamp("ns"))

    def hexes(values: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
        return pa.array(values, pa.binary(), mask=mask).cast(pa.string())

    columns = {
        "time": timestamps(rows["start_ns"]),
        "end_time": timestamps(rows["start_ns"] + (rows["ms"] * 1e6).astype(np.int64)),
        "signal": pa.array(np.full(n, "span")),
        "trace_id": hexes(rows["trace_id"]),
        "span_id": hexes(rows["span_id"]),
        "parent_span_id": hexes(np.roll(rows["span_id"], 1), mask=rows["root"]),
        "service_name": _strings(service_of[np.where(server, hop, rows["caller"])], services),
        "name": _strings(
            np.where(server, hop, hop + len(hops)),  # an HTTP client span is named by its method
            [f"{m} {r}" for _, m, r in hops] + [m for _, m, _ in hops],
        ),
        "kind": pa.array(np.where(server, 2, 3), pa.int32()),
        "duration_ms": pa.array(rows["ms"]),
        "status_code": pa.array(np.where(failed, 2, 0), pa.int32()),
        "is_error": pa.array(failed),
        "http_method": _strings(hop, [m for _, m, _ in hops]),
        "http_route": _strings(hop, [r for _, _, r in hops], mask=~server),
        "http_status_code": pa.array(np.where(failed, 500, 200), pa.int32()),
        "user_id": _strings(rows["user"], users, mask=~rows["has_user"]),
        "flags": pa.MapArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(evaluated)]).astype(np.int32)),
            pa.array(np.full(len(variants), FLAG)),
            pa.array(variants),
        ),
        "is_test": pa.array(rows["tester"]),
        "test_reason": pa.array(np.full(n, "test_user=true"), mask=~rows["tester"]),
        "attributes": pa.array(np.full(n, "{}")),
        "resource_attributes": pa.array(np.full(n, "{}")),
    }
    columns["event_id"] = pc.binary_join_element_wise(columns["trace_id"], columns["span_id"], "")
    fields = list(INPUT_SCHEMA)
    arrays = [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in fields]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _ns(moment: datetime) -> int:
    return int(moment.replace(tzinfo=UTC).timestamp()) * 10**9


# -- the truth ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Truth:
    """True differences (absolute, relative) by (scope, stratum, metric); scope "overall",
    "adjusted" or "route", stratum "" or "<service> <METHOD route>". Under A/A every
    difference is zero; otherwise unknown ones (None) are left out of coverage."""

    null: bool
    known: dict[tuple[str, str, str], tuple[float | None, float | None]] = field(
        default_factory=dict
    )
    levels: dict[tuple[str, str, str], tuple[float, float]] = field(default_factory=dict)  # (t, c)

    def get(
        self, scope: str, stratum: str, metric: str
    ) -> tuple[float | None, float | None] | None:
        if self.null:
            return (0.0, 0.0)
        return self.known.get((scope, stratum, metric))


_Z = np.linspace(-8.5, 8.5, 8501)
_PHI = np.exp(-0.5 * _Z * _Z) / math.sqrt(2 * math.pi)
_CDF = np.array([NormalDist().cdf(z) for z in _Z])


def _edge_values(traffic: Traffic, route: Route, treated: bool) -> np.ndarray:
    """A route's edge latency at each point of the standard-normal grid _Z (monotone)."""
    ms = np.exp(math.log(route.median_ms) + _total_sigma(traffic, route) * _Z)
    return treated_latency(traffic, route, ms) if treated else ms


def _mixture(traffic: Traffic, weights: np.ndarray, treated: bool) -> dict[str, float]:
    """Error rate, mean and quantiles of the edge request over the route mix `weights`."""
    routes = _route_table(traffic)
    effect = traffic.effect
    values = [_edge_values(traffic, r, treated) for r in routes]
    rates = [
        r.error_rate + (effect.error_pp / 100 if treated and effect.applies(r) else 0.0)
        for r in routes
    ]
    mean = sum(w * np.trapezoid(v * _PHI, _Z) for w, v in zip(weights, values, strict=True))
    out = {"error_rate": float(np.dot(weights, rates)), "mean_latency": float(mean)}
    present = np.flatnonzero(weights)
    if len(present) == 1:  # one route: its exact log-normal quantiles, through the effect
        r = routes[present[0]]
        z = np.array([NormalDist().inv_cdf(p) for p in QUANTILES])
        q = np.exp(math.log(r.median_ms) + _total_sigma(traffic, r) * z)
        q = treated_latency(traffic, r, q) if treated else q
        return out | dict(zip(LATENCY_METRICS[1:], map(float, q), strict=True))
    # A mixture: its distribution function on a fine log grid, inverted.
    grid = np.linspace(min(np.log(v[0]) for v in values), max(np.log(v[-1]) for v in values), 40001)
    cdf = sum(w * np.interp(grid, np.log(v), _CDF) for w, v in zip(weights, values, strict=True))
    for p, name in zip(QUANTILES, LATENCY_METRICS[1:], strict=True):
        out[name] = float(np.exp(np.interp(p, cdf, grid)))
    return out


def _pair(t: float, c: float) -> tuple[float, float | None]:
    return t - c, (t - c) / c if c else None


def truth(traffic: Traffic) -> Truth:
    """The model's true treatment − baseline differences (see the module doc)."""
    effect = traffic.effect
    if effect.null:
        return Truth(null=True)
    routes = _route_table(traffic)
    base = np.array([r.share for r in traffic.routes]) / sum(r.share for r in traffic.routes)
    w_c = np.append(base, 0.0) if len(routes) > len(traffic.routes) else base
    w_t = w_c * (1 - effect.new_route_share)
    if len(routes) > len(traffic.routes):
        w_t[-1] = effect.new_route_share
    known: dict[tuple[str, str, str], tuple[float | None, float | None]] = {}
    levels: dict[tuple[str, str, str], tuple[float, float]] = {}
    t, c = _mixture(traffic, w_t, True), _mixture(traffic, w_c, False)
    for metric in ("error_rate", *LATENCY_METRICS):
        levels["overall", "", metric] = (t[metric], c[metric])
        known["overall", "", metric] = _pair(t[metric], c[metric])
        if effect.new_route_share == 0 and metric in ("error_rate", "mean_latency"):
            known["adjusted", "", metric] = known["overall", "", metric]  # the mix is unchanged
    for route in traffic.routes:
        one = np.zeros(len(routes))
        one[routes.index(route)] = 1.0
        rt, rc = _mixture(traffic, one, True), _mixture(traffic, one, False)
        for metric in ("error_rate", *LATENCY_METRICS):
            levels["route", f"{EDGE} {route.label}", metric] = (rt[metric], rc[metric])
            known["route", f"{EDGE} {route.label}", metric] = _pair(rt[metric], rc[metric])
        depth = len(route.servers)
        for hop, (service, method, path) in enumerate(route.servers[1:], start=1):
            share = (depth - hop) / depth  # failures that start at or below this hop
            key = ("route", f"{service} {method} {path}")
            known[(*key, "error_rate")] = _pair(rt["error_rate"] * share, rc["error_rate"] * share)
            # Downstream latencies are known only relative, when the whole trace is scaled.
            scale = effect.latency_factor - 1.0 if effect.applies(route) else 0.0
            if effect.tail_factor == 1.0 or not effect.applies(route):
                for metric in LATENCY_METRICS:
                    known[(*key, metric)] = (0.0 if scale == 0.0 else None, scale)
    return Truth(null=False, known=known, levels=levels)


# -- one replicate through the pipeline ------------------------------------------------------
class Interval(NamedTuple):
    scope: str  # "overall", "adjusted" or "route"
    stratum: str  # "" or "<service> <route>"
    metric: str
    diff: float
    lo: float
    hi: float
    rel: float
    rel_lo: float
    rel_hi: float
    has_interval: bool
    has_relative: bool
    verdict: str
    method: str


@dataclass(frozen=True)
class Look:
    hours: float
    sequential: bool
    verdict: str
    reason: str
    users: tuple[int, int]  # treatment, baseline
    requests: tuple[int, int]
    errors: tuple[int, int]
    excluded: dict[str, int]
    intervals: tuple[Interval, ...]
    seconds: float


@dataclass(frozen=True)
class Replicate:
    rep: int
    rows: int
    traces: int
    users: int
    build_seconds: float  # generate + write the lake
    looks: tuple[Look, ...]

    def look(self, sequential: bool) -> Look:
        """The last look of that mode (the fixed horizon)."""
        return [x for x in self.looks if x.sequential == sequential][-1]


def _intervals(result: DiffResult) -> tuple[Interval, ...]:
    scoped = [("overall", "", m) for m in result.metrics]
    scoped += [("adjusted", "", m) for m in result.adjusted]
    scoped += [("route", f"{s.service} {s.route}", m) for s in result.breakdown for m in s.metrics]
    out = []
    for scope, stratum, m in scoped:
        e = m.estimate
        out.append(
            Interval(
                scope, stratum, m.metric, e.diff, e.diff_lo, e.diff_hi, e.rel, e.rel_lo,
                e.rel_hi, e.has_interval, e.has_relative, m.judgement.verdict.value,
                e.method.value,
            )
        )  # fmt: skip
    return tuple(out)


def options(traffic: Traffic, hours: float, sequential: bool) -> DiffOptions:
    """What a rollout script would ask: the window so far, the split it configured."""
    split = {TREATMENT: traffic.exposure, BASELINE: 1 - traffic.exposure}
    return DiffOptions(
        FLAG,
        START,
        START + timedelta(hours=hours),
        variant=TREATMENT,
        baseline=BASELINE,
        sequential=sequential,
        expected_split=split,
    )


LookPlan = Sequence[tuple[float, bool]]  # (hours since START, sequential), in order


def fixed_horizon(traffic: Traffic) -> LookPlan:
    """One look at the whole window, fixed-horizon intervals."""
    return ((traffic.hours, False),)


def every(hours: float, traffic: Traffic, sequential: bool = True) -> LookPlan:
    """A look every `hours` over the window (windows growing from START)."""
    count = int(traffic.hours // hours)
    return tuple((hours * (k + 1), sequential) for k in range(count))


def run_replicate(
    traffic: Traffic, seed: int, rep: int, plan: LookPlan | None = None, workdir: Path | None = None
) -> Replicate:
    """Replicate `rep` of `seed`: generate, write a lake (under `workdir`), `run_diff` at
    each look of `plan` (default `fixed_horizon`), delete the lake."""
    began = time.perf_counter()
    generated = generate(traffic, np.random.default_rng([seed, rep]))
    records = []
    with tempfile.TemporaryDirectory(prefix="prodsim-", dir=workdir) as tmp:
        lake = Path(tmp)
        write_table(lake, generated.table, "sim-000000000001-000")
        built = time.perf_counter() - began
        for hours, sequential in plan or fixed_horizon(traffic):
            t0 = time.perf_counter()
            result = run_diff(lake, options(traffic, hours, sequential))
            t, b = result.treatment, result.baseline
            records.append(
                Look(
                    hours, sequential, result.verdict.value, result.reason,
                    (t.users, b.users), (t.requests, b.requests), (t.errors, b.errors),
                    dict(result.excluded), _intervals(result), time.perf_counter() - t0,
                )
            )  # fmt: skip
    edge = generated.edge
    return Replicate(
        rep, generated.table.num_rows, len(edge["user"]), generated.users, built, tuple(records)
    )


def _task(args: tuple[Any, ...]) -> Replicate:
    return run_replicate(*args)


def simulate(
    traffic: Traffic,
    reps: int,
    seed: int,
    plan: LookPlan | None = None,
    pool: Executor | None = None,
    workdir: Path | None = None,
) -> list[Replicate]:
    """`reps` replicates, in `pool`'s processes if given (reproducible either way:
    replicate r's randomness is (seed, r))."""
    tasks = [(traffic, seed, r, plan, workdir) for r in range(reps)]
    if pool is None:
        return [_task(t) for t in tasks]
    return list(pool.map(_task, tasks))


def worker_pool(workers: int | None = None) -> ProcessPoolExecutor:
    """Worker processes for `simulate` (spawned: DuckDB's threads do not survive a fork);
    by default one per core, at most two (what the suite is sized for)."""
    count = workers or max(1, min(2, os.cpu_count() or 1))
    return ProcessPoolExecutor(count, mp_context=get_context("spawn"), initializer=_one_thread)


def _one_thread() -> None:
    """Each worker's diffs on one DuckDB thread: the workers are the parallelism, and on
    these small lakes a replicate (its lake and its diff) took ~10 % more CPU on two."""
    os.environ[THREADS_ENV] = "1"


# -- measurements ------------------------------------------------------------------------
def binomial(count: int, n: int) -> dict[str, float]:
    """A rate with its Monte-Carlo standard error sqrt(p (1 - p) / n)."""
    p = count / n if n else math.nan
    return {"rate": p, "se": math.sqrt(p * (1 - p) / n) if n else math.nan, "count": count, "n": n}


def binomial_quantile(q: float, n: int, p: float) -> int:
    """The smallest k with P(Binomial(n, p) ≤ k) ≥ q (exact, by summing the pmf)."""
    total = 0.0
    for k in range(n + 1):
        total += math.exp(
            math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + (k * math.log(p) if k else 0.0) + ((n - k) * math.log1p(-p) if n - k else 0.0)
        )  # fmt: skip
        if total >= q:
            return k
    return n


def max_false_alarm_rate(reps: int, alpha: float = 0.05, level: float = 0.999) -> float:
    """The highest rate a method with false-alarm probability alpha reaches by chance in
    `reps` replicates, at one-sided `level`."""
    return binomial_quantile(level, reps, alpha) / reps


def coverage_band(reps: int, nominal: float = 0.95, level: float = 0.999) -> tuple[float, float]:
    """The central `level` range of Binomial(reps, nominal) / reps."""
    tail = (1 - level) / 2
    lo, hi = (binomial_quantile(q, reps, nominal) for q in (tail, 1 - tail))
    return lo / reps, hi / reps


def _sources(looks: Iterable[Look]) -> dict[str, int]:
    """Which decisive metrics fired (adjusted ones and per-route breakdown rows)."""
    counts: Counter[str] = Counter()
    for look in looks:
        for i in look.intervals:
            if i.scope in ("adjusted", "route") and i.verdict in DECISIVE:
                counts[f"{i.scope} {i.stratum} {i.metric} {i.verdict}".replace("  ", " ")] += 1
    return dict(counts.most_common())


def false_alarms(replicates: Sequence[Replicate], sequential: bool = False) -> dict[str, Any]:
    """A/A at the fixed horizon (each replicate's last look of that mode): P(REGRESSION or
    IMPROVEMENT), P(REGRESSION), the verdicts seen, and what fired."""
    looks = [r.look(sequential) for r in replicates]
    n = len(looks)
    alarms = [x for x in looks if x.verdict in DECISIVE]
    return {
        "decisive": binomial(len(alarms), n),
        "regression": binomial(sum(x.verdict == "REGRESSION" for x in looks), n),
        "unhealthy": binomial(sum(x.verdict == "UNHEALTHY" for x in looks), n),
        "bound": max_false_alarm_rate(n),
        "verdicts": dict(Counter(x.verdict for x in looks).most_common()),
        "sources": _sources(alarms),
        "unhealthy_checks": dict(
            Counter(x.reason.split(":")[0] for x in looks if x.verdict == "UNHEALTHY")
        ),
    }


def any_look_false_alarms(
    replicates: Sequence[Replicate], sequential: bool = True
) -> dict[str, Any]:
    """A/A over repeated looks: a replicate is a false alarm if any look is decisive;
    `by_look` is the cumulative rate after each look."""
    per_rep = [[x for x in r.looks if x.sequential == sequential] for r in replicates]
    n = len(per_rep)
    hours = [x.hours for x in per_rep[0]]
    first = [next((k for k, x in enumerate(ls) if x.verdict in DECISIVE), None) for ls in per_rep]
    regression = [any(x.verdict == "REGRESSION" for x in ls) for ls in per_rep]
    return {
        "decisive": binomial(sum(f is not None for f in first), n),
        "regression": binomial(sum(regression), n),
        "bound": max_false_alarm_rate(n),
        "by_look": {
            h: sum(f is not None and f <= k for f in first) / n for k, h in enumerate(hours)
        },
        "sources": _sources(ls[f] for ls, f in zip(per_rep, first, strict=True) if f is not None),
    }


def _covers(i: Interval, true: tuple[float | None, float | None], scale: str) -> bool | None:
    """Whether the interval on `scale` ("diff" or "rel") holds the truth; None if it cannot
    be read or the truth on that scale is unknown."""
    value = true[0] if scale == "diff" else true[1]
    if value is None or not i.has_interval or (scale == "rel" and not i.has_relative):
        return None
    lo, hi = (i.lo, i.hi) if scale == "diff" else (i.rel_lo, i.rel_hi)
    return lo <= value <= hi


def verdict_scale(metric: str) -> str:
    """The scale a metric's verdict reads (verdict.harm_scale): pp for error rate, % else."""
    return "diff" if metric == "error_rate" else "rel"


def coverage(
    replicates: Sequence[Replicate],
    true: Truth,
    sequential: bool = False,
    scale: str | None = None,
) -> dict[str, Any]:
    """Share of intervals holding the true difference, on `scale` ("diff" or "rel"; by
    default the one the verdict reads: pp for error rate, percent for latency).
    `pooled`: per (scope, metric), breakdown rows of every stratum together (its Monte-Carlo
    SE is clustered by replicate); `strata`: per breakdown row; `missing`: intervals that
    could not be read (no interval, or no relative one) — left out of the rates."""
    pooled: dict[str, list[tuple[int, int]]] = {}
    strata: dict[str, list[int]] = {}
    missing: Counter[str] = Counter()
    for r in replicates:
        per: dict[str, list[int]] = {}
        for i in r.look(sequential).intervals:
            value = true.get(i.scope, i.stratum, i.metric)
            if value is None:
                continue
            hit = _covers(i, value, scale or verdict_scale(i.metric))
            key = f"{i.scope} {i.metric}"
            if hit is None:
                missing[key] += 1
                continue
            per.setdefault(key, [0, 0])
            per[key][0] += hit
            per[key][1] += 1
            if i.scope == "route":
                strata.setdefault(f"{i.stratum} {i.metric}", []).append(hit)
        for key, (k, n) in per.items():
            pooled.setdefault(key, []).append((k, n))
    return {
        "pooled": {key: _clustered(v) for key, v in sorted(pooled.items())},
        "strata": {key: binomial(sum(v), len(v)) for key, v in sorted(strata.items())},
        "missing": dict(missing),
        "band": coverage_band(len(replicates)),
    }


def _clustered(per_rep: Sequence[tuple[int, int]]) -> dict[str, float]:
    """Pooled covered / total with a ratio (delta-method) SE over replicates, since the
    strata of one replicate are correlated."""
    k = np.array([a for a, _ in per_rep], float)
    n = np.array([b for _, b in per_rep], float)
    rate = k.sum() / n.sum()
    reps = len(per_rep)
    se = (
        math.sqrt(((k - rate * n) ** 2).sum() / (reps * (reps - 1))) / n.mean()
        if reps > 1
        else math.nan
    )
    return {"rate": float(rate), "se": se, "count": int(k.sum()), "n": int(n.sum()), "reps": reps}


def power(replicates: Sequence[Replicate], sequential: bool = False) -> dict[str, Any]:
    """P(REGRESSION) at the last look, and over repeated looks when there are several: the
    cumulative detection rate after each look and the first look that fires."""
    per_rep = [[x for x in r.looks if x.sequential == sequential] for r in replicates]
    n = len(per_rep)
    hours = [x.hours for x in per_rep[0]]
    first = [next((x.hours for x in ls if x.verdict == "REGRESSION"), None) for ls in per_rep]
    fired = sorted(h for h in first if h is not None)
    final = [ls[-1] for ls in per_rep]
    return {
        "final": binomial(sum(x.verdict == "REGRESSION" for x in final), n),
        "any_look": binomial(len(fired), n),
        "first_look_median_hours": float(np.median(fired)) if fired else None,
        "first_look_mean_hours": float(np.mean(fired)) if fired else None,
        "by_look": {h: sum(f is not None and f <= h for f in first) / n for h in hours},
        "verdicts": dict(Counter(x.verdict for x in final).most_common()),
        "sources": _sources(x for x in final if x.verdict == "REGRESSION"),
    }


def timing(replicates: Sequence[Replicate]) -> dict[str, float]:
    """Mean seconds per replicate to build its lake and per `run_diff`, and its size."""
    diffs = [x.seconds for r in replicates for x in r.looks]
    return {
        "build_s": float(np.mean([r.build_seconds for r in replicates])),
        "diff_s": float(np.mean(diffs)),
        "rows": float(np.mean([r.rows for r in replicates])),
        "traces": float(np.mean([r.traces for r in replicates])),
    }
