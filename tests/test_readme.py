"""README.md verbatim after `make demo` (issue 11 point 1): every shell command and every
Python snippet that reads the lake is run as written, in a fresh directory where the demo
just ran, and must succeed — a diff or report with its verdict's exit code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
VERDICT_CODES = {0, 10, 11, 12, 13, 14}
# Commands that run until stopped, or need what this machine may not have; each is
# exercised elsewhere (serve in the socket tests, make by CI itself).
LONG_RUNNING = (
    re.compile(r"^make "),
    re.compile(r"^\.venv/bin/flagscope serve(?! --help-config)"),
    re.compile(r"^\.venv/bin/flagscope schedule(?! --once)"),
    re.compile(r"^\.venv/bin/flagscope guard(?!.* --once)"),
    re.compile(r"^\.venv/bin/flagscope ui(?! --help)"),
)

pytestmark = [pytest.mark.slow, pytest.mark.socket]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)


def commands(block: str) -> list[str]:
    """The block's commands: a line, continued while a double quote is open or the line
    ends in a backslash (how the README writes long SQL)."""
    out: list[str] = []
    current = ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current = f"{current}\n{line}" if current else line
        if current.count('"') % 2 == 0 and not current.endswith("\\"):
            out.append(current)
            current = ""
    assert not current, f"unterminated command in README: {current!r}"
    return out


SHELL = [c for b in blocks("sh") for c in commands(b)]
EXPORTS = [c for c in SHELL if c.startswith("export ")]
RUN = [
    c for c in SHELL if not c.startswith("export ") and not any(p.match(c) for p in LONG_RUNNING)
]
LAKE_SNIPPETS = [b for b in blocks("python") if "flagscope-data/" in b]


def run_in(here: Path, env: dict[str, str], args: list[str]) -> subprocess.CompletedProcess[str]:
    """`args` as a newcomer would run them: in `here`, with `env`, output captured."""
    return subprocess.run(args, cwd=here, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def after_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A directory where `make demo` just ran (its script, as the Makefile runs it), with
    `.venv` there as in a checkout, and the environment after the README's exports."""
    here = tmp_path_factory.mktemp("newcomer")
    venv = Path(sys.prefix)  # the environment running the tests: `make`'s .venv in CI
    if not (venv / "bin" / "flagscope").exists():
        pytest.skip("not run from a virtual environment with flagscope installed")
    (here / ".venv").symlink_to(venv)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLAGSCOPE_", "OTEL_"))}
    done = run_in(here, env, [sys.executable, str(ROOT / "sample_data" / "demo.py")])
    assert done.returncode == 0, done.stdout + done.stderr
    # the demo ends on the page to open (issue 13): the UI's command and its address
    last = done.stdout.strip().splitlines()[-3:]
    assert last[0].startswith("Look at it in a browser") and "make demo UI=1" in last[0]
    assert last[1].strip().startswith(".venv/bin/flagscope ui ")
    assert last[2].strip() == "then open http://127.0.0.1:4320/"
    exports = "\n".join(EXPORTS)
    shown = subprocess.run(
        ["bash", "-c", f"{exports}\nenv -0"], cwd=here, env=env, capture_output=True, check=True
    ).stdout.decode()
    env = dict(item.split("=", 1) for item in shown.split("\0") if "=" in item)
    # The README's report examples read flagscope.toml; a newcomer writes the one it shows.
    reports = next(b for b in blocks("toml") if "[[reports.flag]]" in b)
    (here / "flagscope.toml").write_text(reports)
    return here, env


def test_the_readme_has_what_this_test_runs() -> None:
    assert len(RUN) >= 12 and len(LAKE_SNIPPETS) == 2, (RUN, LAKE_SNIPPETS)
    assert "export FLAGSCOPE_DATA_DIR=flagscope-data/demo" in EXPORTS[0]


@pytest.mark.parametrize("command", RUN, ids=lambda c: c.split("#")[0].strip()[:60])
def test_each_readme_command_runs_verbatim_after_the_demo(
    after_demo: tuple[Path, dict[str, str]], command: str
) -> None:
    here, env = after_demo
    if command.startswith("duckdb ") and shutil.which("duckdb") is None:
        pytest.skip("the DuckDB CLI is not installed here (the README says: if installed)")
    done = run_in(here, env, ["bash", "-c", command])
    verdicts = re.match(r"\.venv/bin/flagscope (diff|report|guard)\b", command)
    allowed = VERDICT_CODES if verdicts else {0}
    assert done.returncode in allowed, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.strip(), "an answer, not silence"


@pytest.mark.parametrize("index", range(len(LAKE_SNIPPETS)))
def test_each_readme_python_snippet_reads_the_demo_lake(
    after_demo: tuple[Path, dict[str, str]], index: int
) -> None:
    here, env = after_demo
    done = run_in(here, env, [sys.executable, "-c", LAKE_SNIPPETS[index]])
    assert done.returncode == 0, done.stderr
