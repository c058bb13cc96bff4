"""`reports/index.html`: every flag with a report in the directory, its latest verdict and
summary sentence, when, and a link to the report — a REGRESSION named in a banner first.

The page looks like the reports (their CSS and badges), loads nothing and runs no script;
every flag key and summary came from telemetry and is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from flagscope.analysis.render.html import CSP, CSS, badge
from flagscope.analysis.verdict import Verdict

# The most alarming first: what someone must act on leads the page.
ORDER = (
    Verdict.REGRESSION,
    Verdict.UNHEALTHY,
    Verdict.INCONCLUSIVE,
    Verdict.NO_DATA,
    Verdict.IMPROVEMENT,
    Verdict.PASS,
)
INDEX_CSS = """
.banner { background: #b3261e; color: #fff; border-radius: 8px; padding: 10px 16px;
  margin: 0 0 16px; font-weight: 600; }
tr.regression td { background: #fdecea; }
tr.regression td:first-child { box-shadow: inset 4px 0 0 #b3261e; padding-left: 8px; }
td.flag { font-weight: 600; white-space: nowrap; }
td.flag.long { white-space: normal; overflow-wrap: anywhere; min-width: 12em; }
.failed { color: #b3261e; }
"""


@dataclass(frozen=True)
class IndexEntry:
    """One flag's line: its latest successful run, and the last run's error if it failed."""

    flag: str
    verdict: Verdict | None
    summary: str
    time: str  # the run's time, ISO 8601 UTC
    link: str  # the report's address relative to the index (already URL-quoted)
    failed: str | None = None  # the last run's error, when it failed after this report


def sort_key(e: IndexEntry) -> tuple[int, str]:
    rank = ORDER.index(e.verdict) if e.verdict is not None else len(ORDER)
    return rank, e.flag


def render(entries: Sequence[IndexEntry], generated: str) -> str:
    rows = sorted(entries, key=sort_key)
    regressed = [e.flag for e in rows if e.verdict is Verdict.REGRESSION]
    banner = (
        f'<p class="banner" id="regressions">REGRESSION: {escape(", ".join(regressed))}</p>'
        if regressed
        else ""
    )
    body = (
        "".join(_row(e) for e in rows)
        if rows
        else '<tr><td colspan="4">No reports yet: run <code>flagscope report</code>.</td></tr>'
    )
    table = (
        '<div class="scroll"><table id="flags"><thead><tr><th scope="col">flag</th>'
        '<th scope="col">verdict</th><th scope="col">summary</th>'
        f'<th scope="col">when (UTC)</th></tr></thead><tbody>{body}</tbody></table></div>'
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>flagscope reports</title><style>{CSS}{INDEX_CSS}</style></head>\n<body><main>\n"
        f'<header><h1>flagscope reports</h1><p class="note">The latest report of each flag, '
        f"the most alarming first; updated {escape(_when(generated))} UTC.</p></header>\n"
        f"{banner}<section>{table}</section>\n"
        "<footer><p>Made by flagscope.</p></footer>\n</main></body></html>\n"
    )


def _row(e: IndexEntry) -> str:
    verdict = badge(e.verdict) if e.verdict is not None else '<span class="failed">FAILED</span>'
    failed = (
        f'{"<br>" if e.summary else ""}<span class="failed">the last run failed: '
        f"{escape(e.failed)}</span>"
        if e.failed
        else ""
    )
    name = "flag long" if len(e.flag) > 30 else "flag"  # a short key never breaks
    css = ' class="regression"' if e.verdict is Verdict.REGRESSION else ""
    return (
        f'<tr{css} data-flag="{escape(e.flag)}"><td class="{name}">'
        f'<a href="{escape(e.link)}">{escape(e.flag)}</a></td><td>{verdict}</td>'
        f'<td class="long">{escape(e.summary)}{failed}</td>'
        f'<td class="num">{escape(_when(e.time))}</td></tr>'
    )


def _when(iso: str) -> str:
    """'2026-11-28T09:00:00Z' as '2026-11-28 09:00'."""
    return iso.replace("T", " ")[:16] if iso else "—"
