"""The facts of the machine a benchmark ran on, printed and stored beside its figures."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import psutil


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "memory_gib": f"{psutil.virtual_memory().total / 2**30:.0f}",
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "platform": platform.platform(),
    }


def cpu_seconds() -> float:
    """This process's CPU time so far, its threads (DuckDB's) included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def best(work: Callable[[], object], repeat: int) -> tuple[float, float]:
    """The fastest of `repeat` runs of `work`: (wall, CPU) seconds."""
    runs = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), cpu_seconds()
        work()
        runs.append((time.perf_counter() - wall, cpu_seconds() - cpu))
    return min(runs)


def write_runs(name: str, runs: list[dict[str, Any]], argv: list[str]) -> Path:
    """`runs` (dicts of figures, seconds named `*_s`) with each time also as a ratio to the
    first run's (`*_ratio`: the flat line is 1.0), written as `write_figures` does with the
    machine and the command (`bench/<name>.py` and `argv`)."""
    for run in runs:
        for key in [k for k in run if k.endswith("_s")]:
            run[key.removesuffix("_s") + "_ratio"] = run[key] / runs[0][key]
    command = " ".join([f"bench/{name}.py", *argv])
    return write_figures(name, {"machine": machine(), "command": command, "runs": runs})


def write_figures(name: str, figures: dict[str, Any]) -> Path:
    """Print `figures` and keep them in bench/out/<name>.json (git-ignored)."""
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return path
