"""Reader latency against a live lake's file count, with compaction on and off (issue 12:
"measure how query latency grows with the number of files before compaction … and keep
it flat").

Each phase starts `flagscope serve` (a subprocess, loopback, port 0) on an empty data
directory, and `--senders` processes post 256-span requests (bench/payload.py) paced to
`--rate` spans/s in all, for `--seconds`. Every `--every` s a reader in this process
lists the lake's files and times `SELECT count(*) FROM events_raw` on a new connection
(`read.run`: the views defined afresh, as each `flagscope query` does; the count is read
from the files' footers, so its time is what the files cost). Two phases:

- `compaction on`: the collector's default interval (`compact_interval_s`, 60 s);
- `compaction off`: an interval longer than the phase, so the lake writers' files pile up
  as they do when compaction is behind.

Prints, per phase, the files and the query's time in the first and the last minute and
their ratio (flat is 1.0); writes every sample to bench/out/live_files.json.

    .venv/bin/python bench/live_files.py [--seconds 300] [--rate 20000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.freshness import SPANS, start_collector, start_senders
from bench.machine import machine, write_figures
from bench.payload import trace_request
from flagscope.collector.config import Settings
from flagscope.collector.errors import LakeError
from flagscope.collector.lake.read import run


def lake_files(lake: Path) -> int:
    """The lake files a reader's views list (not the companions or temporary files)."""
    return sum(1 for f in lake.glob("date=*/hour=*/*.parquet") if not f.name.startswith(("_", ".")))


def phase(args: argparse.Namespace, compact_interval_s: float) -> tuple[list[dict[str, Any]], int]:
    """One collector under load for `args.seconds`: the reader's samples, and how many of
    its reads failed."""
    payloads = [trace_request(SPANS, seed=s, start_ns=time.time_ns()) for s in range(64)]
    data_dir = Path(tempfile.mkdtemp(prefix="flagscope-live-"))
    lake = data_dir / "lake"
    env = {
        **os.environ,
        "FLAGSCOPE_RETENTION_DAYS": "0",
        "FLAGSCOPE_COMPACT_INTERVAL_S": str(compact_interval_s),
    }
    samples: list[dict[str, Any]] = []
    senders: list[multiprocessing.Process] = []
    failed = 0
    with (data_dir / "collector.log").open("w") as log:
        proc, port = start_collector(data_dir, env, log)
        try:
            start = time.monotonic()
            stop_at = start + args.seconds
            senders = start_senders(port, payloads, args.rate, args.senders, stop_at)
            due = start + args.every
            while time.monotonic() < stop_at:
                time.sleep(max(0.0, due - time.monotonic()))
                due += args.every
                files = lake_files(lake)
                if not files:
                    continue
                began = time.perf_counter()
                try:
                    (rows,) = run(
                        lake, lambda c: c.execute("SELECT count(*) FROM events_raw").fetchone()
                    )
                except LakeError as exc:  # counted, and said: a reader would have seen it
                    failed += 1
                    print(f"read failed at {time.monotonic() - start:.0f} s: {exc}", flush=True)
                    continue
                samples.append(
                    {
                        "t_s": round(time.monotonic() - start, 1),
                        "files": files,
                        "rows": rows,
                        "count_s": round(time.perf_counter() - began, 4),
                    }
                )
            for p in senders:
                p.join()
        finally:
            for p in senders:
                if p.is_alive():
                    p.terminate()
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
            shutil.rmtree(data_dir, ignore_errors=True)
    return samples, failed


def summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Files and query time in the first and the last minute of a phase (`--seconds` of
    at least 120: the two minutes do not overlap)."""
    end = samples[-1]
    last = end["t_s"]
    first_minute = [s for s in samples if s["t_s"] <= 60]
    last_minute = [s for s in samples if s["t_s"] > last - 60]
    if not first_minute or not last_minute:
        raise SystemExit("no reads in the first or the last minute: a longer --seconds?")
    early = statistics.median(s["count_s"] for s in first_minute)
    late = statistics.median(s["count_s"] for s in last_minute)
    return {
        "files_first_minute_max": max(s["files"] for s in first_minute),
        "files_last_minute_max": max(s["files"] for s in last_minute),
        "files_max": max(s["files"] for s in samples),
        "rows_at_end": end["rows"],
        "count_s_first_minute_median": early,
        "count_s_last_minute_median": late,
        "count_s_max": max(s["count_s"] for s in samples),
        "last_over_first": round(late / early, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--rate", type=float, default=20_000, help="load, spans/s in all")
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between reads")
    args = parser.parse_args()
    if args.seconds < 120:
        parser.error("--seconds: at least 120 (a first and a last minute)")
    phases = {
        "compaction on": Settings().compact_interval_s,
        "compaction off": args.seconds * 10,
    }
    figures: dict[str, Any] = {
        "machine": machine(),
        "command": "python bench/live_files.py " + " ".join(sys.argv[1:]),
        "seconds": args.seconds,
        "load_spans_per_s": args.rate,
    }
    for name, interval in phases.items():
        samples, failed = phase(args, interval)
        figures[name] = {
            "compact_interval_s": interval,
            "failed_reads": failed,
            **summary(samples),
            "samples": samples,
        }
        print(name, {k: v for k, v in figures[name].items() if k != "samples"}, flush=True)
    figures["load_average_1m"] = os.getloadavg()[0]
    write_figures("live_files", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
