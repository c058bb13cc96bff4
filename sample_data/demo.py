"""`make demo`: collector up, the sample shop's traffic through it, a first look, collector down.

Until the analysis lands this prints what `flagscope query` sees: events per service, and
a per-cohort preview of the flag `new-checkout` (test traffic excluded) computed with SQL
over the lake. The collector runs on free loopback ports with the lake in
./flagscope-data/demo (recreated each run) and is stopped with SIGTERM at the end, so
nothing is left running.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shop  # noqa: E402 - the sample shop beside this file

DATA_DIR = Path("flagscope-data/demo")
COHORT_SQL = """
WITH flagged AS (
    SELECT trace_id, any_value(flags['new-checkout']) AS variant
    FROM events WHERE flags['new-checkout'] IS NOT NULL GROUP BY trace_id),
tests AS (SELECT DISTINCT trace_id FROM events WHERE is_test)
SELECT f.variant, r.http_route AS route, count(*) AS requests, count(DISTINCT r.user_id) AS users,
       round(100 * avg(r.is_error::INT), 2) AS error_pct,
       round(quantile_cont(r.duration_ms, 0.5), 1) AS p50_ms,
       round(quantile_cont(r.duration_ms, 0.95), 1) AS p95_ms
FROM events r JOIN flagged f USING (trace_id)
WHERE r.signal = 'span' AND r.kind = 2 AND r.trace_id NOT IN (SELECT trace_id FROM tests)
GROUP BY ALL ORDER BY ALL
"""
OVERVIEW_SQL = """
SELECT service_name, signal, count(*) AS events, count(*) FILTER (WHERE is_test) AS test_events,
       count(*) FILTER (WHERE cardinality(flags) > 0) AS with_flags
FROM events GROUP BY ALL ORDER BY ALL
"""


def flagscope(*args: str) -> list[str]:
    return [sys.executable, "-m", "analysis.cli", *args]


def start_collector() -> tuple[subprocess.Popen[str], int, int]:
    proc = subprocess.Popen(
        flagscope("serve", "--data-dir", str(DATA_DIR), "--http", "127.0.0.1:0",
                  "--grpc", "127.0.0.1:0"),
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"http=[\d.]+:(\d+) grpc=[\d.]+:(\d+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"the collector did not start: {line!r}")
    return proc, int(match[1]), int(match[2])


def main() -> int:
    started = time.monotonic()
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    print(f"1. starting the collector (data in {DATA_DIR}) …", flush=True)
    proc, http_port, grpc_port = start_collector()
    try:
        print("2. running the sample shop: OpenTelemetry SDK + OpenFeature hook, "
              "flag new-checkout at 20 % …", flush=True)
        counts = shop.run(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
        print(f"   sent {counts['requests']} requests ({counts['test_requests']} from QA testers)")
    finally:
        print("3. stopping the collector (SIGTERM: in-flight answered, WAL drained to the lake) …",
              flush=True)
        proc.send_signal(signal.SIGTERM)
        proc.wait(300)
    print("4. what `flagscope query` sees:\n", flush=True)
    lake = ["--data-dir", str(DATA_DIR)]
    subprocess.run(flagscope("query", *lake, OVERVIEW_SQL), check=True)
    print("\n   new-checkout, per variant and route, test traffic excluded:\n", flush=True)
    subprocess.run(flagscope("query", *lake, COHORT_SQL), check=True)
    print(f"\nTry: .venv/bin/flagscope query --data-dir {DATA_DIR} "
          "\"SELECT * FROM events LIMIT 5\"")
    print(f"demo finished in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
