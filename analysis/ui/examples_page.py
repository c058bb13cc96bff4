"""A route's example traces (`/examples/<flag>?route=…&service=…&window=…`): the treatment's
most recent failed and slowest requests beside the baseline's, each with its user (test
users marked), latency and status, linked to the trace's waterfall."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from flagscope.analysis.examples import Example, Examples, trace_url
from flagscope.analysis.ui.layout import esc, pending, problem, section, table, url, when
from flagscope.analysis.ui.work import Answer
from flagscope.analysis.window import iso_z


@dataclass(frozen=True)
class ExamplesView:
    flag: str
    window: str
    start: datetime
    end: datetime
    treatment: str
    baseline: str
    service: str | None
    route: str | None
    examples: Answer[Examples]
    trace_link: str | None  # a template with {trace_id}


def render_body(v: ExamplesView) -> list[str]:
    scope = " · ".join(x for x in (v.service, v.route) if x) or "every route"
    head = (
        f'<header><h1>Example traces: {esc(v.flag)} <span class="muted">{esc(v.treatment)} vs '
        f'{esc(v.baseline)}</span></h1><p class="summary" id="scope">{esc(scope)}</p>'
        f'<p class="note">Requests from {esc(when(v.start))} to {esc(when(v.end))} whose trace '
        "evaluated the flag, labelled as the comparison labels them (the trace's first "
        "evaluation). Test traffic is kept here, marked TEST, and listed last; the comparison "
        "leaves it out.</p></header>"
    )
    found = v.examples.value
    if found is None:
        inner = problem(v.examples.error) if v.examples.error else pending("the example requests")
        return [head, section("examples", "Requests", inner)]
    body = [head, _counts(v, found)]
    blocks = []
    for cohort, variant in (("treatment", v.treatment), ("baseline", v.baseline)):
        for kind, title in (
            ("failed", "most recent failed requests"),
            ("slowest", "slowest requests"),
        ):
            rows = found.of(variant, kind)
            heading = f"{cohort} ({variant}): {title}"
            inner = (
                _rows(rows, v.trace_link, v.route is None)
                if rows
                else '<p class="note">None in the window.</p>'
            )
            blocks.append(
                f'<div class="block" id="{esc(cohort)}-{esc(kind)}"><h3>{esc(heading)}</h3>{inner}</div>'
            )
    body.append(section("examples", "Requests", f'<div class="examples">{"".join(blocks)}</div>'))
    return body


def _counts(v: ExamplesView, found: Examples) -> str:
    rows = []
    for cohort, variant in (("treatment", v.treatment), ("baseline", v.baseline)):
        requests, errors, tests = found.counts.get(variant, (0, 0, 0))
        rate = f"{errors / requests:.2%}" if requests else "—"
        rows.append(
            [esc(cohort), esc(variant), f"{requests:,}", f"{errors:,}", esc(rate), f"{tests:,}"]
        )
    header = ["cohort", "variant", "requests", "failed", "failed share", "of them test traffic"]
    return section("counts", "In the window", table(header, rows))


def trace_href(trace_id: str, at: datetime) -> str:
    return url("/trace", trace_id, at=iso_z(at))


def external(template: str | None, trace_id: str) -> str:
    """The same trace elsewhere (Jaeger, Tempo, Honeycomb), from `--trace-link`."""
    if not template:
        return ""
    href = trace_url(template, trace_id) or ""
    return (
        f' <a class="external" href="{esc(href)}" rel="noopener noreferrer" target="_blank" '
        f'title="open this trace at {esc(urlsplit(href).netloc)}">↗ elsewhere</a>'
    )


def _rows(rows: list[Example], template: str | None, with_route: bool) -> str:
    cells = []
    for e in rows:
        user = f'<span class="nowrap">{esc(e.user_id or "—")}</span>' + (
            ' <span class="tag test">TEST</span>' if e.is_test else ""
        )
        status = str(e.http_status_code) if e.http_status_code is not None else ""
        if e.is_error:
            status += ' <span class="tag error">ERROR</span>'
        href = esc(trace_href(e.trace_id, e.time))
        trace = f'<a class="trace" href="{href}"><code>{esc(e.trace_id[:12])}…</code></a>'
        row = [
            f'<span class="num">{esc(f"{e.time:%m-%d %H:%M:%S}")}</span>',
            trace + external(template, e.trace_id),
            user,
            f'<span class="num">{e.duration_ms:,.1f} ms</span>',
            f'<span class="nowrap">{status or "ok"}</span>',
        ]
        if with_route:
            row.append(f'{esc(e.service_name)}<br><span class="muted">{esc(e.route)}</span>')
        cells.append(row)
    header = ["time (UTC)", "trace", "user", "latency", "status"]
    return table([*header, "service / route"] if with_route else header, cells)
