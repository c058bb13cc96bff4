"""`flagscope diff` for a terminal: the sentence first, then aligned tables."""

from __future__ import annotations

import shutil
import textwrap
from typing import TYPE_CHECKING

from flagscope.analysis.render import text

if TYPE_CHECKING:
    from flagscope.analysis.result import DiffResult


def table(header: list[str], rows: list[list[str]]) -> str:
    header = [text.printable(h) for h in header]
    rows = [[text.printable(c) for c in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def prose(line: str, width: int, indent: str = "  ") -> str:
    """A sentence wrapped to the terminal (an outside reader met 389-character lines);
    continuation lines indented under it."""
    lead = " " * (len(line) - len(line.lstrip(" "))) + indent
    return textwrap.fill(line, width, subsequent_indent=lead, break_on_hyphens=False)


def why(r: DiffResult, width: int) -> list[str]:
    """The verdict, then each reason on a line of its own."""
    lead = text.why_lead(r)
    if not lead and len(r.why) == 1:
        return [prose(f"verdict: {r.verdict.value} — {text.printable(r.why[0])}", width)]
    head = prose(f"verdict: {r.verdict.value} — {lead or 'because:'}", width)
    return [head] + [prose(f"  - {text.printable(line)}", width, "    ") for line in r.why]


def render(r: DiffResult, width: int | None = None) -> str:
    """The report for a terminal `width` columns wide (default: the terminal's, else 100);
    the tables keep their rows whole, the sentences wrap."""
    width = max(60, width or shutil.get_terminal_size((100, 24)).columns)
    o = r.options
    clean = text.printable
    out = [
        prose(clean(r.summary), width),
        "",
        *why(r, width),
        prose(f"window: {text.window(r)}; {clean(text.exclusions(r))}", width),
    ]
    if not r.compared:
        return "\n".join(out) + "\n"
    seq = " (always-valid intervals, sequential mode)" if o.sequential else ""
    out += [
        "",
        "cohorts",
        table(*text.cohort_rows(r)),
        "",
        f"overall, {text.confidence_pct(r)} % intervals{seq}",
        table(*text.metric_rows(r.metrics)),
        "",
        text.adjusted_heading(r),
        table(*text.metric_rows(r.adjusted)),
    ]
    if r.breakdown:
        out += [
            "",
            "per service and route (q: weighted Benjamini–Hochberg over the decisive tests)",
            table(*text.breakdown_rows(r)),
        ]
    out += ["", "health"] + [
        prose(f"  {'ok  ' if h.ok else 'FAIL'}  {h.name}: {clean(h.detail)}", width, "    ")
        for h in r.health
    ]
    return "\n".join(out) + "\n"
