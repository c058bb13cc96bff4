"""Report files: one per run and format, a stable latest.*, history.jsonl and state.json,
written atomically (analysis/report_archive.py) from real diffs of a synthetic lake."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from flagscope.analysis import report_archive
from flagscope.analysis.diff import run_diff
from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.report_archive import previous_verdict, read_history, write_report
from flagscope.analysis.result import DiffOptions
from flagscope.analysis.verdict import Thresholds, Verdict
from tests.report_lakes import DAY1, DAY2, build_flip_lake

NINE = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
LENIENT = Thresholds(error_rate_pp=4.0, latency_pct=60.0)  # wide enough for p99 to be ruled out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """checkout-v2 on DAY1 (PASS), on DAY2 (REGRESSION), and in an empty window (NO_DATA)."""
    lake = build_flip_lake(tmp_path_factory.mktemp("lake"))

    def diff(start, hours=6):
        options = DiffOptions(
            "checkout-v2",
            start,
            start + timedelta(hours=hours),
            sequential=True,
            thresholds=LENIENT,
        )
        return run_diff(lake, options, charts=True)

    out = {
        "pass": diff(DAY1),
        "regression": diff(DAY2),
        "no_data": diff(DAY1 + timedelta(hours=12)),
    }
    assert [r.verdict for r in out.values()] == [Verdict.PASS, Verdict.REGRESSION, Verdict.NO_DATA]
    return out


def test_files_per_format_latest_and_state(results, tmp_path):
    r = results["regression"]
    files = write_report(r, tmp_path, ["md", "json"], NINE)
    flag_dir = tmp_path / "checkout-v2"
    assert files.directory == flag_dir and files.stamp == "20261128T0900Z"
    assert files.files == {
        "md": flag_dir / "20261128T0900Z.md",
        "json": flag_dir / "20261128T0900Z.json",
    }
    assert files.latest == {"md": flag_dir / "latest.md", "json": flag_dir / "latest.json"}
    for fmt in ("md", "json"):
        assert files.files[fmt].read_bytes() == files.latest[fmt].read_bytes()
    assert json.loads(files.latest["json"].read_text())["verdict"] == "REGRESSION"
    assert files.latest["md"].read_text().startswith(f"**{r.summary}**")
    assert files.previous_verdict is None and not files.changed
    state = json.loads((flag_dir / "state.json").read_text())
    assert state["verdict"] == "REGRESSION" and state["time"] == "2026-11-28T09:00:00Z"
    assert sorted(p.name for p in flag_dir.iterdir()) == [
        "20261128T0900Z.json",
        "20261128T0900Z.md",
        "history.jsonl",
        "latest.json",
        "latest.md",
        "state.json",
    ]


def test_the_markdown_report_links_to_its_html_one(results, tmp_path):
    files = write_report(results["regression"], tmp_path, ["md", "html"], NINE)
    run, latest = files.files["md"].read_text(), files.latest["md"].read_text()
    assert run.endswith("Charts and every number: [20261128T0900Z.html](20261128T0900Z.html)\n")
    assert latest.endswith("Charts and every number: [latest.html](latest.html)\n")
    assert (
        "latest.html"
        not in write_report(results["regression"], tmp_path / "md-only", ["md"], NINE)
        .latest["md"]
        .read_text()
    )


def test_history_and_previous_verdict_across_runs(results, tmp_path):
    first = write_report(results["pass"], tmp_path, ["json"], NINE)
    second = write_report(results["regression"], tmp_path, ["json"], NINE + timedelta(hours=1))
    third = write_report(results["regression"], tmp_path, ["json"], NINE + timedelta(hours=2))
    assert (first.previous_verdict, second.previous_verdict, third.previous_verdict) == (
        None,
        Verdict.PASS,
        Verdict.REGRESSION,
    )
    assert (first.changed, second.changed, third.changed) == (False, True, False)
    history = read_history(tmp_path, "checkout-v2")
    assert [h["verdict"] for h in history] == ["PASS", "REGRESSION", "REGRESSION"]
    assert [h["time"] for h in history] == [
        "2026-11-28T09:00:00Z",
        "2026-11-28T10:00:00Z",
        "2026-11-28T11:00:00Z",
    ]
    assert history[1]["summary"] == results["regression"].summary
    assert history[1]["files"] == {"json": "20261128T1000Z.json"}
    assert history[1]["previous_verdict"] == "PASS"
    # latest.* follows the newest run; the timestamped files stay.
    latest = json.loads((tmp_path / "checkout-v2" / "latest.json").read_text())
    assert latest["verdict"] == "REGRESSION"
    assert json.loads(first.files["json"].read_text())["verdict"] == "PASS"


def test_a_rerun_in_the_same_minute_keeps_both_files(results, tmp_path):
    a = write_report(results["pass"], tmp_path, ["json"], NINE)
    b = write_report(results["regression"], tmp_path, ["json"], NINE + timedelta(seconds=20))
    assert a.files["json"].name == "20261128T0900Z.json"
    assert b.files["json"].name == "20261128T090020Z.json"
    assert json.loads(a.files["json"].read_text())["verdict"] == "PASS"


def test_no_data_is_reported_not_raised(results, tmp_path):
    files = write_report(results["no_data"], tmp_path, ["md", "json"], NINE)
    assert json.loads(files.latest["json"].read_text())["verdict"] == "NO_DATA"
    assert "no data" in files.latest["md"].read_text()


def test_html_report_is_written_self_contained(results, tmp_path):
    files = write_report(results["regression"], tmp_path, ["html", "md"], NINE)
    html = files.latest["html"].read_text()
    assert html.lower().startswith("<!doctype html>") and "REGRESSION" in html
    assert files.main_file() == files.files["html"]


def test_a_failed_render_writes_nothing(results, tmp_path, monkeypatch):
    write_report(results["pass"], tmp_path, ["md", "json"], NINE)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkout-v2").iterdir()}

    def broken(result, fmt):
        if fmt == "json":
            raise RuntimeError("renderer bug")
        return "new markdown"

    monkeypatch.setattr(report_archive, "render", broken)
    with pytest.raises(RuntimeError):
        write_report(results["regression"], tmp_path, ["md", "json"], NINE + timedelta(hours=1))
    after = {p.name: p.read_bytes() for p in (tmp_path / "checkout-v2").iterdir()}
    assert after == before  # no new file, latest.* and history untouched


def test_readers_never_see_a_partial_latest(results, tmp_path):
    """A reader polling latest.json while runs replace it always parses a whole report."""
    write_report(results["pass"], tmp_path, ["json"], NINE)
    latest = tmp_path / "checkout-v2" / "latest.json"
    stop = threading.Event()
    seen: list[str] = []
    errors: list[Exception] = []

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(json.loads(latest.read_bytes())["verdict"])
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            r = results["regression"] if i % 2 else results["pass"]
            write_report(r, tmp_path, ["json"], NINE + timedelta(minutes=i + 1))
    finally:
        stop.set()
        reader.join()
    assert not errors and set(seen) <= {"PASS", "REGRESSION"} and len(seen) > 0
    assert not list((tmp_path / "checkout-v2").glob("*.tmp")) and not list(
        (tmp_path / "checkout-v2").glob(".*")
    )


def test_a_torn_history_line_is_skipped(results, tmp_path):
    write_report(results["pass"], tmp_path, ["json"], NINE)
    flag_dir = tmp_path / "checkout-v2"
    with open(flag_dir / "history.jsonl", "ab") as handle:
        handle.write(b'{"time": "2026-11-28T09:30:00Z", "verd')  # a crash mid-append
    (flag_dir / "state.json").unlink()  # and the state lost: the history answers
    assert previous_verdict(tmp_path, "checkout-v2") is Verdict.PASS
    files = write_report(results["regression"], tmp_path, ["json"], NINE + timedelta(hours=1))
    assert files.previous_verdict is Verdict.PASS
    assert [h["verdict"] for h in read_history(tmp_path, "checkout-v2")] == ["PASS", "REGRESSION"]


def test_unknown_format_names_the_choices(results, tmp_path):
    with pytest.raises(
        AnalysisError, match=r"unknown report format 'pdf'; choose from html, md, json"
    ):
        write_report(results["pass"], tmp_path, ["md", "pdf"], NINE)
    assert not (tmp_path / "checkout-v2").exists()
    assert report_archive.normalize_formats(["markdown", "JSON", "md"]) == ("md", "json")


def test_flag_keys_that_are_not_file_names_get_a_safe_directory():
    assert report_archive.flag_dir_name("new-checkout") == "new-checkout"
    odd = report_archive.flag_dir_name("team/../checkout v2")
    assert "/" not in odd and not odd.startswith(".") and odd.startswith("team_.._checkout_v2-")
    assert odd != report_archive.flag_dir_name("team/../checkout_v2")  # the hash keeps them apart
