"""Reader latency against the number of lake files (issue 12: "measure how query latency
grows with the number of files before compaction ... and keep it flat").

The same synthetic events (bench/make_lake.py, 24 hours) are written as 24 files (one an
hour, as compaction leaves them) and as `--files` more (each hour cut into equal files, as
a busy hour is before compaction: the lake writers write one file per segment). For each
lake, best of `--repeat`, page cache warm, in this process:

- open: a connection with the lake's views (`read._open`), what every reader does first;
- query, whole lake: `SELECT count(*) FROM events` through `query.run`, as `flagscope query`;
- query, last hour: the same with `WHERE time >= <the last hour>`;
- query, `--since 1h`: the whole-lake query over the views of the last hour only
  (`query.run(..., window)`), which read that hour's partition alone;
- diff, last hour and whole day: `run_diff` for the lake's flag.

Each figure is also given as a ratio to the 24-file lake's (the flat line is 1.0): the
same rows, so the difference is what the files cost. Prints the figures and writes
bench/out/many_files.json. Run: `.venv/bin/python bench/many_files.py` (~5 minutes the
first time, which generates the lakes under bench/out/lakes/).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import best, write_runs
from bench.make_lake import make_lake, read_manifest
from flagscope.analysis.diff import run_diff
from flagscope.analysis.query import run as run_query
from flagscope.analysis.result import DiffOptions
from flagscope.collector.lake import read

FLAG = "new-checkout"
HOURS = 24


def lake_with(cache: Path, events: int, files: int) -> tuple[Path, dict[str, Any]]:
    """The cached lake of `events` in about `files` files, generated when missing."""
    lake = cache / f"files-{events}-{files}"
    manifest = read_manifest(lake)
    if manifest is None:
        shutil.rmtree(lake, ignore_errors=True)
        began = time.perf_counter()
        # the busiest hour holds ~1.5x the mean: cut by rows, hours differ in files
        make_lake(lake, events, rows_per_file=max(1, events // files), hours=HOURS)
        print(f"generated {lake.name} in {time.perf_counter() - began:.0f} s", flush=True)
        manifest = read_manifest(lake)
        assert manifest is not None
    return lake, manifest


def fastest(work: Callable[[], object], repeat: int) -> float:
    """The least wall time of `repeat` runs of `work`."""
    return best(work, repeat)[0]


def measure(lake: Path, manifest: dict[str, Any], repeat: int) -> dict[str, float]:
    end = datetime.fromisoformat(manifest["end"]).replace(tzinfo=None)
    last_hour = end - timedelta(hours=1)
    whole = DiffOptions(flag=FLAG, start=end - timedelta(hours=HOURS), end=end)
    hour = DiffOptions(flag=FLAG, start=last_hour, end=end)
    recent = f"SELECT count(*) FROM events WHERE time >= TIMESTAMP '{last_hour.isoformat()}'"
    count = "SELECT count(*) FROM events"

    def open_close() -> None:
        read._open(lake, None, thorough=False).close()  # as `read.run` first tries

    return {
        "open_s": fastest(open_close, repeat),
        "query_whole_lake_s": fastest(lambda: run_query(lake, count), repeat),
        "query_last_hour_s": fastest(lambda: run_query(lake, recent), repeat),
        "query_since_1h_s": fastest(lambda: run_query(lake, count, (last_hour, end)), repeat),
        "diff_last_hour_s": fastest(lambda: run_diff(lake, hour), repeat),
        "diff_whole_day_s": fastest(lambda: run_diff(lake, whole), repeat),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=float, default=1e6)
    parser.add_argument("--files", type=int, nargs="+", default=[24, 720, 2400, 7200])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    cache = Path(__file__).resolve().parent / "out" / "lakes"
    events = int(args.events)
    runs: list[dict[str, Any]] = []
    for files in args.files:
        lake, manifest = lake_with(cache, events, files)
        figures: dict[str, Any] = {"files": manifest["files"], "events": manifest["events"]}
        figures |= measure(lake, manifest, args.repeat)
        runs.append(figures)
        print(figures, flush=True)
    write_runs("many_files", runs, sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
