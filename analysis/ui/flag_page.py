"""A flag's page (`/flag/<key>?window=24h`): the comparison the HTML report shows, for the
window picked in the form at the top, and what a static report cannot show — the verdicts
over time (scheduled reports, guard looks), the comparison as its window grew, the
variants' share over time — and, per route, the way down to the example traces."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from flagscope.analysis.different import Bad
from flagscope.analysis.render import html as report_html
from flagscope.analysis.render import text
from flagscope.analysis.result import DiffResult, MetricResult, StratumResult
from flagscope.analysis.stats import Estimate
from flagscope.analysis.summary import describe
from flagscope.analysis.ui import charts, different_page
from flagscope.analysis.ui.growth import GrowingLook, ShareSeries
from flagscope.analysis.ui.layout import (
    badge,
    esc,
    link,
    pending,
    problem,
    section,
    table,
    url,
    when,
)
from flagscope.analysis.ui.verdicts import VerdictPoint
from flagscope.analysis.ui.work import Answer
from flagscope.analysis.verdict import Verdict

WINDOWS = ("1h", "6h", "24h", "3d", "7d", "30d")


@dataclass(frozen=True)
class FlagView:
    flag: str
    window: str  # as given, e.g. "24h"
    start: datetime  # the window asked for (the diff's result has its own, as computed)
    end: datetime
    variant: str | None
    baseline: str | None
    variants: tuple[str, ...]  # the flag's variants in the lake, for the form
    diff: Answer[DiffResult]
    points: Answer[list[VerdictPoint]]
    growth: Answer[list[GrowingLook]]
    share: Answer[ShareSeries]
    declared: bool  # the flag has a [[reports.flag]]: its settings were used
    first_seen: datetime | None = None  # the flag's first evaluation in the lake


def render_body(v: FlagView) -> list[str]:
    result = v.diff.value
    parts = report_html.sections(result) if result is not None else []
    head = parts[0] if parts else _head(v)
    body = [head, _controls(v)]
    body.append(_over_time(v))
    if result is not None and result.compared:
        body.append(_routes(v, result))
        body += parts[1:-1]  # cohorts, overall, charts, breakdown, health
    elif result is not None:
        body += parts[1:-1]
        body.append(section("routes", "Routes and example traces", _all_requests_link(v, result)))
    body.append(_share(v))
    if parts:
        body.append(parts[-1])  # the settings
    return body


def _head(v: FlagView) -> str:
    inner = (
        problem(v.diff.error + " (the form below picks the window, treatment and baseline)")
        if v.diff.error
        else pending(f"the comparison over the last {v.window}")
    )
    return f"<header><h1>{esc(v.flag)}</h1>{inner}</header>"


def _controls(v: FlagView) -> str:
    windows = list(WINDOWS) if v.window in WINDOWS else [v.window, *WINDOWS]
    window_options = "".join(
        f'<option value="{esc(w)}"{" selected" if w == v.window else ""}>last {esc(w)}</option>'
        for w in windows
    )

    def choices(name: str, chosen: str | None) -> str:
        options = ['<option value="">automatic</option>'] + [
            f'<option value="{esc(x)}"{" selected" if x == chosen else ""}>{esc(x)}</option>'
            for x in v.variants
        ]
        return f'<select name="{name}">{"".join(options)}</select>'

    declared = (
        '<p class="note">Thresholds, expected split and alpha: this flag\'s [[reports.flag]] '
        "in flagscope.toml.</p>"
        if v.declared
        else ""
    )
    computed = (
        f'<p class="note">Computed {esc(when(datetime.fromtimestamp(v.diff.computed_at, UTC)))}; '
        "the page refreshes itself.</p>"
        if v.diff.computed_at
        else ""
    )
    return (
        f'<section id="controls"><form class="controls" method="get" action="{esc(url("/flag", v.flag))}">'
        f'<label>Window <select name="window">{window_options}</select></label>'
        f"<label>Treatment {choices('variant', v.variant)}</label>"
        f"<label>Baseline {choices('baseline', v.baseline)}</label>"
        f'<button type="submit">Compare</button></form>{declared}{computed}</section>'
    )


# -- over time ------------------------------------------------------------------------------
def _over_time(v: FlagView) -> str:
    parts = []
    points = v.points.value or []
    if points:
        since = max(v.start, v.first_seen) if v.first_seen else v.start  # the rollout's start
        parts.append(f"<figure>{charts.verdict_strip(points, since, v.end)}</figure>")
        turned = _first_regression(points)
        if turned:
            parts.append(
                f'<p id="went-bad">First REGRESSION: {esc(when(turned.at))} ({esc(turned.source)}): '
                f"{esc(turned.summary)}</p>"
            )
    elif v.points.error:
        parts.append(problem(v.points.error))
    else:
        parts.append(
            '<p class="note">No scheduled report or guard look of this flag yet (<code>flagscope '
            "schedule</code> and <code>flagscope guard</code> keep them); the comparison as the window grew, "
            "below, comes from the lake.</p>"
        )
    parts.append(_growth(v))
    return section("over-time", "Verdict over time", "\n".join(parts))


def _first_regression(points: list[VerdictPoint]) -> VerdictPoint | None:
    return next(
        (p for p in sorted(points, key=lambda p: p.at) if p.verdict is Verdict.REGRESSION), None
    )


@dataclass(frozen=True)
class _Metric:
    kind: str
    title: str
    unit: str
    pick: Callable[[DiffResult], MetricResult | None]
    threshold: Callable[[DiffResult], float]
    value: Callable[[Estimate], tuple[float, float, float] | None]


def _adjusted(name: str) -> Callable[[DiffResult], MetricResult | None]:
    return lambda r: next((m for m in r.adjusted if m.metric == name), None)


def _stratum_metric(
    service: str, route: str, name: str
) -> Callable[[DiffResult], MetricResult | None]:
    def pick(r: DiffResult) -> MetricResult | None:
        s = next((s for s in r.breakdown if s.service == service and s.route == route), None)
        return next((m for m in s.metrics if m.metric == name), None) if s else None

    return pick


def _pp(e: Estimate) -> tuple[float, float, float] | None:
    return (e.diff * 100, e.diff_lo * 100, e.diff_hi * 100) if e.has_interval else None


def _pct(e: Estimate) -> tuple[float, float, float] | None:
    return (e.rel * 100, e.rel_lo * 100, e.rel_hi * 100) if e.has_relative else None


def growth_metrics(last: DiffResult) -> list[_Metric]:
    """The decisive overall metrics, and those of the route that regressed (if one did)."""
    found = [
        _Metric("growth-error-rate", "Error rate change (route-mix adjusted)", "pp",
                _adjusted("error_rate"), lambda r: r.options.thresholds.error_rate_pp, _pp),
        _Metric("growth-mean-latency", "Mean latency change (route-mix adjusted)", "%",
                _adjusted("mean_latency"), lambda r: r.options.thresholds.latency_pct, _pct),
    ]  # fmt: skip
    worst = next(
        (
            s
            for s in last.breakdown
            if any(m.judgement.verdict is Verdict.REGRESSION for m in s.metrics)
        ),
        None,
    )
    if worst is not None:
        for m in worst.metrics:
            if m.judgement.verdict is not Verdict.REGRESSION:
                continue
            error = m.metric == "error_rate"
            found.append(
                _Metric(
                    f"growth-route-{m.metric}",
                    f"{worst.route}: {text.LABELS[m.metric]} change",
                    "pp" if error else "%",
                    _stratum_metric(worst.service, worst.route, m.metric),
                    (lambda r: r.options.thresholds.error_rate_pp)
                    if error
                    else (lambda r: r.options.thresholds.latency_pct),
                    _pp if error else _pct,
                )
            )
    return found


def _growth(v: FlagView) -> str:
    if v.growth.value is None:
        if v.growth.error:
            return problem(v.growth.error)
        return pending("the comparison as the window grew")
    looks = [g for g in v.growth.value if g.result is not None and g.result.compared]
    if not looks:
        return '<p class="note">No window early enough to compare both cohorts yet.</p>'
    last = looks[-1].result
    assert last is not None
    figures = []
    for metric in growth_metrics(last):
        points = []
        for g in looks:
            assert g.result is not None
            m = metric.pick(g.result)
            numbers = metric.value(m.estimate) if m else None
            if m is None or numbers is None:
                continue
            est, lo, hi = numbers
            said = describe(m.metric, m.estimate)
            label = f"to {g.end:%Y-%m-%d %H:%M} UTC: {said} — {m.judgement.verdict.value}"
            points.append(charts.IntervalPoint(g.end, est, lo, hi, m.judgement.verdict, label))
        if points:
            unit = metric.unit

            def fmt(x: float, u: str = unit) -> str:
                return f"{x:+g} {u}" if x else f"0 {u}"

            figures.append(
                "<figure>"
                + charts.growth_chart(
                    metric.kind,
                    metric.title,
                    points,
                    f"change ({unit})",
                    fmt,
                    metric.threshold(last),
                    [g.end for g in looks],
                )
                + f"<figcaption>Estimate and always-valid {text.confidence_pct(last)} % "
                "interval over the window from its start to each point"
                f"{_missing(len(points), len(looks))}.</figcaption></figure>"
            )
    rows = []
    for g in v.growth.value:
        r = g.result
        if r is None:
            rows.append([f'<span class="num">{esc(when(g.end))}</span>', "", "", esc(g.problem)])
            continue
        users = f"{r.treatment.users:,} / {r.baseline.users:,}"
        rows.append(
            [
                f'<span class="num">{esc(when(g.end))}</span>',
                f'<span class="num">{esc(users)}</span>',
                badge(r.verdict),
                esc(r.summary),
            ]
        )
    start = looks[0].result.options.start if looks[0].result else v.start
    return (
        f'<h3>As the window grew (from {esc(when(start))})</h3><div class="charts">{"".join(figures)}</div>'
        + "<details><summary>Each window in a table</summary>"
        + table(["window to", "users treatment / baseline", "verdict", "summary"], rows)
        + "</details>"
        + '<p class="note">Each point is the whole comparison over the window from its start to '
        "that time, with always-valid intervals (looking again and again does not inflate false "
        "alarms): when it went bad, and at what exposure.</p>"
    )


def _missing(drawn: int, windows: int) -> str:
    if drawn == windows:
        return ""
    return f"; {windows - drawn} of {windows} windows had too few requests for an interval"


# -- routes ---------------------------------------------------------------------------------
def examples_link(v: FlagView, result: DiffResult, service: str | None, route: str | None) -> str:
    return url(
        "/examples",
        v.flag,
        window=v.window,
        variant=result.options.variant,
        baseline=result.options.baseline,
        service=service,
        route=route,
    )


def _routes(v: FlagView, result: DiffResult) -> str:
    def regressed(s: StratumResult) -> bool:
        return any(m.judgement.verdict is Verdict.REGRESSION for m in s.metrics)

    strata = sorted(result.breakdown, key=lambda s: (not regressed(s), s.service, s.route))
    rows, classes = [], []
    for s in strata:
        cells = [esc(s.service), esc(s.route)]
        for name in ("error_rate", "p95_latency"):
            m = next((m for m in s.metrics if m.metric == name), None)
            cells.append(
                f'{badge(m.judgement.verdict)} <span class="num">{esc(text.change(m)[0])}</span>'
                if m
                else ""
            )
        cells.append(
            link(examples_link(v, result, s.service, s.route), "example traces →")
            + (_different_link(v, result, s) if regressed(s) else "")
        )
        rows.append(cells)
        classes.append("regression" if regressed(s) else "")
    inner = table(["service", "route", "error rate", "p95", ""], rows, classes)
    return section("routes", "Routes and example traces", inner + _all_requests_link(v, result))


def _different_link(v: FlagView, result: DiffResult, s: StratumResult) -> str:
    """To what the route's failed (or, when only latency regressed, slow) requests share."""
    errors = any(
        m.metric == "error_rate" and m.judgement.verdict is Verdict.REGRESSION for m in s.metrics
    )
    target = different_page.href(
        v.flag,
        v.window,
        result.options.variant,
        result.options.baseline,
        s.service,
        s.route,
        Bad.ERRORS if errors else Bad.SLOW,
    )
    return "<br>" + link(target, "what is different →", "different")


def _all_requests_link(v: FlagView, result: DiffResult) -> str:
    if not (result.options.variant and result.options.baseline):
        return ""
    return (
        '<p class="note">'
        + link(examples_link(v, result, None, None), "Example traces of every route →")
        + "</p>"
    )


# -- share ----------------------------------------------------------------------------------
def _share(v: FlagView) -> str:
    if v.share.value is None:
        inner = (
            problem(v.share.error) if v.share.error else pending("the variants' share over time")
        )
    elif not v.share.value.variants:
        inner = '<p class="note">No evaluations of real traffic in the window.</p>'
    else:
        s = v.share.value
        inner = (
            f"<figure>{charts.share_chart(s.variants, s.bucket_seconds)}<figcaption>Users (or traces "
            "without a user) who evaluated each variant, as a share of the bucket's, test traffic "
            "aside.</figcaption></figure>"
        )
    return section("share", "Variants' share over time", inner)
