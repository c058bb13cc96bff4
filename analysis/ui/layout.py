"""The UI's page shell and the small pieces every page shares: headers, CSS, links, notes.

Pages are whole HTML documents rendered on the server; the only "interaction" is links,
GET forms and a meta refresh, so they work without JavaScript and none is allowed
(Content-Security-Policy). Every string that can come from telemetry goes through `esc`
or `url` before it reaches markup; nothing is loaded from anywhere, this origin included,
but the page itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote, urlencode

from flagscope.analysis.render import html as report_html
from flagscope.analysis.verdict import Verdict

# No script at all; styles inline (the report's badges and swatches use style attributes);
# images only as data: URLs; forms only back to this server; never inside a frame.
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a trace link to Jaeger does not carry this page's URL
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
PENDING_REFRESH_S = 3  # a page with something still being computed looks again this soon

UI_CSS = """
nav.top { background: #1f2328; color: #d1d9e0; padding: 8px 20px; font-size: .9rem;
  display: flex; flex-wrap: wrap; gap: 4px 18px; align-items: baseline; }
nav.top a { color: #fff; text-decoration: none; }
nav.top a.brand { font-weight: 700; letter-spacing: .02em; }
nav.top .where { margin-left: auto; color: #9198a1; }
a { color: #0a58ca; }
.crumbs { font-size: .9rem; margin: 0 0 10px; color: #59636e; }
.alarm { border-color: #b3261e; border-width: 2px; background: #fff5f4; }
.alarm h2 { color: #b3261e; }
section figure { margin: 0; min-width: 0; }
.num, .nowrap { white-space: nowrap; }
tr.regression td { background: #fff0ee; }
tr.regression td:first-child { box-shadow: inset 4px 0 0 #b3261e; padding-left: 10px; }
.flag a { font-weight: 600; white-space: nowrap; }
.flag.long a { white-space: normal; overflow-wrap: break-word; }
td.sentence { min-width: 16em; }
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
p.sortby { display: none; font-size: .88rem; margin: 0 0 8px; }
a.external { font-size: .8rem; font-weight: 400; white-space: nowrap; }
.scroll svg.waterfall { min-width: 760px; }
.variants { list-style: none; margin: 0; padding: 0; min-width: 12em; }
.variants li { display: grid; grid-template-columns: minmax(4em, max-content) 1fr auto;
  gap: 6px; align-items: center; white-space: nowrap; }
.bar { height: .6em; background: #d1d9e0; border-radius: 3px; min-width: 40px; }
.bar span { display: block; height: 100%; background: #0072b2; border-radius: 3px; }
.stale { color: #9a6700; font-weight: 600; }
.pending { color: #59636e; font-style: italic; }
.problem { color: #b3261e; }
.tag { display: inline-block; font-size: .72rem; font-weight: 700; padding: 0 .4em;
  border-radius: 3px; vertical-align: .1em; }
.tag.test { background: #efe3f5; color: #6f1d8a; }
.tag.flag { background: #fff1c2; color: #7a4d00; }
.tag.error { background: #ffe1dd; color: #b3261e; }
form.controls { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: end; margin: 0; }
form.controls label { display: grid; font-size: .85rem; color: #59636e; gap: 2px; }
form.controls select, form.controls input, form.controls button { font: inherit;
  padding: 3px 6px; }
th a { color: inherit; text-decoration: none; } th a:hover { text-decoration: underline; }
th a.active { color: #1f2328; }
.examples { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr));
  gap: 0 16px; }
details.span { border-top: 1px solid #e3e6ea; padding: 4px 0; }
details.span:target { background: #fff8c5; }
details.span summary { cursor: pointer; overflow-wrap: anywhere; }
details.span.error summary { color: #b3261e; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 1px 12px;
  margin: 6px 0 6px 18px; font-size: .85rem; }
dl.kv dt { color: #59636e; } dl.kv dd { margin: 0; overflow-wrap: anywhere; }
.kv .flagattr, .kv .testattr { font-weight: 700; }
.kv .flagattr { color: #7a4d00; } .kv .testattr { color: #6f1d8a; }
@media (max-width: 900px) {
  table.flags thead { display: none; }
  table.flags tr { display: grid; grid-template-columns: minmax(0, 1fr) auto; gap: 4px 12px;
    padding: 10px 0; border-bottom: 1px solid #e3e6ea; }
  table.flags td { border: 0; padding: 0; background: none; }
  table.flags tr.regression { background: #fff0ee; box-shadow: inset 4px 0 0 #b3261e;
    padding-left: 12px; }
  table.flags tr.regression td:first-child { box-shadow: none; padding-left: 0; }
  table.flags td.sentence, table.flags td.variants-cell { grid-column: 1 / -1; min-width: 0; }
  table.flags td.verdict-cell { justify-self: end; }
  p.sortby { display: block; }
}
@media (max-width: 700px) { nav.top { padding: 8px; } .examples { display: block; } }
"""


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def url(path: str, *segments: str, **params: object) -> str:
    """`path` with each of `segments` percent-encoded (a flag key may hold '/', '?', '#')
    and the query `params` that are not None; escape it before it goes in an attribute."""
    out = path + "".join("/" + quote(s, safe="") for s in segments)
    query = {k: str(v) for k, v in params.items() if v is not None and v != ""}
    return out + ("?" + urlencode(query) if query else "")


def link(href: str, text: str, cls: str = "") -> str:
    klass = f' class="{esc(cls)}"' if cls else ""
    return f'<a href="{esc(href)}"{klass}>{esc(text)}</a>'


def badge(verdict: Verdict | None) -> str:
    if verdict is None:
        return '<span class="badge verdict" style="background:#d1d9e0;color:#1f2328">—</span>'
    return report_html.badge(verdict)


def when(moment: datetime | None) -> str:
    """'2026-12-02 06:56 UTC' (a naive time is UTC)."""
    return "—" if moment is None else f"{moment:%Y-%m-%d %H:%M} UTC"


def ago(moment: datetime, now: datetime) -> str:
    seconds = max((now - moment).total_seconds(), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def section(key: str, title: str, inner: str, cls: str = "") -> str:
    klass = f' class="{esc(cls)}"' if cls else ""
    return f'<section id="{esc(key)}"{klass}><h2>{esc(title)}</h2>\n{inner}\n</section>'


def pending(what: str) -> str:
    return f'<p class="pending" data-pending="1">Computing {esc(what)} … this page refreshes itself.</p>'


def problem(message: str) -> str:
    return f'<p class="problem">{esc(message)}</p>'


def table(
    header: Iterable[str], rows: Iterable[Iterable[str]], row_classes: Iterable[str] = ()
) -> str:
    """A table of cells that are already markup (escape each when building it)."""
    head = "".join(f'<th scope="col">{h}</th>' for h in header)
    classes = list(row_classes)
    lines = []
    for i, row in enumerate(rows):
        cls = classes[i] if i < len(classes) else ""
        attr = f' class="{esc(cls)}"' if cls else ""
        lines.append(f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>'
        + "".join(lines)
        + "</tbody></table></div>"
    )


def page(
    title: str,
    body: Iterable[str],
    *,
    refresh_s: float | None = None,
    where: str = "",
    crumbs: Mapping[str, str] | None = None,
) -> str:
    """A whole document. `refresh_s`: reload after this long (None: never); `crumbs`:
    link text → href of the pages above this one."""
    refresh = f'<meta http-equiv="refresh" content="{max(int(refresh_s), 1)}">' if refresh_s else ""
    trail = ""
    if crumbs:
        trail = (
            '<p class="crumbs">'
            + " › ".join(link(href, text) for text, href in crumbs.items())
            + "</p>"
        )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f'<link rel="icon" href="data:,">{refresh}<title>{esc(title)}</title>'
        f"<style>{report_html.CSS}{UI_CSS}</style></head>\n<body>"
        f'<nav class="top"><a class="brand" href="/">flagscope</a><a href="/">Flags</a>'
        f'<span class="where">{esc(where)}</span></nav>\n<main>\n{trail}'
        + "\n".join(body)
        + "\n</main></body></html>\n"
    )
