"""A sample shop that sends real OpenTelemetry: a flag rollout with a regression in it.

Two services, instrumented with the OpenTelemetry SDK and exporting OTLP to flagscope:
`shop-frontend` (SERVER spans for every route, over OTLP/HTTP) and `checkout-service`
(called by the frontend on POST /checkout, over OTLP/gRPC). The checkout service evaluates
the flag `new-checkout` with the OpenFeature SDK and its OpenTelemetry hook, so the flag
evaluation lands on a child span in another service than the request's root span.

The flag is rolled out to `rollout` of users (by a stable hash of the user id); QA users
(`qa-*`) are all inside it and their requests also carry `test_user=true`. With the flag on,
POST /checkout is slower (`regression_latency`) and fails more often (`regression_errors`):
the effect the analysis has to find — after excluding the testers.

Time is simulated: spans get explicit start and end times over the last `hours` hours, so
an hour of traffic is sent in seconds. `python sample_data/shop.py --help` for options.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
from dataclasses import dataclass

from openfeature import api
from openfeature.contrib.hook.opentelemetry import TracingHook
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

FLAG = "new-checkout"
ROUTES = [  # (method, route, share of traffic, median latency ms, error rate)
    ("GET", "/", 0.30, 25.0, 0.002),
    ("GET", "/product/{id}", 0.30, 40.0, 0.004),
    ("GET", "/cart", 0.15, 30.0, 0.003),
    ("POST", "/cart", 0.10, 45.0, 0.005),
    ("POST", "/checkout", 0.15, 120.0, 0.010),
]


@dataclass(frozen=True)
class ShopConfig:
    users: int = 600
    qa_users: int = 12
    requests: int = 6000
    hours: float = 1.0
    rollout: float = 0.2
    regression_latency: float = 0.40  # +40 % on POST /checkout when the flag is on
    regression_errors: float = 0.03  # +3 percentage points of errors there
    seed: int = 7


def bucket(user: str) -> float:
    """Stable position of a user in [0, 1): the rollout's hash."""
    return int(hashlib.sha256(f"{FLAG}:{user}".encode()).hexdigest()[:8], 16) / 2**32


def build_flag(rollout: float) -> InMemoryFlag:
    def evaluate(flag: InMemoryFlag, ctx: EvaluationContext) -> FlagResolutionDetails:
        user = ctx.targeting_key or ""
        variant = "on" if user.startswith("qa-") or bucket(user) < rollout else "off"
        return FlagResolutionDetails(
            value=flag.variants[variant], variant=variant, reason=Reason.TARGETING_MATCH
        )

    return InMemoryFlag("off", {"on": True, "off": False}, context_evaluator=evaluate)


def _provider(service: str, exporter) -> TracerProvider:
    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": service,
                "service.version": "2.3.0",
                "deployment.environment": "production",
            }
        )
    )
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=100_000, max_export_batch_size=512)
    )
    return provider


def run(
    http_endpoint: str, grpc_endpoint: str, config: ShopConfig = ShopConfig()
) -> dict[str, int]:
    """Send the shop's traffic; returns counts of what was sent (requests, by cohort)."""
    rng = random.Random(config.seed)
    frontend = _provider("shop-frontend", HttpSpanExporter(endpoint=f"{http_endpoint}/v1/traces"))
    checkout = _provider(
        "checkout-service", GrpcSpanExporter(endpoint=grpc_endpoint, insecure=True)
    )
    # A provider and hook of the shop's own (an OpenFeature domain), so that running the
    # shop twice in one process, as the tests do, adds nothing twice.
    api.set_provider(InMemoryProvider({FLAG: build_flag(config.rollout)}), domain="sample-shop")
    flags = api.get_client("sample-shop")
    flags.add_hooks([TracingHook()])
    front_tracer = frontend.get_tracer("shop.frontend")
    checkout_tracer = checkout.get_tracer("shop.checkout")

    users = [f"user-{i:04d}" for i in range(config.users)] + [
        f"qa-{i:02d}" for i in range(config.qa_users)
    ]
    weights = [1.0] * config.users + [3.0] * config.qa_users  # testers are busy
    now = time.time_ns()
    span_ns = int(config.hours * 3600e9)
    counts = {
        "requests": 0,
        "checkout_on": 0,
        "checkout_off": 0,
        "checkout_test": 0,
        "test_requests": 0,
    }
    for _ in range(config.requests):
        user = rng.choices(users, weights)[0]
        method, route, _share, median, error_rate = rng.choices(ROUTES, [r[2] for r in ROUTES])[0]
        start = now - span_ns + rng.randrange(span_ns)
        latency = median * rng.lognormvariate(0, 0.35)
        is_test = user.startswith("qa-")
        attrs = {
            "http.request.method": method,
            "http.route": route,
            "enduser.id": user,
            "url.path": route.replace("{id}", str(rng.randint(1, 500))),
        }
        if is_test:
            attrs["test_user"] = True
            counts["test_requests"] += 1
        root = front_tracer.start_span(
            f"{method} {route}", kind=SpanKind.SERVER, attributes=attrs, start_time=start
        )
        if route == "/checkout":
            with trace.use_span(root, end_on_exit=False):
                child = checkout_tracer.start_span(
                    "checkout.place_order", kind=SpanKind.INTERNAL, start_time=start + 2_000_000
                )
                with trace.use_span(child, end_on_exit=False):
                    enabled = flags.get_boolean_value(FLAG, False, EvaluationContext(user))
                child.end(end_time=start + int(latency * 0.8e6))
            counts[
                "checkout_test" if is_test else "checkout_on" if enabled else "checkout_off"
            ] += 1
            if enabled:
                latency *= 1 + config.regression_latency
                error_rate += config.regression_errors
        failed = rng.random() < error_rate
        root.set_attribute("http.response.status_code", 500 if failed else 200)
        if failed:
            root.set_status(Status(StatusCode.ERROR, "upstream failure"))
        root.end(end_time=start + int(latency * 1e6))
        counts["requests"] += 1
    for provider in (frontend, checkout):
        provider.force_flush(60_000)
        provider.shutdown()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http", default="http://127.0.0.1:4318", help="OTLP/HTTP base URL")
    parser.add_argument("--grpc", default="127.0.0.1:4317", help="OTLP/gRPC host:port")
    parser.add_argument("--requests", type=int, default=ShopConfig.requests)
    parser.add_argument("--seed", type=int, default=ShopConfig.seed)
    args = parser.parse_args()
    counts = run(args.http, args.grpc, ShopConfig(requests=args.requests, seed=args.seed))
    print(counts)


if __name__ == "__main__":
    main()
