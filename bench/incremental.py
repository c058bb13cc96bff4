"""The hourly run of a 24 h scheduled report from kept summaries, against a full rescan
(issue 12 point 3: ≤ 10 % of the rescan's time, identical verdicts, quantiles within
the bins' precision).

The scenario: a 25-hour bench lake (`make_lake`, cached in `--cache`) is shown to the
report in two states. At E the lake holds the 24 hours before E, and the report's run at
E summarises them (cold: every hour is new). Then hour E arrives, and the run at E + 1 h
over [E - 23 h, E + 1 h) is the one measured: it summarises the new hour, re-summarises
the one before (its neighbour partition grew, within the reach of its traces) and merges
the 22 others it keeps. Each repetition starts again from the summaries as the run at E
left them. The rescan is `run_diff` without summaries over the same window. Wall and CPU
seconds (`time.process_time`, every DuckDB thread of this process) are reported.

    .venv/bin/python bench/incremental.py --events 1e7 [--repeat 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine
from bench.make_lake import make_lake
from flagscope.analysis.diff import DuckDBStage, diff_with, run_diff
from flagscope.analysis.incremental import bins
from flagscope.analysis.incremental.stage import IncrementalStage
from flagscope.analysis.incremental.store import Store
from flagscope.analysis.result import DiffOptions, DiffResult
from flagscope.collector.lake.read import run

HERE = Path(__file__).resolve().parent
FLAG = "new-checkout"
# A fixed hour, so a cached lake is reused whatever the day.
END = datetime(2026, 11, 20, 12)


def lake_for(cache: Path, events: int) -> Path:
    """25 hours of traffic ending at END + 1 h, generated once."""
    lake = cache / f"incremental-{events}"
    if not (lake / ".complete").exists():
        shutil.rmtree(lake, ignore_errors=True)
        print(f"generating {events:,} events into {lake} …", flush=True)
        make_lake(
            lake, events, hours=25, end=(END + timedelta(hours=1, seconds=1)).replace(tzinfo=UTC)
        )
        (lake / ".complete").write_text("ok")
    return lake


def shown(lake: Path, view: Path, until: datetime) -> Path:
    """`lake` as it stood at `until`: its partitions before that hour, hard-linked."""
    shutil.rmtree(view, ignore_errors=True)
    for partition in sorted(lake.glob("date=*/hour=*")):
        hour = datetime.strptime(f"{partition.parent.name[5:]} {partition.name[5:]}", "%Y-%m-%d %H")
        if hour >= until:
            continue
        target = view / partition.relative_to(lake)
        target.mkdir(parents=True)
        for file in partition.iterdir():
            os.link(file, target / file.name)
    return view


def options(end: datetime) -> DiffOptions:
    return DiffOptions(flag=FLAG, start=end - timedelta(hours=24), end=end, sequential=True)


def timed(work: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def compare(full: DiffResult, merged: DiffResult) -> dict[str, Any]:
    """What agrees: verdict, counts, exclusions; the largest quantile difference."""
    worst = 0.0
    for a, b in ((full.treatment, merged.treatment), (full.baseline, merged.baseline)):
        for name, value in a.quantiles_ms.items():
            worst = max(worst, abs(b.quantiles_ms[name] - value) / value)
    return {
        "verdict": [full.verdict.value, merged.verdict.value],
        "same_verdict": full.verdict == merged.verdict,
        "same_counts": all(
            (a.users, a.requests, a.errors) == (b.users, b.requests, b.errors)
            for a, b in ((full.treatment, merged.treatment), (full.baseline, merged.baseline))
        ),
        "same_exclusions": full.excluded == merged.excluded,
        "same_route_verdicts": [m.judgement.verdict for s in full.breakdown for m in s.metrics]
        == [m.judgement.verdict for s in merged.breakdown for m in s.metrics],
        "error_rate_diff": [full.metrics[0].estimate.diff, merged.metrics[0].estimate.diff],
        "largest_quantile_rel_diff": worst,
        "bins_precision": bins.PRECISION,
        "treatment": [full.treatment.users, full.treatment.requests],
        "baseline": [full.baseline.users, full.baseline.requests],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=float, default=1e7)
    parser.add_argument("--cache", type=Path, default=HERE / "out" / "lakes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "incremental.json")
    args = parser.parse_args()
    events = int(args.events)
    lake = lake_for(args.cache, events)
    work = args.cache / f"incremental-{events}-work"
    before = shown(lake, work / "lake", END)
    store = work / "summaries"
    shutil.rmtree(store, ignore_errors=True)

    stage = IncrementalStage(Store(store), before, DuckDBStage)
    _, cold_wall, cold_cpu = timed(lambda: _run(before, options(END), stage))
    print(f"run at E (cold, {stage.counts}): {cold_wall:.2f} s wall, {cold_cpu:.2f} s CPU")
    snapshot = work / "summaries-at-E"
    shutil.rmtree(snapshot, ignore_errors=True)
    shutil.copytree(store, snapshot)

    after = shown(lake, work / "lake", END + timedelta(hours=1))
    later = options(END + timedelta(hours=1))
    rows: dict[str, list[float]] = {k: [] for k in ("full_wall", "full_cpu", "inc_wall", "inc_cpu")}
    full = merged = None
    counts = ""
    for attempt in range(args.repeat):
        full, wall, cpu = timed(lambda: run_diff(after, later, charts=True))
        rows["full_wall"].append(wall)
        rows["full_cpu"].append(cpu)
        shutil.rmtree(store)
        shutil.copytree(snapshot, store)
        stage = IncrementalStage(Store(store), after, DuckDBStage)
        merged, wall, cpu = timed(lambda s=stage: _run(after, later, s))
        rows["inc_wall"].append(wall)
        rows["inc_cpu"].append(cpu)
        counts = str(stage.counts)
        print(
            f"run {attempt + 1} at E + 1 h: rescan {rows['full_wall'][-1]:.2f} s wall "
            f"{rows['full_cpu'][-1]:.2f} s CPU; incremental ({counts}) "
            f"{rows['inc_wall'][-1]:.2f} s wall {rows['inc_cpu'][-1]:.2f} s CPU",
            flush=True,
        )
    assert full is not None and merged is not None
    best = {k: min(v) for k, v in rows.items()}
    report = {
        "events": events,
        "machine": machine(),
        "cold_run": {"wall": cold_wall, "cpu": cold_cpu},
        "runs": rows,
        "best": best,
        "ratio_wall": best["inc_wall"] / best["full_wall"],
        "ratio_cpu": best["inc_cpu"] / best["full_cpu"],
        "counts": counts,
        "agreement": compare(full, merged),
        "summaries_bytes": sum(f.stat().st_size for f in store.rglob("*") if f.is_file()),
        "lake_bytes": sum(f.stat().st_size for f in after.rglob("*.parquet")),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(
        json.dumps(
            {k: report[k] for k in ("best", "ratio_wall", "ratio_cpu", "agreement")},
            indent=2,
            default=str,
        )
    )
    print(
        f"summaries {report['summaries_bytes'] / 2**20:.1f} MiB for a lake of "
        f"{report['lake_bytes'] / 2**20:.1f} MiB; written to {args.out}"
    )
    if not math.isfinite(report["ratio_cpu"]):
        raise SystemExit("no figures")


def _run(lake: Path, opts: DiffOptions, stage: IncrementalStage) -> DiffResult:
    """`run_diff(…, summaries=…)` with a stage whose counts the benchmark reads."""
    return run(lake, lambda con: diff_with(con, opts, stage, charts=True))


if __name__ == "__main__":
    main()
