"""Analysis benchmark: the full cohort diff against the bare DuckDB query, at N events.

For each N in `--sizes` (default 1e6,1e7,1e8) a synthetic lake (bench/make_lake.py) is
generated into `--cache` (default bench/out/lakes, git-ignored) or reused from there, and
in the same run:

  (a) bare: one DuckDB query over the same Parquet files (read_parquet, no de-duplication)
      computing, per variant of the flag, what the diff computes at its core: requests
      (entry spans: SERVER spans, or root spans), distinct users, errors, quantile_cont
      p50/p90/p95/p99 and mean of `duration_ms` — with the trace-level flag assignment (the
      first evaluation in a trace labels all its requests, user = the evaluation's user)
      and test traffic excluded by trace and by user. This is the yardstick.
  (a') bare + breakdown: the same query with GROUPING SETS adding per service/route rows.
  (b) diff: `flagscope.analysis.diff.run_diff(lake, DiffOptions(flag, start, end))` — everything the
      report needs (statistics, health checks, breakdowns) — over the narrow tables (issue 12
      point 2), and (b') the same over the wide rows (`FLAGSCOPE_LAKE_TABLES=wide`, the path
      before them); both must give the same cohorts, exclusions and verdict.
  (c) floor: one DuckDB pass decoding every column of every narrow file (the bytes the
      narrow diff must read), with the scan rate it implies.

A lake without narrow tables (cached from before them) gets them first, timed as the lake
writers pay for them (CPU µs per event, one DuckDB thread per file).

Each measurement runs in a fresh subprocess (so peak RSS is its own; psutil samples the
process every 20 ms): wall time best of 3 for N <= 10 M, one run for 100 M, page cache
warm (the lake was just written or read). Prints a table with the diff/bare ratio and the
machine, and writes bench/out/analysis.json.

Run: `.venv/bin/python bench/analysis.py --sizes 1e6,1e7` (100 M needs ~12 GB of disk
and ~5 minutes to generate on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import psutil
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import machine
from bench.make_lake import Effect, make_lake, read_manifest
from flagscope.analysis.cohorts import TABLES_ENV
from flagscope.collector.lake.narrow import (
    SCHEMAS,
    has_companions,
    missing_companions,
    write_companions,
)
from flagscope.collector.lake.schema import SCHEMA, trace_key_sql

DEFAULT_CACHE = Path(__file__).resolve().parent / "out" / "lakes"
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "analysis.json"
FLAG = "new-checkout"
BYTES_PER_EVENT = 145  # measured ~131 with the nanosecond columns (issue 12); a margin
QUANTILES = (0.5, 0.9, 0.95, 0.99)
TABLES = tuple(SCHEMAS)


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def bare_sql(
    lake_dir: Path, flag: str, start: datetime, end: datetime, breakdown: bool = False
) -> str:
    """The yardstick: per-variant requests, users, errors, latency quantiles and mean.

    - rows: the lake's files (`**/*.parquet`), `time` in [start, end);
    - a trace's variant: the first (by time) evaluation of `flag` in any span or log record
      of the trace; its user: that evaluation's user;
    - test traffic: a trace with any `is_test` row, or with any row of a user who has an
      `is_test` row anywhere in the window, is left out (by trace and by user);
    - requests: entry spans (kind = 2 SERVER, or without a parent: `is_entry`) in flagged
      traces; per variant one per trace, its edge (the root entry span, else the
      earliest), as the diff's overall numbers count them; the breakdown variant groups
      every entry span.

    Traces are matched on the trace key (its two int64 halves as one UUID), as the diff
    matches them, and rows ordered by `time_unix_nano`: the yardstick uses the cheapest
    columns the lake offers, too.
    """
    source = (
        f"read_parquet({_sql_str(str(lake_dir / '**' / '*.parquet'))}, hive_partitioning = false)"
    )

    def ts(moment: datetime) -> str:
        return f"TIMESTAMPTZ {_sql_str(moment.astimezone(UTC).isoformat())}"

    key = trace_key_sql()

    def window(column: str = "time") -> str:
        return f"{column} >= {ts(start)} AND {column} < {ts(end)}"

    variant = f"element_at(flags, {_sql_str(flag)})[1]"
    if breakdown:
        select_keys = "variant, service_name, http_method, http_route"
        group = (
            "GROUP BY GROUPING SETS ((variant), (variant, service_name, http_method, http_route))"
        )
    else:
        select_keys = "variant"
        group = "GROUP BY variant"
    quantiles = ", ".join(repr(q) for q in QUANTILES)
    return f"""
WITH evaluations AS (
    SELECT {key} AS trace_key, arg_min({variant}, time_unix_nano) AS variant,
           arg_min(user_id, time_unix_nano) AS flag_user
    FROM {source}
    WHERE {window()} AND {variant} IS NOT NULL
    GROUP BY 1
), test_users AS (
    SELECT DISTINCT user_id FROM {source}
    WHERE {window()} AND is_test AND user_id IS NOT NULL
), test_traces AS (
    SELECT DISTINCT {key} AS trace_key FROM {source}
    WHERE {window()} AND (is_test OR user_id IN (SELECT user_id FROM test_users))
), requests AS (
    SELECT e.variant, coalesce(e.flag_user, r.user_id) AS user_id, r.service_name,
           r.http_method, r.http_route, r.duration_ms, r.is_error,
           row_number() OVER (PARTITION BY r.trace_key
               ORDER BY coalesce(r.parent_span_id, '') <> '', r.time_unix_nano, r.span_key) = 1
               AS edge
    FROM (SELECT *, {key} AS trace_key FROM {source}) AS r
    JOIN evaluations AS e ON e.trace_key = r.trace_key
    WHERE {window("r.time")} AND r.is_entry
      AND r.trace_key NOT IN (SELECT trace_key FROM test_traces)
)
SELECT {select_keys},
       count(*) AS requests,
       count(DISTINCT user_id) AS users,
       count(*) FILTER (WHERE is_error) AS errors,
       quantile_cont(duration_ms, [{quantiles}]) AS quantiles_ms,
       avg(duration_ms) AS mean_ms
FROM requests
{"" if breakdown else "WHERE edge"}
{group}
ORDER BY ALL
"""


def same_cohorts(bare: list[dict[str, Any]], diff: dict[str, Any]) -> bool:
    """Do the bare query's rows and the diff's cohorts agree: requests, users, errors exactly,
    mean and the four quantiles to 1e-9 relative?"""
    cohorts = {
        c["variant"]: c
        for c in (diff.get("treatment"), diff.get("baseline"))
        if isinstance(c, dict)
    }
    if {row["variant"] for row in bare} != set(cohorts):
        return False
    for row in bare:
        c = cohorts[row["variant"]]
        if (row["requests"], row["users"], row["errors"]) != (
            c["requests"],
            c["users"],
            c["errors"],
        ):
            return False
        values = [*row["quantiles_ms"], row["mean_ms"]]
        others = [*c["quantiles_ms"].values(), c["mean_ms"]]
        if not all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(values, others, strict=True)):
            return False
    return True


def _close(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-9 relative (DuckDB's parallel sums add in varying order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


# -- workers (one subprocess per measurement) -------------------------------------------
def _run_bare(lake_dir: Path, flag: str, start: datetime, end: datetime, breakdown: bool) -> Any:
    con = duckdb.connect()
    try:
        result = con.execute(bare_sql(lake_dir, flag, start, end, breakdown))
        columns = [d[0] for d in result.description]
        return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]
    finally:
        con.close()


# The physical floor of the narrow path: one DuckDB pass decoding every column of every
# narrow file the diff reads (the whole lake's, for a whole-lake window).
def floor_sql(lake_dir: Path, table: str) -> str:
    files = _sql_str(str(lake_dir / "**" / f"_*.{table}.pq"))
    return f"SELECT count(*), max(COLUMNS(*)) FROM read_parquet({files})"


def narrow_bytes(lake_dir: Path) -> int:
    """The narrow tables' bytes (not a legacy table left beside them)."""
    return sum(p.stat().st_size for t in TABLES for p in lake_dir.glob(f"**/_*.{t}.pq"))


def _run_floor(lake_dir: Path) -> Any:
    con = duckdb.connect()
    try:
        return [con.execute(floor_sql(lake_dir, t)).fetchall()[0][0] for t in TABLES]
    finally:
        con.close()


def build_narrow(lake_dir: Path) -> dict[str, float]:
    """Write the narrow companions of every lake file that lacks them, as the lake writers
    do (one DuckDB thread per file): wall and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    for path in sorted(lake_dir.glob("**/*.parquet")):
        if missing := missing_companions(path):
            write_companions(path, tables=missing)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def _run_diff(lake_dir: Path, flag: str, start: datetime, end: datetime) -> Any:
    from flagscope.analysis.diff import run_diff
    from flagscope.analysis.result import DiffOptions

    return run_diff(lake_dir, DiffOptions(flag=flag, start=start, end=end))  # normalises to UTC


def _diff_summary(result: Any) -> dict[str, Any]:
    """The per-cohort figures of a DiffResult (to hold against the bare query's), if present."""
    summary: dict[str, Any] = {"type": type(result).__name__}
    for name in ("treatment", "baseline"):
        cohort = getattr(result, name, None)
        if dataclasses.is_dataclass(cohort):
            summary[name] = dataclasses.asdict(cohort)
    for name in ("verdict", "reason", "summary", "excluded"):
        if hasattr(result, name):
            value = getattr(result, name)
            summary[name] = getattr(value, "name", value)
    if len(summary) == 1:
        summary["repr"] = repr(result)[:1500]
    return summary


def worker(
    kind: str, lake_dir: Path, flag: str, start: datetime, end: datetime, repeat: int
) -> None:
    times, cpu = [], []
    result: Any = None
    for _ in range(repeat):
        began, began_cpu = time.perf_counter(), time.process_time()
        if kind in ("diff", "diff_wide"):
            os.environ[TABLES_ENV] = "wide" if kind == "diff_wide" else "narrow"
            result = _run_diff(lake_dir, flag, start, end)
        elif kind == "floor":
            result = _run_floor(lake_dir)
        else:
            result = _run_bare(lake_dir, flag, start, end, breakdown=kind == "bare_breakdown")
        times.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)  # every thread's, DuckDB's included
    if kind == "bare":
        summary: Any = result
    elif kind in ("bare_breakdown", "floor"):
        summary = {"rows": result}
    else:
        summary = _diff_summary(result)
    print(json.dumps({"seconds": times, "cpu_seconds": cpu, "result": summary}, default=str))


def measure(
    kind: str, lake_dir: Path, flag: str, start: datetime, end: datetime, repeat: int
) -> dict[str, Any]:
    """Run one worker subprocess; its times, result and peak RSS (psutil, every 20 ms)."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--lake",
        str(lake_dir),
        "--flag",
        flag,
        "--start",
        start.isoformat(),
        "--end",
        end.isoformat(),
        "--repeat",
        str(repeat),
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    watched = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = watched.memory_info().rss
            rss += sum(c.memory_info().rss for c in watched.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed ({proc.returncode}):\n{err[-3000:]}")
    data = json.loads(out.strip().splitlines()[-1])
    data["best_s"] = min(data["seconds"])
    data["best_cpu_s"] = min(data["cpu_seconds"])
    data["peak_rss_mib"] = round(peak / 2**20, 1)
    return data


# -- the run ------------------------------------------------------------------------------
def lake_for(cache: Path, events: int, seed: int) -> tuple[Path, dict, bool]:
    """The cached lake of `events` (generated if missing or made with other parameters)."""
    lake_dir = cache / f"lake-{events}-seed{seed}"
    wanted = {"requested_events": events, "seed": seed, "flag": FLAG}
    manifest = read_manifest(lake_dir)
    files = sorted(lake_dir.glob("**/*.parquet"))
    if (
        manifest
        and all(manifest["params"].get(k) == v for k, v in wanted.items())
        and files
        and pq.read_schema(files[0]).equals(SCHEMA)
    ):  # not an older layout
        return lake_dir, manifest, False
    shutil.rmtree(lake_dir, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    need = events * BYTES_PER_EVENT
    free = shutil.disk_usage(cache).free
    if free < need * 1.2:
        raise OSError(
            f"not enough disk for {events:,} events: need ~{need / 2**30:.1f} GiB, "
            f"{free / 2**30:.1f} GiB free"
        )
    print(f"generating {events:,} events into {lake_dir} ...", flush=True)
    make_lake(lake_dir, events, seed=seed, flag=FLAG, effect=Effect(), progress=True)
    return lake_dir, read_manifest(lake_dir) or {}, True


def diff_available() -> bool:
    try:
        from flagscope.analysis.diff import run_diff  # noqa: F401
    except ImportError:
        return False
    return True


def _fmt(value: float | None, spec: str = ",.2f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e6,1e7,1e8", help="comma-separated event counts")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where lakes are kept")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-breakdown", action="store_true", help="skip the (a') measurement")
    parser.add_argument(
        "--worker",
        choices=("bare", "bare_breakdown", "diff", "diff_wide", "floor"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--lake", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--flag", default=FLAG, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=datetime.fromisoformat, help=argparse.SUPPRESS)
    parser.add_argument("--end", type=datetime.fromisoformat, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.lake, args.flag, args.start, args.end, args.repeat)
        return

    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    has_diff = diff_available()
    if not has_diff:
        print("flagscope.analysis.diff not available yet")
    host = machine()
    print(
        f"machine: {host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB, "
        f"Python {host['python']}, duckdb {host['duckdb']}"
    )
    results = []
    for events in sizes:
        try:
            lake_dir, manifest, generated = lake_for(args.cache, events, args.seed)
        except OSError as exc:
            print(f"skipping N={events:,}: {exc}")
            continue
        start = datetime.fromisoformat(manifest["start"])
        end = datetime.fromisoformat(manifest["end"])
        built = None
        if not all(has_companions(p) for p in lake_dir.glob("**/*.parquet")):
            print(f"N={events:,}: writing the narrow tables ...", flush=True)
            built = build_narrow(lake_dir)
        repeat = 3 if events <= 10_000_000 else 1
        entry: dict[str, Any] = {
            "events": manifest["events"],
            "requested_events": events,
            "files": manifest["files"],
            "lake_mib": round(manifest["bytes"] / 2**20, 1),
            "generation_s": manifest["seconds"],
            "generated_now": generated,
            "window": [manifest["start"], manifest["end"]],
            "runs": repeat,
            "narrow_mib": round(narrow_bytes(lake_dir) / 2**20, 1),
        }
        if built is not None:
            entry["narrow_build"] = built | {
                "cpu_us_per_event": round(built["cpu_s"] / manifest["events"] * 1e6, 3),
                "wall_us_per_event": round(built["wall_s"] / manifest["events"] * 1e6, 3),
            }
        print(f"N={events:,}: bare query ...", flush=True)
        entry["bare"] = measure("bare", lake_dir, FLAG, start, end, repeat)
        if not args.no_breakdown:
            print(f"N={events:,}: bare query + breakdown ...", flush=True)
            entry["bare_breakdown"] = measure("bare_breakdown", lake_dir, FLAG, start, end, repeat)
        print(f"N={events:,}: floor (one pass over the narrow files) ...", flush=True)
        entry["floor"] = measure("floor", lake_dir, FLAG, start, end, repeat)
        entry["floor"]["mib_per_s"] = round(entry["narrow_mib"] / entry["floor"]["best_s"], 1)
        if has_diff:
            for kind in ("diff_wide", "diff"):
                print(f"N={events:,}: {kind} ...", flush=True)
                try:
                    entry[kind] = measure(kind, lake_dir, FLAG, start, end, repeat)
                except RuntimeError as exc:
                    print(f"  {kind} failed: {exc}")
                    entry[f"{kind}_error"] = str(exc)[-2000:]
            if "diff" in entry:
                best = entry["diff"]["best_s"]
                entry["ratio_diff_bare"] = round(best / entry["bare"]["best_s"], 2)
                entry["ratio_diff_floor"] = round(best / entry["floor"]["best_s"], 2)
                cpu = entry["diff"]["best_cpu_s"]
                entry["cpu_ratio_diff_bare"] = round(cpu / entry["bare"]["best_cpu_s"], 3)
                entry["cpu_ratio_diff_floor"] = round(cpu / entry["floor"]["best_cpu_s"], 3)
            if "diff" in entry and "diff_wide" in entry:
                wide, narrow = entry["diff_wide"]["result"], entry["diff"]["result"]
                entry["narrow_matches_wide"] = all(
                    _close(wide.get(k), narrow.get(k))
                    for k in ("treatment", "baseline", "verdict", "reason", "excluded")
                )
        results.append(entry)
        for row in entry["bare"]["result"]:
            q = ", ".join(f"{x:.1f}" for x in row["quantiles_ms"])
            print(
                f"  bare {row['variant']:>4}: {row['requests']:,} requests, {row['users']:,} users, "
                f"{row['errors']:,} errors, p50/90/95/99 {q} ms, mean {row['mean_ms']:.1f} ms"
            )
        diff_result = (entry.get("diff") or {}).get("result") or {}
        for name in ("treatment", "baseline"):
            c = diff_result.get(name)
            if isinstance(c, dict):
                q = ", ".join(f"{v:.1f}" for v in (c.get("quantiles_ms") or {}).values())
                print(
                    f"  diff {c.get('variant')!s:>4}: {c.get('requests', 0):,} requests, "
                    f"{c.get('users', 0):,} users, {c.get('errors', 0):,} errors, p50/90/95/99 {q} ms, "
                    f"mean {c.get('mean_ms', 0):.1f} ms"
                )
        if "verdict" in diff_result:
            print(f"  diff verdict: {diff_result['verdict']}: {diff_result.get('summary')}")
            entry["diff_matches_bare"] = same_cohorts(entry["bare"]["result"], diff_result)
            print(
                f"  per-cohort counts and quantiles identical: "
                f"{'yes' if entry['diff_matches_bare'] else 'NO'}"
            )
        if "narrow_matches_wide" in entry:
            print(
                "  narrow and wide paths: same cohorts, verdict and exclusions: "
                f"{'yes' if entry['narrow_matches_wide'] else 'NO'}"
            )
        if built is not None:
            b = entry["narrow_build"]
            print(
                f"  narrow tables written in {b['wall_s']:.1f} s wall, {b['cpu_s']:.1f} s CPU: "
                f"{b['cpu_us_per_event']:.2f} µs CPU per event"
            )

    header = (
        "N events",
        "files",
        "lake MiB",
        "gen s",
        "bare s",
        "bare MiB",
        "narrow MiB",
        "floor s",
        "wide diff s",
        "wide MiB",
        "diff s",
        "diff MiB",
        "diff/bare",
        "diff/floor",
    )
    lines = [header]
    for e in results:
        diff = e.get("diff") or {}
        lines.append(
            (
                f"{e['events']:,}",
                str(e["files"]),
                _fmt(e["lake_mib"], ",.0f"),
                _fmt(e["generation_s"], ".1f"),
                _fmt(e["bare"]["best_s"], ".3f"),
                _fmt(e["bare"]["peak_rss_mib"], ",.0f"),
                _fmt(e["narrow_mib"], ",.0f"),
                _fmt(e["floor"]["best_s"], ".3f"),
                _fmt((e.get("diff_wide") or {}).get("best_s"), ".3f"),
                _fmt((e.get("diff_wide") or {}).get("peak_rss_mib"), ",.0f"),
                _fmt(diff.get("best_s"), ".3f"),
                _fmt(diff.get("peak_rss_mib"), ",.0f"),
                _fmt(e.get("ratio_diff_bare"), ".2f"),
                _fmt(e.get("ratio_diff_floor"), ".2f"),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    print()
    for i, row in enumerate(lines):
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("\nCPU seconds (user + system, every thread; less sensitive to a shared machine):")
    for e in results:
        cpu = {
            k: (e.get(k) or {}).get("best_cpu_s") for k in ("bare", "floor", "diff_wide", "diff")
        }
        print(
            f"  {e['events']:,} events: bare {_fmt(cpu['bare'], '.2f')}, floor "
            f"{_fmt(cpu['floor'], '.2f')}, wide diff {_fmt(cpu['diff_wide'], '.2f')}, diff "
            f"{_fmt(cpu['diff'], '.2f')} (diff/bare {_fmt(e.get('cpu_ratio_diff_bare'), '.3f')}, "
            f"diff/floor {_fmt(e.get('cpu_ratio_diff_floor'), '.3f')})"
        )
    print(
        f"\nmachine: {host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB, "
        f"Python {host['python']}, duckdb {host['duckdb']}; best of 3 for N <= 10 M, 1 run above"
    )
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": host,
        "diff_available": has_diff,
        "flag": FLAG,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
