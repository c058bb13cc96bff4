"""The flags page (`/`): every flag in the lake, its verdict and summary sentence, its
variants with users and shares, first and last evaluation, stale or not. Sorted by a query
parameter (`?sort=users`, `?sort=-last`): the column headers are links. A flag in
REGRESSION is listed in a banner above the table and its row stands out."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from flagscope.analysis.ui.layout import (
    ago,
    badge,
    esc,
    link,
    pending,
    problem,
    section,
    url,
    when,
)
from flagscope.analysis.ui.overview import SORTS, FlagOverview, Overview, sort_key
from flagscope.analysis.ui.verdicts import CurrentVerdict
from flagscope.analysis.verdict import Verdict

MAX_FLAGS = 500
COLUMNS = (  # header, (link text, sort key) of its sort links
    ("Flag", (("Flag", "flag"),)),
    ("Verdict", (("Verdict", "verdict"),)),
    ("Summary", ()),
    ("Variants", (("users and share", "users"),)),
    ("Evaluated", (("first", "first"), ("last", "last"))),
    ("Stale", (("Stale", "stale"),)),
)
DESCENDING_FIRST = {"users", "first", "last"}  # a first click on these sorts the largest first


def parse_sort(text: str | None) -> tuple[str, bool]:
    """('verdict', False) from None; ('users', True) from '-users'; unknown → the default."""
    raw = (text or "verdict").strip()
    descending = raw.startswith("-")
    name = raw.lstrip("-")
    return (name, descending) if name in SORTS else ("verdict", False)


def ordered(
    flags: tuple[FlagOverview, ...],
    verdicts: Mapping[str, CurrentVerdict],
    sort: str,
    descending: bool,
) -> list[FlagOverview]:
    def verdict_of(f: FlagOverview) -> Verdict | None:
        current = verdicts.get(f.flag)
        return current.verdict if current else None

    return sorted(flags, key=lambda f: sort_key(sort, f, verdict_of(f)), reverse=descending)


def render_body(
    found: Overview | None,
    verdicts: Mapping[str, CurrentVerdict],
    sort: str,
    descending: bool,
    query: str,
    error: str | None,
    now: datetime,
) -> list[str]:
    if found is None:
        inner = problem(error) if error else pending("the flags in the lake")
        return [section("flags", "Flags", inner)]
    shown = (
        [f for f in found.flags if query.lower() in f.flag.lower()] if query else list(found.flags)
    )
    rows = ordered(tuple(shown), verdicts, sort, descending)
    body = []
    regressed = [f for f in rows if _verdict(verdicts, f) is Verdict.REGRESSION]
    if regressed:
        names = ", ".join(link(url("/flag", f.flag), f.flag) for f in regressed[:20])
        body.append(
            section(
                "regressions",
                f"{len(regressed)} flag{'s' if len(regressed) != 1 else ''} in REGRESSION",
                f"<p>{badge(Verdict.REGRESSION)} {names}: the treatment is worse off than "
                "baseline beyond the threshold. Open a flag for the evidence and the traces "
                "behind it.</p>",
                "alarm",
            )
        )
    listed = _table(rows[:MAX_FLAGS], verdicts, sort, descending, now, query) if rows else ""
    notes = []
    if len(rows) > MAX_FLAGS:
        notes.append(
            f"The first {MAX_FLAGS} of {len(rows)} flags; narrow them with ?q=part-of-the-key."
        )
    if not found.flags:
        notes.append(
            "No flag evaluations in the lake yet: send spans with feature_flag.evaluation "
            "events (README, 'Tagging flags'); this page refreshes itself."
        )
    elif query and not rows:
        notes.append(f"No flag key contains {query!r}.")
    listed += "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
    body.append(section("flags", "Flags", listed))
    return body


def _verdict(verdicts: Mapping[str, CurrentVerdict], f: FlagOverview) -> Verdict | None:
    current = verdicts.get(f.flag)
    return current.verdict if current else None


def _sort_href(key: str, sort: str, descending: bool, query: str) -> tuple[str, str]:
    """(href, arrow) of a sort link: the active column flips, another starts in its
    natural order (largest first for counts and dates)."""
    active = key == sort
    flip = not descending if active else key in DESCENDING_FIRST
    arrow = (" ▼" if descending else " ▲") if active else ""
    return url("/", sort=("-" if flip else "") + key, q=query or None), arrow


def _header_cell(
    title: str, links: tuple[tuple[str, str], ...], sort: str, descending: bool, query: str
) -> str:
    """The column's title, its sort links in it (a title that is its only link is one)."""
    shown = []
    for text, key in links:
        href, arrow = _sort_href(key, sort, descending, query)
        shown.append(link(href, text + arrow, "active" if key == sort else ""))
    if len(links) == 1 and links[0][0] == title:
        return shown[0]
    return esc(title) + (": " + " · ".join(shown) if shown else "")


def _sort_line(sort: str, descending: bool, query: str) -> str:
    """The sort links on one line, for narrow screens where the table has no header."""
    names = {"verdict": "verdict", "flag": "flag", "users": "users", "first": "first seen",
             "last": "last seen", "stale": "stale"}  # fmt: skip
    links = []
    for key, name in names.items():
        href, arrow = _sort_href(key, sort, descending, query)
        links.append(link(href, name + arrow, "active" if key == sort else ""))
    return f'<p class="sortby">Sort by: {" · ".join(links)}</p>'


def _table(
    rows: list[FlagOverview],
    verdicts: Mapping[str, CurrentVerdict],
    sort: str,
    descending: bool,
    now: datetime,
    query: str,
) -> str:
    head = "".join(
        f'<th scope="col">{_header_cell(t, k, sort, descending, query)}</th>' for t, k in COLUMNS
    )
    lines = []
    for f in rows:
        current = verdicts.get(f.flag) or CurrentVerdict(None, "", "")
        long = " long" if len(f.flag) > 28 else ""
        stale = (
            f'<span class="stale">stale</span> <span class="muted">{esc(f.stale.message)}</span>'
            if f.stale
            else '<span class="muted">not stale</span>'
        )
        cells = [
            ("flag-cell", f'<span class="flag{long}">{link(url("/flag", f.flag), f.flag)}</span>'),
            ("verdict-cell", badge(current.verdict) if current.verdict else _no_verdict(current)),
            ("sentence", _summary(current, now)),
            ("variants-cell", _variants(f)),
            (
                "evaluated-cell",
                f'<span class="muted">first</span> <span class="num">{esc(when(f.first_seen))}</span>'
                f'<br><span class="muted">last</span> <span class="num">{esc(when(f.last_seen))}</span>'
                f'<br><span class="muted nowrap">{esc(ago(f.last_seen, now))}</span>',
            ),
            ("stale-cell", stale),
        ]
        klass = ' class="regression"' if current.verdict is Verdict.REGRESSION else ""
        lines.append(
            f'<tr{klass} data-flag="{esc(f.flag)}">'
            + "".join(f'<td class="{c}">{inner}</td>' for c, inner in cells)
            + "</tr>"
        )
    return (
        _sort_line(sort, descending, query)
        + f'<div class="scroll"><table class="flags"><thead><tr>{head}</tr></thead><tbody>'
        + "".join(lines)
        + "</tbody></table></div>"
    )


def _no_verdict(current: CurrentVerdict) -> str:
    if current.pending:
        return '<span class="pending" data-pending="1">computing…</span>'
    return badge(None)


def _summary(current: CurrentVerdict, now: datetime) -> str:
    if current.verdict is None:
        return f'<span class="muted">{esc(current.note)}</span>' if current.note else ""
    source = current.source + (f", {ago(current.at, now)}" if current.at else "")
    return f'{esc(current.summary)}<br><span class="muted">{esc(source)}</span>'


def _variants(f: FlagOverview) -> str:
    items = "".join(
        f"<li><span>{esc(v.variant)}</span>"
        f'<span class="bar" title="{v.share:.1%}"><span style="width:{v.share * 100:.1f}%"></span></span>'
        f'<span class="num">{v.users:,} users · {v.share:.1%}</span></li>'
        for v in f.variants[:8]
    )
    more = f'<li class="muted">and {len(f.variants) - 8} more</li>' if len(f.variants) > 8 else ""
    return f'<ul class="variants">{items}{more}</ul>'
