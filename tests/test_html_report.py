"""The HTML report: the sample shop's real traffic through a real collector, `run_diff(...,
charts=True)`, rendered to one self-contained file — then opened in headless Chromium."""

from __future__ import annotations

import asyncio
import dataclasses
import html
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flagscope.analysis.diff import run_diff
from flagscope.analysis.render import html as html_report
from flagscope.analysis.result import (
    DiffOptions,
    DiffResult,
    HealthCheck,
    MetricResult,
    TrafficFilter,
)
from flagscope.analysis.verdict import Verdict
from tests import browser
from tests.helpers import record_regressed_shop

CHARTS = {"cdf", "histogram", "error-rate", "p95", "forest-error-rate", "forest-p95"}
SVG = re.compile(r'<svg class="chart" data-chart="([^"]+)"(.*?)</svg>', re.DOTALL)
SERIES = re.compile(r'class="series" data-points="(\d+)"')


@dataclasses.dataclass(frozen=True)
class Report:
    lake: Path
    result: DiffResult
    page: Path
    text: str


def _window() -> tuple[datetime, datetime]:
    now = datetime.now(UTC).replace(tzinfo=None)
    return now - timedelta(hours=2), now + timedelta(minutes=5)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    tmp = tmp_path_factory.mktemp("html")
    lake = record_regressed_shop(tmp)
    start, end = _window()
    result = run_diff(
        lake,
        DiffOptions("new-checkout", start, end, expected_split={"on": 0.2, "off": 0.8}),
        charts=True,
    )
    page = tmp / "report.html"
    page.write_text(html_report.render(result), encoding="utf-8")
    return Report(lake, result, page, page.read_text(encoding="utf-8"))


def _charts(text: str) -> dict[str, str]:
    return dict(SVG.findall(text))


# -- the file -------------------------------------------------------------------------------
def test_the_report_is_one_file_that_loads_nothing(report):
    text = report.text
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.IGNORECASE)
    assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//""", text, re.IGNORECASE)
    assert "@import" not in text
    for tag in ("<script", "<link", "<img", "<iframe", "<object", "<embed"):
        assert tag not in text.lower(), tag
    assert "Content-Security-Policy" in text and "default-src 'none'" in text


def test_the_report_leads_with_the_sentence_and_shows_every_part(report):
    r, text = report.result, report.text
    assert r.verdict is Verdict.REGRESSION  # the shop's injected regression on POST /checkout
    header = text[text.index("<header>") : text.index("</header>")]
    assert f'data-verdict="{r.verdict.value}"' in header
    assert html.escape(r.summary) in header
    for route in {s.route for s in r.breakdown}:
        assert html.escape(route) in text
    for check in ("sample_ratio", "crossover_users", "sample_size"):
        assert f'data-check="{check}"' in text
    parts = [
        'id="summary"',
        'id="window"',
        'id="cohorts"',
        'id="overall"',
        'id="adjusted"',
        'id="charts"',
        'id="breakdown"',
        'id="health"',
        'id="settings"',
    ]
    positions = [text.index(p) for p in parts]
    assert positions == sorted(positions)
    assert "12 test users" in text and "alpha" in text and "±0.5 pp" in text
    q_values = [f"{m.q_value:.3g}" for s in r.breakdown for m in s.metrics]
    assert q_values and all(f">{q}<" in text for q in q_values)


def test_every_chart_is_an_svg_with_the_data_in_it(report):
    charts, data = _charts(report.text), report.result.charts
    assert set(charts) == CHARTS
    for kind, body in charts.items():
        assert 'viewBox="0 0 ' in body and 'role="img"' in body and "<title" in body, kind
    bins = len(data.histogram_edges_ms) - 1
    assert SERIES.findall(charts["cdf"]) == [str(bins + 1)] * 2
    assert SERIES.findall(charts["histogram"]) == [str(2 * bins)] * 2
    for kind in ("error-rate", "p95"):  # one point per non-empty bucket, treatment first
        expected = [
            str(sum(1 for row in data.series if row["cohort"] == c and row["requests"]))
            for c in ("treatment", "baseline")
        ]
        assert SERIES.findall(charts[kind]) == expected, kind
    for kind in ("forest-error-rate", "forest-p95"):
        assert charts[kind].count('<g class="interval">') == len(report.result.breakdown)
        assert "<path d=" in charts[kind]  # a REGRESSION row is drawn as a diamond


# -- what comes from telemetry is text, not markup ------------------------------------------------
def test_names_and_reasons_from_telemetry_are_escaped(report):
    r = report.result
    evil_flag, evil_route = "<script>alert(1)</script>", "POST /<b>checkout</b>"
    options = dataclasses.replace(r.options, flag=evil_flag, variant="<i>on</i>")
    strata = tuple(dataclasses.replace(s, route=evil_route) for s in r.breakdown)
    hostile = dataclasses.replace(
        r,
        options=options,
        breakdown=strata,
        summary=f"{evil_flag} vs & co",
        reason="<img src=x onerror=alert(2)>",
        reasons=("<img src=x onerror=alert(2)>", f"{evil_route} (shop), error rate"),
        health=(HealthCheck("<u>check</u>", False, "detail <em>here</em>"),),
    )
    text = html_report.render(hostile)
    for raw in (evil_flag, evil_route, "<i>on</i>", "<img src=x", "<u>check", "<em>here"):
        assert raw not in text
        assert html.escape(raw) in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; vs &amp; co" in text


# -- degenerate results -------------------------------------------------------------------------
def test_a_no_data_result_renders_without_charts(report):
    start, end = _window()
    result = run_diff(
        report.lake,
        DiffOptions("new-checkout", start, end, test_mode=TrafficFilter.ONLY),
        charts=True,
    )
    assert result.verdict is Verdict.NO_DATA and result.charts is None
    text = html_report.render(result)
    assert 'data-verdict="NO_DATA"' in text and html.escape(result.summary) in text
    assert html.escape(result.reason) in text and 'id="no-comparison"' in text
    assert "<svg" not in text and 'id="settings"' in text


def test_a_result_without_chart_data_says_so(report):
    text = html_report.render(dataclasses.replace(report.result, charts=None))
    assert 'id="no-charts"' in text
    assert set(_charts(text)) == {"forest-error-rate", "forest-p95"}  # from the breakdown


def test_each_cohort_row_gets_its_own_swatch_whatever_the_variants_are_called(report):
    # a treatment variant literally named "baseline" must not move the baseline's swatch
    treatment = dataclasses.replace(report.result.treatment, variant="baseline")
    text = html_report.render(dataclasses.replace(report.result, treatment=treatment))
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td>", text)
    assert (
        '<span class="swatch treatment" style="background:' in rows[0][0]
        and rows[0][0].endswith("treatment")
        and rows[0][1] == "baseline"
    )
    assert '<span class="swatch baseline"' in rows[1][0] and "swatch" not in rows[0][1]


# -- in a browser -------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [1366, 800])
def test_the_report_renders_in_headless_chromium(report, tmp_path, width):
    chromium = browser.require_chromium()  # fails in CI without one, skips elsewhere
    png = tmp_path / f"report-{width}.png"
    shot = browser.screenshot(chromium, report.page, png, width, 900)
    assert png.exists() and png.stat().st_size > 20_000
    colours = browser.colours(png)
    samples = sum(colours.values())
    assert len(colours) > 50 and max(colours.values()) < 0.9 * samples  # not blank
    red = (0xB3, 0x26, 0x1E)  # the REGRESSION badge, above the fold at either width
    assert colours.get(red, 0) > 10

    dom = browser.dump_dom(chromium, report.page)
    summary = re.search(r'<span id="summary">(.*?)</span>', dom.stdout, re.DOTALL)
    assert summary and html.unescape(summary.group(1)) == report.result.summary

    for run in (shot, dom):
        assert run.console() == [], run.console()  # the report has no script: no messages
        assert run.console_errors() == []
        assert set(run.files_loaded()) <= {report.page.resolve().as_uri()}


def test_the_browser_check_catches_console_errors_and_refused_loads(tmp_path):
    chromium = browser.require_chromium()
    page = tmp_path / "broken.html"
    page.write_text(
        '<!doctype html><html><head><meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; script-src 'unsafe-inline'\"></head><body>"
        "<script>console.error('flagscope-check: boom')</script>"
        "<script>throw new Error('flagscope-check: uncaught')</script>"
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw="></body></html>',
        encoding="utf-8",
    )
    run = browser.dump_dom(chromium, page)
    # Chromium's log drops the level of console.error: any message counts for a scriptless page.
    assert any("flagscope-check: boom" in m for m in run.console())
    errors = "\n".join(run.console_errors())
    assert "Uncaught Error: flagscope-check: uncaught" in errors
    assert "violates the following Content Security Policy" in errors  # the blocked image


def _widest(r: DiffResult) -> DiffResult:
    """The report with what ran a newcomer's p95 label out of the plot: p95 changes in the
    hundreds of percent, a route name longer than the label column, a long variant name."""

    def stretch(m: MetricResult) -> MetricResult:
        if m.metric != "p95_latency":
            return m
        return dataclasses.replace(
            m, estimate=dataclasses.replace(m.estimate, rel=2.5, rel_lo=1.024, rel_hi=10.347)
        )

    route = "GET /api/v1/catalogue/items/{item_id}/reviews/summary"
    strata = tuple(
        dataclasses.replace(s, route=route, metrics=tuple(stretch(m) for m in s.metrics))
        for s in r.breakdown
    )
    options = dataclasses.replace(r.options, variant="new-checkout-flow-with-wallet-v2")
    return dataclasses.replace(r, breakdown=strata, options=options)


@pytest.mark.parametrize("case", ["shop", "widest"])
def test_every_chart_label_is_inside_its_svg_in_chromium(report, tmp_path, case):
    chromium = browser.require_chromium()
    result = report.result if case == "shop" else _widest(report.result)
    page = tmp_path / f"{case}.html"
    page.write_text(html_report.render(result), encoding="utf-8")

    async def measure() -> dict[int, dict[str, Any]]:
        found = {}
        async with browser.DevTools(chromium, 1366, 900) as tab:
            await tab.open(page.as_uri())
            for width in (1366, 800):
                await tab.resize(width, 900)
                found[width] = await tab.evaluate(browser.OUTSIDE_SVG)
                await tab.screenshot(tmp_path / f"{case}-{width}.png")
        return found

    for width, found in asyncio.run(measure()).items():
        assert found["charts"] == len(CHARTS) and found["texts"] > 50, (width, found)
        assert found["out"] == [], (width, found["out"])
