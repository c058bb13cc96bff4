"""`flagscope diff --format markdown`: ready to paste into a pull request or a chat."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from flagscope.analysis.render import different, examples, text

if TYPE_CHECKING:
    from flagscope.analysis.result import DiffResult


# Characters Markdown (CommonMark, GFM tables) would read as markup or raw HTML.
_MARKUP = re.compile(r"([\\`*_\[\]~|#!])")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def md(value: str) -> str:
    """A telemetry string as literal Markdown text: no raw HTML, no emphasis or links, no
    line break (which would end a table row), no control characters."""
    value = "".join(_ENTITIES.get(ch, ch) for ch in value)
    return _MARKUP.sub(r"\\\1", text.printable(value))


def table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(md(c) for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def why(r: DiffResult) -> list[str]:
    """The verdict, then a list item per reason."""
    lead = text.why_lead(r)
    if not lead and len(r.why) == 1:
        return [f"Verdict **{r.verdict.value}**: {md(r.why[0])}"]
    return [f"Verdict **{r.verdict.value}**. {md(lead or 'Because:')}", ""] + [
        f"- {md(line)}" for line in r.why
    ]


def render(r: DiffResult) -> str:
    o = r.options
    out = [
        f"**{md(r.summary)}**",
        "",
        *why(r),
        "",
        f"Window {text.window(r)}; {md(text.exclusions(r))}.",
    ]
    if r.compared:
        seq = ", always-valid (sequential)" if o.sequential else ""
        out += [
            "",
            "### Cohorts",
            "",
            table(*text.cohort_rows(r)),
            "",
            f"### Overall ({text.confidence_pct(r)} % intervals{seq})",
            "",
            table(*text.metric_rows(r.metrics)),
            "",
            md(text.adjusted_heading(r).capitalize()) + ":",
            "",
            table(*text.metric_rows(r.adjusted)),
        ]
        if r.breakdown:
            out += ["", "### Per service and route", "", table(*text.breakdown_rows(r))]
        out += examples.markdown_lines(r, table, md)
        out += different.markdown_lines(r, table, md)
        out += ["", "### Health", ""]
        out += [f"- {'✅' if h.ok else '❌'} **{h.name}**: {md(h.detail)}" for h in r.health]
    return "\n".join(out) + "\n"
