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


def describe(metric: str, est: Estimate) -> str:
    """'p95 +38 ms (+41 %, CI +25…+52)' or 'error rate +2.1 pp (CI +1.2…+3.0)'."""
    if not est.has_interval:
        return f"{metric.replace('_', ' ')} n/a ({est.status.value.lower()})"
    if metric == "error_rate":
        return (
            f"error rate {est.diff * 100:+.1f} pp (CI {est.diff_lo * 100:+.1f}…"
            f"{est.diff_hi * 100:+.1f})"
        )
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
        parts.append(
            stratum.route + " " + ", ".join(describe(m.metric, m.estimate) for m in stratum.metrics)
        )
    else:
        parts.extend(describe(m.metric, m.estimate) for m in adjusted)
    tail = ""
    if options.test_mode is TrafficFilter.EXCLUDE and excluded.get("test_users"):
        tail = (
            f" ({excluded['test_users']} test users, {excluded['test_requests']} requests excluded)"
        )
    return f"{head}: {'; '.join(parts)} — {verdict.value}{tail}"
