"""Spark engine benchmark: `run_diff` with the cohort stage in DuckDB and in Spark SQL
(local mode) on the same lake, and Spark's bare scan of the columns that stage reads.

In the same run, each in a fresh subprocess (its wall time, and the CPU seconds of its
whole process tree — the JVM included — sampled with psutil every 100 ms):

  (a) duckdb: `run_diff(lake, DiffOptions(flag, start, end))`, best of `--repeat`;
  (b) spark: the same with `engine="spark"` in one session (local mode, SPARK_CONF):
      the session's start, the
      first diff (cold: JIT, file listing) and the best of the following `--repeat`;
  (c) spark scan: one Spark aggregate reading every column the Spark stage reads, in
      the same session — what Spark needs to merely read the rows (the floor).

Both diffs must give the same verdict, users and requests per cohort. Prints the figures
with the ratios spark/duckdb and spark/scan and the machine, and writes
bench/out/spark_engine.json. The lake is bench/make_lake.py's (10 M events by default),
cached in bench/out/lakes as bench/analysis.py keeps it.

Run: `.venv/bin/python bench/spark_engine.py --events 1e7` (needs Java: `make java`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.analysis import DEFAULT_CACHE, FLAG, lake_for
from bench.machine import machine

# Local mode on every core; the JVM's heap above its 1 GiB default (the cached stage
# tables of 10 M events), and shuffles in a few partitions rather than 200 for 2 cores.
SPARK_CONF = {"spark.driver.memory": "6g", "spark.sql.shuffle.partitions": "8"}
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "spark_engine.json"
# Every column of the lake the Spark stage reads (analysis/spark/cohorts.py, lake.py).
_SCAN = """
SELECT count(*), count(DISTINCT trace_key_hi, trace_key_lo), sum(duration_ms),
       count_if(is_entry), count_if(is_test), count(DISTINCT user_id),
       count(element_at(flags, '{flag}')), max(time_unix_nano), count(span_key),
       count(parent_span_id), count(service_name), count(http_method), count(http_route),
       count(name), count_if(is_error)
FROM events_raw
"""


def _summary(result: Any) -> dict[str, Any]:
    return {
        "verdict": result.verdict.value,
        "treatment": [result.treatment.users, result.treatment.requests],
        "baseline": [result.baseline.users, result.baseline.requests],
        "excluded": result.excluded,
    }


def worker(engine: str, lake: Path, start: datetime, end: datetime, repeat: int) -> None:
    from flagscope.analysis.diff import run_diff
    from flagscope.analysis.result import DiffOptions

    options = DiffOptions(FLAG, start, end, engine=engine)
    out: dict[str, Any] = {}
    if engine == "spark":
        from flagscope.analysis.spark import session

        began = time.perf_counter()
        spark = session.session(**SPARK_CONF)
        spark.sparkContext.setLogLevel("ERROR")
        out["session_s"] = time.perf_counter() - began
    times = []
    for _ in range(repeat + (engine == "spark")):
        began = time.perf_counter()
        result = run_diff(lake, options)
        times.append(time.perf_counter() - began)
    if engine == "spark":
        out["cold_s"], times = times[0], times[1:]
        began = time.perf_counter()
        session.run(lake, lambda s: s.sql(_SCAN.format(flag=FLAG)).collect(), spark)
        out["scan_s"] = time.perf_counter() - began
        spark.stop()
    out["seconds"] = times
    out["result"] = _summary(result)
    print(json.dumps(out, default=str))


def measure(engine: str, lake: Path, start: datetime, end: datetime, repeat: int) -> dict:
    """One worker subprocess: its figures, and the CPU seconds and peak RSS of its tree."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", engine,
               "--lake", str(lake), "--start", start.isoformat(), "--end", end.isoformat(),
               "--repeat", str(repeat)]  # fmt: skip
    began = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    cpu: dict[int, float] = {}
    peak = 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            rss = 0
            for p in tree:
                times = p.cpu_times()
                cpu[p.pid] = times.user + times.system
                rss += p.memory_info().rss
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} worker failed ({proc.returncode}):\n{err[-3000:]}")
    data = json.loads(out.strip().splitlines()[-1])
    data["wall_s"] = time.perf_counter() - began
    data["cpu_s"] = round(sum(cpu.values()), 1)
    data["peak_rss_mib"] = round(peak / 2**20)
    data["best_s"] = min(data["seconds"])
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=float, default=1e7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", choices=("duckdb", "spark"), help=argparse.SUPPRESS)
    parser.add_argument("--lake", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start", help=argparse.SUPPRESS)
    parser.add_argument("--end", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        start, end = datetime.fromisoformat(args.start), datetime.fromisoformat(args.end)
        worker(args.worker, args.lake, start, end, args.repeat)
        return
    lake, manifest, _ = lake_for(args.cache, int(args.events), args.seed)
    start = datetime.fromisoformat(manifest["start"]).replace(tzinfo=None)
    end = datetime.fromisoformat(manifest["end"]).replace(tzinfo=None)
    duck = measure("duckdb", lake, start, end, args.repeat)
    spark = measure("spark", lake, start, end, args.repeat)
    same = duck["result"] == spark["result"]
    report = {
        "machine": machine(),
        "events": manifest.get("events"),
        "duckdb": duck,
        "spark": spark,
        "spark_over_duckdb": spark["best_s"] / duck["best_s"],
        "spark_over_scan": spark["best_s"] / spark["scan_s"],
        "same_result": same,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"machine: {report['machine']}")
    print(f"lake: {manifest.get('events'):,} events")
    print(f"duckdb diff: best {duck['best_s']:.2f} s of {duck['seconds']}, "
          f"process tree CPU {duck['cpu_s']} s, peak RSS {duck['peak_rss_mib']} MiB")  # fmt: skip
    print(f"spark session start {spark['session_s']:.1f} s, cold diff {spark['cold_s']:.1f} s, "
          f"warm diff best {spark['best_s']:.2f} s of {spark['seconds']}, "
          f"scan {spark['scan_s']:.2f} s; process tree CPU {spark['cpu_s']} s, "
          f"peak RSS {spark['peak_rss_mib']} MiB")  # fmt: skip
    print(f"spark/duckdb {report['spark_over_duckdb']:.1f}x, "
          f"spark diff/spark scan {report['spark_over_scan']:.1f}x, same result: {same}")  # fmt: skip
    if not same:
        print(json.dumps({"duckdb": duck["result"], "spark": spark["result"]}, indent=1))
        sys.exit(1)


if __name__ == "__main__":
    main()
