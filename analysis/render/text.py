"""Shared pieces of the human-readable renderings (terminal, Markdown and HTML)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from flagscope.analysis.verdict import Verdict

if TYPE_CHECKING:
    from flagscope.analysis.result import CohortSummary, DiffResult, MetricResult

# Control characters (C0, DEL, C1) and the bidirectional overrides that reorder what a
# terminal shows ("Trojan Source"): telemetry may carry any of them in a route or a variant.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(value: str) -> str:
    """`value` with every control or bidi character shown as an escape (ESC → \\x1b), so
    telemetry strings can neither move the cursor nor break a line or a table."""
    return _UNPRINTABLE.sub(
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", value
    )


LABELS = {
    "error_rate": "error rate",
    "mean_latency": "mean latency",
    "p50_latency": "p50",
    "p90_latency": "p90",
    "p95_latency": "p95",
    "p99_latency": "p99",
}


# What the list of reasons under "Why" has in common, by verdict (one line per reason).
_WHY_LEAD = {
    Verdict.REGRESSION: "Worse than baseline beyond the threshold:",
    Verdict.IMPROVEMENT: "Better than baseline beyond the threshold:",
    Verdict.INCONCLUSIVE: "Not decided yet: harm beyond the threshold is not ruled out for",
    Verdict.UNHEALTHY: "The comparison itself cannot be trusted:",
}


def why_lead(r: DiffResult) -> str:
    """The words before the reasons ("" when a single reason says it all)."""
    return _WHY_LEAD.get(r.verdict, "") if r.reasons else ""


def window(r: DiffResult) -> str:
    return f"{r.options.start:%Y-%m-%d %H:%M} to {r.options.end:%Y-%m-%d %H:%M} UTC"


def confidence_pct(r: DiffResult) -> int:
    """The intervals' confidence level in percent (95 for alpha 0.05)."""
    return round((1 - r.options.alpha) * 100)


def value(metric: str, x: float) -> str:
    return f"{x * 100:.2f} %" if metric == "error_rate" else f"{x:.1f} ms"


def change(m: MetricResult) -> tuple[str, str, str]:
    """(absolute change with CI, relative change with CI, p-value) as text."""
    e = m.estimate
    if not e.has_interval:
        return (f"n/a ({e.status.value.lower()})", "", "")
    if m.metric == "error_rate":
        absolute = f"{e.diff * 100:+.2f} pp [{e.diff_lo * 100:+.2f}, {e.diff_hi * 100:+.2f}]"
    else:
        absolute = f"{e.diff:+.1f} ms [{e.diff_lo:+.1f}, {e.diff_hi:+.1f}]"
    relative = ""
    if e.has_relative:
        relative = f"{e.rel * 100:+.1f} % [{e.rel_lo * 100:+.1f}, {e.rel_hi * 100:+.1f}]"
        disagree = _excludes_zero(e.diff_lo, e.diff_hi) != _excludes_zero(e.rel_lo, e.rel_hi)
        if m.metric == "error_rate" and disagree:
            # The relative interval (delta method on the ratio, as gbstats) is a different
            # interval and can disagree near the edge; an error rate's verdict reads the
            # absolute one (percentage points), so only that one is shown.
            relative = f"{e.rel * 100:+.1f} % (interval: the absolute one decides)"
    return absolute, relative, f"{e.p_value:.3g}"


def _excludes_zero(lo: float, hi: float) -> bool:
    return lo > 0 or hi < 0


def cohort_rows(r: DiffResult) -> tuple[list[str], list[list[str]]]:
    header = [
        "cohort",
        "variant",
        "users",
        "requests",
        "error rate",
        "mean",
        "p50",
        "p90",
        "p95",
        "p99",
    ]

    def row(name: str, s: CohortSummary) -> list[str]:
        q = s.quantiles_ms
        return [
            name,
            s.variant,
            f"{s.users:,}",
            f"{s.requests:,}",
            f"{s.error_rate * 100:.2f} %",
            f"{s.mean_ms:.1f} ms",
            *(f"{q.get(k, 0.0):.1f} ms" for k in ("p50", "p90", "p95", "p99")),
        ]

    return header, [row("treatment", r.treatment), row("baseline", r.baseline)]


def metric_rows(metrics: tuple[MetricResult, ...]) -> tuple[list[str], list[list[str]]]:
    header = ["metric", "baseline", "treatment", "change [CI]", "relative [CI]", "p", "verdict"]
    rows = []
    for m in metrics:
        absolute, relative, p = change(m)
        rows.append(
            [
                LABELS[m.metric],
                value(m.metric, m.estimate.control),
                value(m.metric, m.estimate.treatment),
                absolute,
                relative,
                p,
                m.judgement.verdict.value,
            ]
        )
    return header, rows


def breakdown_rows(r: DiffResult) -> tuple[list[str], list[list[str]]]:
    header = [
        "service",
        "route",
        "users t/b",
        "metric",
        "change [CI]",
        "relative [CI]",
        "q",
        "verdict",
    ]
    rows = []
    for s in r.breakdown:
        # a route one cohort never called is compared with the other cohort as a whole
        route = (
            s.route if s.only_in is None else f"{s.route} (only {s.only_in}; vs all of the other)"
        )
        for m in s.metrics:
            absolute, relative, _ = change(m)
            q = f"{m.q_value:.3g}" if m.q_value is not None else ""
            rows.append(
                [
                    s.service,
                    route,
                    f"{s.treatment.users}/{s.baseline.users}",
                    LABELS[m.metric],
                    absolute,
                    relative,
                    q,
                    m.judgement.verdict.value,
                ]
            )
    return header, rows


def adjusted_heading(r: DiffResult) -> str:
    """What the adjusted table is adjusted for: the route mix, and with --cuped each
    user's pre-exposure behaviour (with the variance it removed)."""
    heading = "overall, adjusted for the service/route mix"
    if r.cuped is None or r.options.pre_exposure is None:
        return heading
    days = r.options.pre_exposure.total_seconds() / 86400
    cuts = ", ".join(
        f"{LABELS[m]} −{v['variance_reduction']:.0%} variance" for m, v in r.cuped.items()
    )
    return f"{heading} and for each user's {days:g} d before exposure (CUPED: {cuts})"


def exclusions(r: DiffResult) -> str:
    e = r.excluded
    mode = r.options.test_mode.value
    parts = {
        "exclude": f"{e.get('test_users', 0)} test users ({e.get('test_requests', 0)} requests) excluded",
        "include": f"test traffic included ({e.get('test_requests', 0)} requests)",
        "only": "only test traffic",
    }
    text = parts[mode]
    if e.get("requests_without_user"):
        text += (
            f"; {e['requests_without_user']} requests without a user id (the trace is their unit)"
        )
    return text
