"""The JSON form of a DiffResult — a stable, documented schema (README "JSON report").

`schema_version` changes only when a field is removed or changes meaning.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import orjson

from analysis.window import iso_z

if TYPE_CHECKING:
    from analysis.diff import CohortSummary, DiffResult, MetricResult

SCHEMA_VERSION = 1


def _num(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def cohort(s: CohortSummary) -> dict[str, Any]:
    return {"variant": s.variant, "users": s.users, "requests": s.requests, "errors": s.errors,
            "error_rate": s.error_rate, "mean_ms": s.mean_ms,
            "quantiles_ms": dict(s.quantiles_ms)}


def metric(m: MetricResult) -> dict[str, Any]:
    e = m.estimate
    out = {
        "metric": m.metric, "verdict": m.judgement.verdict.value, "reason": m.judgement.reason,
        "status": e.status.value, "method": e.method.value, "sequential": e.sequential,
        "baseline": _num(e.control), "treatment": _num(e.treatment),
        "diff": _num(e.diff), "diff_ci": [_num(e.diff_lo), _num(e.diff_hi)],
        "rel": _num(e.rel) if e.has_relative else None,
        "rel_ci": [_num(e.rel_lo), _num(e.rel_hi)] if e.has_relative else None,
        "p_value": _num(e.p_value), "alpha": e.alpha,
    }
    if m.q_value is not None:
        out["q_value"] = _num(m.q_value)
    return out


def result_to_dict(r: DiffResult) -> dict[str, Any]:
    o = r.options
    return {
        "schema_version": SCHEMA_VERSION,
        "summary": r.summary,
        "verdict": r.verdict.value,
        "reason": r.reason,
        "exit_code": r.exit_code,
        "flag": o.flag,
        "treatment_variant": o.variant,
        "baseline_variant": o.baseline,
        "window": {"start": iso_z(o.start), "end": iso_z(o.end)},
        "filters": {"service": o.service, "route": o.route, "test_traffic": o.test_mode.value},
        "settings": {"alpha": o.alpha, "sequential": o.sequential,
                     "error_rate_threshold_pp": o.thresholds.error_rate_pp,
                     "latency_threshold_pct": o.thresholds.latency_pct,
                     "min_users": o.thresholds.min_users,
                     "expected_split": o.expected_split},
        "cohorts": {"treatment": cohort(r.treatment), "baseline": cohort(r.baseline)},
        "metrics": [metric(m) for m in r.metrics],
        "adjusted_metrics": [metric(m) for m in r.adjusted],
        "breakdown": [
            {"service": s.service, "route": s.route,
             "cohorts": {"treatment": cohort(s.treatment), "baseline": cohort(s.baseline)},
             "metrics": [metric(m) for m in s.metrics]}
            for s in r.breakdown
        ],
        "health": [{"check": h.name, "ok": h.ok, "detail": h.detail} for h in r.health],
        "srm": None if r.srm is None else {"chi2": r.srm.chi2, "df": r.srm.df,
                                             "p_value": r.srm.p_value, "alert": r.srm.alert},
        "excluded": dict(r.excluded),
    }


def render(r: DiffResult) -> str:
    return orjson.dumps(result_to_dict(r), option=orjson.OPT_INDENT_2).decode() + "\n"
