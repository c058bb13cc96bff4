"""How bad a guarded flag is in SLO terms: the error budget it burns, and a severity.

SLOs are declared as `[[guard.slo]]` tables, one objective each:

    [[guard.slo]]
    service = "checkout"          # optional: the entry spans of this service only
    route = "POST /pay"           # optional: "/pay" or "POST /pay", as `diff --route`
    availability = 0.999          # good (not error) requests ÷ requests

    [[guard.slo]]
    service = "checkout"
    latency_ms = 300              # a request is good when duration_ms ≤ 300 (Prometheus'
    latency_objective = 0.99      # `le` buckets); 99 % of requests must be
    window = "30d"                # the SLO's window (default 30d, at least 3d)
    name = "checkout p99"         # optional; else made from the scope and the objective

Requests are the analysis's own (analysis.cohorts): entry spans of traces labelled by the
flag's first evaluation in them, test traffic and crossover users left out; without a
scope one request per trace (its edge), with a service or route every entry span of it.

Burn rate is bad fraction ÷ (1 − objective): 1× spends the budget exactly over the SLO's
window (Google SRE workbook, "Alerting on SLOs"). For a flag whose treatment has bad
fraction b_T, baseline b_C, and share s of the requests:

- the flag's own burn at its current exposure: s·(b_T − b_C) ÷ (1 − objective);
- the service's (the compared requests') burn now: (s·b_T + (1 − s)·b_C) ÷ (1 − objective);
- at 100 %: b_T ÷ (1 − objective), and the budget lasts window ÷ that burn.

These use the last hour (`HEADLINE`): recent enough to follow a ramp stage.

Severity is the workbook's multiwindow, multi-burn-rate alerting (its table for a 99.9 %
SLO over 30 days): page at 14.4× over 1 h and 5 m, or 6× over 6 h and 30 m; ticket at
3× over 1 d and 2 h, or 1× over 3 d and 6 h — both windows of a pair above the threshold
(strictly, as the workbook's `>`). It is judged on the treatment's burn — what the flag's
users feel, i.e. the service's burn at 100 % — so a page means the flag harms the
customers who get it, however small its exposure. Each threshold is a share of the budget
spent within the long window (2 %, 5 %, 10 %, 10 %), so for another SLO window it is
share × SLO window ÷ long window (a 7-day SLO pages at 3.36× over 1 h), never below 1×: a
burn the budget outlasts raises nothing. A rollout younger than a window is judged over
the time since it began (a 20-minute-old rollout's "1 h" is those 20 minutes).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import duckdb

from flagscope.analysis.cohorts import BASELINE, TREATMENT, CohortQuery, Evaluations
from flagscope.analysis.diff import check_scope
from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.result import TrafficFilter
from flagscope.analysis.window import naive_utc, parse_duration
from flagscope.collector.lake.read import run

DEFAULT_WINDOW = timedelta(days=30)
MIN_WINDOW = timedelta(days=3)  # the longest alerting window
HEADLINE = timedelta(hours=1)
KEYS = ("name", "service", "route", "availability", "latency_ms", "latency_objective", "window")


class Severity(StrEnum):
    PAGE = "page"
    TICKET = "ticket"
    NONE = "none"


@dataclass(frozen=True)
class Slo:
    name: str
    kind: Literal["availability", "latency"]
    objective: float  # the good fraction, in (0, 1)
    service: str | None = None  # None: every service
    route: str | None = None  # None: every route
    threshold_ms: float | None = None  # latency: good when duration_ms <= threshold_ms
    window: timedelta = DEFAULT_WINDOW

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "objective": self.objective,
            "service": self.service,
            "route": self.route,
            "threshold_ms": self.threshold_ms,
            "window_s": self.window.total_seconds(),
        }


# -- configuration ---------------------------------------------------------------------
def parse_slos(tables: Any, where: str = "[[guard.slo]]") -> tuple[Slo, ...]:
    """The SLOs of a parsed `[[guard.slo]]` array; every mistake names the setting and
    what to write."""
    if not isinstance(tables, list):
        raise AnalysisError(
            f"{where}: SLOs are [[guard.slo]] tables, one per objective, e.g.\n"
            '[[guard.slo]]\nservice = "checkout"\navailability = 0.999'
        )
    slos = []
    for i, table in enumerate(tables):
        label = f"{where} #{i + 1}"
        if not isinstance(table, Mapping):
            raise AnalysisError(f"{label}: must be a table, e.g. {{ availability = 0.999 }}")
        slos.append(_slo(table, label))
    names = [s.name for s in slos]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise AnalysisError(
            f"{where}: SLO {twice[0]!r} is declared twice; remove one or give each a name = …"
        )
    return tuple(slos)


def _slo(t: Mapping[str, Any], where: str) -> Slo:
    for key in t:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise AnalysisError(f"{where}: unknown setting {key!r}; {hint}known: {', '.join(KEYS)}")
    service, route, name = (_text(t, k, where) for k in ("service", "route", "name"))
    if ("availability" in t) == ("latency_ms" in t):
        raise AnalysisError(
            f"{where}: give one objective: availability = 0.999, or latency_ms = 300 with "
            "latency_objective = 0.99 (declare two tables for both)"
        )
    threshold = None
    if "availability" in t:
        if "latency_objective" in t:
            raise AnalysisError(
                f"{where}: latency_objective goes with latency_ms, not availability"
            )
        objective = _fraction(t, "availability", where, "0.999")
    else:
        threshold = t["latency_ms"]
        if not _number(threshold) or threshold <= 0:
            raise AnalysisError(f"{where}: latency_ms = {threshold!r}: a time in ms > 0, e.g. 300")
        if "latency_objective" not in t:
            raise AnalysisError(
                f"{where}: latency_ms needs latency_objective, the share of requests within "
                f"it, e.g. latency_objective = 0.99"
            )
        objective = _fraction(t, "latency_objective", where, "0.99")
    span = DEFAULT_WINDOW
    if "window" in t:
        text = t["window"]
        if not isinstance(text, str):
            raise AnalysisError(f'{where}: window = {text!r}: a duration, e.g. window = "30d"')
        try:
            span = parse_duration(text, "window =")
        except AnalysisError as exc:
            raise AnalysisError(f"{where}: {exc}") from exc
        if span < MIN_WINDOW:
            raise AnalysisError(
                f'{where}: window = "{text}": an SLO window is at least 3d (the longest '
                'alerting window), e.g. window = "30d"'
            )
    kind: Literal["availability", "latency"] = (
        "latency" if threshold is not None else "availability"
    )
    ms = None if threshold is None else float(threshold)
    return Slo(
        name or _name(kind, objective, service, route, ms),
        kind,
        objective,
        service,
        route,
        ms,
        span,
    )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(t: Mapping[str, Any], key: str, where: str) -> str | None:
    value = t.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise AnalysisError(f'{where}: {key} = {value!r}: expected text, e.g. {key} = "checkout"')
    return value


def _fraction(t: Mapping[str, Any], key: str, where: str, example: str) -> float:
    value = t[key]
    if not _number(value) or not 0 < value < 1:
        percent = f" ({value} %?)" if _number(value) and 1 < value < 100 else ""
        raise AnalysisError(
            f"{where}: {key} = {value!r}{percent}: the good fraction of requests, strictly "
            f"between 0 and 1, e.g. {key} = {example} for {float(example) * 100:g} %"
        )
    return float(value)


def _name(
    kind: str, objective: float, service: str | None, route: str | None, ms: float | None
) -> str:
    scope = " ".join(s for s in (service, route) if s) or "all requests"
    target = f"{objective * 100:g} %"
    return f"{scope} {kind} {target}" + ("" if ms is None else f" ≤ {ms:g} ms")


# -- the arithmetic (Google SRE workbook, "Alerting on SLOs") ---------------------------
def burn_rate(bad_fraction: float, objective: float) -> float:
    """How many times faster than the SLO allows the budget is spent: 1× lasts the window."""
    if not 0 < objective < 1:
        raise AnalysisError(f"objective {objective}: must be strictly between 0 and 1, e.g. 0.999")
    return bad_fraction / (1 - objective)


def time_to_exhaust(burn: float, window: timedelta) -> timedelta | None:
    """The time a whole budget lasts at `burn`; None (never) when nothing is burnt."""
    return window / burn if burn > 0 else None


def budget_consumed(burn: float, elapsed: timedelta, window: timedelta) -> float:
    """The share of the window's budget `elapsed` at `burn` spends."""
    return burn * (elapsed / window)


def flag_burn(share: float, bad_treatment: float, bad_baseline: float, objective: float) -> float:
    """The burn the flag adds at exposure `share` (of requests): its extra over baseline."""
    return burn_rate(share * (bad_treatment - bad_baseline), objective)


def service_burn(
    share: float, bad_treatment: float, bad_baseline: float, objective: float
) -> float:
    """The burn of the compared requests, both cohorts, at exposure `share`."""
    return burn_rate(share * bad_treatment + (1 - share) * bad_baseline, objective)


@dataclass(frozen=True)
class BurnRule:
    """Alert when the burn exceeds the threshold over both windows."""

    severity: Severity
    long: timedelta
    short: timedelta
    budget_share: float  # of the SLO's budget spent within `long`

    def threshold(self, slo_window: timedelta) -> float:
        """budget share × SLO window ÷ long window (14.4 for 2 % in 1 h of 30 days), at
        least 1: a burn the budget outlasts is no alert."""
        return max(1.0, self.budget_share * (slo_window / self.long))


_M, _H, _D = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
RULES = (  # the workbook's table for 30 days
    BurnRule(Severity.PAGE, 1 * _H, 5 * _M, 0.02),
    BurnRule(Severity.PAGE, 6 * _H, 30 * _M, 0.05),
    BurnRule(Severity.TICKET, 1 * _D, 2 * _H, 0.10),
    BurnRule(Severity.TICKET, 3 * _D, 6 * _H, 0.10),
)
WINDOWS = tuple(sorted({w for r in RULES for w in (r.long, r.short)} | {HEADLINE}))


def severity(burns: Mapping[timedelta, float | None], slo_window: timedelta) -> Severity:
    """The most severe rule whose two windows both burn above its threshold; a window
    without requests (None) fires nothing."""
    for level in (Severity.PAGE, Severity.TICKET):
        for rule in (r for r in RULES if r.severity is level):
            limit = rule.threshold(slo_window)
            pair = (burns.get(rule.long), burns.get(rule.short))
            if all(b is not None and b > limit for b in pair):
                return level
    return Severity.NONE


# -- the lake ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Counts:
    requests: int
    bad: int

    @property
    def bad_fraction(self) -> float | None:
        return self.bad / self.requests if self.requests else None


@dataclass(frozen=True)
class CohortCounts:
    treatment: Counts
    baseline: Counts

    @property
    def exposure(self) -> float | None:
        """The treatment's share of the compared requests."""
        total = self.treatment.requests + self.baseline.requests
        return self.treatment.requests / total if total else None


def count_requests(
    lake_dir: Path,
    slo: Slo,
    flag: str,
    variant: str,
    baseline: str,
    starts: Sequence[datetime],
    end: datetime,
    test_mode: TrafficFilter = TrafficFilter.EXCLUDE,
) -> list[CohortCounts]:
    """Per window [start, end), for each of `starts`: each cohort's requests in the SLO's
    scope and the bad ones (errors, or slower than threshold_ms). The cohorts are labelled
    once over the longest window (analysis.cohorts, stage 2) — so a user who crossed over
    in it is left out of every window — and counted into all windows in one pass."""
    end = naive_utc(end)
    starts = [min(naive_utc(s), end) for s in starts]
    if not starts:
        return []
    query = CohortQuery(
        flag, variant, baseline, min(starts), end, slo.service, slo.route, test_mode
    )

    def work(con: duckdb.DuckDBPyConnection) -> list[CohortCounts]:
        Evaluations.collect(con, flag, query.start, end).label(query)
        counts = _counts(con, slo, starts)
        if not any(c.treatment.requests or c.baseline.requests for c in counts):
            # a scope no entry span in the lake has is a typo in the SLO, not a safe budget
            try:
                check_scope(con, slo.service, slo.route)
            except AnalysisError as exc:
                raise AnalysisError(
                    f"SLO {slo.name!r}: {exc} (correct its service or route)"
                ) from exc
        return counts

    return run(lake_dir, work)


def _counts(con: duckdb.DuckDBPyConnection, slo: Slo, starts: list[datetime]) -> list[CohortCounts]:
    # `fs_requests` is stage 2's table of compared requests; `edge` marks the ones the
    # analysis counts (a trace's edge without a scope, every entry span with one).
    bad = "err = 1" if slo.threshold_ms is None else "duration_ms > $threshold"
    columns = ", ".join(
        f"count(*) FILTER (WHERE time >= $s{i}), count(*) FILTER (WHERE time >= $s{i} AND {bad})"
        for i in range(len(starts))
    )
    params: dict[str, Any] = {f"s{i}": s for i, s in enumerate(starts)}
    if slo.threshold_ms is not None:
        params["threshold"] = slo.threshold_ms
    rows = con.execute(
        f"SELECT cohort, {columns} FROM fs_requests WHERE edge GROUP BY cohort", params
    ).fetchall()
    by_arm = {arm: values for arm, *values in rows}
    none = [0] * (2 * len(starts))
    t, c = by_arm.get(TREATMENT, none), by_arm.get(BASELINE, none)

    def at(v: list[Any], i: int) -> Counts:
        return Counts(int(v[2 * i]), int(v[2 * i + 1]))

    return [CohortCounts(at(t, i), at(c, i)) for i in range(len(starts))]


# -- the assessment ------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowBurn:
    window: timedelta  # nominal: 5 m … 3 d
    observed: timedelta  # shorter when the rollout is younger than the window
    counts: CohortCounts
    treatment_burn: float | None  # None: no requests in the cohort
    baseline_burn: float | None

    def to_dict(self) -> dict[str, Any]:
        def cohort(n: Counts, burn: float | None) -> dict[str, Any]:
            return {"requests": n.requests, "bad": n.bad, "burn": burn}

        return {
            "window": _label(self.window),
            "observed_s": self.observed.total_seconds(),
            "treatment": cohort(self.counts.treatment, self.treatment_burn),
            "baseline": cohort(self.counts.baseline, self.baseline_burn),
        }


@dataclass(frozen=True)
class SloAssessment:
    """One SLO's view of a flag. The burns at current exposure and at 100 % are over the
    last hour (`HEADLINE`); None where a cohort had no requests."""

    slo: Slo
    windows: tuple[WindowBurn, ...]
    exposure: float | None  # treatment's share of the compared requests
    flag_burn: float | None  # s·(b_T − b_C) / (1 − objective)
    service_burn: float | None  # (s·b_T + (1 − s)·b_C) / (1 − objective)
    full_burn: float | None  # b_T / (1 − objective): the service's burn at 100 %
    baseline_burn: float | None
    days_to_exhaust: float | None  # at 100 %; None: never (burn ≤ 1×) or no data
    budget_spent: float | None  # of the budget, by the flag's extra bad requests so far (≤ 3 d)
    severity: Severity
    sentence: str

    def to_dict(self) -> dict[str, Any]:
        """JSON: `slo` (its settings, window in seconds), `severity`, `sentence`, the
        fields above (`full_exposure_burn` is `full_burn`, `days_to_exhaust_at_full_exposure`
        and `budget_spent_by_flag` the others), `thresholds` (each rule's burn threshold
        for this SLO's window) and `windows` (per window: its nominal length, the seconds
        observed, each cohort's requests, bad requests and burn)."""
        return {
            "slo": self.slo.to_dict(),
            "severity": str(self.severity),
            "sentence": self.sentence,
            "exposure": self.exposure,
            "flag_burn": self.flag_burn,
            "service_burn": self.service_burn,
            "full_exposure_burn": self.full_burn,
            "baseline_burn": self.baseline_burn,
            "days_to_exhaust_at_full_exposure": self.days_to_exhaust,
            "budget_spent_by_flag": self.budget_spent,
            "thresholds": [
                {
                    "severity": str(r.severity),
                    "long": _label(r.long),
                    "short": _label(r.short),
                    "burn": r.threshold(self.slo.window),
                }
                for r in RULES
            ],
            "windows": [w.to_dict() for w in self.windows],
        }


def assess(
    lake_dir: Path,
    slo: Slo,
    flag: str,
    variant: str,
    baseline: str,
    rollout_start: datetime | None,
    now: datetime,
    test_mode: TrafficFilter = TrafficFilter.EXCLUDE,
) -> SloAssessment:
    """The flag's burn of `slo`'s budget over each alerting window ending `now`, each
    clipped to `rollout_start` (None: not clipped), and its severity."""
    end = naive_utc(now)
    begin = None if rollout_start is None else min(naive_utc(rollout_start), end)
    starts = [end - w if begin is None else max(end - w, begin) for w in WINDOWS]
    counts = count_requests(lake_dir, slo, flag, variant, baseline, starts, end, test_mode)
    return assessment(
        slo, [(w, end - s, c) for w, s, c in zip(WINDOWS, starts, counts, strict=True)]
    )


def assessment(
    slo: Slo, observed: Sequence[tuple[timedelta, timedelta, CohortCounts]]
) -> SloAssessment:
    """The assessment from (window, time observed, counts) for each of `WINDOWS`."""

    def burn(n: Counts) -> float | None:
        b = n.bad_fraction
        return None if b is None else burn_rate(b, slo.objective)

    rows = tuple(WindowBurn(w, o, c, burn(c.treatment), burn(c.baseline)) for w, o, c in observed)
    by_window = {r.window: r for r in rows}
    head = by_window[HEADLINE]
    b_t, b_c, s = (
        head.counts.treatment.bad_fraction,
        head.counts.baseline.bad_fraction,
        head.counts.exposure,
    )
    full = head.treatment_burn
    own = service = days = spent = None
    if b_t is not None and b_c is not None and s is not None:
        own = flag_burn(s, b_t, b_c, slo.objective)
        service = service_burn(s, b_t, b_c, slo.objective)
    if full is not None and full > 1:
        lasts = time_to_exhaust(full, slo.window)
        days = None if lasts is None else lasts / _D
    longest = max(rows, key=lambda r: r.window)
    lt, lc = longest.counts.treatment.bad_fraction, longest.counts.baseline.bad_fraction
    if lt is not None and lc is not None and longest.counts.exposure is not None:
        extra = flag_burn(longest.counts.exposure, lt, lc, slo.objective)
        spent = budget_consumed(max(extra, 0.0), longest.observed, slo.window)
    level = severity({r.window: r.treatment_burn for r in rows}, slo.window)
    fields = (s, own, service, full, head.baseline_burn, days, spent, level)
    return SloAssessment(slo, rows, *fields, _sentence(slo, head, s, own, service, days, level))


def _sentence(
    slo: Slo,
    head: WindowBurn,
    share: float | None,
    own: float | None,
    service: float | None,
    days: float | None,
    level: Severity,
) -> str:
    full, base = head.treatment_burn, head.baseline_burn
    if full is None:
        return f"{slo.name}: no treatment requests in the last {_label(head.observed)}; no burn to report"
    budget = f"the {_label(slo.window, long=True)} budget"
    baseline = "" if base is None else f", baseline {base:.1f}×"
    if days is None:
        line = f"at 100 % this flag would burn {full:.1f}× and never exhaust {budget}{baseline}"
    else:
        lasts = f"{days:.1f} days" if days >= 1 else f"{days * 24:.1f} hours"
        line = f"at 100 % this flag would exhaust {budget} in {lasts} ({full:.1f}× burn{baseline})"
        if base is not None and full <= base:
            line += ", no faster than the baseline"
    if share is not None and own is not None and service is not None:
        adds = f"adds {own:.1f}×" if own > 0 else "adds nothing over baseline"
        line += (
            f"; at its {share * 100:.3g} % of requests it {adds} (the service burns {service:.1f}×)"
        )
    if level is not Severity.NONE:
        return f"{slo.name}: {line} — {level}"
    rest = "the budget is safe" if days is None else "no alerting threshold crossed"
    return f"{slo.name}: {line}; {rest}"


def _label(span: timedelta, long: bool = False) -> str:
    """`5m`, `1h`, `3d` (or `30-day`, `1-hour` in prose)."""
    seconds = span.total_seconds()
    for size, short, word in ((86400, "d", "day"), (3600, "h", "hour"), (60, "m", "minute")):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n}-{word}" if long else f"{n}{short}"
    return f"{seconds:g}-second" if long else f"{seconds:g}s"
