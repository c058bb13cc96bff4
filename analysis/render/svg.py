"""Inline SVG charts for the HTML report: axes with ticks, log-scale x, lines, a forest plot.

No plotting library and no JavaScript. Each chart is one `<svg>` string with a viewBox, so
CSS (`width: 100%`) scales it to the page, a `<title>` and `<desc>` for screen readers, and
every piece of text escaped. Series are told apart by colour *and* by dash and marker shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

FONT = 13
TEXT = "#1f2328"
MUTED = "#59636e"
GRID = "#e3e6ea"


@dataclass(frozen=True)
class Scale:
    """Maps a data domain [lo, hi] onto pixels [start, end], linearly or by log10."""

    lo: float
    hi: float
    start: float
    end: float
    log: bool = False

    def __call__(self, v: float) -> float:
        lo, hi = self.lo, self.hi
        if self.log:
            v, lo, hi = (math.log10(max(x, 1e-12)) for x in (v, lo, hi))
        t = (v - lo) / (hi - lo) if hi != lo else 0.5
        return self.start + t * (self.end - self.start)


@dataclass(frozen=True)
class Axis:
    title: str
    lo: float
    hi: float
    ticks: Sequence[float]
    fmt: Callable[[float], str]
    log: bool = False


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    color: str
    dash: str = ""  # stroke-dasharray, e.g. "6 4"
    marker: str = "circle"  # circle | square | diamond


@dataclass(frozen=True)
class Guide:
    """A labelled horizontal reference line at y."""

    at: float
    label: str


@dataclass(frozen=True)
class Interval:
    """One row of a forest plot; `estimate` None when there is nothing to draw."""

    label: str
    sublabel: str
    estimate: float | None
    lo: float
    hi: float
    text: str
    tone: str = "neutral"  # bad | good | neutral


# -- ticks ----------------------------------------------------------------------------------
def linear_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round 1-2-5 steps covering [lo, hi] (Heckbert 1990, "Nice numbers for graph labels")."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / max(target, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks = []
    k = 0
    while first + k * step <= hi + step * 1e-9:
        ticks.append(round(first + k * step, 10))
        k += 1
    return ticks


def nice_range(lo: float, hi: float, target: int = 5) -> tuple[float, float, list[float]]:
    """Extend [lo, hi] outwards to round ticks: (lo, hi, ticks)."""
    ticks = linear_ticks(lo, hi, target)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    if ticks[0] > lo:
        ticks.insert(0, ticks[0] - step)
    if ticks[-1] < hi:
        ticks.append(ticks[-1] + step)
    return ticks[0], ticks[-1], ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 per decade inside [lo, hi]; only powers of ten over more than four decades."""
    lo, hi = max(lo, 1e-9), max(hi, lo * 10)
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for steps in ((1,), (1, 2, 5), (1, 2, 3, 5, 7)):
        if len(decades) > 5 and steps != (1,):
            break
        ticks = [m * 10.0**d for d in decades for m in steps if lo <= m * 10.0**d <= hi]
        if len(ticks) >= 4:
            break
    return ticks


def time_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Epoch seconds on round clock times (whole minutes, quarter hours, hours, days)."""
    steps = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)
    step = next((s for s in steps if (hi - lo) / s <= target), steps[-1])
    first = math.ceil(lo / step) * step
    return [float(t) for t in range(int(first), int(hi) + 1, step)]


def clock(span_seconds: float) -> Callable[[float], str]:
    """Tick labels for epoch seconds: HH:MM, with the date when the span passes a day."""
    pattern = "%m-%d %H:%M" if span_seconds > 86400 else "%H:%M"
    return lambda t: datetime.fromtimestamp(t, UTC).strftime(pattern)


# -- text width -----------------------------------------------------------------------------
# An SVG has no text measurement without a script, so widths are estimated from per-glyph
# advances of DejaVu Sans (in em), among the widest of the sans-serif fonts a system-ui
# stack falls back to: an estimate that errs wide keeps labels inside their box.
_NARROW = dict.fromkeys(" .,:;[]()|!'il", 0.35)
_WIDE = dict.fromkeys("mwMW%@", 1.0)
_DIGIT = 0.64


def text_width(s: str, size: float = FONT) -> float:
    """The estimated rendered width of `s` at `size` px."""
    em = 0.0
    for ch in s:
        if ch in _NARROW:
            em += _NARROW[ch]
        elif ch in _WIDE:
            em += _WIDE[ch]
        elif ch.isdigit():
            em += _DIGIT
        elif ch in "+−-=<>~":
            em += 0.84 if ch != "-" else 0.4
        elif ch.isupper():
            em += 0.75
        elif ch.isascii():
            em += 0.62
        else:
            em += 1.0  # CJK, symbols, emoji: about a full em
    return em * size


def fit(s: str, width: float, size: float = FONT) -> str:
    """`s`, cut with an ellipsis so that it fits in `width` px at `size`."""
    if text_width(s, size) <= width:
        return s
    while s and text_width(s + "…", size) > width:
        s = s[:-1]
    return s + "…"


# -- pieces ---------------------------------------------------------------------------------
def _f(v: float) -> str:
    return f"{v:.1f}".removesuffix(".0")


def _text(
    x: float,
    y: float,
    s: str,
    anchor: str = "middle",
    size: int = FONT,
    color: str = MUTED,
    extra: str = "",
) -> str:
    return (
        f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" font-size="{size}" '
        f'fill="{color}"{extra}>{escape(s)}</text>'
    )


def _line(
    x1: float, y1: float, x2: float, y2: float, color: str = GRID, width: float = 1, dash: str = ""
) -> str:
    d = f' stroke-dasharray="{dash}"' if dash else ""
    return (
        f'<line x1="{_f(x1)}" y1="{_f(y1)}" x2="{_f(x2)}" y2="{_f(y2)}" stroke="{color}" '
        f'stroke-width="{width}"{d}/>'
    )


def marker(
    shape: str, x: float, y: float, color: str, size: float = 3.5, filled: bool = True
) -> str:
    fill = color if filled else "#fff"
    common = f'fill="{fill}" stroke="{color}" stroke-width="1.5"'
    if shape == "square":
        return (
            f'<rect x="{_f(x - size)}" y="{_f(y - size)}" width="{_f(2 * size)}" '
            f'height="{_f(2 * size)}" {common}/>'
        )
    if shape == "diamond":
        s = size * 1.35
        return (
            f'<path d="M{_f(x)} {_f(y - s)}L{_f(x + s)} {_f(y)}L{_f(x)} {_f(y + s)}'
            f'L{_f(x - s)} {_f(y)}Z" {common}/>'
        )
    return f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{_f(size)}" {common}/>'


def _open(kind: str, title: str, desc: str, width: int, height: int) -> tuple[str, str]:
    n = escape(kind)  # a chart kind appears once per page: its ids are unique
    head = (
        f'<svg class="chart" data-chart="{n}" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-labelledby="c-{n}-t c-{n}-d" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="inherit">'
        f'<title id="c-{n}-t">{escape(title)}</title><desc id="c-{n}-d">{escape(desc)}</desc>'
    )
    return head, "</svg>"


def _legend(series: Sequence[Series], x: float, y: float, width: float) -> str:
    """Keys side by side; a label (a variant name, from telemetry) is cut to its share."""
    out = []
    room = (width - x) / max(len(series), 1) - 44
    for s in series:
        label = fit(s.label, room)
        out.append(_line(x, y, x + 26, y, s.color, 2, s.dash))
        out.append(marker(s.marker, x + 13, y, s.color))
        out.append(_text(x + 32, y + 4.5, label, "start", FONT, TEXT))
        x += 44 + text_width(label)
    return "".join(out)


def _inside(x: float, label: str, width: float, size: float = FONT) -> float:
    """The centre of a label at `x` moved just enough to keep it within [0, width]."""
    half = text_width(label, size) / 2 + 2
    return max(half, min(x, width - half))


def _axes(x: Axis, y: Axis, sx: Scale, sy: Scale, width: float) -> str:
    out = []
    for t in y.ticks:
        out.append(_line(sx.start, sy(t), sx.end, sy(t)))
        out.append(_text(sx.start - 6, sy(t) + 4, y.fmt(t), "end"))
    for t in x.ticks:
        out.append(_line(sx(t), sy.start, sx(t), sy.start + 5, MUTED))
        out.append(_text(_inside(sx(t), x.fmt(t), width), sy.start + 19, x.fmt(t)))
    out.append(_line(sx.start, sy.start, sx.end, sy.start, MUTED))
    out.append(_line(sx.start, sy.start, sx.start, sy.end, MUTED))
    out.append(_text((sx.start + sx.end) / 2, sy.start + 38, x.title))
    mid = (sy.start + sy.end) / 2
    out.append(_text(14, mid, y.title, extra=f' transform="rotate(-90 14 {_f(mid)})"'))
    return "".join(out)


def _guide(g: Guide, sx: Scale, sy: Scale) -> str:
    y = sy(g.at)
    return _line(sx.start, y, sx.end, y, MUTED, 1, "3 3") + _text(
        sx.start + 4, y - 4, g.label, "start", 11
    )


def _polyline(s: Series, sx: Scale, sy: Scale, markers: bool) -> str:
    pts = [(sx(x), sy(y)) for x, y in s.points]
    if not pts:
        return ""
    d = "M" + "L".join(f"{_f(px)} {_f(py)}" for px, py in pts)
    dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
    out = [
        (
            f'<path class="series" data-points="{len(pts)}" d="{d}" fill="none" '
            f'stroke="{s.color}" stroke-width="2" stroke-linejoin="round"{dash}>'
            f"<title>{escape(s.label)}</title></path>"
        )
    ]
    if markers or len(pts) == 1:
        out += [marker(s.marker, px, py, s.color, 3) for px, py in pts]
    return "".join(out)


# -- charts ---------------------------------------------------------------------------------
def line_chart(
    kind: str,
    title: str,
    desc: str,
    series: Sequence[Series],
    x: Axis,
    y: Axis,
    guides: Sequence[Guide] = (),
    markers: bool = True,
    width: int = 560,
    height: int = 320,
) -> str:
    """Lines (with markers) on a linear or log x axis; the legend sits above the plot."""
    head, tail = _open(kind, title, desc, width, height)
    sx = Scale(x.lo, x.hi, 64, width - 16, x.log)
    sy = Scale(y.lo, y.hi, height - 50, 62, y.log)
    body = [
        _text(8, 20, title, "start", 16, TEXT, ' font-weight="600"'),
        _legend(series, 12, 42, width),
        _axes(x, y, sx, sy, width),
        *(_guide(g, sx, sy) for g in guides),
        *(_polyline(s, sx, sy, markers) for s in series),
    ]
    return head + "".join(body) + tail


def forest_plot(
    kind: str,
    title: str,
    desc: str,
    rows: Sequence[Interval],
    axis_title: str,
    fmt: Callable[[float], str],
    threshold: float | None = None,
    width: int = 600,
) -> str:
    """Each row's estimate and interval against the zero line (and ±threshold, dashed).

    The columns are sized to their text: the value column to the widest interval label
    ("+123.4 [+45.6, +201.3]"), the label column to the route names up to a share of the
    width (longer ones cut with "…"), so nothing is drawn outside the viewBox."""
    row_h, top = 40, 52
    label_w = min(
        max([60.0, *(max(text_width(r.label), text_width(r.sublabel, 10)) for r in rows)]) + 8,
        width * 0.3,
    )
    value_w = max([40.0, *(text_width(r.text, 12) for r in rows if r.estimate is not None)])
    value_w = min(value_w + 14, width * 0.3)
    height = top + row_h * max(len(rows), 1) + 44
    spans = [v for r in rows if r.estimate is not None for v in (r.lo, r.hi, r.estimate)]
    th = [threshold, -threshold] if threshold else []
    data_lo, data_hi = min([0.0, *spans, *th]), max([0.0, *spans, *th])
    plot = (label_w + 10, width - value_w - 10)
    lo, hi, ticks = _fitting_ticks(data_lo, data_hi, fmt, plot[1] - plot[0])
    sx = Scale(lo, hi, *plot)
    bottom = top + row_h * max(len(rows), 1)
    head, tail = _open(kind, title, desc, width, height)
    out = [_text(8, 20, fit(title, width - 16, 16), "start", 16, TEXT, ' font-weight="600"')]
    for t in ticks:
        out += [
            _line(sx(t), top - 6, sx(t), bottom, GRID),
            _text(_inside(sx(t), fmt(t), width), bottom + 18, fmt(t)),
        ]
    out.append(_text(_inside(sx((lo + hi) / 2), axis_title, width), bottom + 37, axis_title))
    for t in th:
        out.append(
            _line(sx(t), top - 6, sx(t), bottom, "#b3261e" if t > 0 else "#1a7f37", 1, "5 4")
        )
    if threshold:
        out.append(_threshold_label(f"threshold {fmt(threshold)}", sx(threshold), top - 12, width))
    out.append(_line(sx(0), top - 6, sx(0), bottom, TEXT, 1.5))
    for i, r in enumerate(rows):
        y = top + row_h * i + row_h / 2
        out.append(_interval_row(r, y, sx, width - value_w + 4, label_w, value_w - 8))
    return head + "".join(out) + tail


def _fitting_ticks(
    lo: float, hi: float, fmt: Callable[[float], str], room: float
) -> tuple[float, float, list[float]]:
    """Round ticks over [lo, hi], as many as fit `room` px without their labels touching."""
    for target in (4, 3, 2, 1):
        a, b, ticks = nice_range(lo, hi, target)
        widest = max(text_width(fmt(t)) for t in ticks)
        if len(ticks) < 2 or room / (len(ticks) - 1) >= widest + 8:
            break
    return a, b, ticks


def _threshold_label(label: str, x: float, y: float, width: float) -> str:
    """Right of the threshold line, or left of it where the right would leave the box."""
    if x + 3 + text_width(label, 12) <= width - 2:
        return _text(x + 3, y, label, "start", 12)
    return _text(x - 3, y, label, "end", 12)


_TONES = {
    "bad": ("#b3261e", "diamond", True),
    "good": ("#1a7f37", "circle", True),
    "neutral": ("#3d4651", "circle", False),
}


def _interval_row(
    r: Interval, y: float, sx: Scale, value_x: float, label_w: float, value_w: float
) -> str:
    color, shape, filled = _TONES.get(r.tone, _TONES["neutral"])
    out = [
        (
            f'<g class="interval"><title>{escape(r.sublabel)} {escape(r.label)}: '
            f"{escape(r.text)}</title>"
        ),
        _text(8, y - 1, fit(r.label, label_w - 4), "start", FONT, TEXT),
        _text(8, y + 13, fit(r.sublabel, label_w - 4, 10), "start", 10),
    ]
    if r.estimate is None:
        out.append(
            _text(
                (sx.start + sx.end) / 2,
                y + 4,
                fit(r.text, sx.end - sx.start, 12),
                "middle",
                12,
                TEXT,
                ' stroke="#fff" stroke-width="4" paint-order="stroke"',
            )
        )
    else:
        out += [
            _line(sx(r.lo), y, sx(r.hi), y, color, 2.5),
            _line(sx(r.lo), y - 5, sx(r.lo), y + 5, color, 2),
            _line(sx(r.hi), y - 5, sx(r.hi), y + 5, color, 2),
            marker(shape, sx(r.estimate), y, color, 5, filled),
            _text(value_x, y + 4, fit(r.text, value_w, 12), "start", 12, TEXT),
        ]
    return "".join(out) + "</g>"
