"""Telemetry strings in what flagscope prints and writes (issue 10 point 16): a flag key
too long for a file name, terminal escape sequences, and Markdown/HTML in a route or a
variant must neither crash a command nor reach the reader as anything but text."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest

from flagscope.analysis.cli import main
from tests import synthetic

NOW = datetime.now().replace(microsecond=0) - timedelta(minutes=5)
LONG_FLAG = "rollout." + "x" * 292  # 300 characters: more than a file name may hold
ESC = "\x1b[2J\x1b[31m"  # clear the screen, turn red
ROUTE = f"/pay{ESC}\n| <script>alert(1)</script> *bold* [link](http://x)"
VARIANT = f"on{ESC}"


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    rng = random.Random(16)
    rows = []
    for i in range(80):
        variant = VARIANT if i % 2 else "off"
        for _ in range(3):
            at = NOW - timedelta(minutes=rng.uniform(1, 50))
            rows += synthetic.request(
                f"u{i}",
                variant,
                flag=LONG_FLAG,
                route=ROUTE,
                at=at,
                ms=100 * rng.lognormvariate(0, 0.3),
            )
    return synthetic.write(tmp_path_factory.mktemp("lake") / "lake", rows)


def run(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_flag_key_longer_than_a_file_name_gets_a_report(lake, tmp_path, capsys):
    code, printed = run(
        capsys,
        "report",
        "--lake",
        str(lake),
        "--flag",
        LONG_FLAG,
        "--variant",
        VARIANT,
        "--since",
        "1h",
        "--out",
        str(tmp_path),
        "--format",
        "md,json,html",
    )
    assert code in (0, 10, 11, 14), printed
    (flag_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(flag_dir.name) <= 120 and flag_dir.name.startswith("rollout.xxx")
    assert {p.suffix for p in flag_dir.glob("*.*")} >= {".md", ".json", ".html"}
    assert "\x1b" not in printed


def test_escape_sequences_are_shown_not_obeyed(lake, capsys):
    for command in (
        ["diff", "--lake", str(lake), "--flag", LONG_FLAG, "--variant", VARIANT, "--since", "1h"],
        ["flags", "--lake", str(lake)],
        ["query", "--lake", str(lake), "SELECT DISTINCT http_route, flags FROM events"],
    ):
        code, printed = run(capsys, *command)
        assert code != 2, printed
        assert "\x1b" not in printed, command
        assert "\\x1b[2J" in printed, command  # the escape is visible as text


def test_the_markdown_report_keeps_telemetry_literal(lake, capsys):
    code, printed = run(
        capsys,
        "diff",
        "--lake",
        str(lake),
        "--flag",
        LONG_FLAG,
        "--variant",
        VARIANT,
        "--since",
        "1h",
        "--format",
        "markdown",
    )
    assert code != 2, printed
    assert "<script>" not in printed and "&lt;script&gt;" in printed
    assert "[link](http" not in printed  # no live link
    table_lines = [line for line in printed.splitlines() if line.startswith("|")]
    assert table_lines, printed
    breakdown = [line for line in table_lines if "/pay" in line]
    assert breakdown and all(line.endswith("|") for line in breakdown)
    lines = printed.splitlines()
    header = lines[lines.index(breakdown[0]) - 2]  # the breakdown table's header row
    assert all(line.count(" | ") == header.count(" | ") for line in breakdown)  # one cell
    assert "\x1b" not in printed
