"""The `flagscope` command: query output formats, errors that name the fix, README coverage."""

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flagscope.analysis.cli import build_parser, main
from flagscope.collector.config import Settings
from flagscope.collector.convert import Converter
from flagscope.collector.lake.write import write_table
from flagscope.collector.tagging import Tagger

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory, otlp_examples):
    """A lake holding the spec's example trace and logs, written by the real converter."""
    from flagscope.collector.decode import prepare
    from flagscope.collector.otlp import JSON, LOGS, SIGNAL_CODES, TRACES

    directory = tmp_path_factory.mktemp("lake")
    records = []
    for signal, name in ((TRACES, "trace.json"), (LOGS, "logs.json")):
        prepared = prepare(signal, (otlp_examples / name).read_bytes(), JSON)
        records.append((SIGNAL_CODES[signal.name], prepared.payload))
    table = Converter(Tagger.from_settings(Settings())).table(records)
    write_table(directory, table, "cli-000000000001-000")
    return directory


SQL = "SELECT signal, trace_id, name FROM events ORDER BY signal"


def test_query_prints_a_table(lake_dir, capsys):
    assert main(["query", "--lake", str(lake_dir), SQL]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^signal\s+trace_id\s+name$", out, re.MULTILINE)
    assert "span    5b8efff798038103d269b633813fc60c  I'm a server span" in out
    assert out.rstrip().endswith("(2 rows)")


def test_query_prints_csv(lake_dir, capsys):
    assert main(["query", "--lake", str(lake_dir), "--format", "csv", SQL]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["signal", "trace_id", "name"]
    assert rows[2] == ["span", "5b8efff798038103d269b633813fc60c", "I'm a server span"]


def test_query_prints_json(lake_dir, capsys):
    assert (
        main(
            [
                "query",
                "--lake",
                str(lake_dir),
                "--format",
                "json",
                "SELECT signal, flags, duration_ms FROM events ORDER BY signal",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert rows == [
        {"signal": "log", "flags": {}, "duration_ms": None},
        {"signal": "span", "flags": {}, "duration_ms": 1000.0},
    ]


def test_query_error_names_the_view_and_exits_non_zero(lake_dir, capsys):
    assert main(["query", "--lake", str(lake_dir), "SELECT nope FROM events"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "query the view 'events'" in err


def test_query_on_an_empty_lake_sees_the_schema(tmp_path, capsys):
    assert (
        main(
            [
                "query",
                "--lake",
                str(tmp_path / "none"),
                "SELECT count(*) AS n, count(flags) AS f FROM events",
            ]
        )
        == 0
    )
    assert "(1 row)" in capsys.readouterr().out


def test_bad_config_file_exits_non_zero_with_the_fix(tmp_path, capsys):
    config = tmp_path / "flagscope.toml"
    config.write_text("[collector]\nhttp_port = 1\n")
    assert main(["query", "--config", str(config), "SELECT 1"]) == 2
    assert "unknown setting 'http_port'" in capsys.readouterr().err


def test_every_subcommand_has_help_and_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        assert f"flagscope {name}" in readme, name
        result = subprocess.run(
            [sys.executable, "-m", "flagscope", name, "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0 and "usage: flagscope" in result.stdout


def test_serve_help_config_lists_the_settings(capsys):
    assert main(["serve", "--help-config"]) == 0
    assert "FLAGSCOPE_MAX_REQUEST_BYTES" in capsys.readouterr().out


def test_flags_lists_variants_users_and_dates(tmp_path, capsys):
    from tests.synthetic import request, write

    lake_dir = write(
        tmp_path,
        request("u1", "on", flag="new-checkout")
        + request("u2", "off", flag="new-checkout")
        + request("u3", "off", flag="new-checkout")
        + request("u3", "blue", flag="theme"),
    )
    assert main(["flags", "--lake", str(lake_dir), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["flag"], r["variant"], r["users"]) for r in rows] == [
        ("new-checkout", "off", 2),
        ("new-checkout", "on", 1),
        ("theme", "blue", 1),
    ]
    assert all(r["first_seen"] and r["last_seen"] for r in rows)


def test_diff_prints_the_sentence_first_and_exits_with_the_verdict(tmp_path, capsys):
    from tests.synthetic import request, write

    lake_dir = write(tmp_path, request("u1", "on") + request("u2", "off"))
    code = main(["diff", "--lake", str(lake_dir), "--flag", "f", "--since", "3h"])
    out = capsys.readouterr().out
    assert out.startswith("f on vs off: ")
    assert code == 11 and "INCONCLUSIVE" in out.splitlines()[0]  # 1 user per cohort: too few


def test_diff_usage_mistakes_name_the_fix(tmp_path, capsys):
    assert main(["diff", "--lake", str(tmp_path), "--flag", "f", "--since", "6 hours"]) == 2
    assert "expected a number and a unit, e.g. 30m, 6h, 7d" in capsys.readouterr().err
    assert main(["diff", "--lake", str(tmp_path), "--flag", "f", "--expected-split", "on:0.2"]) == 2
    assert "variant=share pairs" in capsys.readouterr().err
    assert main(["diff", "--lake", str(tmp_path), "--flag", "f", "--alpha", "2"]) == 2
    assert "alpha = 2.0: must be between 0 and 1" in capsys.readouterr().err
    assert main(["diff", "--lake", str(tmp_path), "--flag", "f", "--min-users", "0"]) == 2
    assert "min_users ≥ 1" in capsys.readouterr().err


def test_the_readme_toml_examples_are_valid(tmp_path):
    from flagscope.analysis.schedule.config import load_config
    from flagscope.collector import config

    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        path = tmp_path / f"example-{i}.toml"
        path.write_text(block)
        config.load(path, env={})  # the collector's sections
        load_config(path, env={}, require=False)  # the reports


def _shop_like_lake(tmp_path):
    import random

    from tests.synthetic import population, write

    return write(tmp_path / "lake", population(random.Random(3), 300, ms_on=160, err_on=0.08))


def test_report_writes_every_format_and_exits_with_the_verdict(tmp_path, capsys):
    lake_dir = _shop_like_lake(tmp_path)
    out = tmp_path / "reports"
    code = main(
        [
            "report",
            "--lake",
            str(lake_dir),
            "--flag",
            "f",
            "--since",
            "3h",
            "--out",
            str(out),
            "--format",
            "html,md,json",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 14 and printed.startswith("f on vs off: ")
    names = {p.name for p in (out / "f").iterdir()}
    assert {"latest.html", "latest.md", "latest.json", "history.jsonl", "state.json"} <= names
    assert json.loads((out / "f" / "latest.json").read_text())["verdict"] == "REGRESSION"


def test_schedule_once_runs_the_declared_reports(tmp_path, capsys):
    lake_dir = _shop_like_lake(tmp_path)
    config = tmp_path / "flagscope.toml"
    config.write_text(
        f'[reports]\nout_dir = "{tmp_path / "out"}"\n\n[[reports.flag]]\n'
        'flag = "f"\nwindow = "3h"\nformats = ["md", "json"]\n'
    )
    assert main(["schedule", "--once", "--config", str(config), "--lake", str(lake_dir)]) == 0
    history = (tmp_path / "out" / "f" / "history.jsonl").read_text().splitlines()
    assert len(history) == 1 and json.loads(history[0])["verdict"] == "REGRESSION"


def test_flags_stale_lists_flags_ready_to_remove(tmp_path, capsys):
    from datetime import timedelta

    from tests.synthetic import NOW, request, write

    old = NOW - timedelta(days=40)
    lake_dir = write(
        tmp_path,
        request("u1", "on", flag="old-flag", at=old)
        + request("u2", "on", flag="live", at=NOW - timedelta(minutes=5))
        + request("u3", "off", flag="live", at=NOW - timedelta(minutes=5)),
    )
    assert main(["flags", "--lake", str(lake_dir), "--stale", "30", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["flag"] for r in rows] == ["old-flag"]
