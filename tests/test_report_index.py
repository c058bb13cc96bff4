"""The static reports beyond one comparison (issue 13): `reports/index.html` over every
flag's latest verdict, the example requests with their trace links, and "Why:" as one
line per reason in words — from real diffs of synthetic lakes, through `flagscope report`
and the scheduler."""

from __future__ import annotations

import dataclasses
import html
import json
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flagscope.analysis import report_archive
from flagscope.analysis.cli import main
from flagscope.analysis.diff import run_diff
from flagscope.analysis.example_query import with_examples
from flagscope.analysis.render import markdown, terminal
from flagscope.analysis.result import DiffOptions
from flagscope.analysis.schedule.config import parse_config
from flagscope.analysis.schedule.runner import Scheduler
from flagscope.analysis.verdict import Thresholds, Verdict
from tests import synthetic
from tests.report_lakes import DAY1, DAY2, build_flip_lake

SIX = DAY1.replace(hour=6, tzinfo=UTC)
LENIENT = {"error_threshold_pp": 4.0, "latency_threshold_pct": 60.0}
JAEGER = "https://jaeger.example/trace/{trace_id}"
INTERNAL = re.compile(r"\b(error_rate|mean_latency|p\d\d_latency|below_q\d+|sample_ratio)\b")


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_flip_lake(tmp_path_factory.mktemp("lake"))


def scheduler(out: Path, lake: Path, *flags: str, trace_link: str | None = None) -> Scheduler:
    body = {
        "out_dir": str(out),
        "window": "6h",
        "cron": "0 6 * * *",
        "formats": ["html", "md", "json"],
        **LENIENT,
        "flag": [{"flag": f} for f in flags or ("checkout-v2", "search-v2")],
    }
    if trace_link:
        body["trace_link"] = trace_link
    return Scheduler(
        parse_config({"reports": body}), lake, clock=lambda: SIX - timedelta(minutes=1)
    )


def index_rows(page: str) -> list[tuple[str, str]]:
    """(flag, verdict) of each row of the index, in order."""
    return re.findall(r'<tr[^>]*data-flag="([^"]*)".*?data-verdict="([A-Z_]+)"', page)


# -- reports/index.html ---------------------------------------------------------------------
def test_each_schedule_round_updates_the_index_with_the_regression_first(lake, tmp_path):
    runner = scheduler(tmp_path, lake)
    runner.run_due(SIX)
    first = (tmp_path / "index.html").read_text()
    assert index_rows(first) == [("checkout-v2", "PASS"), ("search-v2", "PASS")]
    assert 'id="regressions"' not in first

    runner.run_due(SIX + timedelta(days=1))  # checkout-v2 regressed on DAY2
    page = (tmp_path / "index.html").read_text()
    assert index_rows(page) == [("checkout-v2", "REGRESSION"), ("search-v2", "PASS")]
    assert '<p class="banner" id="regressions">REGRESSION: checkout-v2</p>' in page
    assert '<tr class="regression" data-flag="checkout-v2">' in page
    summary = json.loads((tmp_path / "checkout-v2" / "latest.json").read_text())["summary"]
    assert html.escape(summary) in page and "2026-11-21 06:00" in page
    links = re.findall(r'<a href="([^"]+)"', page)
    assert links == ["checkout-v2/latest.html", "search-v2/latest.html"]
    assert all((tmp_path / link).is_file() for link in links)
    assert "<script" not in page and "default-src 'none'" in page


def test_a_failing_flag_is_listed_with_its_error_and_its_last_verdict(lake, tmp_path):
    scheduler(tmp_path, lake, "checkout-v2").run_due(SIX)
    report_archive.record_failure(
        tmp_path, "checkout-v2", SIX + timedelta(hours=1), "the lake at <x> is gone"
    )
    report_archive.record_failure(tmp_path, "never-ran", SIX, "flag 'never-ran' not in the lake")
    page = (tmp_path / "index.html").read_text()
    assert index_rows(page) == [("checkout-v2", "PASS")]  # never-ran has no verdict badge
    assert "the last run failed: the lake at &lt;x&gt; is gone" in page
    assert 'data-flag="never-ran"' in page and ">FAILED<" in page
    assert '<a href="never-ran/history.jsonl">' in page


def test_flag_keys_in_the_index_are_escaped_and_their_links_quoted(lake, tmp_path):
    options = DiffOptions("checkout-v2", DAY2, DAY2 + timedelta(hours=6), thresholds=Thresholds())
    result = run_diff(lake, options)
    evil = '<script>alert(1)</script>"x'
    hostile = dataclasses.replace(
        result, options=dataclasses.replace(result.options, flag=evil), summary=f"{evil} & co"
    )
    report_archive.write_report(hostile, tmp_path, ["json"], SIX)
    page = (tmp_path / "index.html").read_text()
    assert evil not in page and "<script" not in page
    assert html.escape(evil) in page and html.escape(f"{evil} & co") in page
    (link,) = re.findall(r'<a href="([^"]+)"', page)
    assert link == f"{report_archive.flag_dir_name(evil)}/latest.json"
    assert (tmp_path / link).is_file()


# -- example requests ----------------------------------------------------------------------
def test_flagscope_report_carries_example_traces_with_links(lake, tmp_path, capsys):
    out = tmp_path / "reports"
    code = main(
        [
            "report",
            "--lake",
            str(lake),
            "--flag",
            "checkout-v2",
            "--from",
            DAY2.isoformat(),
            "--to",
            (DAY2 + timedelta(hours=6)).isoformat(),
            "--out",
            str(out),
            "--trace-link",
            JAEGER,
        ]
    )
    assert code == 14 and "every flag:" in capsys.readouterr().out
    assert index_rows((out / "index.html").read_text()) == [("checkout-v2", "REGRESSION")]
    report = json.loads((out / "checkout-v2" / "latest.json").read_text())
    (route,) = report["examples"]  # the one regressed route
    assert route["route"] == "GET /checkout" and route["treatment"]["variant"] == "on"
    failed, slowest = route["treatment"]["failed"], route["treatment"]["slowest"]
    assert failed and all(e["error"] for e in failed)
    latencies = [e["latency_ms"] for e in slowest]
    assert latencies == sorted(latencies, reverse=True) and route["baseline"]["slowest"]
    example = slowest[0]
    assert example["link"] == JAEGER.replace("{trace_id}", example["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{32}", example["trace_id"])
    page = (out / "checkout-v2" / "latest.html").read_text()
    assert f'<a class="trace" href="{example["link"]}"' in page
    assert 'id="examples"' in page and '<h3 class="route">GET /checkout' in page
    md = (out / "checkout-v2" / "latest.md").read_text()
    assert f"[{example['trace_id']}](<{example['link']}>)" in md


def test_without_a_link_template_the_ids_are_shown_unlinked(lake):
    options = DiffOptions("checkout-v2", DAY2, DAY2 + timedelta(hours=6))
    result = with_examples(lake, run_diff(lake, options))
    assert result.examples and all(x.trace_link is None for x in result.examples)
    text = markdown.render(result)
    some = result.examples[0].examples.rows[0].trace_id
    assert f"| {some} |" in text and "](<" not in text


def test_a_bad_trace_link_is_a_usage_error_that_names_the_form(lake, tmp_path, capsys):
    code = main(["report", "--lake", str(lake), "--flag", "checkout-v2", "--out", str(tmp_path),
                 "--trace-link", "jaeger/trace"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "expected an http(s) URL with {trace_id} in it" in err


def test_test_users_and_hostile_strings_in_examples_are_marked_and_escaped(tmp_path):
    now = datetime.now().replace(microsecond=0) - timedelta(minutes=30)
    rng = random.Random(3)
    evil_user = "<img src=x onerror=alert(1)>"
    rows = []
    for i in range(120):
        variant = "on" if i % 2 else "off"
        user = evil_user if i == 1 else (f"qa-{i}" if i in (3, 5) else f"u{i}")
        for _ in range(3):
            rows += synthetic.request(
                user,
                variant,
                test_root="user_id" if user.startswith("qa-") else None,
                flag="pay",
                route="/pay|<b>",
                ms=100 * rng.lognormvariate(0, 0.3) * (3 if variant == "on" else 1)
                + (10_000 if user == evil_user else 0),  # the slowest: in the examples
                error=rng.random() < 0.2,
                at=now + timedelta(minutes=rng.uniform(0, 20)),
            )
    lake = synthetic.write(tmp_path / "lake", rows)
    options = DiffOptions("pay", now - timedelta(minutes=5), now + timedelta(minutes=25))
    result = with_examples(lake, run_diff(lake, options, charts=True), JAEGER)
    users = {e.user_id: e.is_test for x in result.examples for e in x.examples.rows}
    assert users[evil_user] is False and users.get("qa-3", users.get("qa-5")) is True
    from flagscope.analysis.render import html as html_report

    page = html_report.render(result)
    assert evil_user not in page and "<b>" not in page
    assert html.escape(evil_user) in page
    assert '<span class="tag test">TEST</span>' in page
    text = markdown.render(result)
    assert "<img" not in text and "<b>" not in text


# -- "Why:" -----------------------------------------------------------------------------------
def test_why_is_one_line_per_reason_in_words_and_nothing_is_cut(lake):
    options = DiffOptions("checkout-v2", DAY2, DAY2 + timedelta(hours=6))
    result = run_diff(lake, options, charts=True)
    assert result.verdict is Verdict.REGRESSION and len(result.reasons) >= 4
    assert "more" not in result.reason
    for line in result.reasons:
        assert not INTERNAL.search(line), line
    from flagscope.analysis.render import html as html_report

    page = html_report.render(result)
    items = re.search(r'<ul class="why">(.*?)</ul>', page, re.DOTALL)
    assert items and items.group(1).count("<li>") == len(result.reasons)
    text = markdown.render(result)
    assert all(f"- {markdown.md(line)}" in text for line in result.reasons)
    shown = terminal.render(result, width=400)
    assert all(f"  - {line}" in shown for line in result.reasons)
    assert json.loads(result_json(result))["reasons"] == list(result.reasons)


def test_an_inconclusive_verdict_lists_every_open_question(lake):
    """With a minimum no cohort reaches, each of the 2 adjusted and 6 overall metrics is an
    open question: all eight are listed (the old reason stopped at three "and 5 more")."""
    strict = Thresholds(min_users=100_000)
    options = DiffOptions("search-v2", DAY1, DAY1 + timedelta(hours=6), thresholds=strict)
    result = run_diff(lake, options)
    assert result.verdict is Verdict.INCONCLUSIVE and len(result.reasons) == 8
    assert all("too few users" in line and not INTERNAL.search(line) for line in result.reasons)
    text = markdown.render(result)
    assert "Not decided yet" in text and text.count("\n- overall ") == 8


def result_json(result) -> str:
    from flagscope.analysis.render import json as json_report

    return json_report.render(result)
