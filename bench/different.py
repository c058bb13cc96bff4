"""'What is different' benchmark: `what_is_different` for a route against the bare DuckDB
query that does its core work, at N events.

For each N in `--sizes` (default 1e6) a synthetic lake (bench/make_lake.py, the flag
`new-checkout` with its effect on POST /checkout) is generated into `--cache` (default
bench/out/lakes, git-ignored) or reused from there, and in the same run, page cache warm,
best of `--repeat`:

  (a) bare: one DuckDB query over the same files: the route's flag-labelled entry requests
      (the trace's first evaluation), the spans of their traces, every attribute, resource
      attribute and exception-event attribute exploded from its JSON, counted per
      (service, key, value, variant, error) — the reading and exploding the analysis cannot
      avoid, without test-traffic exclusion, caps or per-user sums. The yardstick.
  (b) different: `flagscope.analysis.different_query.what_is_different(lake, flag, "on",
      "off", start, end, None, "POST /checkout")` — everything the page and the report show.

Prints the table with the different/bare ratio and the machine.

Run: `.venv/bin/python bench/different.py --sizes 1e6`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import machine
from bench.make_lake import make_lake, read_manifest
from flagscope.analysis.different import Bad
from flagscope.analysis.different_query import what_is_different
from flagscope.collector.lake.read import run

DEFAULT_CACHE = Path(__file__).resolve().parent / "out" / "lakes"
FLAG, ROUTE = "new-checkout", "POST /checkout"

BARE_SQL = """
WITH evals AS (
    SELECT trace_key, arg_min(flags[$flag], time) AS variant FROM events_raw
    WHERE map_contains(flags, $flag) AND time >= $start AND time < $end GROUP BY trace_key
), requests AS (
    SELECT r.trace_key, e.variant, coalesce(r.is_error, false) AS err FROM events_raw r
    JOIN evals e USING (trace_key)
    WHERE r.is_entry AND r.time >= $start AND r.time < $end
      AND trim(coalesce(r.http_method, '') || ' ' || coalesce(r.http_route, r.name)) = $route
), spans AS (
    SELECT s.trace_key, s.service_name, s.attributes, s.resource_attributes, s.span_events
    FROM events_raw s WHERE s.signal = 'span' AND s.time >= $start AND s.time < $end
      AND s.trace_key IN (SELECT trace_key FROM requests)
), kv AS (
    SELECT trace_key, service_name, j.key, j.value FROM spans, json_each(spans.attributes) j
    UNION ALL
    SELECT trace_key, service_name, j.key, j.value FROM spans, json_each(spans.resource_attributes) j
    UNION ALL
    SELECT trace_key, service_name, a.key, a.value
    FROM spans, json_each(spans.span_events) e, json_each(e.value -> 'attributes') a
    WHERE e.value ->> 'name' = 'exception'
)
SELECT count(*) FROM (
    SELECT kv.service_name, kv.key, kv.value ->> '$', r.variant, r.err, count(*)
    FROM kv JOIN requests r USING (trace_key) GROUP BY ALL
)
"""


def best(repeat: int, work: Callable[[], object]) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        out = work()
        times.append(time.perf_counter() - began)
    return min(times), out


def measure(lake: Path, start: datetime, end: datetime, repeat: int) -> dict[str, float]:
    params = {"flag": FLAG, "start": start, "end": end, "route": ROUTE}

    def bare() -> int:
        return int(run(lake, lambda con: con.execute(BARE_SQL, params).fetchall()[0][0]))

    def different() -> object:
        return what_is_different(lake, FLAG, "on", "off", start, end, None, ROUTE, Bad.ERRORS)

    bare_s, groups = best(repeat, bare)
    diff_s, found = best(repeat, different)
    d = found  # a Difference
    return {
        "bare_s": bare_s,
        "different_s": diff_s,
        "ratio": diff_s / bare_s,
        "groups": float(groups),  # type: ignore[arg-type]
        "candidates": float(d.candidates),  # type: ignore[attr-defined]
        "bad": float(d.counts["bad"].requests),  # type: ignore[attr-defined]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e6", help="comma-separated event counts")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    print("| events | bare (s) | what_is_different (s) | ratio | values tested | failed requests |")
    print("|---|---|---|---|---|---|")
    for size in (int(float(s)) for s in args.sizes.split(",")):
        lake = args.cache / f"bench-{size:.0e}"
        info = read_manifest(lake)
        if info is None:
            make_lake(lake, size)
            info = read_manifest(lake)
        assert info is not None
        start = datetime.fromisoformat(info["start"]).replace(tzinfo=None)
        end = datetime.fromisoformat(info["end"]).replace(tzinfo=None)
        m = measure(lake, start, end, args.repeat)
        print(
            f"| {size:,} | {m['bare_s']:.2f} | {m['different_s']:.2f} | {m['ratio']:.2f}× | "
            f"{m['candidates']:.0f} | {m['bad']:,.0f} |"
        )


if __name__ == "__main__":
    main()
