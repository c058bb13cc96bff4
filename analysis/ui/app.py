"""The UI's web application on the project's own HTTP stack (aiohttp, as the collector's):
its routes, the middleware every answer passes (security headers, access, error pages),
and the handlers that gather a page's answers from `work.Work` and render it.

    GET /                       flags (index_page)
    GET /flag/<key>?window=…    a flag (flag_page)
    GET /examples/<key>?route=… a route's example traces (examples_page)
    GET /different/<key>?route=… what is different about its bad requests (different_page)
    GET /trace/<trace_id>       a trace's waterfall (trace_page)
    GET|POST /login             sign in with the bearer token (off loopback only)

Read-only: nothing here writes to the lake, the reports or the guard's state.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from flagscope.analysis import different_query
from flagscope.analysis.diff import choose_variants, run_diff
from flagscope.analysis.different import Bad, Difference
from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.result import DiffOptions, DiffResult
from flagscope.analysis.schedule.config import ReportsConfig
from flagscope.analysis.ui import (
    different_page,
    examples_page,
    flag_page,
    growth,
    index_page,
    trace_page,
    traces,
)
from flagscope.analysis.ui.access import COOKIE, Access, safe_next
from flagscope.analysis.ui.layout import (
    PENDING_REFRESH_S,
    SECURITY_HEADERS,
    esc,
    page,
    pending,
    section,
    url,
    utc_now,
    when,
)
from flagscope.analysis.ui.overview import FlagOverview, Overview, overview
from flagscope.analysis.ui.verdicts import (
    COMPUTED,
    CurrentVerdict,
    VerdictPoint,
    guard_points,
    latest,
    report_points,
)
from flagscope.analysis.ui.work import Answer, Work, bounded
from flagscope.analysis.window import parse_duration, parse_time

log = logging.getLogger("flagscope.ui")
MAX_WINDOW = timedelta(days=90)
INDEX_DIFF_WINDOW = timedelta(hours=24)  # a flag without a report: judged over this
MAX_INDEX_DIFFS = 50  # flags judged on demand for the flags page, most recently seen first


@dataclass(frozen=True)
class UiConfig:
    lake: Path
    reports: ReportsConfig  # out_dir holds the reports; declared flags lend their settings
    guard_dir: Path
    access: Access
    trace_link: str | None = None
    refresh_s: float = 60.0
    wait_s: float = 1.5  # a page waits this long for an answer before it says "computing"
    stale_days: float = 30.0
    test_markers: tuple[str, ...] = ()

    def where(self) -> str:
        return f"lake {self.lake} · read-only"


CONFIG = web.AppKey("config", UiConfig)
WORK = web.AppKey("work", Work)


def build_app(config: UiConfig, work: Work) -> web.Application:
    app = web.Application(middlewares=[_answers, _access], client_max_size=64 * 1024)
    app[CONFIG], app[WORK] = config, work
    app.router.add_get("/", index)
    app.router.add_get("/flag/{key:.+}", flag)
    app.router.add_get("/examples/{key:.+}", examples)
    app.router.add_get("/different/{key:.+}", different)
    app.router.add_get("/trace/{trace_id}", trace)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_get("/favicon.ico", lambda _: _no_content())
    app.on_cleanup.append(_close)
    return app


async def _close(app: web.Application) -> None:
    app[WORK].close()


async def _no_content() -> web.Response:
    return web.Response(status=204)


# -- middleware -----------------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer carries the security headers; errors are pages that name the fix."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # ours carry the fix as their text; aiohttp's do not
        own = exc.text and not exc.text.startswith(f"{exc.status}:")
        default = {
            404: f"There is no page at {request.path}: start at the flags page, /.",
            405: "This UI only shows pages: use GET.",
        }
        message = exc.text if own else default.get(exc.status, exc.reason)
        response = error_page(exc.status, exc.reason, message or exc.reason)
    except Exception:
        log.exception("ui: %s failed", request.path)
        response = error_page(500, "Internal error", "The page failed; the server's log has why.")
    response.headers.update(SECURITY_HEADERS)
    return response


@web.middleware
async def _access(request: web.Request, handler: Handler) -> web.StreamResponse:
    access = request.app[CONFIG].access
    if not access.allowed_host(request.host):
        return error_page(
            403,
            "Wrong address",
            f"This UI answers on this machine only: open it at http://127.0.0.1:"
            f"{request.url.port or ''}/ (a page that named it {request.host!r} is not let in).",
        )
    if request.path == "/login" or access.signed_in(
        request.headers.get("Authorization"), request.cookies.get(COOKIE)
    ):
        return await handler(request)
    return _sign_in_page(request.path_qs, 401)


# -- pages ----------------------------------------------------------------------------------
def html_page(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def error_page(status: int, title: str, message: str) -> web.Response:
    body = section("problem", title, f'<p class="problem" id="message">{esc(message)}</p>')
    return html_page(page(f"flagscope: {title}", [body]), status)


def _refresh(config: UiConfig, *answers: Answer[Any]) -> float:
    return PENDING_REFRESH_S if any(a.pending for a in answers) else config.refresh_s


async def index(request: web.Request) -> web.Response:
    config, work = request.app[CONFIG], request.app[WORK]
    sort, descending = index_page.parse_sort(request.query.get("sort"))
    query = request.query.get("q", "")[:200]
    deadline = _deadline(config)
    found = await _overview(config, work, deadline)
    now = utc_now()
    verdicts = (
        await _current_verdicts(config, work, found.value, now, deadline) if found.value else {}
    )
    body = index_page.render_body(found.value, verdicts, sort, descending, query, found.error, now)
    pending = found.pending or any(v.pending for v in verdicts.values())
    refresh = PENDING_REFRESH_S if pending else config.refresh_s
    title = "flagscope: flags"
    return html_page(page(title, body, refresh_s=refresh, where=config.where()))


def _deadline(config: UiConfig) -> float:
    """When a page stops waiting for its answers (the event loop's clock): `wait_s` from
    now, however many answers it waits for one after the other."""
    return asyncio.get_running_loop().time() + config.wait_s


def _left(deadline: float) -> float:
    return max(deadline - asyncio.get_running_loop().time(), 0.0)


async def _overview(config: UiConfig, work: Work, deadline: float) -> Answer[Overview]:
    def compute() -> Overview:
        return overview(config.lake, config.stale_days)

    return await work.get(("overview",), compute, ttl=60, wait=_left(deadline))


async def _current_verdicts(
    config: UiConfig, work: Work, found: Overview, now: datetime, deadline: float
) -> dict[str, CurrentVerdict]:
    """Per flag: the newest scheduled report's or guard look's verdict, else a comparison
    over the last 24 h computed now (for at most MAX_INDEX_DIFFS flags seen in that time)."""
    flags = list(found.flags)
    points = await asyncio.gather(*(_points(config, work, f.flag, deadline) for f in flags))
    out: dict[str, CurrentVerdict] = {}
    judge: list[FlagOverview] = []
    for f, read in zip(flags, points, strict=True):
        newest = latest(read.value or [])
        if newest is not None:
            out[f.flag] = CurrentVerdict(newest.verdict, newest.summary, newest.source, newest.at)
        elif f.last_seen < now - INDEX_DIFF_WINDOW:
            out[f.flag] = CurrentVerdict(
                None, "", "", note=f"not evaluated in the last {INDEX_DIFF_WINDOW.days * 24} h"
            )
        else:
            judge.append(f)
    judge = sorted(judge, key=lambda f: f.last_seen, reverse=True)
    for f in judge[MAX_INDEX_DIFFS:]:
        out[f.flag] = CurrentVerdict(None, "", "", note="open the flag for its comparison")
    judge = judge[:MAX_INDEX_DIFFS]
    diffs = await asyncio.gather(*(_index_diff(config, work, f.flag, deadline) for f in judge))
    for f, answer in zip(judge, diffs, strict=True):
        r = answer.value
        if r is not None:
            at = datetime.fromtimestamp(answer.computed_at or 0, UTC).replace(tzinfo=None)
            out[f.flag] = CurrentVerdict(r.verdict, r.summary, f"{COMPUTED} over the last 24 h", at)
        else:
            out[f.flag] = CurrentVerdict(
                None, "", "", note=answer.error or "computing…", pending=answer.pending
            )
    return out


async def _points(
    config: UiConfig, work: Work, flag_key: str, deadline: float
) -> Answer[list[VerdictPoint]]:
    def read() -> list[VerdictPoint]:
        return report_points(config.reports.out_dir, flag_key) + guard_points(
            config.guard_dir, flag_key
        )

    # files on disk: read in a thread too, but always awaited (they are quick)
    return await work.get(("points", flag_key), read, ttl=10, wait=max(_left(deadline), 1.0))


def diff_options(
    config: UiConfig,
    flag_key: str,
    start: datetime,
    end: datetime,
    variant: str | None,
    baseline: str | None,
) -> DiffOptions:
    """The comparison `flagscope diff` would make, with the settings of the flag's
    [[reports.flag]] when it has one."""
    declared = next((r for r in config.reports.reports if r.flag == flag_key), None)
    options = declared.options(end) if declared else DiffOptions(flag_key, start, end)
    return replace(
        options,
        start=start,
        variant=variant or options.variant,
        baseline=baseline or options.baseline,
    )


async def _index_diff(
    config: UiConfig, work: Work, flag_key: str, deadline: float
) -> Answer[DiffResult]:
    def compute() -> DiffResult:
        end = utc_now()
        return run_diff(
            config.lake, diff_options(config, flag_key, end - INDEX_DIFF_WINDOW, end, None, None)
        )

    return await work.get(
        ("index-diff", flag_key), compute, ttl=600, wait=_left(deadline), pool="heavy"
    )


def _window(request: web.Request) -> tuple[str, timedelta]:
    text = request.query.get("window", "24h")[:20]
    try:
        span = parse_duration(text, "window")
    except AnalysisError as exc:
        raise web.HTTPBadRequest(text=f"{exc} (the ?window= of the address)") from None
    if not timedelta(minutes=1) <= span <= MAX_WINDOW:
        raise web.HTTPBadRequest(text=f"window {text!r}: pick one from 1m to 90d, e.g. ?window=24h")
    return text, span


def _variant_param(request: web.Request, name: str) -> str | None:
    value = request.query.get(name, "").strip()
    return value[:200] or None


async def _known_flag(
    config: UiConfig, work: Work, key: str, deadline: float
) -> tuple[Answer[Overview], FlagOverview | None]:
    """The flag's overview row; a 404 naming the closest flag when the lake has it not."""
    found = await _overview(config, work, deadline)
    if found.value is None:
        return found, None
    row = next((f for f in found.value.flags if f.flag == key), None)
    if row is None:
        close = difflib.get_close_matches(key, [f.flag for f in found.value.flags], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise web.HTTPNotFound(
            text=f"flag {key!r} is not in the lake; {hint}the flags page, /, lists them"
        )
    return found, row


async def flag(request: web.Request) -> web.Response:
    config, work = request.app[CONFIG], request.app[WORK]
    key = request.match_info["key"]
    window, span = _window(request)
    variant, baseline = _variant_param(request, "variant"), _variant_param(request, "baseline")
    deadline = _deadline(config)
    found, row = await _known_flag(config, work, key, deadline)
    now = utc_now()
    logical = (key, window, variant, baseline)

    def compare() -> DiffResult:
        end = utc_now()
        return run_diff(
            config.lake, diff_options(config, key, end - span, end, variant, baseline), charts=True
        )

    def grown() -> list[growth.GrowingLook]:
        end = utc_now()
        start, ends = growth.growing_windows(end - span, end, row.first_seen if row else None)
        options = diff_options(config, key, start, end, variant, baseline)
        return growth.grow(config.lake, options, ends)

    def share() -> growth.ShareSeries:
        end = utc_now()
        return growth.share_over_time(config.lake, key, end - span, end)

    diff, points, grow_answer, share_answer = await asyncio.gather(
        work.get(("diff", *logical), compare, ttl=60, wait=_left(deadline), pool="heavy"),
        _points(config, work, key, deadline),
        work.get(("growth", *logical), grown, ttl=300, wait=_left(deadline), pool="heavy"),
        work.get(("share", key, window), share, ttl=60, wait=_left(deadline)),
    )
    view = flag_page.FlagView(
        key,
        window,
        now - span,
        now,
        variant,
        baseline,
        tuple(v.variant for v in row.variants) if row else (),
        diff,
        points,
        grow_answer,
        share_answer,
        any(r.flag == key for r in config.reports.reports),
        row.first_seen if row else None,
    )
    body = flag_page.render_body(view)
    refresh = _refresh(config, found, diff, points, grow_answer, share_answer)
    return html_page(
        page(
            f"flagscope: {key}",
            body,
            refresh_s=refresh,
            where=config.where(),
            crumbs={"Flags": "/"},
        )
    )


async def examples(request: web.Request) -> web.Response:
    config, work = request.app[CONFIG], request.app[WORK]
    key = request.match_info["key"]
    window, span = _window(request)
    service = _variant_param(request, "service")
    route = _variant_param(request, "route")
    deadline = _deadline(config)
    _found, row = await _known_flag(config, work, key, deadline)
    if row is None:  # the flags are still being read
        body = [section("examples", "Example traces", pending("the flags in the lake"))]
        return html_page(page("flagscope: examples", body, refresh_s=PENDING_REFRESH_S))
    treatment, baseline = _arms(request, key, row)
    now = utc_now()

    def compute() -> traces.Examples:
        end = utc_now()
        return traces.examples(
            config.lake, key, treatment, baseline, end - span, end, service, route
        )

    answer = await work.get(
        ("examples", key, window, treatment, baseline, service, route),
        compute,
        ttl=60,
        wait=_left(deadline),
    )
    view = examples_page.ExamplesView(
        key, window, now - span, now, treatment, baseline, service, route, answer, config.trace_link
    )
    crumbs = {"Flags": "/", key: url("/flag", key, window=window)}
    return html_page(
        page(
            f"flagscope: {key} examples",
            examples_page.render_body(view),
            refresh_s=_refresh(config, answer),
            where=config.where(),
            crumbs=crumbs,
        )
    )


def _arms(request: web.Request, key: str, row: FlagOverview) -> tuple[str, str]:
    """Treatment and baseline from ?variant= and ?baseline=, as the comparison picks them."""
    try:
        return choose_variants(
            key,
            {v.variant: v.users for v in row.variants},
            _variant_param(request, "variant"),
            _variant_param(request, "baseline"),
        )
    except AnalysisError as exc:
        raise web.HTTPBadRequest(text=f"{exc} (?variant= and ?baseline= of the address)") from None


async def different(request: web.Request) -> web.Response:
    config, work = request.app[CONFIG], request.app[WORK]
    key = request.match_info["key"]
    window, span = _window(request)
    service, route = _variant_param(request, "service"), _variant_param(request, "route")
    text = request.query.get("bad", "errors")[:20]
    try:
        bad = Bad(text)
    except ValueError:
        raise web.HTTPBadRequest(
            text=f"?bad={text!r}: pick errors (failed requests) or slow (over the baseline's p95)"
        ) from None
    deadline = _deadline(config)
    _found, row = await _known_flag(config, work, key, deadline)
    if row is None:  # the flags are still being read
        body = [section("different", "What is different", pending("the flags in the lake"))]
        return html_page(page("flagscope: what is different", body, refresh_s=PENDING_REFRESH_S))
    treatment, baseline = _arms(request, key, row)
    now = utc_now()

    def compute() -> Difference:
        end = utc_now()
        return different_query.what_is_different(
            config.lake,
            key,
            treatment,
            baseline,
            end - span,
            end,
            service,
            route,
            bad,
            runner=bounded,
        )

    answer = await work.get(
        ("different", key, window, treatment, baseline, service, route, bad.value),
        compute,
        ttl=60,
        wait=_left(deadline),
        pool="heavy",
    )
    view = different_page.DifferentView(
        key, window, now - span, now, treatment, baseline, service, route, bad, answer
    )
    crumbs = {"Flags": "/", key: url("/flag", key, window=window)}
    return html_page(
        page(
            f"flagscope: {key} what is different",
            different_page.render_body(view),
            refresh_s=_refresh(config, answer),
            where=config.where(),
            crumbs=crumbs,
        )
    )


async def trace(request: web.Request) -> web.Response:
    config, work = request.app[CONFIG], request.app[WORK]
    try:
        trace_id = traces.check_trace_id(request.match_info["trace_id"])
    except AnalysisError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    near = None
    if "at" in request.query:
        try:
            near = parse_time(request.query["at"][:40], "at")
        except AnalysisError:
            near = None  # only a hint
    answer = await work.get(
        ("trace", trace_id),
        lambda: traces.trace(config.lake, trace_id, near),
        ttl=300,
        wait=max(config.wait_s, 5),
    )
    if answer.pending or answer.error:
        message = answer.error or "Reading the trace … this page refreshes itself."
        body = [
            section(
                "trace",
                f"Trace {trace_id}",
                f'<p class="pending" data-pending="1">{esc(message)}</p>',
            )
        ]
        return html_page(
            page("flagscope: trace", body, refresh_s=PENDING_REFRESH_S, where=config.where())
        )
    if answer.value is None:
        work.forget(("trace", trace_id))  # its spans may still arrive: look again next time
        held_range = await work.get(
            ("range",), lambda: traces.lake_range(config.lake), ttl=60, wait=10
        )
        first, last = held_range.value or (None, None)
        held = f" (the lake holds {when(first)} to {when(last)})" if first else ""
        raise web.HTTPNotFound(
            text=f"trace {trace_id} is not in the lake{held}; old partitions leave it after "
            "retention_days, and a trace's spans can take a few seconds to arrive"
        )
    body = trace_page.render_body(answer.value, config.trace_link, config.test_markers)
    return html_page(
        page(f"flagscope: trace {trace_id}", body, where=config.where(), crumbs={"Flags": "/"})
    )


# -- signing in -----------------------------------------------------------------------------
def _sign_in_page(next_path: str, status: int, wrong: bool = False) -> web.Response:
    note = '<p class="problem">That is not the token.</p>' if wrong else ""
    form = (
        f'{note}<form class="controls" method="post" action="/login">'
        f'<input type="hidden" name="next" value="{esc(safe_next(next_path))}">'
        '<label>Token <input type="password" name="token" autocomplete="current-password" '
        'required></label><button type="submit">Sign in</button></form>'
        '<p class="note">The collector\'s auth_token (FLAGSCOPE_AUTH_TOKEN); a script may send '
        "Authorization: Bearer &lt;token&gt; instead.</p>"
    )
    return html_page(page("flagscope: sign in", [section("sign-in", "Sign in", form)]), status)


async def login_form(request: web.Request) -> web.Response:
    return _sign_in_page(request.query.get("next", "/"), 200)


async def login(request: web.Request) -> web.Response:
    access = request.app[CONFIG].access
    form = await request.post()
    target = safe_next(str(form.get("next", "/")))
    if access.token is None:
        return web.Response(status=303, headers={"Location": target})
    if not access.token_matches(str(form.get("token", ""))):
        return _sign_in_page(target, 401, wrong=True)
    response = web.Response(status=303, headers={"Location": target})
    response.set_cookie(
        COOKIE, access.session, httponly=True, samesite="Strict", secure=request.secure, path="/"
    )
    return response
