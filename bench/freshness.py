"""Freshness: how long after its acknowledgement a span can be read from the lake, while
the collector is under steady load and compacts (issue 12: p99 ≤ 5 s).

Starts `flagscope serve` (a subprocess, loopback, port 0; compaction every
`--compact-interval` s so that it runs several times in the window), then:
- `--senders` processes post 256-span requests (bench/payload.py) paced to `--rate`
  spans/s in all: a busy collector that keeps up;
- a probe posts one span of its own service every `--every` s, each with a new trace id,
  and notes when it was acknowledged;
- a watcher lists the lake's files every 50 ms, reads the probe's spans from the new
  ones, and notes when each probe span first appears (renamed into place).
Ack → visible per probe span: p50, p90, p99, max; and the compactions the collector
logged during the window. Writes bench/out/freshness.json.

    .venv/bin/python bench/freshness.py [--seconds 90] [--rate 20000]
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from bench.machine import machine, write_figures
from bench.payload import trace_request

SPANS = 256
PROBE_SERVICE = "freshness-probe"


def sender(port: int, payloads: list[bytes], per_s: float, stop_at: float) -> None:
    """Posts `payloads` in turn, `per_s` requests a second."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    gap, due, i = 1.0 / per_s, time.monotonic(), 0
    while time.monotonic() < stop_at:
        conn.request(
            "POST", "/v1/traces", payloads[i % len(payloads)],
            {"Content-Type": "application/x-protobuf"},
        )  # fmt: skip
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            time.sleep(float(answer.getheader("Retry-After", "1")))
        i += 1
        due += gap
        time.sleep(max(0.0, due - time.monotonic()))


def start_collector(
    data_dir: Path, env: dict[str, str], log: Any
) -> tuple[subprocess.Popen[str], int]:
    """`flagscope serve` on loopback (OTLP/HTTP only, port 0), its stderr to `log`: the
    process and its port, once its lake writers have had time to start."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "flagscope", "serve", "--data-dir", str(data_dir),
         "--http", "127.0.0.1:0", "--grpc", ""],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env,
    )  # fmt: skip
    line = proc.stdout.readline() if proc.stdout else ""
    port = int(re.search(r"http=[\d.]+:(\d+)", line)[1])
    time.sleep(2.0)  # the lake writers start
    return proc, port


def start_senders(
    port: int, payloads: list[bytes], rate: float, count: int, stop_at: float
) -> list[multiprocessing.Process]:
    """`count` sender processes posting `payloads` (SPANS spans each) at `rate` spans/s in
    all until `stop_at`."""
    per_sender = rate / SPANS / count
    senders = [
        multiprocessing.Process(target=sender, args=(port, payloads, per_sender, stop_at))
        for _ in range(count)
    ]
    for p in senders:
        p.start()
    return senders


def probe_request(number: int) -> tuple[bytes, str]:
    """One span of the probe's service, named after its number."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    attribute = rs.resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", PROBE_SERVICE
    span = rs.scope_spans.add().spans.add()
    span.trace_id = os.urandom(16)
    span.span_id = os.urandom(8)
    span.name = f"probe-{number}"
    span.kind = 2
    now = time.time_ns()
    span.start_time_unix_nano, span.end_time_unix_nano = now - 1_000_000, now
    return request.SerializeToString(), span.name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--rate", type=float, default=20_000, help="load, spans/s in all")
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--every", type=float, default=0.25, help="seconds between probes")
    parser.add_argument("--compact-interval", type=float, default=10.0)
    args = parser.parse_args()

    payloads = [trace_request(SPANS, seed=s, start_ns=time.time_ns()) for s in range(64)]
    data_dir = Path(tempfile.mkdtemp(prefix="flagscope-fresh-"))
    lake = data_dir / "lake"
    env = {
        **os.environ,
        "FLAGSCOPE_RETENTION_DAYS": "0",
        "FLAGSCOPE_COMPACT_INTERVAL_S": str(args.compact_interval),
    }
    log_path = data_dir / "collector.log"
    with log_path.open("w") as log:
        proc, port = start_collector(data_dir, env, log)
        stop_at = time.monotonic() + args.seconds
        senders = start_senders(port, payloads, args.rate, args.senders, stop_at)

        acked: dict[str, float] = {}
        seen: dict[str, float] = {}
        read: set[Path] = set()
        watching = True

        def watch() -> None:
            con = duckdb.connect()
            while watching or len(seen) < len(acked):
                files = [f for f in lake.glob("date=*/hour=*/*.parquet") if f not in read]
                files = [f for f in files if not f.name.startswith("_")]  # companions
                if files:
                    listed = ", ".join("'" + str(f) + "'" for f in files)
                    try:
                        names = con.execute(
                            f"SELECT name FROM read_parquet([{listed}]) WHERE service_name = $s",
                            {"s": PROBE_SERVICE},
                        ).fetchall()
                    except duckdb.Error:  # compacted away meanwhile: list again
                        continue
                    now = time.monotonic()
                    for (name,) in names:
                        seen.setdefault(name, now)
                    read.update(files)
                if not watching and time.monotonic() > stop_at + 60:
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        number = 0
        while time.monotonic() < stop_at:
            body, name = probe_request(number)
            conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            answer = conn.getresponse()
            answer.read()
            if answer.status == 200:
                acked[name] = time.monotonic()
            number += 1
            time.sleep(args.every)
        for p in senders:
            p.join()
        watching = False
        watcher.join()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    waits = sorted(seen[n] - acked[n] for n in acked if n in seen)
    missing = [n for n in acked if n not in seen]
    merges = len(re.findall(r"lake maintenance: (\d+) merges", log_path.read_text()))

    def at(q: float) -> float:
        return round(waits[min(len(waits) - 1, int(q * len(waits)))], 3)

    figures = {
        "machine": machine(),
        "command": "python bench/freshness.py " + " ".join(sys.argv[1:]),
        "seconds": args.seconds,
        "load_spans_per_s": args.rate,
        "probes_acked": len(acked),
        "probes_never_seen": len(missing),
        "ack_to_visible_s": {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0)},
        "maintenance_rounds_with_merges": merges,
        "load_average_1m": os.getloadavg()[0],
    }
    write_figures("freshness", figures)
    subprocess.run(["rm", "-rf", str(data_dir)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
