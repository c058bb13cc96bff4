"""A diff of the last day against the lake's age (issue 12: a scheduled report looks at the
last 24 hours of a lake that keeps 30 days).

The same traffic per day (bench/make_lake.py, `--per-day` events a day) is written as a
lake of one day and one of `--days` days; on each, best of `--repeat`, page cache warm,
in this process: `run_diff` for the lake's flag over the last 24 hours and over the last
hour (a guard's look). A diff excludes every user ever marked as a tester, anywhere in the
lake, so some of its work grows with the lake's age; the ratio to the one-day lake says
how much (flat is 1.0). Prints the figures and writes bench/out/lake_age.json. Run:
`.venv/bin/python bench/lake_age.py` (~3 minutes the first time, which generates the lakes
under bench/out/lakes/).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import best, write_runs
from bench.make_lake import make_lake, read_manifest
from flagscope.analysis.diff import run_diff
from flagscope.analysis.result import DiffOptions

FLAG = "new-checkout"


def lake_of_age(cache: Path, per_day: int, days: int) -> tuple[Path, dict[str, Any]]:
    """The cached lake of `days` days at `per_day` events a day, generated when missing."""
    lake = cache / f"age-{per_day}-{days}"
    manifest = read_manifest(lake)
    if manifest is None:
        shutil.rmtree(lake, ignore_errors=True)
        began = time.perf_counter()
        make_lake(lake, per_day * days, hours=24 * days)
        print(f"generated {lake.name} in {time.perf_counter() - began:.0f} s", flush=True)
        manifest = read_manifest(lake)
        assert manifest is not None
    return lake, manifest


def measure(lake: Path, manifest: dict[str, Any], repeat: int) -> dict[str, float]:
    end = datetime.fromisoformat(manifest["end"]).replace(tzinfo=None)
    figures: dict[str, float] = {}
    for name, span in (("day", timedelta(days=1)), ("hour", timedelta(hours=1))):
        options = DiffOptions(flag=FLAG, start=end - span, end=end)
        wall, cpu = best(lambda options=options: run_diff(lake, options), repeat)
        figures[f"diff_last_{name}_s"], figures[f"diff_last_{name}_cpu_s"] = wall, cpu
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-day", type=float, default=1e6, help="events a day")
    parser.add_argument("--days", type=int, default=30, help="the older lake's age")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    cache = Path(__file__).resolve().parent / "out" / "lakes"
    runs: list[dict[str, Any]] = []
    for days in (1, args.days):
        lake, manifest = lake_of_age(cache, int(args.per_day), days)
        figures: dict[str, Any] = {"days": days, "events": manifest["events"]}
        figures |= {"files": manifest["files"]} | measure(lake, manifest, args.repeat)
        runs.append(figures)
        print(figures, flush=True)
    write_runs("lake_age", runs, sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
