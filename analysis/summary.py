"""The one sentence a diff is summed up in, and the wording of one estimate in it.

'new-checkout on vs off: /checkout p95 +38 ms (+41 %, CI +25…+52) — REGRESSION'. The HTML
report reuses `describe` so that its headline reads exactly as the terminal's.
"""

from __future__ import annotations

from collections.abc import Sequence

from flagscope.analysis.result import (
    CohortSummary,
    DiffOptions,
    MetricResult,
    StratumResult,
    TrafficFilter,
)
from flagscope.analysis.stats import Estimate
from flagscope.analysis.verdict import Verdict


def _ms(value: float) -> str:
    return f"{value:+.0f} ms" if abs(value) >= 10 else f"{value:+.1f} ms"


def _signed(value: float, places: int) -> str:
    """`value` with its sign, never "-0.0": a difference that rounds to nothing is +0."""
    rounded = round(value, places) + 0.0  # -0.0 + 0.0 is +0.0
    return f"{rounded:+.{places}f}"


def _pp(est: Estimate) -> str:
    """An error-rate difference in percentage points, with enough places to say something:
    two when the whole interval is within ±0.1 pp (a PASS near zero), else one."""
    ends = (est.diff, est.diff_lo, est.diff_hi)
    places = 2 if all(abs(x) * 100 < 0.1 for x in ends) else 1
    diff, lo, hi = (_signed(x * 100, places) for x in ends)
    return f"error rate {diff} pp (CI {lo}…{hi})"


def describe(metric: str, est: Estimate) -> str:
    """'p95 +38 ms (+41 %, CI +25…+52)' or 'error rate +2.1 pp (CI +1.2…+3.0)'."""
    if not est.has_interval:
        return f"{metric.replace('_', ' ')} n/a ({est.status.value.lower()})"
    if metric == "error_rate":
        return _pp(est)
    name = metric.removesuffix("_latency").replace("mean", "mean latency")
    rel = f"{est.rel * 100:+.0f} %, " if est.has_relative else ""
    return (
        f"{name} {_ms(est.diff)} ({rel}CI {_ms(est.diff_lo).removesuffix(' ms')}…"
        f"{_ms(est.diff_hi).removesuffix(' ms')})"
    )


def summarize(
    options: DiffOptions,
    t: CohortSummary,
    c: CohortSummary,
    adjusted: Sequence[MetricResult],
    breakdown: Sequence[StratumResult],
    verdict: Verdict,
    excluded: dict[str, int],
) -> str:
    head = f"{options.flag} {t.variant} vs {c.variant}"
    parts = []
    worst = [
        (s, m) for s in breakdown for m in s.metrics if m.judgement.verdict is Verdict.REGRESSION
    ]
    if worst:
        stratum = worst[0][0]
        shown = _deciding_first(stratum.metrics, Verdict.REGRESSION)
        parts.append(stratum.route + " " + ", ".join(describe(m.metric, m.estimate) for m in shown))
    else:
        parts.extend(describe(m.metric, m.estimate) for m in _deciding_first(adjusted, verdict))
    tail = ""
    if options.test_mode is TrafficFilter.EXCLUDE and excluded.get("test_users"):
        tail = (
            f" ({excluded['test_users']} test users, {excluded['test_requests']} requests excluded)"
        )
    return f"{head}: {'; '.join(parts)} — {verdict.value}{tail}"


def _deciding_first(metrics: Sequence[MetricResult], verdict: Verdict) -> list[MetricResult]:
    """The metrics whose own verdict is `verdict` first (stable otherwise): a headline
    leads with what decided it, not with an interval that includes zero."""
    return sorted(metrics, key=lambda m: m.judgement.verdict is not verdict)
