"""'What is different' (`flagscope.analysis.different`) in HTML: the sentence, paired bars
in SVG — per value, its share of treatment's bad requests, of treatment's good ones and of
the baseline's — and the table behind them. The UI's page and the HTML report show the
same section; `markdown` has its own few lines."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import TYPE_CHECKING

from flagscope.analysis.different import Bad, Difference, DiffStatus, Finding
from flagscope.analysis.render import svg

if TYPE_CHECKING:
    from flagscope.analysis.result import DiffResult

CHART_ROWS = 8  # values drawn; the table lists up to TABLE_ROWS
TABLE_ROWS = 20
# Okabe & Ito 2008 (the report's cohort colours): treatment's bad, its good, the baseline
BARS = ("#d55e00", "#f0b88f", "#0072b2")
MAX_LABEL = 90


def _pct(share: float) -> str:
    return f"{share * 100:.0f} %"


def _q(q: float) -> str:
    return "< 0.001" if q < 0.001 else f"{q:.3f}"


def group_names(d: Difference) -> tuple[str, str, str]:
    kind = "failed" if d.bad is Bad.ERRORS else "slow"
    base = f"{d.baseline}: {kind}" if d.baseline_group == "bad" else f"{d.baseline}: all"
    return f"{d.treatment}: {kind}", f"{d.treatment}: good", base


def _short(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def chart_rows(d: Difference) -> tuple[Finding, ...]:
    """The significant values, or when none is, the closest ones (the chart says so)."""
    return (d.significant or d.findings)[:CHART_ROWS]


def bars(d: Difference, key: str = "different") -> str:
    """Paired horizontal bars, one group of three per value; bars are told apart by colour,
    by their fixed order (as the legend) and by each bar's own title."""
    rows, k = chart_rows(d), escape(key)
    width, left, right = 680, 8, 56
    top, label_h, bar_h, gap = 52, 20, 12, 14
    row_h = label_h + 3 * (bar_h + 2) + gap
    height = top + row_h * len(rows) + 4
    x = svg.Scale(0.0, 1.0, left, width - right)
    names = group_names(d)
    title = f"What is different: {d.route or 'every route'}"
    desc = (
        "For each attribute value, the share of three groups of requests that carry it: "
        + ", ".join(names)
        + "."
    )
    out = [
        f'<svg class="chart different" data-chart="different" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-labelledby="c-{k}-t c-{k}-d" '
        'xmlns="http://www.w3.org/2000/svg" font-family="inherit">'
        f'<title id="c-{k}-t">{escape(title)}</title>'
        f'<desc id="c-{k}-d">{escape(desc)}</desc>'
    ]
    lx = float(left)
    for name, color in zip(names, BARS, strict=True):
        out.append(f'<rect x="{lx:.1f}" y="12" width="14" height="12" fill="{color}"/>')
        out.append(
            f'<text x="{lx + 19:.1f}" y="22" font-size="13" fill="{svg.TEXT}">{escape(name)}</text>'
        )
        lx += 40 + 7.5 * len(name)
    out.append(
        f'<line x1="{x(0):.1f}" y1="{top - 8}" x2="{x(0):.1f}" y2="{height - 4}" '
        f'stroke="{svg.MUTED}"/>'
    )
    for i, f in enumerate(rows):
        y = top + i * row_h
        out.append(
            f'<text x="{left}" y="{y + 14}" font-size="13" font-weight="600" fill="{svg.TEXT}">'
            f"{escape(_short(f.label))}</text>"
        )
        shares = (f.share_bad, f.share_good, f.share_baseline)
        for j, (share, name, color) in enumerate(zip(shares, names, BARS, strict=True)):
            by = y + label_h + j * (bar_h + 2)
            w = max(x(share) - x(0), 0.0)
            out.append(
                f'<g class="bar" data-group="{j}"><title>{escape(f"{name}: {_pct(share)}")}</title>'
                f'<rect x="{x(0):.1f}" y="{by}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>'
                f'<text x="{x(0) + w + 4:.1f}" y="{by + bar_h - 1}" font-size="12" '
                f'fill="{svg.MUTED}">{escape(_pct(share))}</text></g>'
            )
    out.append("</svg>")
    return "".join(out)


def _table(d: Difference) -> str:
    a, g, b = group_names(d)
    head = ["service", "attribute", "kind", a, g, b, f"users ({a})", "q vs good", "q vs baseline"]
    head.append("design effect")
    lines = []
    for f in d.findings[:TABLE_ROWS]:
        value = escape(f"{f.key}={f.value}")
        cells = [
            f'<td class="long" style="min-width:8em">{escape(f.service)}</td>',
            f'<td class="long attribute" style="min-width:11em">'
            f"{f'<strong>{value}</strong>' if f.significant else value}</td>",
            f"<td>{'symptom' if f.symptom else 'cause'}</td>",
            *(
                f'<td class="num">{_pct(s)}</td>'
                for s in (f.share_bad, f.share_good, f.share_baseline)
            ),
            f'<td class="num">{f.units_bad:,}</td>',
            f'<td class="num">{_q(f.q_good)}</td>',
            f'<td class="num">{_q(f.q_baseline)}</td>',
            f'<td class="num">{f.design_effect:.1f}</td>',
        ]
        cls = ' class="significant"' if f.significant else ""
        lines.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    header = "".join(f'<th scope="col">{escape(h)}</th>' for h in head)
    return (
        f'<div class="scroll"><table class="different"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(lines)}</tbody></table></div>"
    )


def sentence_html(text: str) -> str:
    """The sentence escaped, its `quoted` parts as code (as Markdown shows them)."""
    parts = escape(text).split("`")
    if len(parts) % 2 == 0:  # an odd number of backticks: leave them as they are
        return escape(text)
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def method_note(d: Difference) -> str:
    kind = (
        "failed (an error)"
        if d.bad is Bad.ERRORS
        else f"slow (over the baseline's p95, {d.threshold_ms or 0:,.0f} ms)"
    )
    base = "failed" if d.bad is Bad.ERRORS else "slow"
    against = (
        f"the baseline's {base} requests"
        if d.baseline_group == "bad"
        else f"all of the baseline's requests (it had too few {base} ones)"
    )
    sample = (
        f" Read a {d.sampled:.0%} hash-sample of users (whole users), the lake query's bound."
        if d.sampled < 1
        else ""
    )
    return (
        f"A request is bad when {kind}. Each value (an attribute of any span of the request's "
        "trace, named by that span's service) is tested against treatment's good requests and "
        f"against {against}, users as the unit (a design-effect corrected χ², jackknife over "
        f"users), Benjamini–Hochberg over all {d.candidates} values; in bold: both q ≤ "
        f"{d.alpha:g} and both shares higher. Causes rank before symptoms (error.type, "
        "exceptions, status codes: how a request fails, which no good request carries). "
        f"Near-unique keys (ids, paths) are left out.{sample}"
    )


def html_section(d: Difference, key: str = "different") -> str:
    """The whole section: sentence, bars, table, how it was computed."""
    route = d.route or "every route"
    title = f"What is different: {route}"
    if d.status is not DiffStatus.OK or not d.findings:
        inner = f'<p class="summary" id="{escape(key)}-sentence">{sentence_html(d.sentence)}</p>'
    else:
        none = (
            ""
            if d.significant
            else '<p class="note">None is significant; the closest values are drawn.</p>'
        )
        inner = (
            f'<p class="summary" id="{escape(key)}-sentence">{sentence_html(d.sentence)}</p>{none}'
            f'<figure style="max-width:860px">{bars(d, key)}</figure>{_table(d)}'
        )
    note = f'<p class="note">{escape(method_note(d))}</p>'
    return f'<section id="{escape(key)}"><h2>{escape(title)}</h2>\n{inner}{note}\n</section>'


def report_sections(r: DiffResult) -> list[str]:
    """The HTML report's sections, one per regressed route looked at ([] without)."""
    return [html_section(d, f"different-{i + 1}") for i, d in enumerate(r.different)]


def markdown_lines(
    r: DiffResult, table: Callable[[list[str], list[list[str]]], str], md: Callable[[str], str]
) -> list[str]:
    """The Markdown report's part ([] without); `table` and `md` are the Markdown
    renderer's (escaping every cell)."""
    out: list[str] = []
    for d in r.different:
        a, g, b = group_names(d)
        out += ["", f"### What is different: {md(d.route or 'every route')}", "", md(d.sentence)]
        rows = [
            [
                f.label,
                _pct(f.share_bad),
                _pct(f.share_good),
                _pct(f.share_baseline),
                _q(f.q_good),
                _q(f.q_baseline),
                ("symptom" if f.symptom else "cause") if f.significant else "",
            ]
            for f in d.findings[:TABLE_ROWS]
        ]
        if rows:
            header = ["value", a, g, b, "q (vs good)", "q (vs baseline)", "finding"]
            out += ["", table(header, rows)]
        out += ["", md(method_note(d))]
    return out
