"""Memory under many large concurrent OTLP/gRPC exports (issue 10 point 9).

Starts `flagscope serve` (a subprocess, loopback, defaults: 64 MiB request limit, 256 MiB
in-flight budget), then `--senders` clients, each on a connection of its own, export the
same ~`--mib` MiB valid request (bench/payload.py's spans) at once, retrying UNAVAILABLE
after the RetryInfo delay the collector sends; meanwhile a probe exports a 32-span request
every 100 ms. Reports:
- peak RSS of the front end (the `flagscope serve` process) and of its process tree, and
  the front end's growth as a ratio to the in-flight budget and to the bytes on the wire;
- the wall time until every big export is acknowledged, against the bare engine: the same
  request through `decode.prepare` in this process, `--senders` times, one after another;
- the probe's answer times (p50, p99, max) and refusals;
- the spans in the lake after a SIGTERM (which drains the WAL) against those acknowledged,
  and what the collector's log holds of errors and partitions expired.
With `--json`, the big requests are OTLP/JSON over HTTP instead (the same spans, each
sender on a connection of its own, retrying 503 after its Retry-After; the issue's case
was 16 × 60 MiB); the probe stays gRPC.
Writes bench/out/grpc_memory.json (json_memory.json with `--json`), and the collector's log
beside it. Run: `.venv/bin/python bench/grpc_memory.py [--json]` (about a minute on a quiet
2-core machine; far longer under load).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import psutil
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.ingest import lake_count
from bench.machine import machine
from bench.payload import trace_request
from flagscope.collector.decode import prepare
from flagscope.collector.otlp import JSON, PROTOBUF, TRACES
from flagscope.collector.server import DRAIN_TIMEOUT_S
from tests.grpc_load import PeakRss, Probe, post_concurrently, send_concurrently

CHUNK_SPANS = 512
PROBE_SPANS = 32
JSON_OVER_PROTOBUF = 2.09  # bytes of OTLP/JSON per byte of protobuf, for bench/payload.py's spans
READY = re.compile(r"ready (?:http=[\d.]+:(\d+) )?grpc=[\d.]+:(\d+)")


def big_request(mib: float) -> tuple[bytes, int]:
    """A request of about `mib` MiB: 512-span chunks (each its own seed) concatenated."""
    chunks: list[bytes] = []
    while sum(map(len, chunks)) < mib * 2**20:
        chunks.append(trace_request(CHUNK_SPANS, seed=len(chunks) + 1))
    return b"".join(chunks), len(chunks) * CHUNK_SPANS


def as_json(payload: bytes) -> bytes:
    """The OTLP/JSON encoding of a serialized ExportTraceServiceRequest (ids in hex, not
    protobuf's JSON base64)."""
    request = json_format.MessageToDict(ExportTraceServiceRequest.FromString(payload))
    for resource in request["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(request, separators=(",", ":")).encode()


def engine_seconds(payload: bytes, content_type: str, times: int) -> float:
    start = time.perf_counter()
    for _ in range(times):
        prepare(TRACES, payload, content_type)
    return time.perf_counter() - start


def tree_rss(process: psutil.Process) -> int:
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # exited meanwhile
            total += child.memory_info().rss
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def log_findings(path: Path) -> dict[str, int]:
    """What the collector's log says went wrong: error lines (the lake writers' carry no
    level, hence their phrases), and partitions retention deleted."""
    text = path.read_text(errors="replace")
    errors = re.findall(r" ERROR |Traceback|could not convert|quarantined", text)
    expired = sum(int(n) for n in re.findall(r"(\d+) partitions expired", text))
    return {"collector_log_errors": len(errors), "partitions_expired": expired}


def run(
    args: argparse.Namespace, payload: bytes, spans: int, data_dir: str, log: IO[str]
) -> dict[str, Any]:
    env = {
        **os.environ,
        "FLAGSCOPE_MAX_INFLIGHT_BYTES": str(args.inflight_mib * 2**20),
        "FLAGSCOPE_ACTIVITY_LOG_S": "0",
        "FLAGSCOPE_MAX_LAG_S": str(args.max_lag_s),
        # bench/payload.py's spans are dated 2025-11-24: the default 30-day retention
        # deleted the hour partitions they were written to (the lake held 0 rows at the end)
        "FLAGSCOPE_RETENTION_DAYS": "0",
    }
    http_endpoint = "127.0.0.1:0" if args.json else ""
    cmd = [sys.executable, "-m", "flagscope", "serve", "--data-dir", data_dir]
    proc = subprocess.Popen(
        [*cmd, "--http", http_endpoint, "--grpc", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        match = None
        while match is None:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the collector did not start")
            match = READY.search(line)
        target = f"127.0.0.1:{match[2]}"
        front = psutil.Process(proc.pid)
        probe_payloads = [trace_request(PROBE_SPANS, seed=10_000 + i) for i in range(2000)]
        peak_tree = 0
        with PeakRss(proc.pid) as rss:
            probe = Probe(target, probe_payloads).start()
            start = time.monotonic()
            done = threading.Event()

            def watch_tree() -> None:
                nonlocal peak_tree
                while not done.wait(0.05):
                    peak_tree = max(peak_tree, tree_rss(front))

            watcher = threading.Thread(target=watch_tree, daemon=True)
            watcher.start()
            if args.json:
                bodies = [payload] * args.senders
                outcomes = post_concurrently(int(match[1]), bodies, args.deadline_s)
            else:
                outcomes = send_concurrently(target, [payload] * args.senders, args.deadline_s)
            wall = time.monotonic() - start
            probes = probe.stop()
            done.set()
            watcher.join()
        acked = sum(o.ok for o in outcomes)
        probes_ok = [o for o in probes if o.ok]
        expected = acked * spans + len(probes_ok) * PROBE_SPANS
        lake = Path(data_dir) / "lake"
        until = time.monotonic() + 600
        while (stored := lake_count(lake)) < expected and time.monotonic() < until:
            time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(DRAIN_TIMEOUT_S + 60)
        stored = lake_count(lake)
        return {
            "senders": args.senders,
            "request_mib": round(len(payload) / 2**20, 1),
            "inflight_budget_mib": args.inflight_mib,
            "front_end_baseline_mib": round(rss.baseline / 2**20),
            "front_end_peak_mib": round(rss.peak / 2**20),
            "tree_peak_mib": round(peak_tree / 2**20),
            "front_end_growth_over_budget": round(
                (rss.peak - rss.baseline) / 2**20 / args.inflight_mib, 2
            ),
            "front_end_growth_over_wire": round(
                (rss.peak - rss.baseline) / (args.senders * len(payload)), 2
            ),
            "big_acked": acked,
            "big_refusals_retried": sum(o.refusals for o in outcomes),
            "big_failures": sorted({o.failure for o in outcomes if not o.ok}),
            "wall_s": round(wall, 1),
            "probe_count": len(probes),
            "probe_failures": sorted({o.failure for o in probes if not o.ok}),
            "probe_refusals": sum(o.refusals for o in probes),
            "probe_p50_ms": round(1000 * percentile([o.seconds for o in probes_ok], 0.5), 1),
            "probe_p99_ms": round(1000 * percentile([o.seconds for o in probes_ok], 0.99), 1),
            "probe_max_ms": round(1000 * max((o.seconds for o in probes_ok), default=0), 1),
            "spans_expected": expected,
            "spans_stored": stored,
        }
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--mib", type=float, default=54)
    parser.add_argument("--inflight-mib", type=int, default=256)
    parser.add_argument("--deadline-s", type=float, default=300, help="each export's")
    parser.add_argument("--max-lag-s", type=float, default=30, help="the collector's max_lag_s")
    parser.add_argument("--json", action="store_true", help="big requests as OTLP/JSON (HTTP)")
    args = parser.parse_args()
    payload, spans = big_request(args.mib)
    if args.json:  # JSON of about `--mib` MiB (the case: 60)
        proto, spans = big_request(args.mib / JSON_OVER_PROTOBUF)
        payload = as_json(proto)
    content_type = JSON if args.json else PROTOBUF
    engine = engine_seconds(payload, content_type, 2) / 2 * args.senders
    out_dir = Path(__file__).resolve().parent / "out"
    out_dir.mkdir(exist_ok=True)
    name = "json_memory" if args.json else "grpc_memory"
    with (
        tempfile.TemporaryDirectory(prefix="flagscope-bench-") as data_dir,
        open(out_dir / f"{name}.log", "w") as log,
    ):
        figures = run(args, payload, spans, data_dir, log)
    figures |= log_findings(out_dir / f"{name}.log")
    figures["engine_s"] = round(engine, 1)
    figures["wall_over_engine"] = round(figures["wall_s"] / engine, 2)
    out = {"machine": machine(), "figures": figures}
    print(json.dumps(out, indent=2))
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
