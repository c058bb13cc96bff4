"""Ingest benchmark: sustained spans/s through OTLP/HTTP protobuf with durable acks.

Starts `flagscope serve` (a subprocess, loopback, port 0), then `--senders` processes POST
pre-serialized 512-span requests (bench/payload.py: a dozen attributes and one flag
evaluation event per span) as fast as the collector acknowledges them for `--seconds`.
Reports:
- acked spans/s during the send window, and p50/p99 ack latency;
- sustained spans/s end to end: acked spans / time until every one of them is in the
  Parquet lake (the WAL cannot grow forever, so this is the rate that can be kept up);
- peak RSS of the collector's process tree (front end + lake writers);
- the raw protobuf parse rate of the same payload on one core, as the ceiling.
Writes the figures to bench/out/ingest.json. Run: `make bench` or `python bench/ingest.py`.
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

import duckdb
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from bench.machine import machine, write_figures
from bench.payload import trace_request

SPANS_PER_REQUEST = 512


def sender(port: int, payloads: list[bytes], stop_at: float, out: multiprocessing.Queue) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    latencies = []
    acked = refused = 0
    i = 0
    while time.monotonic() < stop_at:
        body = payloads[i % len(payloads)]
        i += 1
        t0 = time.perf_counter()
        conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        resp = conn.getresponse()
        resp.read()
        if resp.status == 200:
            latencies.append(time.perf_counter() - t0)
            acked += 1
        else:
            refused += 1
            time.sleep(float(resp.getheader("Retry-After", "1")))
    out.put((acked, refused, latencies))


def lake_count(lake: Path) -> int:
    if not any(lake.glob("**/*.parquet")):
        return 0
    for _ in range(5):
        try:
            con = duckdb.connect()
            try:
                return con.execute(
                    f"SELECT count(*) FROM read_parquet('{lake}/**/*.parquet')"
                ).fetchall()[0][0]
            finally:
                con.close()
        except duckdb.IOException:
            time.sleep(0.1)  # a file compacted away between glob and read
    return 0


def parse_rate(payload: bytes, seconds: float = 2.0) -> float:
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        ExportTraceServiceRequest.FromString(payload)
        n += 1
    return n * SPANS_PER_REQUEST / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument(
        "--payloads", type=int, default=256, help="distinct requests to cycle through"
    )
    args = parser.parse_args()

    payloads = [trace_request(SPANS_PER_REQUEST, seed=s) for s in range(args.payloads)]
    data_dir = Path(tempfile.mkdtemp(prefix="flagscope-bench-"))
    env = {**os.environ, "FLAGSCOPE_RETENTION_DAYS": "0"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flagscope",
            "serve",
            "--data-dir",
            str(data_dir),
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    port = int(re.search(r"http=[\d.]+:(\d+)", line)[1])
    collector = psutil.Process(proc.pid)
    time.sleep(2.0)  # lake writers start (spawned interpreters)

    peak = 0
    peak_each: dict[str, int] = {}
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            total = 0
            for p in [collector, *collector.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                total += rss
                name = "front end" if p.pid == collector.pid else f"lake writer {p.pid}"
                peak_each[name] = max(peak_each.get(name, 0), rss)
            peak = max(peak, total)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    results: multiprocessing.Queue = multiprocessing.Queue()
    start = time.monotonic()
    stop_at = start + args.seconds
    procs = [
        multiprocessing.Process(target=sender, args=(port, payloads, stop_at, results))
        for _ in range(args.senders)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=args.seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    send_window = time.monotonic() - start
    print(f"send window over after {send_window:.1f} s; waiting for the lake", file=sys.stderr)
    acked = sum(o[0] for o in outcomes) * SPANS_PER_REQUEST
    refused = sum(o[1] for o in outcomes)
    latencies = sorted(x for o in outcomes for x in o[2])
    lake = data_dir / "lake"
    while lake_count(lake) < acked:
        time.sleep(0.25)
    in_lake = time.monotonic() - start
    sampling = False
    sampler.join()
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)

    figures = {
        "machine": machine(),
        "command": "python bench/ingest.py " + " ".join(sys.argv[1:]),
        "seconds": args.seconds,
        "senders": args.senders,
        "spans_per_request": SPANS_PER_REQUEST,
        "request_bytes": len(payloads[0]),
        "acked_spans": acked,
        "refused_requests_503": refused,
        "acked_spans_per_s": round(acked / send_window),
        "sustained_spans_per_s_into_lake": round(acked / in_lake),
        "ack_latency_p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "ack_latency_p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1),
        "peak_rss_mib": round(peak / 2**20),
        "peak_rss_mib_per_process": {k: round(v / 2**20) for k, v in peak_each.items()},
        "raw_protobuf_parse_spans_per_s_one_core": round(parse_rate(payloads[0])),
    }
    write_figures("ingest", figures)
    subprocess.run(["rm", "-rf", str(data_dir)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
