"""One trace (`/trace/<trace_id>`): its waterfall across services, then every span's
attributes, events and log records, with the flag evaluations and test markers
highlighted."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from flagscope.analysis.ui.charts import epoch
from flagscope.analysis.ui.examples_page import external
from flagscope.analysis.ui.layout import esc, section, when
from flagscope.analysis.ui.traces import Row, Trace
from flagscope.analysis.ui.waterfall import (
    FLAG_EVENTS,
    KINDS,
    MAX_ATTRIBUTES,
    MAX_VALUE,
    events_of,
    services,
    span_anchor,
    tree_order,
    waterfall_svg,
)

FLAG_PREFIX = "feature_flag"


def render_body(trace: Trace, template: str | None, test_markers: Iterable[str]) -> list[str]:
    markers = set(test_markers)
    rows = tree_order(trace.spans)
    zero = min((s.time for s, _ in rows), default=None)
    end = max(((s.end_time or s.time) for s, _ in rows), default=None)
    took = (end - zero).total_seconds() * 1000 if zero and end else 0.0
    names = list(services(s for s, _ in rows))
    flags = sorted({(k, v, s.service_name or "") for s, _ in rows for k, v in s.flags.items()})
    tests = sorted({s.test_reason or "test" for s, _ in rows if s.is_test})
    facts = [
        ("started", when(zero) if zero else "—"),
        ("took", f"{took:,.1f} ms"),
        (
            "spans",
            f"{len(rows)}" + (" (the first by time; more in the lake)" if trace.truncated else ""),
        ),
        ("log records", str(len(trace.logs))),
        ("services", ", ".join(names)),
    ]
    facts_html = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)
    flag_html = "".join(
        f'<li><span class="tag flag">⚑ {esc(k)}={esc(v)}</span> in {esc(svc)}</li>'
        for k, v, svc in flags
    )
    test_html = "".join(f'<li><span class="tag test">TEST</span> {esc(t)}</li>' for t in tests)
    head = (
        f"<header><h1>Trace <code>{esc(trace.trace_id)}</code>{external(template, trace.trace_id)}</h1>"
        f'<dl class="kv">{facts_html}</dl>'
        + (f'<ul class="health" id="flag-evaluations">{flag_html}</ul>' if flags else "")
        + (f'<ul class="health" id="test-markers">{test_html}</ul>' if tests else "")
        + "</header>"
    )
    waterfall = section(
        "waterfall",
        "Waterfall",
        f'<figure><div class="scroll">{waterfall_svg(trace)}</div><figcaption>'
        "Spans on one time axis, parents above their "
        "children; ✗ error, ⚑ flag evaluation (◆ its event), TEST test traffic. A row links to "
        "the span's details.</figcaption></figure>",
    )
    logs: dict[str | None, list[Row]] = {}
    for log in trace.logs:
        logs.setdefault(log.span_id, []).append(log)
    details = "".join(_span(s, depth, zero, markers, logs.get(s.span_id, [])) for s, depth in rows)
    orphans = [
        log
        for span_id, group in logs.items()
        if span_id not in {s.span_id for s, _ in rows}
        for log in group
    ]
    if orphans:
        details += "<h3>Log records of no span shown</h3>" + _logs(orphans, zero)
    return [head, waterfall, section("spans", "Spans", details)]


def _span(span: Row, depth: int, zero: Any, markers: set[str], logs: list[Row]) -> str:
    classes = ["span"] + [
        c
        for c, on in (("error", span.is_error), ("flag", bool(span.flags)), ("test", span.is_test))
        if on
    ]
    opened = " open" if span.is_error or span.flags or span.is_test or depth == 0 else ""
    offset = (span.time - zero).total_seconds() * 1000 if zero else 0.0
    tags = "".join(
        f' <span class="tag flag">⚑ {esc(k)}={esc(v)}</span>' for k, v in span.flags.items()
    )
    if span.is_error:
        tags += ' <span class="tag error">ERROR</span>'
    if span.is_test:
        tags += ' <span class="tag test">TEST</span>'
    status = {0: "unset", 1: "ok", 2: "error"}.get(span.status_code or 0, str(span.status_code))
    facts = [
        ("span id", span.span_id or ""),
        ("parent", span.parent_span_id or "(root)"),
        ("kind", KINDS.get(span.kind or 0, str(span.kind))),
        ("start", f"+{offset:,.3f} ms"),
        ("duration", f"{span.duration_ms or 0:,.3f} ms"),
        ("status", status + (f": {span.status_message}" if span.status_message else "")),
        (
            "http",
            " ".join(
                str(x) for x in (span.http_method, span.http_route, span.http_status_code) if x
            ),
        ),
        ("user", span.user_id or ""),
        ("test traffic", span.test_reason or ("yes" if span.is_test else "")),
    ]
    facts_html = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts if v)
    parts = [
        f'<details id="{esc(span_anchor(span))}" class="{" ".join(classes)}"{opened}>'
        f"<summary>{esc(span.service_name or 'unknown_service')} · <strong>{esc(span.name or '')}</strong> "
        f'<span class="muted">{span.duration_ms or 0:,.1f} ms</span>{tags}</summary>',
        f'<dl class="kv">{facts_html}</dl>',
        _attributes("Attributes", span.attributes, markers),
    ]
    events = events_of(span)
    if events:
        parts.append("<h4>Events</h4>" + "".join(_event(e, zero, markers) for e in events))
    if logs:
        parts.append("<h4>Log records</h4>" + _logs(logs, zero))
    resource = _attributes("", span.resource_attributes, markers)
    if resource:
        parts.append(f"<details><summary>Resource attributes</summary>{resource}</details>")
    return "".join(parts) + "</details>"


def _parse(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"(unparsed)": raw}
    return value if isinstance(value, dict) else {"(value)": value}


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    if len(text) > MAX_VALUE:
        text = text[:MAX_VALUE] + f"… ({len(text) - MAX_VALUE:,} more characters)"
    return text


def _attributes(title: str, raw: str | dict[str, Any] | None, markers: set[str]) -> str:
    attributes = raw if isinstance(raw, dict) else _parse(raw)
    if not attributes:
        return ""
    items = list(attributes.items())
    rows = []
    for key, value in items[:MAX_ATTRIBUTES]:
        cls = "flagattr" if key.startswith(FLAG_PREFIX) else "testattr" if key in markers else ""
        klass = f' class="{cls}"' if cls else ""
        rows.append(f"<dt{klass}>{esc(key)}</dt><dd{klass}>{esc(_shown(value))}</dd>")
    more = (
        f'<dt></dt><dd class="muted">and {len(items) - MAX_ATTRIBUTES} more</dd>'
        if len(items) > MAX_ATTRIBUTES
        else ""
    )
    heading = f"<h4>{esc(title)}</h4>" if title else ""
    return f'{heading}<dl class="kv">{"".join(rows)}{more}</dl>'


def _event(event: dict[str, Any], zero: Any, markers: set[str]) -> str:
    name = str(event.get("name", ""))
    at = event.get("time_unix_nano")
    offset = ""
    if isinstance(at, int) and zero is not None:
        offset = f" at +{at / 1e6 - epoch(zero) * 1000:,.3f} ms"
    flag = ' <span class="tag flag">⚑ flag evaluation</span>' if name in FLAG_EVENTS else ""
    attrs = event.get("attributes")
    return f'<p class="event"><strong>{esc(name)}</strong>{esc(offset)}{flag}</p>' + _attributes(
        "", attrs if isinstance(attrs, dict) else None, markers
    )


def _logs(logs: list[Row], zero: Any) -> str:
    items = []
    for log in logs:
        offset = f"+{(log.time - zero).total_seconds() * 1000:,.3f} ms" if zero else when(log.time)
        items.append(
            f'<li><span class="num">{esc(offset)}</span> <strong>{esc(log.severity_text or "")}</strong> '
            f"{esc(log.name or '')} {esc(_shown(log.body or ''))}</li>"
        )
    return f'<ul class="logs">{"".join(items)}</ul>'
