"""`pip install .` outside the Makefile: the wheel holds the one package `flagscope` (never
top-level `collector` or `analysis`), and the installed copy runs on its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so that setuptools' build/ and egg-info stay out of the checkout.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("collector", "analysis"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("flagscope-*.whl")
    return found


@pytest.mark.slow
def test_the_wheel_claims_only_the_flagscope_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"flagscope"}
    modules = {name for name in names if name.endswith(".py")}
    assert {
        "flagscope/__main__.py",
        "flagscope/collector/lake/schema.py",
        "flagscope/analysis/stats/mix.py",
        "flagscope/analysis/render/html.py",
    } <= modules
    assert not any("/_root/" in name or name.startswith("tests/") for name in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [
        line
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert not any(line.split()[1].startswith("pytest") for line in requires)


@pytest.mark.slow
def test_the_installed_package_runs_without_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    smoke = (
        "import flagscope, flagscope.collector.server, flagscope.analysis.diff; "
        "print(flagscope.__file__)"
    )
    where = subprocess.run(
        [sys.executable, "-c", smoke],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert Path(where.stdout.strip()).is_relative_to(target)  # not the checkout's copy
    version = subprocess.run(
        [sys.executable, "-m", "flagscope", "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("flagscope 0.")
    lake = ROOT / "sample_data" / "lake"  # the recorded lake: data, not the checkout's code
    query = subprocess.run(
        [
            sys.executable,
            "-m",
            "flagscope",
            "query",
            "--lake",
            str(lake),
            "SELECT count(*) AS n FROM events",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert query.returncode == 0, query.stderr
    assert "(1 row)" in query.stdout and "(make demo" not in query.stderr
