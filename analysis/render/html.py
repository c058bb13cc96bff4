"""`flagscope diff` as one self-contained HTML page: tables, and pictures where people would
rather look than read (latency CDF, error rate and p95 over time, a forest plot per route).

Everything is inline — CSS, SVG, no script, no font or image to fetch — and a
Content-Security-Policy forbids loading anything else, so the file reads the same offline.
Every string that came from telemetry (flag, variants, services, routes, reasons) is
escaped. Numbers are formatted as in the terminal report (flagscope.analysis.render.text).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING

from flagscope.analysis.render import different, examples, svg, text
from flagscope.analysis.summary import describe  # the summary sentence's own wording
from flagscope.analysis.verdict import Verdict
from flagscope.analysis.window import aware_utc

if TYPE_CHECKING:
    from flagscope.analysis.result import Charts, DiffResult, MetricResult

COHORTS = {  # colour (Okabe & Ito 2008, colour-blind safe), dash, marker
    "treatment": ("#d55e00", "", "circle"),
    "baseline": ("#0072b2", "6 4", "square"),
}
BADGE = {
    Verdict.REGRESSION: ("#b3261e", "#fff"),
    Verdict.UNHEALTHY: ("#6f1d8a", "#fff"),
    Verdict.INCONCLUSIVE: ("#f2c94c", "#1f2328"),
    Verdict.PASS: ("#1a7f37", "#fff"),
    Verdict.IMPROVEMENT: ("#0a6b74", "#fff"),
    Verdict.NO_DATA: ("#6e7781", "#fff"),
}
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f8fa; color: #1f2328; line-height: 1.45;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  "Noto Sans", "Liberation Sans", sans-serif; font-size: 15px; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 20px 40px; }
h1 { font-size: 1.35rem; margin: 0 0 .6rem; font-weight: 600; }
h2 { font-size: 1.1rem; margin: 0 0 .6rem; font-weight: 600; }
h3 { font-size: 1rem; margin: 1.1rem 0 .4rem; font-weight: 600; }
section, header { background: #fff; border: 1px solid #d1d9e0; border-radius: 8px;
  padding: 16px 18px; margin: 0 0 16px; }
.summary { font-size: 1.12rem; font-weight: 500; margin: .2rem 0 .6rem; }
.muted, .note { color: #59636e; }
.note { font-size: .9rem; margin: .5rem 0 0; }
.badge { display: inline-block; padding: .1em .55em; border-radius: 999px; font-weight: 700;
  font-size: .8rem; letter-spacing: .02em; white-space: nowrap; vertical-align: .08em; }
.summary .badge { font-size: .9rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: .88rem;
  font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 5px 10px 5px 0; border-bottom: 1px solid #e3e6ea;
  vertical-align: top; }
th { color: #59636e; font-weight: 600; white-space: nowrap; }
td.num { white-space: nowrap; }
td.long { overflow-wrap: anywhere; min-width: 7em; }
.swatch { display: inline-block; width: .8em; height: .8em; margin-right: .35em;
  vertical-align: -.05em; }
.swatch.baseline { border-radius: 1px; }
.swatch.treatment { border-radius: 50%; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr));
  gap: 16px; }
.charts > figure, .forest > figure { margin: 0; min-width: 0; }
.forest { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr));
  gap: 16px; margin-bottom: 12px; }
svg.chart { display: block; width: 100%; height: auto; }
figcaption { font-size: .85rem; color: #59636e; margin-top: 2px; }
ul.why { margin: .2rem 0 .4rem; padding-left: 1.3em; }
ul.why li { margin: .15rem 0; overflow-wrap: anywhere; }
.examples { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr));
  gap: 4px 20px; }
.examples .block { min-width: 0; }
h4 { font-size: .92rem; margin: .8rem 0 .3rem; font-weight: 600; }
tr.error td { background: #fff5f5; }
.tag { display: inline-block; padding: 0 .4em; border-radius: 4px; font-size: .72rem;
  font-weight: 700; }
.tag.test { background: #fff8c5; color: #7d4e00; border: 1px solid #d4a72c; }
ul.health { list-style: none; padding: 0; margin: 0; }
ul.health li { padding: 6px 0; border-bottom: 1px solid #e3e6ea; }
.ok, .fail { display: inline-block; min-width: 3.2em; font-weight: 700; }
.ok { color: #1a7f37; } .fail { color: #b3261e; }
footer { font-size: .85rem; color: #59636e; padding: 0 4px; }
footer dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0; }
footer dt { font-weight: 600; } footer dd { margin: 0; }
@media (max-width: 960px) { table { font-size: .82rem; } th, td { padding-right: 7px; }
  td.num { white-space: normal; } td.short { white-space: nowrap; }
  td .badge { font-size: .68rem; padding: .1em .4em; } }
@media (max-width: 700px) { main { padding: 12px 8px; }
  .charts, .forest, .examples { display: block; }
  .charts > figure, .forest > figure { margin-bottom: 16px; } }
"""


def render(result: DiffResult) -> str:
    r = result
    body = sections(r)
    title = f"flagscope: {r.options.flag} — {r.verdict.value}"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body><main>\n"
        + "\n".join(body)
        + "\n</main></body></html>\n"
    )


def sections(result: DiffResult) -> list[str]:
    """The report's parts in order, from the header to the settings: what `render` puts
    in a page (and `flagscope ui` in its own)."""
    r = result
    body = [_header(r)]
    if r.compared:
        body += [_cohorts(r), _metrics(r), _charts(r), _breakdown(r)]
        body += [part for part in (examples.html_section(r),) if part]  # "" without examples
        body += different.report_sections(r)  # [] without
        body.append(_health(r))
    else:
        body.append(
            _section(
                "no-comparison",
                "No comparison",
                "<p>A cohort has no requests in the window, so there are no "
                "metrics, charts or breakdown to show (why: above).</p>",
            )
        )
    body.append(_footer(r))
    return body


# -- building blocks ------------------------------------------------------------------------
def badge(verdict: Verdict) -> str:
    bg, fg = BADGE[verdict]
    return (
        f'<span class="badge verdict" data-verdict="{verdict.value}" '
        f'style="background:{bg};color:{fg}">{verdict.value}</span>'
    )


def _section(key: str, title: str, inner: str) -> str:
    return f'<section id="{key}"><h2>{escape(title)}</h2>\n{inner}\n</section>'


def _table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    verdicts: Sequence[Verdict] = (),
    titles: Sequence[str] = (),
    numeric_from: int = 2,
    leading: Sequence[str] = (),
) -> str:
    """A table of text cells (escaped); with `verdicts`, the last column becomes a badge;
    `leading`: markup put before each row's first cell text (e.g. a colour swatch)."""
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in header)
    lines = []
    for i, row in enumerate(rows):
        cells = [
            f"<td{_cell_class(c, j >= numeric_from)}>"
            f"{leading[i] if leading and j == 0 else ''}{escape(c)}</td>"
            for j, c in enumerate(row)
        ]
        if verdicts:
            tip = f' title="{escape(titles[i])}"' if titles else ""
            cells[-1] = f"<td{tip}>{badge(verdicts[i])}</td>"
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>'
        + "".join(lines)
        + "</tbody></table></div>"
    )


def _cell_class(cell: str, numeric: bool) -> str:
    """Numbers stay on one line; at narrow widths long ones ("+6.99 pp [+2.94, +13.71]") may
    wrap, short ones ("2.68e-12") still do not; long names break anywhere rather than push
    the table wider than the page."""
    names = [
        n
        for n, on in (
            ("num", numeric),
            ("short", numeric and len(cell) <= 16),
            ("long", not numeric and len(cell) > 16),
        )
        if on
    ]
    return f' class="{" ".join(names)}"' if names else ""


def _swatch(cohort: str) -> str:
    return f'<span class="swatch {cohort}" style="background:{COHORTS[cohort][0]}"></span>'


def _header(r: DiffResult) -> str:
    o = r.options
    variants = f"{o.variant} vs {o.baseline}" if o.variant and o.baseline else ""
    scope = " · ".join(f"{k} {v}" for k, v in (("service", o.service), ("route", o.route)) if v)
    return (
        f'<header><h1>{escape(o.flag)} <span class="muted">{escape(variants)}</span></h1>\n'
        f'<p class="summary">{badge(r.verdict)} <span id="summary">{escape(r.summary)}'
        f"</span></p>\n{_why(r)}\n"
        f'<p class="note" id="window">Window {escape(text.window(r))}; '
        f"{escape(text.exclusions(r))}"
        f"{'; ' + escape(scope) if scope else ''}.</p></header>"
    )


def _why(r: DiffResult) -> str:
    """ "Why:" and each reason on a line of its own."""
    lead = text.why_lead(r)
    if not lead and len(r.why) == 1:
        return f'<p id="why"><strong>Why:</strong> {escape(r.why[0])}</p>'
    items = "".join(f"<li>{escape(line)}</li>" for line in r.why)
    return (
        f'<div id="why"><p><strong>Why:</strong> {escape(lead)}</p>'
        f'<ul class="why">{items}</ul></div>'
    )


def _cohorts(r: DiffResult) -> str:
    header, rows = text.cohort_rows(r)
    swatches = [_swatch(row[0]) for row in rows]  # beside each cohort's name: the charts' key
    return _section("cohorts", "Cohorts", _table(header, rows, leading=swatches))


def _metric_table(metrics: tuple[MetricResult, ...]) -> str:
    header, rows = text.metric_rows(metrics)
    return _table(
        header,
        rows,
        [m.judgement.verdict for m in metrics],
        [m.judgement.reason for m in metrics],
        numeric_from=1,
    )


def _metrics(r: DiffResult) -> str:
    o = r.options
    seq = ", always-valid (sequential)" if o.sequential else ""
    adjusted = "; ".join(describe(m.metric, m.estimate) for m in r.adjusted)
    inner = (
        f"{_metric_table(r.metrics)}\n"
        f"<h3>{escape(text.adjusted_heading(r).capitalize())}</h3>"
        f'<p id="adjusted">{escape(adjusted)}</p>\n{_metric_table(r.adjusted)}\n'
        '<p class="note">REGRESSION and IMPROVEMENT come from the route-mix adjusted error '
        "rate and mean latency and each route's error rate and p95; PASS also needs harm "
        "ruled out for every overall quantile and every route with enough users. Hover a "
        "verdict for its reason.</p>"
    )
    return _section("overall", f"Overall ({text.confidence_pct(r)} % intervals{seq})", inner)


# -- charts ---------------------------------------------------------------------------------
def _figure(chart: str, caption: str) -> str:
    return f"<figure>{chart}<figcaption>{escape(caption)}</figcaption></figure>"


def _charts(r: DiffResult) -> str:
    c = r.charts
    if c is None:
        return _section(
            "charts",
            "Charts",
            '<p class="note" id="no-charts">This result carries '
            "no chart data (the comparison was run without charts).</p>",
        )
    figures = [*_distribution(r, c), *_over_time(r, c)]
    return _section(
        "charts",
        "Latency and errors by cohort",
        '<div class="charts">' + "".join(figures) + "</div>",
    )


def _series(r: DiffResult, cohort: str, points: list[tuple[float, float]]) -> svg.Series:
    color, dash, shape = COHORTS[cohort]
    variant = (r.options.variant if cohort == "treatment" else r.options.baseline) or ""
    return svg.Series(f"{cohort} ({variant})", points, color, dash, shape)


def _ms(v: float) -> str:
    return f"{v / 1000:g} s" if v >= 1000 else f"{v:g}"


def _distribution(r: DiffResult, c: Charts) -> list[str]:
    """The latency CDF and histogram per cohort, both on a log x axis."""
    edges = c.histogram_edges_ms
    shares = {
        k: [n / sum(c.histogram[k]) for n in c.histogram[k]]
        for k in COHORTS
        if sum(c.histogram.get(k, ())) > 0
    }
    if len(edges) < 2 or not shares:
        return [_figure("", "No latency histogram: too few distinct latencies to draw.")]
    x = svg.Axis(
        "latency (ms, log scale)",
        edges[0],
        edges[-1],
        svg.log_ticks(edges[0], edges[-1]),
        _ms,
        log=True,
    )
    cdf = {
        k: [(edges[0], 0.0)] + [(edge, sum(v[: i + 1])) for i, edge in enumerate(edges[1:])]
        for k, v in shares.items()
    }
    steps = {
        k: [(e, share) for i, share in enumerate(v) for e in (edges[i], edges[i + 1])]
        for k, v in shares.items()
    }
    y_cdf = svg.Axis("share of requests at or below", 0, 1, [0, 0.25, 0.5, 0.75, 1], _pct)
    _, top, ticks = svg.nice_range(0, max(max(v) for v in shares.values()), 4)
    y_hist = svg.Axis("share of requests per bin", 0, top, ticks, _pct)
    bins = f"{len(edges) - 1} log-spaced bins"
    return [
        _figure(
            svg.line_chart(
                "cdf",
                "Latency distribution (CDF)",
                "Cumulative share of each cohort's requests by latency, log x "
                "axis; a curve further right is slower.",
                [_series(r, k, p) for k, p in cdf.items()],
                x,
                y_cdf,
                [svg.Guide(0.5, "p50"), svg.Guide(0.95, "p95")],
                markers=False,
            ),
            f"Cumulative, from a histogram of {bins}; further right is slower.",
        ),
        _figure(
            svg.line_chart(
                "histogram",
                "Latency histogram",
                "Share of each cohort's requests per log-spaced latency bin.",
                [_series(r, k, p) for k, p in steps.items()],
                x,
                y_hist,
                markers=False,
            ),
            f"Share of each cohort's requests in each of {bins}.",
        ),
    ]


def _pct(v: float) -> str:
    return f"{v * 100:g} %"


def _epoch(t: datetime) -> float:
    return aware_utc(t).timestamp()


def _over_time(r: DiffResult, c: Charts) -> list[str]:
    rows = [row for row in c.series if row.get("requests")]
    if not rows:
        return [_figure("", "No requests over time to draw.")]
    times = [_epoch(row["bucket"]) for row in rows]
    lo, hi = min(times), max(times) + c.bucket_seconds
    x = svg.Axis(
        f"time (UTC), {_duration(c.bucket_seconds)} buckets",
        lo,
        hi,
        svg.time_ticks(lo, hi),
        svg.clock(hi - lo),
    )
    err = {
        k: [
            (
                _epoch(w["bucket"]) + c.bucket_seconds / 2,
                float(w["errors"] or 0) / float(w["requests"]),
            )
            for w in rows
            if w["cohort"] == k
        ]
        for k in COHORTS
    }
    p95 = {
        k: [
            (_epoch(w["bucket"]) + c.bucket_seconds / 2, float(w["p95_ms"]))
            for w in rows
            if w["cohort"] == k and w.get("p95_ms") is not None
        ]
        for k in COHORTS
    }
    return [
        _time_chart(
            r, "error-rate", "Error rate over time", err, x, "error rate", _pct, "errors / requests"
        ),
        _time_chart(
            r,
            "p95",
            "p95 latency over time",
            p95,
            x,
            "p95 latency (ms)",
            _ms,
            "95th percentile of request latency",
        ),
    ]


def _time_chart(
    r: DiffResult,
    kind: str,
    title: str,
    points: dict[str, list[tuple[float, float]]],
    x: svg.Axis,
    y_title: str,
    fmt: Callable[[float], str],
    what: str,
) -> str:
    values = [v for pts in points.values() for _, v in pts]
    _, top, ticks = svg.nice_range(0, max(values, default=0) * 1.05 or 1, 4)
    y = svg.Axis(y_title, 0, top, ticks, fmt)
    series = [_series(r, k, pts) for k, pts in points.items() if pts]
    chart = svg.line_chart(kind, title, f"{what} per time bucket for each cohort.", series, x, y)
    return _figure(chart, f"{what.capitalize()} per bucket; a bucket with few requests is noisy.")


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


# -- breakdown, health, settings ---------------------------------------------------------------
def _forest_rows(r: DiffResult, metric: str) -> list[svg.Interval]:
    tones = {Verdict.REGRESSION: "bad", Verdict.IMPROVEMENT: "good"}
    rows = []
    for s in r.breakdown:
        m = next((m for m in s.metrics if m.metric == metric), None)
        if m is None:
            continue
        e, tone = m.estimate, tones.get(m.judgement.verdict, "neutral")
        if metric == "error_rate" and e.has_interval:
            est, lo, hi = e.diff * 100, e.diff_lo * 100, e.diff_hi * 100
        elif metric != "error_rate" and e.has_relative:
            est, lo, hi = e.rel * 100, e.rel_lo * 100, e.rel_hi * 100
        else:
            rows.append(
                svg.Interval(s.route, s.service, None, 0, 0, f"n/a ({e.status.value.lower()})")
            )
            continue
        label = f"{est:+.1f} [{lo:+.1f}, {hi:+.1f}]"
        rows.append(svg.Interval(s.route, s.service, est, lo, hi, label, tone))
    return rows


def _breakdown(r: DiffResult) -> str:
    if not r.breakdown:
        return _section(
            "breakdown", "Per service and route", "<p>No route has requests in both cohorts.</p>"
        )
    th = r.options.thresholds
    pct = text.confidence_pct(r)
    plots = [
        svg.forest_plot(
            "forest-error-rate",
            "Error rate change by route",
            f"Treatment minus baseline error rate per route in percentage points, "
            f"with {pct} % intervals, the zero line and ±{th.error_rate_pp:g} pp "
            "thresholds.",
            _forest_rows(r, "error_rate"),
            "change in error rate (pp)",
            _signed(""),
            th.error_rate_pp,
        ),
        svg.forest_plot(
            "forest-p95",
            "p95 latency change by route",
            f"Relative change of p95 latency per route in percent, with {pct} % "
            f"intervals, the zero line and ±{th.latency_pct:g} % thresholds.",
            _forest_rows(r, "p95_latency"),
            "change in p95 latency (%)",
            _signed(" %"),
            th.latency_pct,
        ),
    ]
    legend = (
        '<p class="note">Each line is a route\'s interval: ◆ red = REGRESSION, '
        "● green = IMPROVEMENT, ○ grey = neither. Dashed lines are the thresholds of "
        "practical significance; q-values are one weighted Benjamini–Hochberg family over "
        "every test that can decide the verdict (the adjusted overall ones and the routes).</p>"
    )
    header, rows = text.breakdown_rows(r)
    ms = [m for s in r.breakdown for m in s.metrics]
    table = _table(
        header,
        rows,
        [m.judgement.verdict for m in ms],
        [m.judgement.reason for m in ms],
        numeric_from=2,
    )
    return _section(
        "breakdown",
        "Per service and route",
        '<div class="forest">'
        + "".join(_figure(p, "") for p in plots)
        + f"</div>{legend}\n{table}",
    )


def _signed(unit: str) -> Callable[[float], str]:
    return lambda v: f"{v:+g}{unit}" if v else f"0{unit}"


def _health(r: DiffResult) -> str:
    items = "".join(
        f'<li data-check="{escape(h.name)}"><span class="{"ok" if h.ok else "fail"}">'
        f"{'✓ ok' if h.ok else '✗ FAIL'}</span> <strong>{escape(h.name)}</strong>: "
        f"{escape(h.detail)}</li>"
        for h in r.health
    )
    return _section("health", "Health of the comparison", f'<ul class="health">{items}</ul>')


def _footer(r: DiffResult) -> str:
    o, th = r.options, r.options.thresholds
    split = (
        ", ".join(f"{k}={v:g}" for k, v in o.expected_split.items())
        if o.expected_split
        else "not given (no sample-ratio test)"
    )
    settings = {
        "alpha": f"{o.alpha:g} ({text.confidence_pct(r)} % intervals)",
        "thresholds": f"error rate ±{th.error_rate_pp:g} pp, latency ±{th.latency_pct:g} %",
        "minimum users": f"{th.min_users} per cohort; crossover limit {th.max_crossover_share:.0%}",
        "sequential": "yes (always-valid confidence sequences)" if o.sequential else "no",
        "expected split": split,
        "test traffic": o.test_mode.value,
        "exit code": str(r.exit_code),
    }
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in settings.items())
    return f'<footer><dl id="settings">{rows}</dl><p>Made by flagscope.</p></footer>'
