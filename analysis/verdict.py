"""Verdicts: what a team does with a comparison, per metric and overall (DESIGN "Statistics").

All metrics here are "higher is worse" (error rate, latency). For each, the harm scale is
the one the threshold is stated in: percentage points for error rate, percent for latency.

- REGRESSION: the interval lies wholly on the harmful side (lower bound > 0) and the
  estimate is beyond the practical threshold.
- IMPROVEMENT: the interval lies wholly on the good side and the estimate is beyond the
  threshold in the good direction.
- PASS: harm beyond the threshold is ruled out (upper bound < threshold) — except when the
  baseline had no errors and the treatment some: never a pass (Kayenta's failure mode).
- INCONCLUSIVE: anything else, including too little data.
- NO_DATA: a cohort is empty. UNHEALTHY (overall only): the comparison itself is broken —
  sample-ratio mismatch or too many crossover users.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.stats import Estimate, Status
from flagscope.analysis.stats.estimate import valid_alpha


class Verdict(StrEnum):
    REGRESSION = "REGRESSION"
    IMPROVEMENT = "IMPROVEMENT"
    PASS = "PASS"
    INCONCLUSIVE = "INCONCLUSIVE"
    UNHEALTHY = "UNHEALTHY"
    NO_DATA = "NO_DATA"


# Process exit codes for automation: 0 only for PASS; 2 stays "usage error".
EXIT_CODES = {
    Verdict.PASS: 0,
    Verdict.IMPROVEMENT: 10,
    Verdict.INCONCLUSIVE: 11,
    Verdict.NO_DATA: 12,
    Verdict.UNHEALTHY: 13,
    Verdict.REGRESSION: 14,
}


FAILED_EXIT_CODE = 2  # the run itself failed (also argparse's usage error)
# From the least to the most alarming: a failed run outranks "nothing to see" verdicts, but
# not a broken comparison or a regression someone must act on.
_SEVERITY = (0, 10, 11, 12, FAILED_EXIT_CODE, 13, 14)


def worst_exit_code(codes: Sequence[int]) -> int:
    """The exit code of several runs (`schedule --once`, `guard --once`): the most
    alarming one (README's verdict table; 2, a failed run, between NO_DATA and UNHEALTHY)."""
    return max(codes, key=_SEVERITY.index, default=0)


DEFAULT_ALPHA = 0.05  # 1 - confidence level


def check_alpha(alpha: float) -> float:
    """`alpha`, or a usage error that says what is allowed."""
    if not valid_alpha(alpha):
        raise AnalysisError(f"alpha = {alpha}: must be between 0 and 1, e.g. {DEFAULT_ALPHA}")
    return float(alpha)


@dataclass(frozen=True)
class Thresholds:
    """Practical significance: smaller effects are not worth acting on."""

    error_rate_pp: float = 0.5  # percentage points of error rate
    latency_pct: float = 5.0  # percent of mean or quantile latency
    min_users: int = 50  # per cohort, below which every verdict is INCONCLUSIVE
    max_crossover_share: float = 0.05  # users seen in both variants, of all compared users

    def __post_init__(self) -> None:
        if (
            self.error_rate_pp < 0
            or self.latency_pct < 0
            or self.min_users < 1
            or not 0 <= self.max_crossover_share <= 1
        ):
            raise AnalysisError(
                "thresholds must be ≥ 0, min_users ≥ 1 and max_crossover_share between 0 and 1"
            )


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str


def harm_scale(metric: str, est: Estimate) -> tuple[float, float, float, str] | None:
    """(estimate, lo, hi, unit) on the scale the metric's threshold is stated in."""
    if metric == "error_rate":
        return est.diff * 100, est.diff_lo * 100, est.diff_hi * 100, "pp"
    if not est.has_relative:
        return None
    return est.rel * 100, est.rel_lo * 100, est.rel_hi * 100, "%"


def judge(
    metric: str,
    est: Estimate,
    thresholds: Thresholds,
    users: tuple[int, int],
    errors: tuple[float, float],
    q_value: float | None = None,
) -> Judgement:
    """The verdict of one metric from its estimate (treatment − baseline). `errors`:
    (treatment, baseline) error counts, for the never-a-pass rule of error rate. `q_value`
    (a breakdown row's, after Benjamini–Hochberg): a REGRESSION or IMPROVEMENT must also
    be significant at the estimate's alpha after the correction."""
    judgement = _judge(metric, est, thresholds, users, errors)
    decisive = judgement.verdict in (Verdict.REGRESSION, Verdict.IMPROVEMENT)
    if decisive and q_value is not None and q_value >= est.alpha:
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"not significant after Benjamini–Hochberg (q = {q_value:.3g}); {judgement.reason}",
        )
    return judgement


def _judge(
    metric: str,
    est: Estimate,
    thresholds: Thresholds,
    users: tuple[int, int],
    errors: tuple[float, float],
) -> Judgement:
    if est.status is Status.NO_DATA or min(users) == 0:
        return Judgement(Verdict.NO_DATA, "a cohort has no requests")
    if min(users) < thresholds.min_users:
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"too few users ({min(users)} < {thresholds.min_users} in a cohort)",
        )
    if not est.has_interval:
        return Judgement(Verdict.INCONCLUSIVE, f"no interval: {status_words(est.status)}")
    scale = harm_scale(metric, est)
    if scale is None:
        return Judgement(
            Verdict.INCONCLUSIVE, "the baseline is zero, so there is no relative change"
        )
    value, lo, hi, unit = scale
    limit = thresholds.error_rate_pp if metric == "error_rate" else thresholds.latency_pct
    shown = f"{value:+.2f} {unit} (CI {lo:+.2f}…{hi:+.2f})"
    bound = f"the ±{limit:g} {unit} threshold"
    if lo > 0 and value >= limit:
        return Judgement(Verdict.REGRESSION, f"{shown}: worse beyond {bound}")
    if hi < 0 and value <= -limit:
        return Judgement(Verdict.IMPROVEMENT, f"{shown}: better beyond {bound}")
    treatment_errors, baseline_errors = errors
    if metric == "error_rate" and baseline_errors == 0 and treatment_errors > 0:
        return Judgement(
            Verdict.INCONCLUSIVE,
            f"{shown}: the baseline had no errors and the treatment {treatment_errors:g}, "
            "so never a pass",
        )
    if hi < limit:
        return Judgement(Verdict.PASS, f"{shown}: harm beyond {bound} ruled out")
    return Judgement(Verdict.INCONCLUSIVE, f"{shown}: harm beyond {bound} not ruled out")


# What a reader sees for the internal names (JSON keeps the names).
METRIC_WORDS = {
    "error_rate": "error rate",
    "mean_latency": "mean latency",
    "p50_latency": "median (p50) latency",
    "p90_latency": "p90 latency",
    "p95_latency": "p95 latency",
    "p99_latency": "p99 latency",
}
CHECK_WORDS = {
    "sample_ratio": "users per variant differ from the configured split",
    "crossover_users": "too many users saw both variants",
    "sample_size": "too few users",
}
_STATUS_WORDS = {
    Status.NO_DATA: "a cohort has no requests",
    Status.TOO_FEW_USERS: "fewer than 2 users in a cohort",
    Status.ZERO_VARIANCE: "every user looks the same, so there is no spread to estimate from",
    Status.ZERO_BASELINE: "the baseline is zero",
    Status.INVALID_INPUT: "the inputs are not usable numbers",
    Status.TOO_FEW_IN_TAIL: "too few requests in the tail to estimate this quantile",
}


def metric_words(metric: str) -> str:
    return METRIC_WORDS.get(metric, metric.replace("_", " "))


def status_words(status: Status) -> str:
    return _STATUS_WORDS.get(status, status.value.lower().replace("_", " "))


def overall_verdict(
    decisive: Sequence[tuple[str, Judgement]],
    ruled_out: Sequence[tuple[str, Judgement]],
    broken_checks: Sequence[tuple[str, str]],
) -> tuple[Verdict, tuple[str, ...]]:
    """UNHEALTHY > REGRESSION > INCONCLUSIVE > IMPROVEMENT > PASS.

    `decisive`: the tests that can make the verdict REGRESSION or IMPROVEMENT — the
    route-mix adjusted error rate and mean latency and each route's error rate and p95,
    judged with q-values from one weighted Benjamini–Hochberg family (so that with no
    effect at all the chance of any decisive verdict stays at alpha). Overall quantiles
    are not among them: a change of route mix moves them without any route getting
    slower. `ruled_out`: what must have harm ruled out (PASS or IMPROVEMENT) for the
    verdict to be PASS — the adjusted metrics, every overall metric, and every route with
    enough users in both cohorts; anything else there makes it INCONCLUSIVE.
    `broken_checks`: (name, detail) of failed health checks that make the comparison
    itself untrustworthy. Each list holds (what it is, its judgement). Returns the
    verdict and every reason for it, one line each, in words.
    """
    if broken_checks:
        return Verdict.UNHEALTHY, tuple(
            f"{CHECK_WORDS.get(name, name)}: {detail}" for name, detail in broken_checks
        )

    def reasons(pairs: Sequence[tuple[str, Judgement]], *verdicts: Verdict) -> tuple[str, ...]:
        # every one, not the first few: a list is cheap to read, a cut one hides what decided
        return tuple(f"{name}: {j.reason}" for name, j in pairs if j.verdict in verdicts)

    if found := reasons(decisive, Verdict.REGRESSION):
        return Verdict.REGRESSION, found
    open_ = (Verdict.INCONCLUSIVE, Verdict.NO_DATA, Verdict.REGRESSION)
    if found := reasons(ruled_out, *open_):
        return Verdict.INCONCLUSIVE, found
    if found := reasons(decisive, Verdict.IMPROVEMENT):
        return Verdict.IMPROVEMENT, found
    return Verdict.PASS, (
        "harm beyond the thresholds ruled out for every overall metric and route",
    )
