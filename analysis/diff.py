"""`flagscope diff`: a flag's treatment cohort against its baseline, as a result object.

The flow: pick the variants → label requests by trace, exclude test traffic
(`cohorts`, in DuckDB) → per-cohort sufficient statistics → estimates (`stats`, pure) →
verdicts (`verdict`) → a `result.DiffResult`, which renderers format and whose
`to_dict()` is the documented JSON; `summary` words its one sentence.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from flagscope.analysis.cohorts import (
    QUANTILES,
    CohortQuery,
    CohortSums,
    Evaluations,
    LabelledRequests,
    UnitSums,
)
from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.result import (
    Charts,
    CohortSummary,
    DiffOptions,
    DiffResult,
    HealthCheck,
    MetricResult,
    StratumResult,
)
from flagscope.analysis.stats import (
    Estimate,
    Method,
    SrmResult,
    Status,
    benjamini_hochberg,
    bounded_by_data,
    error_rate_difference,
    pooled_rank_halfwidths,
    quantile_difference,
    quantile_rank_interval,
    ratio_difference,
    sequential_estimate,
    sequential_srm_test,
    sequential_stretch,
    srm_test,
)
from flagscope.analysis.stats.estimate import critical_value, degenerate
from flagscope.analysis.stats.mix import (
    post_stratified_difference,
    post_stratified_rate_difference,
)
from flagscope.analysis.stats.multiple import weighted_benjamini_hochberg
from flagscope.analysis.summary import summarize
from flagscope.analysis.verdict import Verdict, judge, metric_words, overall_verdict
from flagscope.collector.lake.read import run

TRUE_LIKE = ("on", "true", "enabled", "treatment", "yes", "variant", "new")
FALSE_LIKE = ("off", "false", "disabled", "control", "no", "baseline", "old", "default")
QUANTILE_METRICS = tuple(f"p{round(p * 100)}_latency" for p in QUANTILES)
METRICS = ("error_rate", "mean_latency", *QUANTILE_METRICS)
BREAKDOWN_METRICS = ("error_rate", "p95_latency")


# -- variants ----------------------------------------------------------------------------
def known_flags(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute(
        "SELECT DISTINCT unnest(map_keys(flags)) FROM events_raw WHERE cardinality(flags) > 0"
    ).fetchall()
    return sorted(r[0] for r in rows)


def lake_variants(con: duckdb.DuckDBPyConnection, flag: str) -> set[str]:
    """Every variant of `flag` anywhere in the lake."""
    rows = con.execute(
        "SELECT DISTINCT flags[$flag] FROM events_raw WHERE map_contains(flags, $flag)",
        {"flag": flag},
    ).fetchall()
    return {r[0] for r in rows if r[0] is not None}


_SERVICE = "coalesce(service_name, 'unknown_service')"  # as cohorts.py names a request's


def check_scope(con: duckdb.DuckDBPyConnection, service: str | None, route: str | None) -> None:
    """A --service or --route that no entry span in the lake has is a usage error that
    lists the known ones, not NO_DATA (a typo would otherwise read as "no traffic"). A
    LIMIT 1 probe each; the known ones are listed only when the probe finds nothing."""
    if service is not None:
        probe = f"SELECT 1 FROM events_raw WHERE is_entry AND {_SERVICE} = $service LIMIT 1"
        if not con.execute(probe, {"service": service}).fetchall():
            services = con.execute(
                f"SELECT DISTINCT {_SERVICE} FROM events_raw WHERE is_entry ORDER BY 1 LIMIT 21"
            ).fetchall()
            listed = _known([r[0] for r in services])
            raise AnalysisError(f"--service {service!r} is not in the lake; {listed}")
    if route is not None:
        where = "is_entry" + ("" if service is None else f" AND {_SERVICE} = $service")
        params = {"route": route} | ({} if service is None else {"service": service})
        path = "coalesce(http_route, name)"
        full = f"trim(coalesce(http_method, '') || ' ' || {path})"
        probe = f"SELECT 1 FROM events_raw WHERE {where} AND ({path} = $route OR {full} = $route) LIMIT 1"
        if not con.execute(probe, params).fetchall():
            routes = con.execute(
                f"SELECT DISTINCT {full} FROM events_raw WHERE {where} ORDER BY 1 LIMIT 21",
                {k: v for k, v in params.items() if k != "route"},
            ).fetchall()
            within = "" if service is None else f" of service {service!r}"
            listed = _known([r[0] for r in routes])
            raise AnalysisError(f"--route {route!r} is not in the lake{within}; {listed}")


def _known(names: list[str], most: int = 20) -> str:
    """The first `most` names (the query asked for one more, to know there are more)."""
    shown = ", ".join(repr(n) for n in names[:most])
    more = " and more" if len(names) > most else ""
    return f"known: {shown}{more}" if names else "the lake holds no entry spans"


def lake_range(con: duckdb.DuckDBPyConnection) -> tuple[datetime | None, datetime | None]:
    first, last = con.execute("SELECT min(time), max(time) FROM events_raw").fetchall()[0]
    return first, last


def choose_variants(
    flag: str, available: dict[str, int], variant: str | None, baseline: str | None
) -> tuple[str, str]:
    """Treatment and baseline: as asked, else the true-like and the other of two variants."""
    names = list(available)
    for chosen, option in ((variant, "--variant"), (baseline, "--baseline")):
        if chosen is not None and chosen not in available:
            raise AnalysisError(
                f"flag {flag!r} has no variant {chosen!r} in the window; variants seen: "
                f"{', '.join(names)} (choose with {option})"
            )
    if variant and baseline:
        if variant == baseline:
            raise AnalysisError("--variant and --baseline must differ")
        return variant, baseline
    lowered = {n.lower(): n for n in names}

    def pick(likes: tuple[str, ...], taken: str | None) -> str | None:
        found = [lowered[x] for x in likes if x in lowered and lowered[x] != taken]
        if found:
            return found[0]
        others = [n for n in names if n != taken]
        return others[0] if taken is not None and len(others) == 1 else None

    if variant is None and baseline is None:
        variant, baseline = pick(TRUE_LIKE, None), pick(FALSE_LIKE, None)
        if variant is None and baseline is not None:
            variant = pick((), baseline)
        elif baseline is None and variant is not None:
            baseline = pick((), variant)
    elif variant is None:
        variant = pick(TRUE_LIKE, baseline)
    elif baseline is None:
        baseline = pick(FALSE_LIKE, variant)
    if variant is None or baseline is None:
        raise AnalysisError(
            f"flag {flag!r} has variants {', '.join(names)}: choose the treatment with "
            "--variant and the baseline with --baseline"
        )
    return variant, baseline


# -- statistics from the per-user sums ------------------------------------------------
def _interpolate(grid: dict[float, float], p: float) -> float:
    points = sorted(grid)
    p = min(max(p, points[0]), points[-1])
    for lo, hi in itertools.pairwise(points):
        if lo <= p <= hi:
            if hi == lo:
                return grid[lo]
            return grid[lo] + (grid[hi] - grid[lo]) * (p - lo) / (hi - lo)
    return grid[points[-1]]


def _summary(sums: CohortSums, variant: str) -> CohortSummary:
    grid = sums.grid
    req = sums.requests
    errors, latency = sums.errors.sum_x, sums.latency.sum_x
    return CohortSummary(
        variant=variant,
        users=sums.users,
        requests=req,
        errors=round(errors),
        error_rate=errors / req if req else 0.0,
        mean_ms=latency / req if req else 0.0,
        quantiles_ms={f"p{round(p * 100)}": grid[round(p, 6)] for p in QUANTILES},
    )


def _quantile_interval(
    sums: CohortSums, k: int, alpha: float, half: float
) -> tuple[float, float, float]:
    p = QUANTILES[k]
    p_lo, p_hi = quantile_rank_interval(p, sums.below_quantile[k], alpha, half)
    grid = sums.grid
    # Deng, Knoblich & Lu 2018 §4: the interval's ends are the empirical quantiles at the
    # rank interval's ends (read from the grid pass 1 computed, by linear interpolation).
    return grid[round(p, 6)], _interpolate(grid, p_lo), _interpolate(grid, p_hi)


def estimates(
    t: CohortSums,
    c: CohortSums,
    alpha: float,
    metrics: tuple[str, ...] = METRICS,
    stretch: Callable[[Estimate], float] = lambda _: 1.0,
) -> dict[str, Estimate]:
    """The plain estimates; a quantile whose rank interval, widened by `stretch(estimate)`
    (the always-valid widening of that estimate in sequential mode), leaves (0, 1) in a
    cohort is TOO_FEW_IN_TAIL: the data do not bound it there."""
    out: dict[str, Estimate] = {}
    if "error_rate" in metrics:
        out["error_rate"] = error_rate_difference(t.errors, c.errors, alpha)
    if "mean_latency" in metrics:
        out["mean_latency"] = ratio_difference(t.latency, c.latency, alpha, floor=True)
    for k, name in enumerate(QUANTILE_METRICS):
        if name not in metrics:
            continue
        p = QUANTILES[k]
        halves = pooled_rank_halfwidths(p, t.below_quantile[k], c.below_quantile[k], alpha)
        t_est, t_lo, t_hi = _quantile_interval(t, k, alpha, halves[0])
        c_est, c_lo, c_hi = _quantile_interval(c, k, alpha, halves[1])
        estimate = quantile_difference(
            p, t_est, t_lo, t_hi, c_est, c_lo, c_hi, alpha, t.users, c.users
        )
        reach = stretch(estimate) if estimate.has_interval else 1.0
        if estimate.has_interval and not all(bounded_by_data(p, h, reach) for h in halves):
            estimate = degenerate(Status.TOO_FEW_IN_TAIL, alpha, Method.QUANTILE, c_est, t_est)
        out[name] = estimate
    return out


def mix_adjusted(sums: UnitSums, alpha: float) -> dict[str, Estimate]:
    """Error rate and mean latency over edge requests, re-weighted to the pooled mix of
    edge (service, route) strata, with user-level (linearised) variances (`stats.mix`);
    the error rate falls back to Newcombe on effective counts when errors are rare."""
    out: dict[str, Estimate] = {}
    t_rows, c_rows = sums.overall["treatment"], sums.overall["baseline"]
    for metric in ("error_rate", "mean_latency"):
        moments = sums.adjusted.get(metric, {})
        t, c = moments.get("treatment"), moments.get("baseline")
        if t is None or c is None:
            out[metric] = degenerate(Status.NO_DATA, alpha, Method.DELTA)
        elif min(t.units, c.units) < 2:
            out[metric] = degenerate(Status.TOO_FEW_USERS, alpha, Method.DELTA)
        elif metric == "error_rate":
            out[metric] = post_stratified_rate_difference(
                (t.estimate, t.variance),
                (c.estimate, c.variance),
                t_rows.errors,
                c_rows.errors,
                alpha,
                (t.stratified, c.stratified),
                (t.units, c.units),
            )
        else:
            out[metric] = post_stratified_difference(
                (t.estimate, t.variance),
                (c.estimate, c.variance),
                alpha,
                (t.units, c.units),
                floor=True,
            )
    return out


def _stretch(options: DiffOptions, users: int) -> Callable[[Estimate], float]:
    """How much wider than an estimate's fixed-horizon interval its reported one is after
    `users`: 1 at a fixed horizon; in sequential mode the factor `sequential_estimate`
    applies, with the estimate's own critical value (t with its df, else z)."""
    if not options.sequential:
        return lambda _: 1.0
    return lambda e: sequential_stretch(
        users,
        options.alpha,
        options.expected_users,
        critical_value(e.alpha, e.df),
        options.one_sided,
    )


def _final(estimates: dict[str, Estimate], users: int, options: DiffOptions) -> dict[str, Estimate]:
    """The estimates as reported: always-valid ones in sequential mode (so that p-values,
    and the multiple-testing correction on them, are the sequential ones too)."""
    if not options.sequential:
        return estimates
    return {
        m: sequential_estimate(
            e, users, options.alpha, options.expected_users, one_sided=options.one_sided
        )
        for m, e in estimates.items()
    }


# Share of the false-alarm budget the route-mix adjusted overall tests get in the one
# weighted Benjamini–Hochberg family of decisive tests; the routes share the rest.
OVERALL_WEIGHT = 0.5


def decisive_q_values(overall: list[float], routes: list[float]) -> tuple[list[float], list[float]]:
    """q-values of the tests that can decide the verdict, as one weighted BH family:
    the overall tests together carry OVERALL_WEIGHT of the weight, the routes the rest."""
    m = len(overall) + len(routes)
    if not routes:
        return benjamini_hochberg(overall), []
    w_overall = OVERALL_WEIGHT * m / len(overall)
    w_route = (1 - OVERALL_WEIGHT) * m / len(routes)
    q = weighted_benjamini_hochberg(
        overall + routes, [w_overall] * len(overall) + [w_route] * len(routes)
    )
    return q[: len(overall)], q[len(overall) :]


# -- the diff ------------------------------------------------------------------------------
def run_diff(
    lake_dir: Path, options: DiffOptions, charts: bool = False, summaries: Path | None = None
) -> DiffResult:
    """Compare the cohorts; `charts` adds the time series and histogram the HTML report draws.
    `summaries`: a directory of kept per-hour summaries (`incremental`, scheduled reports),
    reused where the lake has not changed and added to. A run that raced compaction (a
    file merged away mid-read) starts again (lake.read.run)."""
    if options.engine == "spark":  # the same diff, its cohort stage in Spark SQL
        from flagscope.analysis import spark

        return spark.run(
            lake_dir, lambda session: diff_with(session, options, spark.SparkStage, charts)
        )
    stage: Any = DuckDBStage
    # a CUPED look-back reads each user's past in the lake: no summary holds it
    if summaries is not None and options.pre_exposure is None:
        from flagscope.analysis.incremental.stage import IncrementalStage
        from flagscope.analysis.incremental.store import Store

        stage = IncrementalStage(Store(summaries), lake_dir, DuckDBStage)

    def diff(con: duckdb.DuckDBPyConnection) -> DiffResult:
        # Every query a diff reads rows of in order has an ORDER BY; the temporary tables
        # need none. Not keeping it: 2.67-2.70 s against 2.76-2.94 s at 10 M events, 28.0
        # against 28.8-29.3 s at 100 M (bench/RESULTS.md).
        con.execute("SET preserve_insertion_order = false")
        return diff_with(con, options, stage, charts)

    return run(lake_dir, diff)


def diff_with(con: Any, options: DiffOptions, stage: Any, charts: bool = False) -> DiffResult:
    """The diff on `stage`'s connection (`run_diff`; tests and benchmarks that read the
    stage afterwards, e.g. `incremental.IncrementalStage.counts`)."""
    requests, result = _run(con, options, stage)
    if charts and result.compared and requests is not None:
        result = replace(result, charts=_charts(requests, result.options))
    return result


class DuckDBStage:
    """What a diff asks of its engine (`cohorts` and the lake-wide questions above), each
    taking the connection first; `spark.SparkStage` answers the same in Spark."""

    collect = staticmethod(Evaluations.collect)
    known_flags = staticmethod(known_flags)
    lake_range = staticmethod(lake_range)
    lake_variants = staticmethod(lake_variants)
    check_scope = staticmethod(check_scope)


def _charts(requests: LabelledRequests, options: DiffOptions) -> Charts:
    span = (options.end - options.start).total_seconds()
    steps = (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
    finest = getattr(requests, "finest_bucket_s", 0)  # kept summaries are per hour
    bucket = next((s for s in steps if span / s <= 48 and s >= finest), 86400)  # ≤ ~48 points
    edges, counts = requests.latency_histogram()
    return Charts(
        bucket,
        tuple(requests.time_series(bucket)),
        tuple(edges),
        {k: tuple(v) for k, v in counts.items()},
    )


def _no_data(
    options: DiffOptions,
    reason: str,
    rows: dict[str, CohortSums] | None = None,
    excluded: dict[str, int] | None = None,
) -> DiffResult:
    """A NO_DATA result; a cohort that has data is still summarized."""
    rows = rows or {}

    def summary(cohort: str, variant: str | None) -> CohortSummary:
        if cohort in rows:
            return _summary(rows[cohort], variant or "")
        return CohortSummary(variant or "", 0, 0, 0, 0.0, 0.0, {})

    return DiffResult(
        options,
        summary("treatment", options.variant),
        summary("baseline", options.baseline),
        (),
        (),
        (),
        (),
        excluded or {},
        None,
        Verdict.NO_DATA,
        reason,
        f"{options.flag}: no data — {reason}",
    )


def _run(
    con: Any, options: DiffOptions, stage: Any = DuckDBStage
) -> tuple[LabelledRequests | None, DiffResult]:
    """The labelled requests (for the charts; None without evaluations) and the result;
    `con` is the `stage`'s: a DuckDB connection, or a Spark session (`spark.SparkStage`)."""
    evaluations = stage.collect(
        con, options.flag, options.start, options.end, options.evaluations_from
    )
    available = evaluations.variants
    if not available:
        flags = stage.known_flags(con)
        if options.flag not in flags:
            close = difflib.get_close_matches(options.flag, flags, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise AnalysisError(
                f"flag {options.flag!r} is not in the lake; {hint}"
                "run 'flagscope flags' to list flags"
            )
        first, last = stage.lake_range(con)
        return None, _no_data(
            options,
            f"flag {options.flag!r} has no evaluations between "
            f"{options.start:%Y-%m-%d %H:%M} and {options.end:%Y-%m-%d %H:%M} UTC; "
            f"the lake holds {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC",
        )
    named = [v for v in (options.variant, options.baseline) if v is not None]
    absent = [v for v in named if v not in available]
    if len(available) < 2 or absent:
        # A first look after a rollout starts may see one variant only: no data yet, not a
        # usage error — unless a named variant was never seen at all (a typo).
        seen = stage.lake_variants(con, options.flag)
        if all(v in seen for v in absent):
            only = ", ".join(repr(v) for v in available)
            still = (
                f"none of {', '.join(repr(v) for v in absent)} yet"
                if absent
                else "no second variant to compare with yet"
            )
            return None, _no_data(
                options,
                f"flag {options.flag!r} has evaluations of only {only} between "
                f"{options.start:%Y-%m-%d %H:%M} and {options.end:%Y-%m-%d %H:%M} UTC; {still}",
            )
    variant, baseline = choose_variants(options.flag, available, options.variant, options.baseline)
    options = replace(options, variant=variant, baseline=baseline)
    query = CohortQuery(
        options.flag,
        variant,
        baseline,
        options.start,
        options.end,
        options.service,
        options.route,
        options.test_mode,
        options.pre_exposure,
    )
    requests = evaluations.label(query)
    excluded = requests.excluded.as_dict()
    sums = requests.unit_sums()
    overall = sums.overall
    if set(overall) != {"treatment", "baseline"}:
        stage.check_scope(con, options.service, options.route)
        missing = [
            n for n, v in (("treatment", variant), ("baseline", baseline)) if n not in overall
        ]
        return requests, _no_data(
            options,
            f"no requests in the {' and '.join(missing)} cohort "
            "(requests are entry spans of traces that evaluated the flag)",
            overall,
            excluded,
        )
    t, c = overall["treatment"], overall["baseline"]
    treatment, base = _summary(t, variant), _summary(c, baseline)
    users = (treatment.users, base.users)
    errors = (t.errors.sum_x, c.errors.sum_x)
    limits = options.thresholds

    plain = _final(
        estimates(t, c, options.alpha, stretch=_stretch(options, sum(users))), sum(users), options
    )
    metrics = tuple(
        MetricResult(m, e, judge(m, e, limits, users, errors)) for m, e in plain.items()
    )
    mixed = _final(mix_adjusted(sums, options.alpha), sum(users), options)
    routes = _route_estimates(sums, options)
    q_overall, q_routes = decisive_q_values(
        [e.p_value for e in mixed.values()],
        [e.p_value for route in routes for e in route.estimates.values()],
    )
    adjusted = tuple(
        MetricResult(m, e, judge(m, e, limits, users, errors, q), q)
        for (m, e), q in zip(mixed.items(), q_overall, strict=True)
    )
    breakdown = _breakdown(routes, iter(q_routes), variant, baseline, options)
    health, srm = _health(options, treatment, base, excluded)
    words = metric_words  # the reasons are read by people: "p95 latency", not p95_latency
    adjusted_judged = [
        (f"overall {words(m.metric)}, adjusted for the route mix", m.judgement) for m in adjusted
    ]
    routes_judged = [
        (f"{s.route} ({s.service}), {words(m.metric)}", m.judgement, s)
        for s in breakdown
        for m in s.metrics
    ]
    decisive = adjusted_judged + [(name, j) for name, j, _ in routes_judged]
    # PASS claims harm is ruled out for what the users experienced: every overall metric
    # (a tail regression that moves no mean still hurts) and every route with enough
    # users in both cohorts to have an answer.
    ruled_out = adjusted_judged + [(f"overall {words(m.metric)}", m.judgement) for m in metrics]
    ruled_out += [
        (name, j)
        for name, j, s in routes_judged
        if min(s.treatment.users, s.baseline.users) >= limits.min_users
    ]
    verdict, reasons = overall_verdict(
        decisive,
        ruled_out,
        [(h.name, h.detail) for h in health if not h.ok and h.name != "sample_size"],
    )
    summary = summarize(options, treatment, base, adjusted, breakdown, verdict, excluded)
    cuped = None
    if options.pre_exposure is not None:
        cuped = {
            metric: {
                "theta": m["treatment"].theta,
                "variance_reduction": m["treatment"].variance_reduction,
            }
            for metric, m in sums.adjusted.items()
            if "treatment" in m
        }
    return requests, DiffResult(
        options,
        treatment,
        base,
        metrics,
        adjusted,
        breakdown,
        health,
        excluded,
        srm,
        verdict,
        "; ".join(reasons),
        summary,
        cuped=cuped,
        reasons=reasons,
    )


@dataclass(frozen=True)
class _RouteEstimates:
    service: str
    route: str
    treatment: CohortSums
    baseline: CohortSums
    only_in: str | None
    estimates: dict[str, Estimate]


def _route_estimates(sums: UnitSums, options: DiffOptions) -> list[_RouteEstimates]:
    """Per (service, route): error rate and p95 treatment against baseline. A route only
    one cohort called is compared with the other cohort's requests as a whole — a new
    code path behind a flag is where new routes appear, and dropping it would hide it."""
    by_key: dict[tuple[str, str], dict[str, CohortSums]] = {}
    for row in sums.strata:
        by_key.setdefault((row.service_name or "", row.route or ""), {})[row.cohort] = row
    out = []
    for (service, route), pair in sorted(by_key.items()):
        only_in = None if len(pair) == 2 else next(iter(pair))
        t = pair.get("treatment", sums.overall["treatment"])
        c = pair.get("baseline", sums.overall["baseline"])
        ests = estimates(
            t, c, options.alpha, BREAKDOWN_METRICS, _stretch(options, t.users + c.users)
        )
        out.append(
            _RouteEstimates(service, route, t, c, only_in, _final(ests, t.users + c.users, options))
        )
    return out


def _breakdown(
    routes: list[_RouteEstimates],
    q_values: Iterator[float],
    variant: str,
    baseline: str,
    options: DiffOptions,
) -> tuple[StratumResult, ...]:
    """Each route's estimates judged with its q-value from the decisive family."""
    strata = []
    for r in routes:
        users = (r.treatment.users, r.baseline.users)
        errors = (r.treatment.errors.sum_x, r.baseline.errors.sum_x)
        results = []
        for metric, est in r.estimates.items():
            q = next(q_values)
            judgement = judge(metric, est, options.thresholds, users, errors, q)
            results.append(MetricResult(metric, est, judgement, q))
        strata.append(
            StratumResult(
                r.service,
                r.route,
                _summary(r.treatment, variant),
                _summary(r.baseline, baseline),
                tuple(results),
                r.only_in,
            )
        )
    return tuple(strata)


def _health(
    options: DiffOptions, t: CohortSummary, c: CohortSummary, excluded: dict[str, int]
) -> tuple[tuple[HealthCheck, ...], SrmResult | None]:
    checks = []
    srm = None
    if options.expected_split:
        split = options.expected_split
        missing = [v for v in (t.variant, c.variant) if v not in split]
        if missing:
            raise AnalysisError(
                f"--expected-split names no share for {', '.join(missing)}; "
                f"e.g. --expected-split {t.variant}=0.2,{c.variant}=0.8"
            )
        # Looked at again and again (sequential mode: the guard, schedules), the split
        # needs the anytime-valid test, or repeated looks alone raise false alerts.
        test = sequential_srm_test if options.sequential else srm_test
        srm = test(
            {t.variant: t.users, c.variant: c.users},
            {t.variant: split[t.variant], c.variant: split[c.variant]},
        )
        kind = "anytime-valid p" if srm.sequential else "p"
        checks.append(
            HealthCheck(
                "sample_ratio",
                not srm.alert,
                f"users {t.variant}={t.users}, {c.variant}={c.users} against "
                f"{split[t.variant]:g}:{split[c.variant]:g}: χ² = {srm.chi2:.2f}, "
                f"{kind} = {srm.p_value:.3g} (alert below 0.001)",
            )
        )
    compared = t.users + c.users  # a crossover user counts once, in their first variant
    share = excluded.get("crossover_users", 0) / compared if compared else 0.0
    limit = options.thresholds.max_crossover_share
    checks.append(
        HealthCheck(
            "crossover_users",
            share <= limit,
            f"{excluded.get('crossover_users', 0)} users saw both variants "
            f"({share:.1%}; limit {limit:.0%}); their later-variant requests "
            f"({excluded.get('crossover_requests', 0)}) are left out",
        )
    )
    minimum = options.thresholds.min_users
    checks.append(
        HealthCheck(
            "sample_size",
            min(t.users, c.users) >= minimum,
            f"users {t.variant}={t.users}, {c.variant}={c.users} "
            f"(at least {minimum} per cohort for a verdict)",
        )
    )
    return tuple(checks), srm
