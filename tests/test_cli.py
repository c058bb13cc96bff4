"""The `flagscope` command: query output formats, errors that name the fix, README coverage."""

import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flagscope.analysis.cli import build_parser, main
from flagscope.collector.config import Settings
from flagscope.collector.convert import Converter
from flagscope.collector.lake.read import fetch
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


def test_an_empty_lake_still_has_the_schema_for_a_library_reader(tmp_path):
    columns, rows = fetch(tmp_path / "none", "SELECT count(*) AS n, count(flags) AS f FROM events")
    assert columns == ["n", "f"] and rows == [(0, 0)]


READERS = (
    ["query", "SELECT count(*) FROM events"],
    ["flags"],
    ["flags", "--stale"],
    ["diff", "--flag", "new-checkout"],
    ["report", "--flag", "new-checkout"],
)


@pytest.mark.parametrize("command", READERS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("state", ["missing", "empty", "a file"])
def test_a_lake_that_is_not_there_is_an_error_naming_it(tmp_path, capsys, command, state):
    """Not '(0 rows)' and exit 0 (issue 11): the path it looked in, and the options."""
    lake = tmp_path / "lake"
    if state == "empty":
        (lake / "date=2026-01-01" / "hour=00").mkdir(parents=True)
    elif state == "a file":
        lake.write_text("")
    assert main([command[0], "--lake", str(lake), *command[1:]]) == 2
    captured = capsys.readouterr()
    problem = {"missing": "does not exist", "empty": "holds no events yet"}
    assert f"lake {lake} {problem.get(state, 'is not a directory')}" in captured.err
    assert "pass --data-dir or --lake" in captured.err and captured.out == ""


def test_a_missing_lake_beside_the_demo_names_the_demo(lake_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(lake_dir, tmp_path / "flagscope-data" / "demo" / "lake")
    assert main(["flags"]) == 2
    assert "(make demo's lake: --data-dir flagscope-data/demo)" in capsys.readouterr().err
    assert main(["flags", "--data-dir", "flagscope-data/demo"]) == 0
    assert "lake: flagscope-data/demo/lake" in capsys.readouterr().err


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
    assert code == 11 and "INCONCLUSIVE" in out.split("\n\n")[0]  # 1 user per cohort: too few
    assert all(len(line) <= 100 for line in out.splitlines()[:6])  # sentences wrap


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


def test_schedule_once_runs_the_declared_reports_as_report_does(tmp_path, capsys):
    """`schedule --once` and `report` without --flag: the same lines, the same exit code
    (the most severe verdict's), not silence and 0 (issue 11 point 5)."""
    lake_dir = _shop_like_lake(tmp_path)
    config = tmp_path / "flagscope.toml"
    config.write_text(
        f'[reports]\nout_dir = "{tmp_path / "out"}"\n\n[[reports.flag]]\n'
        'flag = "f"\nwindow = "3h"\nformats = ["md", "json"]\n'
    )
    common = ["--config", str(config), "--lake", str(lake_dir)]
    assert main(["schedule", "--once", *common]) == 14
    assert re.fullmatch(r"f: REGRESSION — \S+/out/f/\d{8}T\d{4}Z\.md\n", capsys.readouterr().out)
    history = (tmp_path / "out" / "f" / "history.jsonl").read_text().splitlines()
    assert len(history) == 1 and json.loads(history[0])["verdict"] == "REGRESSION"
    assert main(["report", *common]) == 14
    assert capsys.readouterr().out.startswith("f: REGRESSION — ")


@pytest.mark.parametrize(
    "option", [["--since", "2h"], ["--variant", "on"], ["--sequential"], ["--min-users", "5"]]
)
def test_report_without_a_flag_refuses_the_per_flag_options(tmp_path, capsys, option):
    config = tmp_path / "flagscope.toml"
    config.write_text('[[reports.flag]]\nflag = "f"\n')
    assert main(["report", "--config", str(config), *option]) == 2
    err = capsys.readouterr().err
    assert f"{option[0]} compares one flag: give --flag too" in err


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


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        (["--service", "chekout"], "--service 'chekout' is not in the lake; known: 'frontend'"),
        (["--route", "/chekout"], "--route '/chekout' is not in the lake; known: 'GET /checkout'"),
    ],
)
def test_an_unknown_service_or_route_is_a_usage_error_listing_the_known(
    tmp_path, capsys, scope, message
):
    """A typo is not NO_DATA (issue 11 point 5); a known route still works either way."""
    lake_dir = _shop_like_lake(tmp_path)
    common = ["diff", "--lake", str(lake_dir), "--flag", "f", "--since", "3h"]
    assert main([*common, *scope]) == 2
    assert message in capsys.readouterr().err
    assert main([*common, "--route", "GET /checkout"]) == 14
    assert main([*common, "--since", "-3h", "--route", "/checkout"]) == 14


@pytest.mark.slow
@pytest.mark.parametrize("front", ["--http", "--grpc"])
def test_serve_on_a_port_in_use_says_so_in_one_line_and_exits_2(tmp_path, front):
    """An OpenTelemetry Collector often holds 4317/4318 already: one line naming the address
    and the option, exit 2 — no traceback, no lake writer left behind (issue 11 point 2)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        other = ["--grpc", ""] if front == "--http" else ["--http", "127.0.0.1:0"]
        serve = [sys.executable, "-m", "flagscope", "serve", "--data-dir", str(tmp_path)]
        done = subprocess.run(
            [*serve, front, address, *other],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2 and done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if "INFO" not in line]
    assert lines == [
        f"flagscope: error: cannot listen on {address} (address already in use: another "
        "process, an OpenTelemetry Collector perhaps, listens there): choose another address "
        f"with {front} HOST:PORT or [collector] {front[2:]}_endpoint, or {front} '' to turn it off"
    ]


def test_serve_with_an_impossible_port_names_the_range(tmp_path, capsys):
    assert main(["serve", "--data-dir", str(tmp_path), "--http", "127.0.0.1:99999"]) == 2
    assert "a port from 0 to 65535" in capsys.readouterr().err
