"""A shop with a planted cause, for "what is different": POST /checkout goes through
checkout-service to payments-service, whose instances run 2.3.0 or 2.3.1 (half the
traffic each). Under the flag's `on`, 2.3.1 times out (`error.type=TimeoutError`, an
`exception` event) on most requests; elsewhere a few requests fail for ordinary reasons
(`ConnectionResetError` at payments, a 500 at the frontend). Users are skewed — a few send
many requests — and each has a region (one of them hostile markup, for the pages'
escaping). Sent with the OpenTelemetry SDK's own OTLP
exporters to a real collector; the flag evaluation is the semantic convention's
`feature_flag.evaluation` span event.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.helpers import MiB, RunningCollector, make_settings

FLAG = "new-payments"
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1", '<script>alert("region")</script>')


@dataclass(frozen=True)
class Planted:
    users: int = 300
    requests: int = 3000
    rollout: float = 0.5
    timeout_rate: float = 0.6  # of `on` requests served by payments 2.3.1
    background_rate: float = 0.03  # ordinary failures, both arms
    seed: int = 13


def _provider(endpoint: str, service: str, version: str, instance: str) -> TracerProvider:
    resource = Resource.create(
        {"service.name": service, "service.version": version, "service.instance.id": instance}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"),
            max_queue_size=100_000,
            max_export_batch_size=512,
        )
    )
    return provider


def send(endpoint: str, config: Planted = Planted()) -> dict[str, int]:
    """Send the traffic; counts of what was sent."""
    rng = random.Random(config.seed)
    providers = {
        "front": _provider(endpoint, "shop-frontend", "1.8.0", "front-1"),
        "checkout": _provider(endpoint, "checkout-service", "4.1.0", "checkout-1"),
        "2.3.0": _provider(endpoint, "payments-service", "2.3.0", "payments-a"),
        "2.3.1": _provider(endpoint, "payments-service", "2.3.1", "payments-b"),
    }
    tracers = {k: p.get_tracer("planted") for k, p in providers.items()}
    users = [f"user-{i:04d}" for i in range(config.users)]
    weights = [rng.paretovariate(1.5) for _ in users]  # heavy users
    variant = {u: "on" if rng.random() < config.rollout else "off" for u in users}
    region = {u: rng.choice(REGIONS) for u in users}
    end = time.time_ns()
    counts = {"requests": 0, "timeouts": 0}
    for _ in range(config.requests):
        user = rng.choices(users, weights)[0]
        start = end - int(3000e9) + rng.randrange(int(3000e9))
        checkout = rng.random() < 0.7
        route = "/checkout" if checkout else "/cart"
        method = "POST" if checkout else "GET"
        attrs = {
            "http.request.method": method,
            "http.route": route,
            "enduser.id": user,
            "app.region": region[user],
        }
        root = tracers["front"].start_span(
            f"{method} {route}", kind=SpanKind.SERVER, attributes=attrs, start_time=start
        )
        failed = rng.random() < config.background_rate
        latency = 40 * rng.lognormvariate(0, 0.3)
        with trace.use_span(root, end_on_exit=False):
            child = tracers["checkout"].start_span(
                "checkout.place_order", kind=SpanKind.INTERNAL, start_time=start + 1_000_000
            )
            child.add_event(
                "feature_flag.evaluation",
                {
                    "feature_flag.key": FLAG,
                    "feature_flag.result.variant": variant[user],
                    "feature_flag.context.id": user,
                },
                timestamp=start + 1_500_000,
            )
            if checkout:
                version = rng.choice(("2.3.0", "2.3.1"))
                with trace.use_span(child, end_on_exit=False):
                    pay = tracers[version].start_span(
                        "POST /charge",
                        kind=SpanKind.SERVER,
                        attributes={"http.request.method": "POST", "http.route": "/charge"},
                        start_time=start + 2_000_000,
                    )
                timeout = (
                    version == "2.3.1"
                    and variant[user] == "on"
                    and rng.random() < config.timeout_rate
                )
                reset = not timeout and rng.random() < config.background_rate
                if timeout or reset:
                    kind = "TimeoutError" if timeout else "ConnectionResetError"
                    pay.add_event(
                        "exception",
                        {
                            "exception.type": kind,
                            "exception.message": f"{kind} after {rng.random():.6f} s",
                        },
                        timestamp=start + 3_000_000,
                    )
                    pay.set_attribute("error.type", kind)
                    pay.set_status(Status(StatusCode.ERROR, kind))
                    failed = True
                    counts["timeouts"] += timeout
                    latency += 900 if timeout else 5
                pay.end(end_time=start + int((latency - 3) * 1e6))
            child.end(end_time=start + int((latency - 2) * 1e6))
        root.set_attribute("http.response.status_code", 500 if failed else 200)
        if failed:
            root.set_status(Status(StatusCode.ERROR, "upstream failure"))
        root.end(end_time=start + int(latency * 1e6))
        counts["requests"] += 1
    for provider in providers.values():
        provider.force_flush(60_000)
        provider.shutdown()
    return counts


def record(data_dir: Path, config: Planted = Planted()) -> Path:
    """The planted-cause traffic through a real collector into `data_dir`'s lake."""
    running = RunningCollector(make_settings(data_dir, max_request_bytes=8 * MiB)).start()
    try:
        send(running.http_url, config)
    finally:
        running.stop()  # drains the WAL into the lake
    return running.lake
