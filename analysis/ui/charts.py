"""The flag page's charts over time, in SVG as the report's are (flagscope.analysis.render.svg):
the verdicts of the scheduled reports and the guard, an estimate with its always-valid
interval as the window grew, and the variants' share of users.

Each chart is one `<svg>` with a viewBox, a `<title>` and `<desc>`, every text escaped;
verdicts are told apart by colour (the report's badge colours) and by the marker's shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from flagscope.analysis.render import svg
from flagscope.analysis.render.html import BADGE
from flagscope.analysis.ui.verdicts import GUARD, REPORT, VerdictPoint
from flagscope.analysis.verdict import Verdict
from flagscope.analysis.window import aware_utc

SHAPES = {  # verdict -> marker: not colour alone
    Verdict.REGRESSION: "diamond",
    Verdict.UNHEALTHY: "diamond",
    Verdict.INCONCLUSIVE: "circle",
    Verdict.NO_DATA: "circle",
    Verdict.PASS: "square",
    Verdict.IMPROVEMENT: "square",
}
FAILED = "#8c959f"
# Okabe & Ito 2008, colour-blind safe; the variants' lines
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442")


def epoch(moment: datetime) -> float:
    return aware_utc(moment).timestamp()


def _text(
    x: float, y: float, s: str, anchor: str = "middle", size: int = 12, color: str = svg.MUTED
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
        f'fill="{color}">{escape(s)}</text>'
    )


def _line(x1: float, y1: float, x2: float, y2: float, color: str = svg.GRID, dash: str = "") -> str:
    d = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}"{d}/>'


def _open(kind: str, title: str, desc: str, width: int, height: int) -> str:
    return (
        f'<svg class="chart" data-chart="{escape(kind)}" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-labelledby="c-{escape(kind)}-t c-{escape(kind)}-d" '
        'xmlns="http://www.w3.org/2000/svg" font-family="inherit">'
        f'<title id="c-{escape(kind)}-t">{escape(title)}</title>'
        f'<desc id="c-{escape(kind)}-d">{escape(desc)}</desc>'
        f'<text x="8" y="20" font-size="16" font-weight="600" fill="{svg.TEXT}">'
        f"{escape(title)}</text>"
    )


def _time_axis(lo: float, hi: float, sx: svg.Scale, y: float) -> str:
    fmt = svg.clock(hi - lo)
    out = [_line(sx.start, y, sx.end, y, svg.MUTED)]
    for t in svg.time_ticks(lo, hi):
        out += [_line(sx(t), y, sx(t), y + 5, svg.MUTED), _text(sx(t), y + 19, fmt(t))]
    out.append(_text((sx.start + sx.end) / 2, y + 36, "time (UTC)"))
    return "".join(out)


def verdict_strip(points: Sequence[VerdictPoint], start: datetime, end: datetime) -> str:
    """One lane per source (scheduled reports, guard looks), a marker per verdict."""
    width, left, right = 1100, 150, 20
    lanes = [s for s in (REPORT, GUARD) if any(p.source == s for p in points)]
    times = [epoch(p.at) for p in points]
    lo, hi = min([epoch(start), *times]), max([epoch(end), *times])
    pad = max((hi - lo) * 0.02, 30)  # a point at either end stays whole
    lo, hi = lo - pad, hi + pad
    sx = svg.Scale(lo, hi, left, width - right)
    top, lane_h = 70, 34
    height = top + lane_h * len(lanes) + 46
    out = [
        _open(
            "verdict-strip",
            "Verdicts over time",
            "Each scheduled report's and guard look's verdict at its time, coloured and shaped "
            "by verdict.",
            width,
            height,
        )
    ]
    present = sorted({p.verdict for p in points if p.verdict}, key=list(Verdict).index)
    x = 12.0
    for verdict in present:
        out.append(svg.marker(SHAPES[verdict], x + 6, 44, BADGE[verdict][0], 5))
        out.append(_text(x + 16, 48, verdict.value, "start", 12, svg.TEXT))
        x += 30 + 8 * len(verdict.value)
    if any(p.verdict is None for p in points):
        out.append(svg.marker("circle", x + 6, 44, FAILED, 5, filled=False))
        out.append(_text(x + 16, 48, "failed", "start", 12, svg.TEXT))
    for i, lane in enumerate(lanes):
        y = top + lane_h * i + lane_h / 2
        out += [
            _line(left, y, width - right, y),
            _text(left - 10, y + 4, lane + "s", "end", 12, svg.TEXT),
        ]
        for p in points:
            if p.source != lane:
                continue
            color = BADGE[p.verdict][0] if p.verdict else FAILED
            shape = SHAPES[p.verdict] if p.verdict else "circle"
            name = p.verdict.value if p.verdict else "FAILED"
            tip = f"{p.at:%Y-%m-%d %H:%M:%S} UTC {name}: {p.summary or p.detail}"
            out.append(
                f'<g class="verdict-point" data-verdict="{name}">'
                f"<title>{escape(tip)}</title>"
                + svg.marker(shape, sx(epoch(p.at)), y, color, 5.5, filled=p.verdict is not None)
                + "</g>"
            )
    out.append(_time_axis(lo, hi, sx, top + lane_h * len(lanes) + 4))
    return "".join(out) + "</svg>"


@dataclass(frozen=True)
class IntervalPoint:
    at: datetime
    estimate: float
    lo: float
    hi: float
    verdict: Verdict
    label: str  # the point's text, for its tooltip


def growth_chart(
    kind: str,
    title: str,
    points: Sequence[IntervalPoint],
    y_title: str,
    fmt: Callable[[float], str],
    threshold: float,
    ends: Sequence[datetime] = (),
) -> str:
    """The estimate at each growing window's end, its interval as a band, the zero line
    and the harm threshold (dashed); the time axis spans `ends` (every window's, also
    those without an estimate) and the points."""
    width, height = 560, 300
    times = [epoch(p.at) for p in points]
    lo_t, hi_t = min([*times, *map(epoch, ends)]), max([*times, *map(epoch, ends)])
    pad = max((hi_t - lo_t) * 0.04, 30)  # the first and last markers stay whole
    lo_t, hi_t = lo_t - pad, hi_t + pad
    values = [v for p in points for v in (p.lo, p.hi)] + [0.0, threshold]
    y_lo, y_hi, ticks = svg.nice_range(min(values), max(values), 4)
    sx = svg.Scale(lo_t, hi_t, 70, width - 20)
    sy = svg.Scale(y_lo, y_hi, height - 62, 48)
    out = [
        _open(
            kind,
            title,
            f"{y_title} as the window grew, with always-valid intervals, the zero line and "
            "the threshold of practical significance.",
            width,
            height,
        )
    ]
    for t in ticks:
        out += [
            _line(sx.start, sy(t), sx.end, sy(t)),
            _text(sx.start - 6, sy(t) + 4, fmt(t), "end"),
        ]
    mid = (sy.start + sy.end) / 2
    out.append(
        f'<text x="14" y="{mid:.1f}" text-anchor="middle" font-size="12" fill="{svg.MUTED}" '
        f'transform="rotate(-90 14 {mid:.1f})">{escape(y_title)}</text>'
    )
    out.append(_line(sx.start, sy(0), sx.end, sy(0), svg.TEXT))
    out.append(_line(sx.start, sy(threshold), sx.end, sy(threshold), "#b3261e", "5 4"))
    out.append(_line(width - 190, 32, width - 166, 32, "#b3261e", "5 4"))  # its key, top right
    out.append(_text(width - 160, 36, f"threshold {fmt(threshold)}", "start", 11))
    band = [(sx(epoch(p.at)), sy(p.hi)) for p in points] + [
        (sx(epoch(p.at)), sy(p.lo)) for p in reversed(points)
    ]
    if len(points) > 1:
        out.append(
            '<path class="band" d="M'
            + "L".join(f"{x:.1f} {y:.1f}" for x, y in band)
            + 'Z" fill="#0072b2" fill-opacity="0.14" stroke="none"/>'
        )
        out.append(
            '<path class="series" d="M'
            + "L".join(f"{sx(epoch(p.at)):.1f} {sy(p.estimate):.1f}" for p in points)
            + '" fill="none" stroke="#0072b2" stroke-width="2"/>'
        )
    for p in points:
        x = sx(epoch(p.at))
        out.append(
            f'<g class="look" data-verdict="{p.verdict.value}"><title>{escape(p.label)}</title>'
            + _line(x, sy(p.lo), x, sy(p.hi), "#0072b2")
            + svg.marker(SHAPES[p.verdict], x, sy(p.estimate), BADGE[p.verdict][0], 5)
            + "</g>"
        )
    out.append(_time_axis(lo_t, hi_t, sx, sy.start))
    return "".join(out) + "</svg>"


def share_chart(variants: dict[str, list[tuple[datetime, int, float]]], bucket_seconds: int) -> str:
    """Each variant's share of the users per bucket."""
    series = [
        svg.Series(
            variant,
            [(epoch(at) + bucket_seconds / 2, share) for at, _, share in rows],
            PALETTE[i % len(PALETTE)],
            "" if i % 2 == 0 else "6 4",
            ("circle", "square", "diamond")[i % 3],
        )
        for i, (variant, rows) in enumerate(variants.items())
    ]
    times = [x for s in series for x, _ in s.points]
    lo, hi = min(times) - bucket_seconds / 2, max(times) + bucket_seconds / 2
    x = svg.Axis("time (UTC)", lo, hi, svg.time_ticks(lo, hi), svg.clock(hi - lo))
    y = svg.Axis("share of users", 0, 1, [0, 0.25, 0.5, 0.75, 1], lambda v: f"{v * 100:g} %")
    return svg.line_chart(
        "variant-share",
        "Variants' share of users",
        "Each variant's share of the users who evaluated the flag, per time bucket.",
        series,
        x,
        y,
        width=1100,
        height=300,
    )
