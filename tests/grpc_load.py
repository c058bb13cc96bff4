"""Concurrent large OTLP/gRPC exports (and OTLP/JSON posts) and a small probe, as clients
see them: shared by tests/test_grpc_memory.py and bench/grpc_memory.py.

Each big sender has a channel (a connection) of its own, as separate services would, and
retries UNAVAILABLE after the RetryInfo delay the collector sends, as the OpenTelemetry
SDKs' gRPC exporters do. Any other failure, and an UNAVAILABLE without RetryInfo (which
an exporter would not know how long to wait for), is recorded as a failure.
"""

from __future__ import annotations

import http.client
import math
import threading
import time
from dataclasses import dataclass, field

import grpc
import psutil
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def retry_delay(error: grpc.RpcError) -> float | None:
    """The RetryInfo delay in the call's grpc-status-details-bin trailer, if any."""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


@dataclass
class Outcome:
    """One export as its client saw it: acknowledged or not, after how many refusals."""

    ok: bool = False
    refusals: int = 0  # UNAVAILABLE with RetryInfo, retried
    reasons: set[str] = field(default_factory=set)  # their messages
    failure: str = ""  # why it gave up
    seconds: float = 0.0  # from the first attempt to the answer


def export(channel: grpc.Channel, payload: bytes, deadline_s: float) -> Outcome:
    """Send `payload` (a serialized ExportTraceServiceRequest) until it is acknowledged,
    honouring RetryInfo, for at most `deadline_s`."""
    call = channel.unary_unary(TRACE_EXPORT)
    outcome = Outcome()
    start = time.monotonic()
    end = start + deadline_s
    while True:
        try:
            ExportTraceServiceResponse.FromString(call(payload, timeout=end - time.monotonic()))
            outcome.ok = True
            break
        except grpc.RpcError as error:
            delay = retry_delay(error) if error.code() == grpc.StatusCode.UNAVAILABLE else None
            if delay is None or time.monotonic() + delay >= end:
                outcome.failure = f"{error.code().name}: {error.details()}"
                break
            outcome.refusals += 1
            outcome.reasons.add(error.details())
            time.sleep(delay)
    outcome.seconds = time.monotonic() - start
    return outcome


def post_until_acked(port: int, body: bytes, deadline_s: float) -> Outcome:
    """POST an OTLP/JSON body until it is answered 200, waiting out each 503's Retry-After,
    for at most `deadline_s`; one connection, kept."""
    outcome = Outcome()
    start = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=deadline_s)
    headers = {"Content-Type": "application/json"}
    try:
        while True:
            connection.request("POST", "/v1/traces", body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status == 200:
                outcome.ok = True
                break
            delay = float(response.getheader("Retry-After") or "nan")
            if (
                response.status != 503
                or math.isnan(delay)
                or time.monotonic() + delay >= start + deadline_s
            ):
                outcome.failure = f"{response.status}: {answer[:200]!r}"
                break
            outcome.refusals += 1
            time.sleep(delay)
    finally:
        connection.close()
    outcome.seconds = time.monotonic() - start
    return outcome


def post_concurrently(port: int, bodies: list[bytes], deadline_s: float) -> list[Outcome]:
    """Every OTLP/JSON body at once, each on a connection of its own; their outcomes."""
    outcomes = [Outcome() for _ in bodies]

    def send(index: int) -> None:
        outcomes[index] = post_until_acked(port, bodies[index], deadline_s)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def big_channel(target: str) -> grpc.Channel:
    # a channel of its own: grpcio would otherwise share one connection between channels
    # of the same target and arguments
    options = [("grpc.max_send_message_length", -1), ("grpc.use_local_subchannel_pool", 1)]
    return grpc.insecure_channel(target, options=options)


def send_concurrently(target: str, payloads: list[bytes], deadline_s: float) -> list[Outcome]:
    """Every payload at once, each from a channel of its own; their outcomes, in order."""
    outcomes = [Outcome() for _ in payloads]
    channels = [big_channel(target) for _ in payloads]

    def send(index: int) -> None:
        outcomes[index] = export(channels[index], payloads[index], deadline_s)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(payloads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for channel in channels:
        channel.close()
    return outcomes


@dataclass
class Probe:
    """A small client exporting `payload()` every `interval_s` while started."""

    target: str
    payloads: list[bytes]
    interval_s: float = 0.1
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Probe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            for payload in self.payloads:
                if self._stop.is_set():
                    return
                self.outcomes.append(export(channel, payload, 60))
                self._stop.wait(self.interval_s)

    def stop(self) -> list[Outcome]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(90)
        return self.outcomes


class PeakRss:
    """The largest resident set of process `pid` seen, sampled every `interval_s`."""

    def __init__(self, pid: int, interval_s: float = 0.01) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return


def with_marker(bulk: bytes, marker: ExportTraceServiceRequest) -> bytes:
    """`bulk` with `marker`'s resource spans appended: concatenated protobuf messages of one
    type merge, their repeated fields joined (protobuf encoding spec)."""
    return bulk + marker.SerializeToString()
