"""`flagscope ui` in real headless Chromium, over the demo's lake shape (the sample shop's
traffic through a real collector, its regression on POST /checkout): open the flags page,
click through to the flag, to the regressed route's example traces, to one trace's
waterfall — with no console error, no request leaving the origin, and screenshots at 1366
and 800 px wide (kept in $FLAGSCOPE_UI_SCREENSHOTS too when it is set, to look at)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import browser
from tests.helpers import record_regressed_shop
from tests.ui_server import UiProcess

RED = (0xB3, 0x26, 0x1E)  # the REGRESSION badge and a regressed row's mark
WIDTHS = (1366, 800)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiProcess]:
    tmp = tmp_path_factory.mktemp("ui-browser")
    record_regressed_shop(tmp)
    server = UiProcess(
        tmp, "--data-dir", str(tmp), "--trace-link", "https://jaeger.example/trace/{trace_id}"
    ).start()
    yield server
    server.stop()


async def _settle(tab: browser.DevTools) -> None:
    """Until nothing on the page is still being computed (it refreshes itself meanwhile)."""
    for _ in range(120):
        if not await tab.evaluate("!!document.querySelector('[data-pending]')"):
            return
        await asyncio.sleep(0.5)
        await tab.open(tab.url)
    raise AssertionError(f"{tab.url} is still computing after a minute")


async def _shoot(
    tab: browser.DevTools, name: str, out: Path, outside: dict[str, list[str]]
) -> dict[int, Path]:
    """Screenshots at each width; `outside` gets, per page and width, the chart text that
    Chromium lays out beyond its <svg> (must stay empty)."""
    shots = {}
    for width in WIDTHS:
        await tab.resize(width, 900)
        shots[width] = await tab.screenshot(out / f"{name}-{width}.png", 0, 900)
        await tab.screenshot(out / f"{name}-{width}-full.png")
        found = await tab.evaluate(browser.OUTSIDE_SVG)
        outside[f"{name} at {width} px ({found['charts']} charts)"] = found["out"]
    await tab.resize(WIDTHS[0], 900)
    return shots


def test_click_from_the_flags_to_a_regressed_routes_trace_waterfall(ui, tmp_path):
    chromium = browser.require_chromium()

    outside: dict[str, list[str]] = {}

    async def walk() -> tuple[browser.DevTools, dict[str, dict[int, Path]], list[str]]:
        shots, visited = {}, []
        async with browser.DevTools(chromium, 1366, 900) as tab:
            await tab.open(ui.url)
            await _settle(tab)
            shots["index"] = await _shoot(tab, "index", tmp_path, outside)
            regressed = await tab.evaluate(
                "[...document.querySelectorAll('tr.regression')].map(r => r.dataset.flag)"
            )
            assert regressed == ["new-checkout"]
            steps = [
                ("flag", 'tr[data-flag="new-checkout"] .flag a'),
                ("examples", "#routes tr.regression a[href^='/examples/']"),
                ("trace", "#treatment-failed a.trace, #treatment-slowest a.trace"),
            ]
            for name, selector in steps:
                visited.append(await tab.click(selector))
                await _settle(tab)
                shots[name] = await _shoot(tab, name, tmp_path, outside)
            page = await tab.html()
            assert await tab.evaluate("document.querySelectorAll('svg .span-row').length") >= 2
            assert "⚑ new-checkout=" in page and 'class="span flag' in page
        return tab, shots, visited

    tab, shots, visited = asyncio.run(walk())
    assert "/flag/new-checkout" in visited[0]
    assert "route=POST+%2Fcheckout" in visited[1]
    assert "/trace/" in visited[2]
    assert tab.errors == [] and tab.console == []  # no script: not a single message
    # every label of the UI's charts (verdicts and estimates over time, shares, the
    # waterfall) inside its chart at both widths
    assert all(out == [] for out in outside.values()), outside
    assert any("flag at 800 px" in k and "(0 charts)" not in k for k in outside), outside
    origin = ui.url.rstrip("/")
    assert tab.requests and all(u.startswith(origin + "/") for u in tab.requests), tab.requests
    for name, by_width in shots.items():
        for width, png in by_width.items():
            pixels_wide, _, _ = browser.png_pixels(png)
            assert pixels_wide == width, (name, width)
    for width in WIDTHS:  # the regression stands out above the fold at either width
        colours = browser.colours(shots["index"][width])
        assert colours.get(RED, 0) > 50 and len(colours) > 30, width
    keep = os.environ.get("FLAGSCOPE_UI_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for png in tmp_path.glob("*.png"):
            shutil.copy(png, Path(keep) / png.name)
