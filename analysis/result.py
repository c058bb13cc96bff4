"""The result model of a cohort diff: what `run_diff` returns, what every renderer reads.

Plain frozen dataclasses and their documented dict form (`to_dict`, README "The JSON
report"); nothing here queries the lake or computes a statistic, so a renderer depends on
this module and never on the orchestration (`flagscope.analysis.diff`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.stats import Estimate, SrmResult
from flagscope.analysis.verdict import (
    DEFAULT_ALPHA,
    EXIT_CODES,
    Judgement,
    Thresholds,
    Verdict,
    check_alpha,
)
from flagscope.analysis.window import iso_z, naive_utc

if TYPE_CHECKING:  # Polars costs ~75 ms to import; only the frame helpers need it
    import polars as pl

    from flagscope.analysis.different import Difference
    from flagscope.analysis.examples import RouteExamples


class TrafficFilter(StrEnum):
    """What to do with test traffic (`is_test`): leave it out (the default), keep it, or
    look at nothing else."""

    EXCLUDE = "exclude"
    INCLUDE = "include"
    ONLY = "only"


# Where the always-valid intervals are tightest unless told (--expected-users): their
# width over the fixed-horizon one is at most 1.72 from 200 to 20,000 users when tuned at
# 1,000, against 2.60 at 200 users with gbstats' 5,000 (an audit found 1.6–2.0× at
# 500–2,000 users); rollouts decide in that range.
DEFAULT_EXPECTED_USERS = 1000
ENGINES = ("duckdb", "spark")  # where a diff's cohort stage can run
CUPED_WITHOUT_SPARK = (
    "CUPED is not computed by the Spark engine yet: run the --cuped diff with --engine duckdb"
)


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
    # Sequential mode: each end of every interval an always-valid one-sided bound at
    # alpha / 2, from the one-sided mixture (stats.sequential), for the guard: only
    # "worse?" matters, so it asks for alpha = 2 x its one-sided level. (At a fixed
    # horizon each end of a 1 - alpha interval already is one.)
    one_sided: bool = False
    # Users (both cohorts) the sequential intervals are tightest at: the sample size the
    # rollout is expected to reach (stats.sequential).
    expected_users: int = DEFAULT_EXPECTED_USERS
    expected_split: dict[str, float] | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    # CUPED: regress the adjusted metrics on each user's requests this long before their
    # first exposure (analysis.adjustment); None: no regression adjustment.
    pre_exposure: timedelta | None = None
    # No evaluation before this is read (not even the hour of slack before `start`): the
    # start of a ramp stage, so the users the ramp moved over are not crossovers of it.
    evaluations_from: datetime | None = None
    # Where the cohort stage runs: DuckDB in this process, or Spark SQL (analysis.spark).
    engine: str = "duckdb"

    def __post_init__(self) -> None:
        # The lake's timestamps are naive UTC; an aware time is converted, not refused.
        for name in ("start", "end", "evaluations_from"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, naive_utc(getattr(self, name)))
        check_alpha(self.alpha)
        if self.engine not in ENGINES:
            raise AnalysisError(
                f"engine {self.engine!r} is not one of {', '.join(ENGINES)}, e.g. --engine spark"
            )
        if self.engine == "spark" and self.pre_exposure is not None:
            raise AnalysisError(CUPED_WITHOUT_SPARK)
        if self.pre_exposure is not None and self.pre_exposure <= timedelta(0):
            raise AnalysisError("--cuped look-back must be longer than zero, e.g. --cuped 14d")
        if not (isinstance(self.expected_users, int) and self.expected_users >= 1):
            raise AnalysisError(
                f"expected users = {self.expected_users!r}: must be a whole number ≥ 1, "
                "e.g. --expected-users 2000"
            )


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
    q_value: float | None = None  # weighted Benjamini–Hochberg, for the decisive metrics


@dataclass(frozen=True)
class StratumResult:
    service: str
    route: str
    treatment: CohortSummary
    baseline: CohortSummary
    metrics: tuple[MetricResult, ...]
    # A route only one cohort called ("treatment" or "baseline"): it is compared with the
    # other cohort's requests as a whole, whose numbers `baseline` (or `treatment`) holds.
    only_in: str | None = None


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
    # with --cuped: metric → {"theta": θ, "variance_reduction": share of variance removed}
    cuped: dict[str, dict[str, float]] | None = None
    # every reason for the verdict, one line each (`reason` is them joined with "; ")
    reasons: tuple[str, ...] = ()
    # a report's example requests (analysis.example_query.with_examples); () elsewhere
    examples: tuple[RouteExamples, ...] = ()
    # a report's "what is different" per regressed route (different_query.with_differences)
    different: tuple[Difference, ...] = ()

    @property
    def why(self) -> tuple[str, ...]:
        """The reasons for the verdict as lines to show."""
        return self.reasons or (self.reason,)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def compared(self) -> bool:
        """Both cohorts have requests (else there is nothing but the NO_DATA reason)."""
        return bool(self.treatment.requests and self.baseline.requests)

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON form (README "The JSON report")."""
        return to_dict(self)

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

        rows = [
            {"service": s.service, "route": s.route, **_metric_row(m, "route")}
            for s in self.breakdown
            for m in s.metrics
        ]
        return pl.DataFrame(rows) if rows else pl.DataFrame()


def _summary_row(cohort: str, s: CohortSummary) -> dict[str, Any]:
    return {
        "cohort": cohort,
        "variant": s.variant,
        "users": s.users,
        "requests": s.requests,
        "errors": s.errors,
        "error_rate": s.error_rate,
        "mean_ms": s.mean_ms,
        **{f"{k}_ms": v for k, v in s.quantiles_ms.items()},
    }


def _metric_row(m: MetricResult, scope: str) -> dict[str, Any]:
    e = m.estimate
    return {
        "scope": scope,
        "metric": m.metric,
        "baseline": e.control,
        "treatment": e.treatment,
        "diff": e.diff,
        "diff_lo": e.diff_lo,
        "diff_hi": e.diff_hi,
        "rel": e.rel,
        "rel_lo": e.rel_lo,
        "rel_hi": e.rel_hi,
        "p_value": e.p_value,
        "q_value": m.q_value,
        "method": e.method.value,
        "status": e.status.value,
        "verdict": m.judgement.verdict.value,
        "reason": m.judgement.reason,
    }


# -- the dict form (JSON) -------------------------------------------------------------
SCHEMA_VERSION = 1


def _num(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _cohort_dict(s: CohortSummary) -> dict[str, Any]:
    return {
        "variant": s.variant,
        "users": s.users,
        "requests": s.requests,
        "errors": s.errors,
        "error_rate": s.error_rate,
        "mean_ms": s.mean_ms,
        "quantiles_ms": dict(s.quantiles_ms),
    }


def _metric_dict(m: MetricResult) -> dict[str, Any]:
    e = m.estimate
    out = {
        "metric": m.metric,
        "verdict": m.judgement.verdict.value,
        "reason": m.judgement.reason,
        "status": e.status.value,
        "method": e.method.value,
        "sequential": e.sequential,
        "baseline": _num(e.control),
        "treatment": _num(e.treatment),
        "diff": _num(e.diff),
        "diff_ci": [_num(e.diff_lo), _num(e.diff_hi)],
        "rel": _num(e.rel) if e.has_relative else None,
        "rel_ci": [_num(e.rel_lo), _num(e.rel_hi)] if e.has_relative else None,
        "p_value": _num(e.p_value),
        "alpha": e.alpha,
        "df": e.df,
    }
    if m.q_value is not None:
        out["q_value"] = _num(m.q_value)
    return out


def to_dict(r: DiffResult) -> dict[str, Any]:
    o = r.options
    return {
        "schema_version": SCHEMA_VERSION,
        "summary": r.summary,
        "verdict": r.verdict.value,
        "reason": r.reason,
        "reasons": list(r.why),
        "exit_code": r.exit_code,
        "flag": o.flag,
        "treatment_variant": o.variant,
        "baseline_variant": o.baseline,
        "window": {"start": iso_z(o.start), "end": iso_z(o.end)},
        "filters": {"service": o.service, "route": o.route, "test_traffic": o.test_mode.value},
        "settings": {
            "alpha": o.alpha,
            "sequential": o.sequential,
            "one_sided": o.one_sided,
            "expected_users": o.expected_users,
            "cuped_lookback_s": None if o.pre_exposure is None else o.pre_exposure.total_seconds(),
            "error_rate_threshold_pp": o.thresholds.error_rate_pp,
            "latency_threshold_pct": o.thresholds.latency_pct,
            "min_users": o.thresholds.min_users,
            "expected_split": o.expected_split,
            "evaluations_from": None if o.evaluations_from is None else iso_z(o.evaluations_from),
        },
        "cohorts": {"treatment": _cohort_dict(r.treatment), "baseline": _cohort_dict(r.baseline)},
        "metrics": [_metric_dict(m) for m in r.metrics],
        "adjusted_metrics": [_metric_dict(m) for m in r.adjusted],
        "cuped": r.cuped,
        "breakdown": [
            {
                "service": s.service,
                "route": s.route,
                "only_in": s.only_in,
                "cohorts": {
                    "treatment": _cohort_dict(s.treatment),
                    "baseline": _cohort_dict(s.baseline),
                },
                "metrics": [_metric_dict(m) for m in s.metrics],
            }
            for s in r.breakdown
        ],
        "health": [{"check": h.name, "ok": h.ok, "detail": h.detail} for h in r.health],
        "srm": None
        if r.srm is None
        else {
            "chi2": r.srm.chi2,
            "df": r.srm.df,
            "p_value": r.srm.p_value,
            "anytime_valid": r.srm.sequential,
            "alert": r.srm.alert,
        },
        "excluded": dict(r.excluded),
        "examples": [e.to_dict() for e in r.examples],
        "different": [d.to_dict() for d in r.different],
    }
