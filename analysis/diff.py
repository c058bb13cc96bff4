"""`flagscope diff`: a flag's treatment cohort against its baseline, as a result object.

The flow: pick the variants → label requests by trace, exclude test traffic
(analysis.cohorts, in DuckDB) → per-cohort sufficient statistics → estimates
(analysis.stats, pure) → verdicts (analysis.verdict) → DiffResult, which renderers format
and `to_dict()` turns into the documented JSON.
"""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from analysis import cohorts
from analysis.cohorts import QUANTILES, CohortQuery, TrafficFilter
from analysis.errors import AnalysisError
from analysis.stats import (
    Estimate,
    Method,
    RatioStats,
    SrmResult,
    benjamini_hochberg,
    error_rate_difference,
    quantile_difference,
    quantile_rank_interval,
    ratio_difference,
    sequential_estimate,
    srm_test,
)
from analysis.stats.estimate import normal_estimate
from analysis.verdict import (
    DEFAULT_ALPHA,
    EXIT_CODES,
    Judgement,
    Thresholds,
    Verdict,
    check_alpha,
    judge,
)
from analysis.window import naive_utc
from collector import lake

if TYPE_CHECKING:  # Polars costs ~75 ms to import; only the frame helpers need it
    import polars as pl

TRUE_LIKE = ("on", "true", "enabled", "treatment", "yes", "variant", "new")
FALSE_LIKE = ("off", "false", "disabled", "control", "no", "baseline", "old", "default")
QUANTILE_METRICS = tuple(f"p{round(p * 100)}_latency" for p in QUANTILES)
METRICS = ("error_rate", "mean_latency", *QUANTILE_METRICS)
BREAKDOWN_METRICS = ("error_rate", "p95_latency")


@dataclass(frozen=True)
class DiffOptions:
    flag: str
    start: datetime
    end: datetime
    variant: str | None = None
    baseline: str | None = None
    service: str | None = None
    route: str | None = None
    test_mode: TrafficFilter = TrafficFilter.EXCLUDE
    alpha: float = DEFAULT_ALPHA
    sequential: bool = False
    expected_split: dict[str, float] | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        # The lake's timestamps are naive UTC; an aware time is converted, not refused.
        for name in ("start", "end"):
            object.__setattr__(self, name, naive_utc(getattr(self, name)))
        check_alpha(self.alpha)


@dataclass(frozen=True)
class CohortSummary:
    variant: str
    users: int
    requests: int
    errors: int
    error_rate: float
    mean_ms: float
    quantiles_ms: dict[str, float]  # "p50" … "p99"


@dataclass(frozen=True)
class MetricResult:
    metric: str
    estimate: Estimate
    judgement: Judgement
    q_value: float | None = None  # Benjamini–Hochberg, for breakdown rows


@dataclass(frozen=True)
class StratumResult:
    service: str
    route: str
    treatment: CohortSummary
    baseline: CohortSummary
    metrics: tuple[MetricResult, ...]


@dataclass(frozen=True)
class HealthCheck:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Charts:
    """What the HTML report draws: per-cohort time series and a latency histogram."""

    bucket_seconds: int
    series: tuple[dict[str, Any], ...]  # cohort, bucket (datetime), requests, errors, p95_ms
    histogram_edges_ms: tuple[float, ...]  # log-spaced, len = bins + 1
    histogram: dict[str, tuple[int, ...]]  # cohort -> counts per bin


@dataclass(frozen=True)
class DiffResult:
    options: DiffOptions
    treatment: CohortSummary
    baseline: CohortSummary
    metrics: tuple[MetricResult, ...]
    adjusted: tuple[MetricResult, ...]  # overall, adjusted for the (service, route) mix
    breakdown: tuple[StratumResult, ...]
    health: tuple[HealthCheck, ...]
    excluded: dict[str, int]
    srm: SrmResult | None
    verdict: Verdict
    reason: str
    summary: str
    charts: Charts | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def compared(self) -> bool:
        """Both cohorts have requests (else there is nothing but the NO_DATA reason)."""
        return bool(self.treatment.requests and self.baseline.requests)

    def to_dict(self) -> dict[str, Any]:
        from analysis.report.json import result_to_dict

        return result_to_dict(self)

    def cohorts_frame(self) -> pl.DataFrame:
        import polars as pl

        rows = [_summary_row("treatment", self.treatment), _summary_row("baseline", self.baseline)]
        return pl.DataFrame(rows)

    def metrics_frame(self) -> pl.DataFrame:
        import polars as pl

        rows = [_metric_row(m, "overall") for m in self.metrics]
        rows += [_metric_row(m, "overall, route-mix adjusted") for m in self.adjusted]
        return pl.DataFrame(rows)

    def breakdown_frame(self) -> pl.DataFrame:
        import polars as pl

        rows = [{"service": s.service, "route": s.route, **_metric_row(m, "route")}
                for s in self.breakdown for m in s.metrics]
        return pl.DataFrame(rows) if rows else pl.DataFrame()


def _summary_row(cohort: str, s: CohortSummary) -> dict[str, Any]:
    return {"cohort": cohort, "variant": s.variant, "users": s.users, "requests": s.requests,
            "errors": s.errors, "error_rate": s.error_rate, "mean_ms": s.mean_ms,
            **{f"{k}_ms": v for k, v in s.quantiles_ms.items()}}


def _metric_row(m: MetricResult, scope: str) -> dict[str, Any]:
    e = m.estimate
    return {"scope": scope, "metric": m.metric, "baseline": e.control, "treatment": e.treatment,
            "diff": e.diff, "diff_lo": e.diff_lo, "diff_hi": e.diff_hi, "rel": e.rel,
            "rel_lo": e.rel_lo, "rel_hi": e.rel_hi, "p_value": e.p_value, "q_value": m.q_value,
            "method": e.method.value, "status": e.status.value,
            "verdict": m.judgement.verdict.value, "reason": m.judgement.reason}


# -- variants ----------------------------------------------------------------------------
def known_flags(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute(
        "SELECT DISTINCT unnest(map_keys(flags)) FROM events_raw WHERE cardinality(flags) > 0"
    ).fetchall()
    return sorted(r[0] for r in rows)


def lake_range(con: duckdb.DuckDBPyConnection) -> tuple[datetime | None, datetime | None]:
    first, last = con.execute("SELECT min(time), max(time) FROM events_raw").fetchall()[0]
    return first, last


def choose_variants(flag: str, available: dict[str, int], variant: str | None,
                    baseline: str | None) -> tuple[str, str]:
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


# -- statistics from the SQL rows ------------------------------------------------------------
def _ratio(row: dict[str, Any], x: str) -> RatioStats:
    """Per-user sums of numerator `x` over requests (x ∈ err, lat, b0…b3)."""
    x2 = {"err": "err2", "lat": "lat2"}.get(x, f"{x}_2")
    return RatioStats(int(row["n"]), float(row[x]), float(row["req"]), float(row[x2]),
                      float(row["req2"]), float(row[f"{x}_req"]))


def _interpolate(grid: dict[float, float], p: float) -> float:
    points = sorted(grid)
    p = min(max(p, points[0]), points[-1])
    for lo, hi in itertools.pairwise(points):
        if lo <= p <= hi:
            if hi == lo:
                return grid[lo]
            return grid[lo] + (grid[hi] - grid[lo]) * (p - lo) / (hi - lo)
    return grid[points[-1]]


def _summary(row: dict[str, Any], variant: str) -> CohortSummary:
    grid = row["grid"]
    req = int(row["req"])
    return CohortSummary(
        variant=variant, users=int(row["n"]), requests=req, errors=int(row["err"]),
        error_rate=row["err"] / req if req else 0.0, mean_ms=row["lat"] / req if req else 0.0,
        quantiles_ms={f"p{round(p * 100)}": grid[round(p, 6)] for p in QUANTILES},
    )


def _quantile_interval(row: dict[str, Any], k: int, alpha: float) -> tuple[float, float, float]:
    p = QUANTILES[k]
    p_lo, p_hi = quantile_rank_interval(p, _ratio(row, f"b{k}"), alpha)
    grid = row["grid"]
    # Deng, Knoblich & Lu 2018 §4: the interval's ends are the empirical quantiles at the
    # rank interval's ends (read from the grid pass 1 computed, by linear interpolation).
    return grid[round(p, 6)], _interpolate(grid, p_lo), _interpolate(grid, p_hi)


def estimates(t: dict[str, Any], c: dict[str, Any], alpha: float,
              metrics: tuple[str, ...] = METRICS) -> dict[str, Estimate]:
    out: dict[str, Estimate] = {}
    if "error_rate" in metrics:
        out["error_rate"] = error_rate_difference(_ratio(t, "err"), _ratio(c, "err"), alpha)
    if "mean_latency" in metrics:
        out["mean_latency"] = ratio_difference(_ratio(t, "lat"), _ratio(c, "lat"), alpha)
    for k, name in enumerate(QUANTILE_METRICS):
        if name in metrics:
            t_est, t_lo, t_hi = _quantile_interval(t, k, alpha)
            c_est, c_lo, c_hi = _quantile_interval(c, k, alpha)
            out[name] = quantile_difference(QUANTILES[k], t_est, t_lo, t_hi, c_est, c_lo, c_hi,
                                            alpha, int(t["n"]), int(c["n"]))
    return out


def mix_adjusted(strata: list[tuple[dict[str, Any], dict[str, Any]]], alpha: float
                 ) -> dict[str, Estimate]:
    """Error rate and mean latency, each cohort re-weighted to the pooled (service, route)
    mix: a flag that moves traffic between routes cannot fake a change (Simpson's paradox).

    Post-stratification (e.g. Miratrix, Sekhon & Yu 2013): m_adj = Σ_s w_s m_s with w_s
    the pooled share of requests in stratum s; Var = Σ_s w_s² Var(m_s), strata treated as
    independent (users active on several routes make this slightly optimistic).
    """
    total = sum(float(t["req"]) + float(c["req"]) for t, c in strata)
    out: dict[str, Estimate] = {}
    for metric, x in (("error_rate", "err"), ("mean_latency", "lat")):
        adj = {"t": 0.0, "c": 0.0}
        var = {"t": 0.0, "c": 0.0}
        for t, c in strata:
            w = (float(t["req"]) + float(c["req"])) / total
            for key, row in (("t", t), ("c", c)):
                stats = _ratio(row, x)
                adj[key] += w * stats.ratio
                var[key] += w * w * stats.variance()
        out[metric] = normal_estimate(adj["c"], adj["t"], var["c"], var["t"], alpha, Method.DELTA)
    return out


def _final(estimates: dict[str, Estimate], users: int, options: DiffOptions) -> dict[str, Estimate]:
    """The estimates as reported: always-valid ones in sequential mode (so that p-values,
    and the Benjamini–Hochberg correction on them, are the sequential ones too)."""
    if not options.sequential:
        return estimates
    return {m: sequential_estimate(e, users, options.alpha) for m, e in estimates.items()}


# -- the diff ------------------------------------------------------------------------------
def run_diff(lake_dir: Path, options: DiffOptions, charts: bool = False) -> DiffResult:
    """Compare the cohorts; `charts` adds the time series and histogram the HTML report draws.
    A run that raced compaction (a file merged away mid-read) starts again (lake.fetch)."""
    for attempt in range(1, 4):
        con = lake.connect(lake_dir)
        try:
            result = _run(con, options)
            if charts and result.compared:
                result = replace(result, charts=_charts(con, result.options))
            return result
        except duckdb.Error as exc:
            if attempt == 3 or not lake.raced_compaction(exc):
                raise AnalysisError(f"reading the lake at {lake_dir} failed: {exc}") from exc
        finally:
            con.close()
    raise AssertionError("unreachable")


def _charts(con: duckdb.DuckDBPyConnection, options: DiffOptions) -> Charts:
    span = (options.end - options.start).total_seconds()
    steps = (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
    bucket = next((s for s in steps if span / s <= 48), 86400)  # at most ~48 points
    edges, counts = cohorts.latency_histogram(con)
    return Charts(bucket, tuple(cohorts.time_series(con, bucket)), tuple(edges),
                  {k: tuple(v) for k, v in counts.items()})


def _no_data(options: DiffOptions, reason: str, rows: dict[str, dict[str, Any]] | None = None,
             excluded: dict[str, int] | None = None) -> DiffResult:
    """A NO_DATA result; a cohort that has data is still summarized."""
    rows = rows or {}

    def summary(cohort: str, variant: str | None) -> CohortSummary:
        if cohort in rows:
            return _summary(rows[cohort], variant or "")
        return CohortSummary(variant or "", 0, 0, 0, 0.0, 0.0, {})

    return DiffResult(options, summary("treatment", options.variant),
                      summary("baseline", options.baseline), (), (), (), (), excluded or {},
                      None, Verdict.NO_DATA, reason, f"{options.flag}: no data — {reason}")


def _run(con: duckdb.DuckDBPyConnection, options: DiffOptions) -> DiffResult:
    available = cohorts.collect_evaluations(con, options.flag, options.start, options.end)
    if not available:
        flags = known_flags(con)
        if options.flag not in flags:
            close = difflib.get_close_matches(options.flag, flags, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise AnalysisError(f"flag {options.flag!r} is not in the lake; {hint}"
                                "run 'flagscope flags' to list flags")
        first, last = lake_range(con)
        return _no_data(options, f"flag {options.flag!r} has no evaluations between "
                        f"{options.start:%Y-%m-%d %H:%M} and {options.end:%Y-%m-%d %H:%M} UTC; "
                        f"the lake holds {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC")
    variant, baseline = choose_variants(options.flag, available, options.variant, options.baseline)
    options = replace(options, variant=variant, baseline=baseline)
    query = CohortQuery(options.flag, variant, baseline, options.start, options.end,
                        options.service, options.route, options.test_mode)
    excluded = cohorts.label_requests(con, query)
    overall_rows, strata_rows = cohorts.unit_sums(con)
    overall = {row["cohort"]: row for row in overall_rows}
    if set(overall) != {"treatment", "baseline"}:
        missing = [n for n, v in (("treatment", variant), ("baseline", baseline)) if n not in overall]
        return _no_data(options, f"no requests in the {' and '.join(missing)} cohort "
                        "(requests are entry spans of traces that evaluated the flag)",
                        overall, excluded)
    t, c = overall["treatment"], overall["baseline"]
    treatment, base = _summary(t, variant), _summary(c, baseline)
    users = (treatment.users, base.users)
    errors = (float(t["err"]), float(c["err"]))

    def results(ests: dict[str, Estimate]) -> tuple[MetricResult, ...]:
        return tuple(MetricResult(m, e, judge(m, e, options.thresholds, users, errors))
                     for m, e in _final(ests, sum(users), options).items())

    metrics = results(estimates(t, c, options.alpha))
    breakdown, pairs = _breakdown(strata_rows, variant, baseline, options)
    adjusted = results(mix_adjusted(pairs, options.alpha))
    health, srm = _health(options, treatment, base, excluded)
    verdict, reason = overall_verdict(metrics, adjusted, breakdown, health, options)
    summary = summarize(options, treatment, base, adjusted, breakdown, verdict, excluded)
    return DiffResult(options, treatment, base, metrics, adjusted, breakdown, health, excluded,
                      srm, verdict, reason, summary)


def _breakdown(rows, variant, baseline, options):
    """Per (service, route) present in both cohorts: estimates, Benjamini–Hochberg q-values
    over all of them, verdicts; and the (treatment, baseline) row pairs for mix_adjusted."""
    by_key: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault((row["service_name"], row["route"]), {})[row["cohort"]] = row
    keyed = [(k, v["treatment"], v["baseline"]) for k, v in sorted(by_key.items()) if len(v) == 2]
    raw = [(k, t, c, _final(estimates(t, c, options.alpha, BREAKDOWN_METRICS),
                            int(t["n"]) + int(c["n"]), options))
           for k, t, c in keyed]
    p_values = [e.p_value for *_, ests in raw for e in ests.values()]
    q_values = iter(benjamini_hochberg(p_values)) if p_values else iter(())
    strata = []
    for (service, route), t, c, ests in raw:
        users = (int(t["n"]), int(c["n"]))
        errors = (float(t["err"]), float(c["err"]))
        results = []
        for metric, est in ests.items():
            q = next(q_values)
            judgement = judge(metric, est, options.thresholds, users, errors, q)
            results.append(MetricResult(metric, est, judgement, q))
        strata.append(StratumResult(service, route, _summary(t, variant), _summary(c, baseline),
                                    tuple(results)))
    return tuple(strata), [(t, c) for _, t, c in keyed]


def _health(options: DiffOptions, t: CohortSummary, c: CohortSummary,
            excluded: dict[str, int]) -> tuple[tuple[HealthCheck, ...], SrmResult | None]:
    checks = []
    srm = None
    if options.expected_split:
        split = options.expected_split
        missing = [v for v in (t.variant, c.variant) if v not in split]
        if missing:
            raise AnalysisError(f"--expected-split names no share for {', '.join(missing)}; "
                                f"e.g. --expected-split {t.variant}=0.2,{c.variant}=0.8")
        srm = srm_test({t.variant: t.users, c.variant: c.users},
                       {t.variant: split[t.variant], c.variant: split[c.variant]})
        checks.append(HealthCheck("sample_ratio", not srm.alert,
                                  f"users {t.variant}={t.users}, {c.variant}={c.users} against "
                                  f"{split[t.variant]:g}:{split[c.variant]:g}: χ² = {srm.chi2:.2f}, "
                                  f"p = {srm.p_value:.3g} (alert below 0.001)"))
    compared = t.users + c.users + excluded.get("crossover_users", 0)
    share = excluded.get("crossover_users", 0) / compared if compared else 0.0
    limit = options.thresholds.max_crossover_share
    checks.append(HealthCheck("crossover_users", share <= limit,
                              f"{excluded.get('crossover_users', 0)} users saw both variants "
                              f"({share:.1%}; limit {limit:.0%}); their later-variant requests "
                              f"({excluded.get('crossover_requests', 0)}) are left out"))
    minimum = options.thresholds.min_users
    checks.append(HealthCheck("sample_size", min(t.users, c.users) >= minimum,
                              f"users {t.variant}={t.users}, {c.variant}={c.users} "
                              f"(at least {minimum} per cohort for a verdict)"))
    return tuple(checks), srm


def overall_verdict(metrics, adjusted, breakdown, health, options):
    """UNHEALTHY > REGRESSION (any decisive metric) > INCONCLUSIVE > IMPROVEMENT > PASS.

    Decisive: the route-mix adjusted error rate and mean latency, and the per-route error
    rate and p95 after Benjamini–Hochberg. Overall quantiles are reported, not decisive:
    a change of route mix moves them without any route getting slower.
    """
    broken = [h for h in health if not h.ok and h.name != "sample_size"]
    if broken:
        return Verdict.UNHEALTHY, "; ".join(f"{h.name}: {h.detail}" for h in broken)
    overall = [(f"overall {m.metric} (route-mix adjusted)", m) for m in adjusted]
    routes = [(f"{s.service} {s.route} {m.metric}", m) for s in breakdown for m in s.metrics]

    def reasons(pairs, *verdicts: Verdict) -> str:
        hits = [f"{name}: {m.judgement.reason}" for name, m in pairs
                if m.judgement.verdict in verdicts]
        more = f"; and {len(hits) - 3} more" if len(hits) > 3 else ""
        return "; ".join(hits[:3]) + more

    if found := reasons(overall + routes, Verdict.REGRESSION):
        return Verdict.REGRESSION, found
    # A small route without a clear answer does not hold up the verdict; the overall does.
    if found := reasons(overall, Verdict.INCONCLUSIVE, Verdict.NO_DATA):
        return Verdict.INCONCLUSIVE, found
    if found := reasons(overall + routes, Verdict.IMPROVEMENT):
        return Verdict.IMPROVEMENT, found
    return Verdict.PASS, "harm beyond the thresholds ruled out for error rate and mean latency"


# -- the one sentence ---------------------------------------------------------------------
def _ms(value: float) -> str:
    return f"{value:+.0f} ms" if abs(value) >= 10 else f"{value:+.1f} ms"


def describe(metric: str, est: Estimate) -> str:
    """'p95 +38 ms (+41 %, CI +25…+52)' or 'error rate +2.1 pp (CI +1.2…+3.0)'."""
    if not est.has_interval:
        return f"{metric.replace('_', ' ')} n/a ({est.status.value.lower()})"
    if metric == "error_rate":
        return (f"error rate {est.diff * 100:+.1f} pp (CI {est.diff_lo * 100:+.1f}…"
                f"{est.diff_hi * 100:+.1f})")
    name = metric.removesuffix("_latency").replace("mean", "mean latency")
    rel = f"{est.rel * 100:+.0f} %, " if est.has_relative else ""
    return (f"{name} {_ms(est.diff)} ({rel}CI {_ms(est.diff_lo).removesuffix(' ms')}…"
            f"{_ms(est.diff_hi).removesuffix(' ms')})")


def summarize(options, t, c, adjusted, breakdown, verdict, excluded) -> str:
    head = f"{options.flag} {t.variant} vs {c.variant}"
    parts = []
    worst = [(s, m) for s in breakdown for m in s.metrics
             if m.judgement.verdict is Verdict.REGRESSION]
    if worst:
        stratum = worst[0][0]
        parts.append(stratum.route + " " + ", ".join(
            describe(m.metric, m.estimate) for m in stratum.metrics))
    else:
        parts.extend(describe(m.metric, m.estimate) for m in adjusted)
    tail = ""
    if options.test_mode is TrafficFilter.EXCLUDE and excluded.get("test_users"):
        tail = (f" ({excluded['test_users']} test users, {excluded['test_requests']} "
                "requests excluded)")
    return f"{head}: {'; '.join(parts)} — {verdict.value}{tail}"
