"""`flagscope ui`: every page over a lake built to order, through a real `flagscope ui`
process on loopback port 0 — status, security headers, what each page shows, escaping of
telemetry strings, 404s that name the fix, bounded output, the token off loopback;
tests/test_ui_parts.py has the pieces that need no server."""

from __future__ import annotations

import html
import json
import random
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from flagscope.analysis.diff import run_diff
from flagscope.analysis.guard.looks import LookHistory, Stage, record
from flagscope.analysis.report_archive import flag_dir_name, write_report
from flagscope.analysis.result import DiffOptions
from flagscope.analysis.ui.layout import CSP
from flagscope.analysis.ui.traces import MAX_SPANS
from tests import report_lakes, synthetic
from tests.ui_server import UiProcess, fetch

NOW = synthetic.NOW
FLAG = "checkout-v2"
EVIL_FLAG = '<script>alert("flag")</script>'
EVIL_ROUTE = '/<script>alert("route")</script>'
TEMPLATE = "https://jaeger.example/trace/{trace_id}"
BIG_TRACE = "ab" * 16  # a trace of 1 + MAX_SPANS + 100 spans
MARKED_TRACE = "cd" * 16  # a tester's request that failed: span events and an exception

pytestmark = pytest.mark.socket  # a `flagscope ui` process on a loopback socket


@dataclass(frozen=True)
class Lake:
    root: Path
    lake: Path
    reports: Path
    guard: Path


def build_lake(root: Path) -> Lake:
    rng = random.Random(13)
    rows = report_lakes.cohort_traffic(
        rng, FLAG, NOW - timedelta(hours=6), 6, 600, ms_on=170.0, err_on=0.10
    )
    for _ in range(6):  # a tester inside the flag: failing and slow, and marked
        rows += synthetic.request(
            "qa-1", "on", flag=FLAG, ms=2000.0, error=True, test_root="test_user=true",
            at=NOW - timedelta(minutes=rng.randint(5, 300)),
        )  # fmt: skip
    for i in range(120):  # a hostile flag key and route
        rows += synthetic.request(
            f"evil-user-{i}", "on" if i % 2 else "off", flag=EVIL_FLAG, route=EVIL_ROUTE,
            ms=100 * rng.lognormvariate(0, 0.3), error=rng.random() < 0.2,
            at=NOW - timedelta(minutes=rng.randint(5, 180)),
        )  # fmt: skip
    for i in range(10):  # a flag last evaluated 40 days ago: stale
        rows += synthetic.request(
            f"old-user-{i}", "on", flag="old-flag", at=NOW - timedelta(days=40, minutes=i)
        )
    rows += _big_trace() + _marked_trace()
    lake = report_lakes.write(root / "lake", rows)
    reports, guard = root / "reports", root / "guard"
    for hours in (3, 0):  # two scheduled runs: the windows ending 3 h ago and now
        end = NOW - timedelta(hours=hours)
        result = run_diff(lake, DiffOptions(FLAG, NOW - timedelta(hours=6), end, sequential=True))
        write_report(result, reports, ["json"], end)
    looks = LookHistory(guard / flag_dir_name(FLAG) / "looks.jsonl")
    stage = Stage(1, 50.0, NOW - timedelta(hours=6))
    looks.add(record(NOW - timedelta(minutes=40), stage, "INCONCLUSIVE", "not yet", variant="on"))
    looks.add(record(NOW - timedelta(minutes=20), stage, "REGRESSION", "worse", variant="on"))
    return Lake(root, lake, reports, guard)


def _big_trace() -> list[dict[str, object]]:
    root = "00000000000000ff"
    at = NOW - timedelta(minutes=50)
    rows = [synthetic.span(BIG_TRACE, span_id=root, at=at, ms=500.0, user="big-user")]
    for i in range(MAX_SPANS + 100):
        child = synthetic.span(
            BIG_TRACE, kind=1, parent=root, service=f"svc-{i % 3}", ms=1.0,
            at=at + timedelta(milliseconds=i), span_id=f"{i + 1:016x}",
        )  # fmt: skip
        child["attributes"] = json.dumps({"big": "x" * 5000, "n": i})
        rows.append(child)
    return rows


def _marked_trace() -> list[dict[str, object]]:
    """A tester's failed request: the root marked by `test_user` (a test attribute), a child
    that evaluated the flag (a `feature_flag.evaluation` event) and timed out (an
    `exception` event)."""
    root = "00000000000000aa"
    at = NOW - timedelta(minutes=35)
    top = synthetic.span(
        MARKED_TRACE, span_id=root, at=at, ms=900.0, error=True, user="qa-2",
        test="test_user=true",
    )  # fmt: skip
    top["attributes"] = json.dumps({"test_user": True, "http.route": "/checkout"})
    child = synthetic.span(
        MARKED_TRACE, kind=3, parent=root, service="payments", ms=800.0, error=True,
        user="qa-2", flags={FLAG: "on"}, at=at + timedelta(milliseconds=5),
        span_id="00000000000000ab",
    )  # fmt: skip
    start = int((at - datetime(1970, 1, 1)).total_seconds() * 1e9)
    child["span_events"] = json.dumps(
        [
            {
                "name": "feature_flag.evaluation",
                "time_unix_nano": start + 6_000_000,
                "attributes": {"feature_flag.key": FLAG, "feature_flag.result.variant": "on"},
            },
            {
                "name": "exception",
                "time_unix_nano": start + 805_000_000,
                "attributes": {
                    "exception.type": "TimeoutError",
                    "exception.message": "payments took longer than 800 ms",
                },
            },
        ]
    )
    return [top, child]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    return build_lake(tmp_path_factory.mktemp("ui-lake"))


@pytest.fixture(scope="module")
def ui(lake: Lake) -> Iterator[UiProcess]:
    running = UiProcess(
        lake.root, "--lake", str(lake.lake), "--reports", str(lake.reports),
        "--guard-dir", str(lake.guard), "--trace-link", TEMPLATE,
    ).start()  # fmt: skip
    yield running
    running.stop()


def flag_path(key: str, **query: str) -> str:
    from flagscope.analysis.ui.layout import url

    return url("/flag", key, **query)


def text_of(page: str) -> str:
    """The page's text, tags and styles removed, whitespace collapsed, entities decoded."""
    body = re.sub(r"<style>.*?</style>|<svg.*?</svg>", " ", page, flags=re.DOTALL)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)))


def assert_safe(page: str, *raw: str) -> None:
    """No telemetry string reached the markup as markup, and each did reach it as text."""
    assert "<script" not in page.lower()
    for value in raw:
        assert value not in page
        assert html.escape(value) in page


# -- the flags page -------------------------------------------------------------------------
def test_the_flags_page_lists_every_flag_with_its_verdict_variants_and_staleness(ui):
    answer = ui.get("/")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/html")
    assert answer.headers["Content-Security-Policy"] == CSP
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["X-Frame-Options"] == "DENY"
    rows = re.findall(r'<tr(?: class="(\w*)")? data-flag="([^"]+)"', answer.text)
    flags = {html.unescape(key): cls for cls, key in rows}
    assert set(flags) == {FLAG, EVIL_FLAG, "old-flag"}
    assert flags[FLAG] == "regression"  # its latest scheduled report: REGRESSION
    text = text_of(answer.text)
    assert re.search(r"1 flag in REGRESSION", text)
    assert "scheduled report" in text and "computed from the lake over the last 24 h" in text
    assert "not evaluated in the last 24 h" in text and "stale not evaluated for 40 days" in text
    assert re.search(r"on \d[\d,]* users · \d+\.\d%", text) and "off " in text
    assert text.count("not stale") == 2


def test_the_flags_sort_by_a_query_parameter_without_script(ui):
    def order(query: str) -> list[str]:
        page = ui.get(f"/?sort={query}").text
        return [html.unescape(k) for k in re.findall(r'data-flag="([^"]+)"', page)]

    assert order("flag") == sorted([FLAG, EVIL_FLAG, "old-flag"])
    assert order("-flag") == sorted([FLAG, EVIL_FLAG, "old-flag"], reverse=True)
    assert order("verdict")[0] == FLAG  # REGRESSION first
    by_users = order("-users")
    assert by_users[0] == FLAG and by_users[-1] == "old-flag"
    assert order("stale")[0] == "old-flag"
    assert order("nonsense") == order("verdict")
    page = ui.get("/?sort=-users").text
    assert 'href="/?sort=users"' in page  # the active column's link flips the order
    assert "<script" not in page.replace(html.escape(EVIL_FLAG), "")


# -- a flag ---------------------------------------------------------------------------------
def test_a_flags_page_shows_the_full_comparison_and_its_verdict_over_time(ui):
    answer = ui.get(flag_path(FLAG, window="6h"))
    assert answer.status == 200 and answer.headers["Content-Security-Policy"] == CSP
    page = answer.text
    # refreshed while open (--refresh, 60 s by default): no script, the page reloads itself
    assert '<meta http-equiv="refresh" content="60">' in page
    parts = ['id="summary"', 'id="controls"', 'id="over-time"', 'id="routes"', 'id="cohorts"',
             'id="overall"', 'id="charts"', 'id="breakdown"', 'id="health"', 'id="share"',
             'id="settings"']  # fmt: skip
    positions = [page.index(p) for p in parts]
    assert positions == sorted(positions)
    assert 'data-verdict="REGRESSION"' in page[: page.index("</header>")]
    for chart in ("verdict-strip", "growth-error-rate", "growth-mean-latency", "variant-share",
                  "cdf", "forest-p95"):  # fmt: skip
        assert f'data-chart="{chart}"' in page, chart
    strip = re.search(r'data-chart="verdict-strip".*?</svg>', page, re.DOTALL).group(0)
    assert strip.count('class="verdict-point"') == 4  # two reports and two guard looks
    assert 'id="went-bad"' in page
    assert '<option value="6h" selected>' in page and 'name="variant"' in page
    assert window_hours(page) == pytest.approx(6, abs=0.02)  # the report's own window line
    assert "<script" not in page.replace(html.escape(EVIL_FLAG), "")


def test_a_flags_page_links_the_regressed_route_to_its_example_traces(ui):
    page = ui.get(flag_path(FLAG, window="6h")).text
    routes = page[page.index('id="routes"') : page.index('id="cohorts"')]
    first = re.search(r'<tr class="regression">.*?href="([^"]+)"', routes, re.DOTALL)
    assert first, "the regressed route comes first and stands out"
    href = html.unescape(first.group(1))
    assert href.startswith("/examples/checkout-v2?") and "route=GET+%2Fcheckout" in href


def window_hours(page: str) -> float:
    found = re.search(r"Window (\S+ \S+) to (\S+ \S+) UTC", text_of(page))
    assert found, "the comparison's window is on the page"
    start, end = (datetime.fromisoformat(t) for t in found.groups())
    return (end - start).total_seconds() / 3600


def test_the_window_is_the_users_choice_and_a_wrong_one_names_the_fix(ui):
    assert window_hours(ui.get(flag_path(FLAG, window="1h")).text) == pytest.approx(1, abs=0.02)
    assert window_hours(ui.get(flag_path(FLAG)).text) == pytest.approx(24, abs=0.02)
    bad = ui.get(flag_path(FLAG, window="soon"))
    assert bad.status == 400 and "expected a number and a unit" in text_of(bad.text)
    huge = ui.get(flag_path(FLAG, window="400d"))
    assert huge.status == 400 and "from 1m to 90d" in text_of(huge.text)


# -- drill-down and trace ---------------------------------------------------------------------
def test_example_traces_of_a_route_show_each_cohorts_failed_and_slowest(ui):
    page = ui.get(f"/examples/{FLAG}?window=6h&route=GET+%2Fcheckout").text
    for block in ("treatment-failed", "treatment-slowest", "baseline-failed", "baseline-slowest"):
        assert f'id="{block}"' in page, block
    treatment = page[page.index('id="treatment-failed"') : page.index('id="treatment-slowest"')]
    assert len(re.findall(r'href="(/trace/[0-9a-f]{32}\?at=[^"]+)"', treatment)) > 0
    slowest = page[page.index('id="treatment-slowest"') : page.index('id="baseline-failed"')]
    rows = re.findall(r"<tr>(.*?)</tr>", slowest.split("<tbody>", 1)[1])
    marked = ['class="tag test"' in row for row in rows]
    assert marked == [False] * 10 + [True] * 3  # the real ones, then a few of the tester's
    assert all("qa-1" in row for row, test in zip(rows, marked, strict=True) if test)
    latencies = [float(re.search(r"([\d,.]+) ms", r).group(1).replace(",", "")) for r in rows]
    assert latencies[:10] == sorted(latencies[:10], reverse=True)
    assert TEMPLATE.split("{")[0] in page and 'rel="noopener noreferrer"' in page


def test_a_trace_shows_its_waterfall_spans_and_flag_evaluation(ui):
    page = ui.get(f"/examples/{FLAG}?window=6h&route=GET+%2Fcheckout").text
    href = html.unescape(re.search(r'href="(/trace/[0-9a-f]{32}\?at=[^"]+)"', page).group(1))
    answer = ui.get(href)
    assert answer.status == 200 and answer.headers["Content-Security-Policy"] == CSP
    svg = re.search(r'data-chart="waterfall".*?</svg>', answer.text, re.DOTALL).group(0)
    assert svg.count('class="span-row"') == 2  # the request and the child that evaluated
    assert 'data-error="1"' in svg and "⚑ checkout-v2=on" in svg
    assert 'id="flag-evaluations"' in answer.text and "https://jaeger.example/trace/" in answer.text
    assert answer.text.count('<details id="span-') == 2


def test_a_trace_shows_span_events_its_exception_and_its_test_marker(ui):
    answer = ui.get(f"/trace/{MARKED_TRACE}")
    assert answer.status == 200
    page = answer.text
    # the test marker: named in the header, the span tagged, the marking attribute lit
    markers = re.search(r'<ul class="health" id="test-markers">(.*?)</ul>', page).group(1)
    assert "TEST" in markers and "test_user=true" in markers
    assert '<dt class="testattr">test_user</dt>' in page
    child = re.search(r'<details id="span-00000000000000ab".*?</details>', page, re.DOTALL)
    assert child is not None and 'class="span error flag"' in child.group(0)
    events = child.group(0).split("<h4>Events</h4>", 1)[1]
    # the flag evaluation event first, tagged, at its offset; then the exception with its type
    evaluation, exception = events.split('<p class="event">')[1:3]
    assert "feature_flag.evaluation" in evaluation and "⚑ flag evaluation" in evaluation
    assert re.search(r"at \+6\.00\d ms", evaluation)  # (float seconds since the epoch)
    assert "exception" in exception and "TimeoutError" in exception
    assert "payments took longer than 800 ms" in exception
    assert re.search(r"at \+805\.00\d ms", exception)


def test_a_huge_trace_is_shown_up_to_the_limit_with_values_cut(ui):
    answer = ui.get(f"/trace/{BIG_TRACE}")
    assert answer.status == 200
    assert answer.text.count('<details id="span-') == MAX_SPANS
    assert "(the first by time; more in the lake)" in answer.text
    assert "x" * 5000 not in answer.text and "4,000 more characters" in answer.text
    assert len(answer.text) < 6_000_000


# -- escaping --------------------------------------------------------------------------------
def test_a_hostile_flag_key_and_route_are_text_on_every_page(ui):
    assert_safe(ui.get("/").text, EVIL_FLAG)
    page = ui.get(flag_path(EVIL_FLAG, window="6h")).text
    assert_safe(page, EVIL_FLAG, "GET " + EVIL_ROUTE)
    href = html.unescape(re.search(r'href="(/examples/[^"]+route=[^"]+)"', page).group(1))
    examples = ui.get(href).text
    assert_safe(examples, EVIL_FLAG, "GET " + EVIL_ROUTE)
    trace = html.unescape(re.search(r'href="(/trace/[^"]+)"', examples).group(1))
    assert_safe(ui.get(trace).text, EVIL_FLAG, EVIL_ROUTE)


# -- errors that name the fix --------------------------------------------------------------------
def test_what_is_not_there_is_a_404_that_names_the_fix(ui):
    flag = ui.get(flag_path("checkout-v3"))
    assert flag.status == 404 and "did you mean 'checkout-v2'?" in text_of(flag.text)
    assert flag.headers["Content-Security-Policy"] == CSP
    trace = ui.get("/trace/" + "12" * 16)
    assert trace.status == 404 and "not in the lake (the lake holds" in text_of(trace.text)
    bad = ui.get("/trace/not-a-trace")
    assert bad.status == 400 and "32 hex digits" in text_of(bad.text)
    nowhere = ui.get("/nowhere")
    assert nowhere.status == 404 and "start at the flags page" in text_of(nowhere.text)
    posted = ui.get("/", data=b"x=1")
    assert posted.status == 405 and "use GET" in text_of(posted.text)


def test_a_page_from_another_site_cannot_read_the_ui_through_its_own_name(ui):
    answer = fetch(ui.url, headers={"Host": "attacker.example"})
    assert answer.status == 403 and "open it at http://127.0.0.1:" in text_of(answer.text)
    assert fetch(ui.url, headers={"Host": "localhost"}).status == 200


# -- off loopback: the collector's token ---------------------------------------------------------
def test_listening_beyond_loopback_without_a_token_is_refused(lake):
    ui = UiProcess(lake.root, "--lake", str(lake.lake), "--http", "0.0.0.0:0")
    done = subprocess.run(
        ui.args, cwd=ui.cwd, env=ui.env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "auth_token" in done.stderr and "127.0.0.1" in done.stderr


def test_beyond_loopback_the_token_is_asked_for_and_a_session_kept(lake):
    running = UiProcess(
        lake.root, "--lake", str(lake.lake), "--http", "0.0.0.0:0",
        env={"FLAGSCOPE_AUTH_TOKEN": "s3cret-token"},
    ).start()  # fmt: skip
    try:
        anonymous = running.get("/", settle=False)
        assert anonymous.status == 401 and 'action="/login"' in anonymous.text
        assert anonymous.headers["Content-Security-Policy"] == CSP
        bearer = running.get("/", settle=False, headers={"Authorization": "Bearer s3cret-token"})
        assert bearer.status == 200
        wrong = running.get("/login", settle=False, data=b"token=nope&next=/")
        assert wrong.status == 401 and "not the token" in wrong.text
        signed = running.get("/login", settle=False, data=b"token=s3cret-token&next=//evil.example")
        assert signed.status == 303 and signed.headers["Location"] == "/"
        cookie = signed.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "s3cret" not in cookie
        session = cookie.split(";", 1)[0]
        assert running.get("/", settle=False, headers={"Cookie": session}).status == 200
        assert running.get("/", settle=False, headers={"Cookie": "flagscope_ui=0"}).status == 401
    finally:
        running.stop()
