"""A trace as a waterfall: its spans across services in tree order on one time axis (SVG),
then each span's attributes, events and log records.

A span whose parent is not in the lake is drawn as a root. Errors are outlined in red and
marked ✗, a span that evaluated a flag carries ⚑ and the flag's variant, a test-traffic
span a TEST tag; each row links to its details below (a fragment link, no script).
Attribute values are cut at `MAX_VALUE` characters and a span's list at `MAX_ATTRIBUTES`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from html import escape
from typing import Any

import orjson

from flagscope.analysis.render import svg
from flagscope.analysis.ui.charts import PALETTE, epoch
from flagscope.analysis.ui.layout import esc
from flagscope.analysis.ui.traces import Row, Trace

MAX_VALUE = 1000
MAX_ATTRIBUTES = 200
MAX_EVENTS = 100
FLAG_EVENTS = ("feature_flag.evaluation", "feature_flag")
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
ERROR, FLAG, TEST = "#b3261e", "#9a6700", "#6f1d8a"


def tree_order(spans: list[Row]) -> list[tuple[Row, int]]:
    """(span, depth), parents before children, siblings by start time."""
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[Row]] = {}
    for s in spans:
        parent = (
            s.parent_span_id if s.parent_span_id in ids and s.parent_span_id != s.span_id else None
        )
        children.setdefault(parent, []).append(s)
    out: list[tuple[Row, int]] = []
    seen: set[str | None] = set()
    stack = [(s, 0) for s in sorted(children.get(None, []), key=lambda r: r.time, reverse=True)]
    while stack:
        span, depth = stack.pop()
        if span.span_id in seen:  # a cycle in bad data
            continue
        seen.add(span.span_id)
        out.append((span, depth))
        kids = sorted(children.get(span.span_id, []), key=lambda r: r.time)
        stack.extend((k, depth + 1) for k in reversed(kids))
    out += [(s, 0) for s in spans if s.span_id not in seen]  # unreachable: never dropped
    return out


def span_anchor(span: Row) -> str:
    return f"span-{span.span_id or 'none'}"


def _ms(moment: datetime, zero: datetime) -> float:
    return (moment - zero).total_seconds() * 1000


def _end(span: Row) -> datetime:
    return span.end_time or span.time


def events_of(span: Row) -> list[dict[str, Any]]:
    try:
        events = orjson.loads(span.span_events) if span.span_events else []
    except orjson.JSONDecodeError:
        return []
    return (
        [e for e in events if isinstance(e, dict)][:MAX_EVENTS] if isinstance(events, list) else []
    )


def services(spans: Iterable[Row]) -> dict[str, str]:
    """Service → colour, in order of first appearance."""
    colours: dict[str, str] = {}
    for s in spans:
        name = s.service_name or "unknown_service"
        if name not in colours:
            colours[name] = PALETTE[len(colours) % len(PALETTE)]
    return colours


def waterfall_svg(trace: Trace) -> str:
    rows = tree_order(trace.spans)
    if not rows:
        return ""
    zero = min(s.time for s, _ in rows)
    total = max(max(_ms(_end(s), zero) for s, _ in rows), 0.001)
    width, label_w, right, row_h, top = 960, 300, 140, 24, 56
    sx = svg.Scale(0, total, label_w, width - right)
    height = top + row_h * len(rows) + 12
    colours = services(s for s, _ in rows)
    out = [
        f'<svg class="chart waterfall" data-chart="waterfall" viewBox="0 0 {width} {height}" '
        'width="100%" role="img" aria-labelledby="c-waterfall-t c-waterfall-d" '
        'xmlns="http://www.w3.org/2000/svg" font-family="inherit">'
        '<title id="c-waterfall-t">Trace waterfall</title>'
        f'<desc id="c-waterfall-d">{len(rows)} spans on one time axis, parents above their '
        "children, coloured by service.</desc>",
        _legend(colours),
    ]
    _, _, ticks = svg.nice_range(0, total, 6)
    for t in (t for t in ticks if t <= total * 1.0001):
        x = sx(t)
        out.append(_line(x, top - 8, x, height - 8))
        out.append(_text(x, top - 12, f"{t:g} ms", "middle", 11))
    for i, (span, depth) in enumerate(rows):
        out.append(_row(span, depth, top + row_h * i, row_h, sx, zero, colours))
    return "".join(out) + "</svg>"


def _legend(colours: dict[str, str]) -> str:
    out, x = [], 8.0
    for name, colour in list(colours.items())[:8]:
        out.append(f'<rect x="{x:.1f}" y="10" width="12" height="12" rx="2" fill="{colour}"/>')
        shown = name if len(name) <= 28 else name[:27] + "…"
        out.append(_text(x + 17, 21, shown, "start", 12, svg.TEXT))
        x += 32 + 7 * len(shown)
    return "".join(out)


def _row(
    span: Row,
    depth: int,
    y: float,
    row_h: float,
    sx: svg.Scale,
    zero: datetime,
    colours: dict[str, str],
) -> str:
    start, end = _ms(span.time, zero), _ms(_end(span), zero)
    x0, x1 = sx(start), max(sx(end), sx(start) + 2)
    mid = y + row_h / 2
    indent = min(depth, 12) * 12
    label = f"{span.service_name or 'unknown_service'} · {span.name or ''}"
    room = int((sx.start - 16 - indent) / 6.6)
    shown = label if len(label) <= room else label[: max(room - 1, 4)] + "…"
    tip = f"{label} — {span.duration_ms or 0:.1f} ms" + "".join(
        f", {k}={v}" for k, v in span.flags.items()
    )
    error = ' data-error="1"' if span.is_error else ""
    outline = f' stroke="{ERROR}" stroke-width="2"' if span.is_error else ""
    body = [
        f'<a href="#{esc(span_anchor(span))}"><g class="span-row" '
        f'data-service="{esc(span.service_name or "")}"{error}><title>{escape(tip)}</title>',
        f'<rect x="0" y="{y:.1f}" width="{sx.end + 140:.1f}" height="{row_h:.1f}" '
        'fill="#fff" fill-opacity="0"/>',
        _text(8 + indent, mid + 4, shown, "start", 12, ERROR if span.is_error else svg.TEXT),
        f'<rect x="{x0:.1f}" y="{y + 5:.1f}" width="{x1 - x0:.1f}" height="{row_h - 10:.1f}" '
        f'rx="2" fill="{colours[span.service_name or "unknown_service"]}"{outline}/>',
    ]
    zero_ms = epoch(zero) * 1000
    for event in events_of(span):
        at = event.get("time_unix_nano")
        if isinstance(at, int):
            colour = FLAG if event.get("name") in FLAG_EVENTS else svg.TEXT
            body.append(svg.marker("diamond", sx(at / 1e6 - zero_ms), mid, colour, 3.2))
    marks = [f"{span.duration_ms or 0:.1f} ms"]
    colours_ = [svg.MUTED]
    for on, mark, colour in ((span.is_error, "✗", ERROR), (span.is_test, "TEST", TEST)):
        if on:
            marks.append(mark)
            colours_.append(colour)
    for key, variant in list(span.flags.items())[:2]:
        text = f"⚑ {key}={variant}"
        marks.append(text if len(text) <= 32 else text[:31] + "…")
        colours_.append(FLAG)
    widths = [6.6 * len(m) + 6 for m in marks]
    # after the bar if it fits, else before it, else over it (with a halo to stay legible)
    after, halo = x1 + 6, False
    if after + sum(widths) > sx.end + 136:
        after = x0 - 6 - sum(widths)
        if after < sx.start:
            after, halo = x0 + 6, True
    for mark, colour, w in zip(marks, colours_, widths, strict=True):
        body.append(_text(after, mid + 4, mark, "start", 11, colour, halo))
        after += w
    return "".join(body) + "</g></a>"


def _text(
    x: float,
    y: float,
    s: str,
    anchor: str = "middle",
    size: int = 12,
    color: str = svg.MUTED,
    halo: bool = False,
) -> str:
    ring = ' stroke="#fff" stroke-width="3" paint-order="stroke"' if halo else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
        f'fill="{color}"{ring}>{escape(s)}</text>'
    )


def _line(x1: float, y1: float, x2: float, y2: float, color: str = svg.GRID) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}"/>'
