"""A report's example requests, in HTML and Markdown: per regressed route (or the whole
comparison), the treatment's most recent failed and slowest requests beside the
baseline's, with trace id, user (testers marked TEST), latency and status, and a link to
the trace elsewhere when a link template is configured. Every string is escaped: trace
ids, users and routes came from telemetry."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import TYPE_CHECKING

from flagscope.analysis.examples import KINDS, Example, RouteExamples

if TYPE_CHECKING:
    from flagscope.analysis.result import DiffResult

HEADER = ["trace", "time (UTC)", "user", "latency", "status"]
NOTE = (
    "Requests of the window whose trace evaluated the flag, labelled as the comparison "
    "labels them. Test users' requests are marked TEST and listed after the real ones; "
    "the comparison leaves them out."
)


def _lists(x: RouteExamples) -> list[tuple[str, str, list[Example]]]:
    """(cohort, heading, requests) for the treatment's and the baseline's lists."""
    return [
        (cohort, f"{cohort} ({variant}): {title}", x.examples.of(variant, kind))
        for cohort, variant in (("treatment", x.treatment), ("baseline", x.baseline))
        for kind, title in KINDS.items()
    ]


def _cells(e: Example) -> tuple[str, str, str, str]:
    return (
        f"{e.time:%m-%d %H:%M:%S}",
        (e.user_id or "—") + (" TEST" if e.is_test else ""),
        f"{e.duration_ms:,.1f} ms",
        e.status(),
    )


# -- HTML -----------------------------------------------------------------------------------
def html_section(r: DiffResult) -> str:
    """The "Example requests" section ("" when the result carries none)."""
    if not r.examples:
        return ""
    blocks = [_html_route(x) for x in r.examples]
    return (
        '<section id="examples"><h2>Example requests</h2>\n'
        f'<p class="note">{escape(NOTE)}</p>\n' + "\n".join(blocks) + "\n</section>"
    )


def _html_route(x: RouteExamples) -> str:
    parts = [f'<h3 class="route">{escape(x.scope)}</h3>', '<div class="examples">']
    for i, (cohort, heading, rows) in enumerate(_lists(x)):
        kind = list(KINDS)[i % 2]
        inner = _html_table(x, rows) if rows else '<p class="note">None in the window.</p>'
        parts.append(
            f'<div class="block" data-list="{cohort}-{kind}"><h4>{escape(heading)}</h4>'
            f"{inner}</div>"
        )
    return "".join(parts) + "</div>"


def _html_table(x: RouteExamples, rows: list[Example]) -> str:
    head = "".join(f'<th scope="col">{h}</th>' for h in HEADER)
    lines = []
    for e in rows:
        at, _, latency, status = _cells(e)
        link = x.link(e.trace_id)
        trace = f"<code>{escape(e.trace_id)}</code>"
        if link:
            trace = f'<a class="trace" href="{escape(link)}" rel="noopener noreferrer">{trace}</a>'
        who = escape(e.user_id or "—") + (
            ' <span class="tag test">TEST</span>' if e.is_test else ""
        )
        css = ' class="error"' if e.is_error else ""
        lines.append(
            f'<tr{css}><td class="long">{trace}</td><td class="num">{escape(at)}</td>'
            f'<td class="long">{who}</td><td class="num">{escape(latency)}</td>'
            f'<td class="num">{escape(status)}</td></tr>'
        )
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>'
        + "".join(lines)
        + "</tbody></table></div>"
    )


# -- Markdown -------------------------------------------------------------------------------
def markdown_lines(
    r: DiffResult, table: Callable[[list[str], list[list[str]]], str], md: Callable[[str], str]
) -> list[str]:
    """The "Example requests" part of the Markdown report ([] when there are none);
    `table` and `md` are the Markdown renderer's (escaping every cell)."""
    if not r.examples:
        return []
    out = ["", "### Example requests", "", md(NOTE)]
    for x in r.examples:
        out += ["", f"#### {md(x.scope)}"]
        for _, heading, rows in _lists(x):
            out += ["", f"{md(heading)}:", ""]
            if not rows:
                out.append("None in the window.")
                continue
            body = [[e.trace_id, *_cells(e)] for e in rows]
            text = table(HEADER, body)
            out.append(_link_ids(text, x, rows, md))
    return out


def _link_ids(text: str, x: RouteExamples, rows: list[Example], md: Callable[[str], str]) -> str:
    """Each trace id cell as a link to the trace elsewhere, when a template is set (the
    id is 32 hex digits, so it needs no escaping inside the link text)."""
    if not x.trace_link:
        return text
    for e in rows:
        link = x.link(e.trace_id) or ""
        target = "".join({"<": "%3C", ">": "%3E", " ": "%20", "|": "%7C"}.get(c, c) for c in link)
        text = text.replace(f"| {md(e.trace_id)} |", f"| [{md(e.trace_id)}](<{target}>) |", 1)
    return text
