"""OTLP/JSON ingest against protobuf's (issue 10 point 1), through `flagscope serve`.

The same 256-span requests (bench/payload.py, in OTLP/JSON the way the Node.js exporter
writes it: hex ids, enums as numbers, 64-bit integers as strings), on loopback:

1. engine: decoding alone on one core (per CPU second), in this process — `decode.prepare` on protobuf,
   on JSON (collector/otlp_json.py with otlp_json_fast.py), the same as a decoder process
   runs it (`decode_pool.prepare_in_worker`: the garbage collector paused), and protobuf's
   own `json_format.ParseDict`, which the collector used before; spans/s, µs a span and
   JSON ÷ protobuf.
2. probe: one protobuf client posting a 32-span request every 50 ms; its ack p50/p99
   alone, beside `--senders` protobuf senders, and beside as many JSON senders sending
   the same spans/s (each paced to `--paced-rps` requests/s) — the JSON senders must not
   cost the probe more than protobuf senders do (target: p99 unchanged); and beside JSON
   senders with `json_decoders = 0` (decoded in a thread of the front end), for the
   contrast. It runs before the throughput phase: in three runs on the 2-core VM
   measured, run after it, the probe beside JSON senders read ~35 ms p50 (5 ms run
   first); scripts running a throughput phase and then the probe did not reproduce it,
   and why is not known.
3. throughput: `--senders` clients posting as fast as they are acknowledged for
   `--seconds`, once protobuf, once JSON (a fresh collector each): acked spans/s, the
   sustained rate (acked ÷ time until all are in the lake), JSON ÷ protobuf
   (target ≥ ⅓).
Each phase records the 1-minute load average as it ends: on a machine shared with other
work the figures mean little when it is far above the core count. Prints the figures and
writes bench/out/json_ingest.json. Run: `.venv/bin/python bench/json_ingest.py`
(~3 minutes).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from google.protobuf import json_format

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench.ingest import lake_count
from bench.machine import machine
from bench.payload import trace_request
from flagscope.collector.caps import NO_CAPS
from flagscope.collector.decode import prepare
from flagscope.collector.decode_pool import prepare_in_worker
from flagscope.collector.otlp import JSON, PROTOBUF, TRACES
from tests.otlp_requests import hex_to_base64, map_ids, otlp_json

SPANS = 256
PROBE_SPANS = 32
PROBE_INTERVAL_S = 0.05


def js_json(payload: bytes) -> bytes:
    """A protobuf request as the Node.js OTLP/JSON exporter writes it."""
    return orjson.dumps(otlp_json(ExportTraceServiceRequest.FromString(payload)))


def rate(work: Callable[[], object], spans: int, seconds: float = 3.0) -> float:
    """Spans a CPU second: on a machine shared with other work, wall time would count
    theirs too."""
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        work()
        n += 1
    return n * spans / (time.process_time() - cpu)


def engine(pb: bytes, js: bytes) -> dict[str, Any]:
    def parse_dict() -> None:  # what the collector did before: ids back to base64, ParseDict
        doc = orjson.loads(js)
        map_ids(doc, hex_to_base64)
        json_format.ParseDict(doc, ExportTraceServiceRequest())

    def in_worker() -> None:
        prepare_in_worker(TRACES.name, js, JSON, time.time_ns(), NO_CAPS)

    out = {
        "protobuf_spans_per_s": rate(lambda: prepare(TRACES, pb, PROTOBUF), SPANS),
        "json_spans_per_s": rate(lambda: prepare(TRACES, js, JSON), SPANS),
        "json_in_worker_spans_per_s": rate(in_worker, SPANS),
        "json_format_parsedict_spans_per_s": rate(parse_dict, SPANS),
    }
    for key in list(out):
        out[key.replace("spans_per_s", "us_per_span")] = 1e6 / out[key]
    out["json_over_protobuf"] = out["json_in_worker_spans_per_s"] / out["protobuf_spans_per_s"]
    out["json_over_parsedict"] = out["json_spans_per_s"] / out["json_format_parsedict_spans_per_s"]
    out["load_average"] = os.getloadavg()[0]
    return out


# -- a collector and its clients ----------------------------------------------------------
class Serve:
    def __init__(self, **settings: str) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="flagscope-bench-json-"))
        env = {**os.environ, "FLAGSCOPE_RETENTION_DAYS": "0"}
        env.update({f"FLAGSCOPE_{k.upper()}": v for k, v in settings.items()})
        command = [sys.executable, "-m", "flagscope", "serve", "--data-dir", str(self.data_dir)]
        self.proc = subprocess.Popen(
            [*command, "--http", "127.0.0.1:0", "--grpc", ""],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        match = re.search(r"http=[\d.]+:(\d+)", line)
        if match is None:
            raise SystemExit(f"flagscope serve did not start: {line!r}")
        self.port = int(match[1])

    def wait_lake(self, spans: int, timeout: float = 300) -> float:
        start = time.monotonic()
        while lake_count(self.data_dir / "lake") < spans and time.monotonic() - start < timeout:
            time.sleep(0.25)
        return time.monotonic()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        subprocess.run(["rm", "-rf", str(self.data_dir)], check=False)


def client(
    port: int,
    bodies: list[bytes],
    content_type: str,
    start_at: float,
    stop_at: float,
    interval: float,
    out: Any,
) -> None:
    """Post `bodies` in turn from start_at to stop_at, one every `interval` s (0: back to
    back); put (acked, refused, ack latencies) on `out`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    latencies, acked, refused, i = [], 0, 0, 0
    while time.monotonic() < start_at:
        time.sleep(0.001)
    due = time.monotonic()
    while time.monotonic() < stop_at:
        if interval:
            time.sleep(max(0.0, due - time.monotonic()))
            due += interval
        t0 = time.perf_counter()
        conn.request("POST", "/v1/traces", bodies[i % len(bodies)], {"Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        i += 1
        if response.status == 200:
            latencies.append(time.perf_counter() - t0)
            acked += 1
        else:
            refused += 1
            time.sleep(float(response.getheader("Retry-After", "1")))
    out.put((acked, refused, latencies))


def run_clients(port: int, plans: list[tuple[list[bytes], str, float]], seconds: float) -> list:
    queue: Any = multiprocessing.Queue()
    start_at = time.monotonic() + 1.0
    procs = [
        multiprocessing.Process(
            target=client,
            args=(port, bodies, kind, start_at, start_at + seconds, interval, queue),
        )
        for bodies, kind, interval in plans
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 180) for _ in procs]
    for p in procs:
        p.join()
    return results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def throughput(bodies: list[bytes], kind: str, senders: int, seconds: float) -> dict[str, Any]:
    serve = Serve()
    try:
        began = time.monotonic() + 1.0
        results = run_clients(serve.port, [(bodies, kind, 0.0)] * senders, seconds)
        acked = sum(r[0] for r in results) * SPANS
        latencies = [x for r in results for x in r[2]]
        done = serve.wait_lake(acked)
    finally:
        serve.stop()
    return {
        "acked_spans_per_s": acked / seconds,
        "sustained_spans_per_s": acked / (done - began),
        "refused_503": sum(r[1] for r in results),
        "ack_p50_ms": percentile(latencies, 0.5),
        "ack_p99_ms": percentile(latencies, 0.99),
        "load_average": os.getloadavg()[0],
    }


def probe(
    probe_bodies: list[bytes],
    load: list[bytes] | None,
    kind: str,
    args: argparse.Namespace,
    **settings: str,
) -> dict[str, Any]:
    serve = Serve(**settings)
    try:
        plans = [(probe_bodies, PROTOBUF, PROBE_INTERVAL_S)]
        if load is not None:
            plans += [(load, kind, 1.0 / args.paced_rps)] * args.senders
        results = run_clients(serve.port, plans, args.seconds)
    finally:
        serve.stop()
    mine = results[0][2]
    others = results[1:]
    return {
        "probe_ack_p50_ms": percentile(mine, 0.5),
        "probe_ack_p99_ms": percentile(mine, 0.99),
        "probe_requests": len(mine),
        "load_spans_per_s": sum(r[0] for r in others) * SPANS / args.seconds,
        "load_ack_p99_ms": percentile([x for r in others for x in r[2]], 0.99),
        "load_average": os.getloadavg()[0],
    }


def run_probes(
    small: list[bytes], pb: list[bytes], js: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    pr = {
        "alone": probe(small, None, PROTOBUF, args),
        "beside_protobuf_senders": probe(small, pb, PROTOBUF, args),
        "beside_json_senders": probe(small, js, JSON, args),
        "beside_json_senders_decoded_in_thread": probe(small, js, JSON, args, json_decoders="0"),
    }
    pr["p99_json_over_protobuf_senders"] = (
        pr["beside_json_senders"]["probe_ack_p99_ms"]
        / pr["beside_protobuf_senders"]["probe_ack_p99_ms"]
    )
    print(json.dumps(pr, indent=2), flush=True)
    return pr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--paced-rps", type=float, default=20.0, help="per load sender, probe")
    parser.add_argument("--no-probe", action="store_true", help="engine and throughput only")
    args = parser.parse_args(argv)

    pb = [trace_request(SPANS, seed=s) for s in range(32)]
    js = [js_json(p) for p in pb]
    small = [trace_request(PROBE_SPANS, seed=100 + s) for s in range(32)]
    figures: dict[str, Any] = {
        "machine": machine(),
        "command": "python bench/json_ingest.py " + " ".join(argv or sys.argv[1:]),
        "request_bytes": {"protobuf": len(pb[0]), "json": len(js[0])},
        "engine": engine(pb[0], js[0]),
    }
    print(json.dumps(figures, indent=2), flush=True)
    if not args.no_probe:
        figures["probe"] = run_probes(small, pb, js, args)
    tp = {
        "protobuf": throughput(pb, PROTOBUF, args.senders, args.seconds),
        "json": throughput(js, JSON, args.senders, args.seconds),
    }
    for key in ("acked_spans_per_s", "sustained_spans_per_s"):
        tp[f"json_over_protobuf_{key}"] = tp["json"][key] / tp["protobuf"][key]
    figures["throughput"] = tp
    print(json.dumps(tp, indent=2), flush=True)
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "json_ingest.json").write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
