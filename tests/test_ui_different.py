"""`flagscope ui`'s "what is different" page over the planted-cause lake (payments-service
2.3.1 timing out under `on`, through a real collector): linked from the flag page's
regressed route, the sentence and paired bars naming the cause, telemetry text escaped,
a wrong ?bad= answered with the fix, and the page in headless Chromium at 1366 and 800 px
with no console message and nothing wider than the window."""

from __future__ import annotations

import asyncio
import html
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from flagscope.analysis.ui.layout import CSP
from tests import browser, planted_cause
from tests.ui_server import UiProcess

WIDTHS = (1366, 800)
TIMEOUTS = (0xD5, 0x5E, 0x00)  # the treatment-bad bars' colour
PAGE = f"/different/{planted_cause.FLAG}?route={quote('POST /checkout')}"

pytestmark = pytest.mark.socket  # a collector and a `flagscope ui` process on loopback


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiProcess]:
    tmp = tmp_path_factory.mktemp("ui-different")
    planted_cause.record(tmp)
    server = UiProcess(tmp, "--data-dir", str(tmp)).start()
    yield server
    server.stop()


def test_the_flag_page_links_its_regressed_route_to_what_is_different(ui):
    page = ui.get(f"/flag/{planted_cause.FLAG}").text
    rows = re.findall(r'<tr class="regression">.*?</tr>', page, re.S)
    links = [
        html.unescape(h) for row in rows for h in re.findall(r'href="(/different/[^"]+)"', row)
    ]
    assert any("route=POST+%2Fcheckout" in h for h in links), rows
    assert not re.search(r'<tr>(?:(?!</tr>).)*href="/different/', page, re.S)  # regressed only


def test_what_is_different_names_the_planted_version_and_its_timeouts(ui):
    answer = ui.get(PAGE)
    assert answer.status == 200
    assert answer.headers["Content-Security-Policy"] == CSP
    shown = re.search(r'id="different-sentence">(.*?)</p>', answer.text)[1]
    assert "<code>payments-service</code> v2.3.1" in shown  # quoted parts as code
    sentence = html.unescape(re.sub(r"<[^>]+>", "", shown))
    assert sentence.startswith("Failed requests under on (POST /checkout) are ")
    assert "TimeoutError" in sentence and "payments-service v2.3.1" in sentence
    bold = re.findall(
        r'<tr class="significant"><td class="long"[^>]*>(.*?)</td>'
        r'<td class="long attribute"[^>]*><strong>(.*?)</strong>',
        answer.text,
    )
    labels = [html.unescape(f"{service} · {value}") for service, value in bold]
    assert labels[0] == "payments-service · service.version=2.3.1"  # the cause first
    assert any(label.startswith("payments-service · ") and "TimeoutError" in label
               for label in labels)  # fmt: skip
    assert answer.text.count('<g class="bar"') == 3 * min(len(labels), 8)


def test_slow_requests_are_one_link_away_and_say_their_threshold(ui):
    page = ui.get(PAGE).text
    slow = html.unescape(re.search(r'<a href="([^"]*bad=slow[^"]*)"', page)[1])
    answer = ui.get(slow)
    assert answer.status == 200
    assert "Slow requests under <code>on</code>" in answer.text
    assert re.search(r"over the baseline&#x27;s p95, [\d,]+ ms", answer.text)


def test_telemetry_text_is_escaped_on_the_page(ui):
    page = ui.get(PAGE).text
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;region&quot;)&lt;/script&gt;" in page


def test_a_wrong_kind_of_bad_request_names_the_fix(ui):
    answer = ui.get(PAGE + "&bad=broken")
    assert answer.status == 400
    assert "pick errors (failed requests) or slow" in html.unescape(answer.text)
    assert "Traceback" not in answer.text


def test_the_page_in_chromium_at_two_widths(ui, tmp_path):
    chromium = browser.require_chromium()

    async def look() -> tuple[browser.DevTools, dict[int, Path], dict[int, int]]:
        shots, widths = {}, {}
        async with browser.DevTools(chromium, 1366, 900) as tab:
            await tab.open(ui.url.rstrip("/") + PAGE)
            for _ in range(120):  # until it is computed (the page refreshes itself)
                if not await tab.evaluate("!!document.querySelector('[data-pending]')"):
                    break
                await asyncio.sleep(0.5)
                await tab.open(tab.url)
            for width in WIDTHS:
                await tab.resize(width, 900)
                shots[width] = await tab.screenshot(tmp_path / f"different-{width}.png", 0, 900)
                await tab.screenshot(tmp_path / f"different-{width}-full.png")
                widths[width] = await tab.evaluate("document.documentElement.scrollWidth")
            assert await tab.evaluate("document.querySelectorAll('svg g.bar').length") >= 9
        return tab, shots, widths

    tab, shots, widths = asyncio.run(look())
    assert tab.errors == [] and tab.console == []
    assert all(u.startswith(ui.url.rstrip("/") + "/") for u in tab.requests), tab.requests
    for width, png in shots.items():
        assert browser.png_pixels(png)[0] == width
        assert widths[width] <= width  # nothing wider than the window
        assert browser.colours(png).get(TIMEOUTS, 0) > 200, width  # the bars above the fold
    keep = os.environ.get("FLAGSCOPE_UI_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for png in tmp_path.glob("*.png"):
            shutil.copy(png, Path(keep) / png.name)
