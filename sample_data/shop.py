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

The flag comes from an in-memory OpenFeature provider, or with `flagd_file` (`--flagd PATH`)
from OpenFeature flagd flag definitions read by the real flagd provider in its in-process
file mode. That provider watches the file, so a rollback written there (`flagscope guard
--flagd PATH`) reaches the running shop. `flagd_definitions()` is the shop's rollout in
that form: one `fractional` rule on the user (the targeting key), the form the guard reads
the split from. Its share is the in-memory provider's, not its users (flagd has its own
hash), and the testers are not singled out: they get the split like everyone else.

Time is simulated: spans get explicit start and end times over the last `hours` hours, so
an hour of traffic is sent in seconds; with `live` (`--live`) each request is stamped when
it is sent, as a running shop's are. `python sample_data/shop.py --help` for options.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.hook.opentelemetry import TracingHook
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import OpenFeatureError
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import FeatureProvider
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from openfeature.provider.no_op_provider import NoOpProvider
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

FLAG = "new-checkout"
DOMAIN = "sample-shop"  # the shop's own OpenFeature domain: its provider and nobody else's
# The flagd provider (0.6) looks at the file's mtime every `deadline_ms` in file mode.
FLAGD_POLL_MS = 100
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
    rollout: float = 0.2  # the in-memory provider's; a flagd file has its own
    regression_latency: float = 0.40  # +40 % on POST /checkout when the flag is on
    regression_errors: float = 0.03  # +3 percentage points of errors there
    seed: int = 7
    flagd_file: Path | None = None  # the flag from these flagd definitions (file mode)
    live: bool = False  # each request stamped when sent, not spread over the last `hours`


def bucket(user: str) -> float:
    """Stable position of a user in [0, 1): the rollout's hash."""
    return int(hashlib.sha256(f"{FLAG}:{user}".encode()).hexdigest()[:8], 16) / 2**32


def build_flag(rollout: float) -> InMemoryFlag[bool]:
    def evaluate(flag: InMemoryFlag[bool], ctx: EvaluationContext) -> FlagResolutionDetails[bool]:
        user = ctx.targeting_key or ""
        variant = "on" if user.startswith("qa-") or bucket(user) < rollout else "off"
        return FlagResolutionDetails(
            value=flag.variants[variant], variant=variant, reason=Reason.TARGETING_MATCH
        )

    return InMemoryFlag("off", {"on": True, "off": False}, context_evaluator=evaluate)


def flagd_definitions(rollout: float = ShopConfig.rollout) -> dict[str, Any]:
    """The shop's rollout as OpenFeature flagd flag definitions
    (https://flagd.dev/reference/flag-definitions/): `rollout` of users on, by a
    `fractional` rule whose short form buckets the flag's key with the targeting key — the
    user — as `bucket()` does."""
    on = round(rollout * 100)
    return {
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": {
            FLAG: {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"fractional": [["on", on], ["off", 100 - on]]},
            }
        },
    }


def flagd_provider(path: Path) -> FeatureProvider:
    """The real flagd provider reading `path` in-process (file mode), watching it."""
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import ResolverType

    if not path.is_file():
        raise FileNotFoundError(f"flagd definitions {path} not found: pass the file to read")
    return FlagdProvider(
        resolver_type=ResolverType.FILE,
        offline_flag_source_path=str(path),
        deadline_ms=FLAGD_POLL_MS,
    )


def _provider(service: str, exporter: SpanExporter) -> TracerProvider:
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


def _flag_client(config: ShopConfig) -> OpenFeatureClient:
    # A provider and hook of the shop's own (an OpenFeature domain), so that running the
    # shop twice in one process, as the tests do, adds nothing twice.
    if config.flagd_file is None:
        api.set_provider(InMemoryProvider({FLAG: build_flag(config.rollout)}), domain=DOMAIN)
    else:  # read the file before the first request, and fail here if it cannot be read
        api.set_provider_and_wait(flagd_provider(config.flagd_file), domain=DOMAIN)
    flags = api.get_client(DOMAIN)
    flags.add_hooks([TracingHook()])
    return flags


class Shop:
    """The shop running: its two services' exporters and its flag client. `send(n)` serves
    n more requests, `flush()` waits until they are exported, `close()` (or the end of a
    `with` block) flushes and stops. Counts of what was sent are in `counts`."""

    def __init__(
        self, http_endpoint: str, grpc_endpoint: str, config: ShopConfig = ShopConfig()
    ) -> None:
        self.config = config
        self.flags = _flag_client(config)  # first: a flagd file that cannot be read stops here
        self.rng = random.Random(config.seed)
        self.frontend = _provider(
            "shop-frontend", HttpSpanExporter(endpoint=f"{http_endpoint}/v1/traces")
        )
        self.checkout = _provider(
            "checkout-service", GrpcSpanExporter(endpoint=grpc_endpoint, insecure=True)
        )
        self.front_tracer = self.frontend.get_tracer("shop.frontend")
        self.checkout_tracer = self.checkout.get_tracer("shop.checkout")
        self.users = [f"user-{i:04d}" for i in range(config.users)] + [
            f"qa-{i:02d}" for i in range(config.qa_users)
        ]
        self.weights = [1.0] * config.users + [3.0] * config.qa_users  # testers are busy
        self.now = time.time_ns()  # simulated time ends here
        self.counts = {
            "requests": 0,
            "checkout_on": 0,
            "checkout_off": 0,
            "checkout_test": 0,
            "test_requests": 0,
        }

    @property
    def spans(self) -> int:
        """Spans sent: one per request, and the checkout service's one per checkout."""
        c = self.counts
        return c["requests"] + c["checkout_on"] + c["checkout_off"] + c["checkout_test"]

    def send(self, requests: int, per_second: float | None = None) -> None:
        """Serve `requests` more requests: at once, or paced at `per_second`."""
        began = time.monotonic()
        for index in range(requests):
            if per_second:
                time.sleep(max(0.0, began + index / per_second - time.monotonic()))
            self._request()

    def _request(self) -> None:
        config, rng, counts = self.config, self.rng, self.counts
        user = rng.choices(self.users, self.weights)[0]
        method, route, _share, median, error_rate = rng.choices(ROUTES, [r[2] for r in ROUTES])[0]
        if config.live:
            start = time.time_ns()
        else:
            span_ns = int(config.hours * 3600e9)
            start = self.now - span_ns + rng.randrange(span_ns)
        latency = median * rng.lognormvariate(0, 0.35)
        is_test = user.startswith("qa-")
        attrs: dict[str, str | bool] = {
            "http.request.method": method,
            "http.route": route,
            "enduser.id": user,
            "url.path": route.replace("{id}", str(rng.randint(1, 500))),
        }
        if is_test:
            attrs["test_user"] = True
            counts["test_requests"] += 1
        root = self.front_tracer.start_span(
            f"{method} {route}", kind=SpanKind.SERVER, attributes=attrs, start_time=start
        )
        if route == "/checkout":
            with trace.use_span(root, end_on_exit=False):
                child = self.checkout_tracer.start_span(
                    "checkout.place_order", kind=SpanKind.INTERNAL, start_time=start + 2_000_000
                )
                with trace.use_span(child, end_on_exit=False):
                    enabled = self.flags.get_boolean_value(FLAG, False, EvaluationContext(user))
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

    def flush(self, timeout_ms: int = 60_000) -> bool:
        """Export every span ended so far; False if an exporter did not finish in time."""
        flushed = [p.force_flush(timeout_ms) for p in (self.frontend, self.checkout)]  # both
        return all(flushed)

    def close(self) -> None:
        self.flush()
        for provider in (self.frontend, self.checkout):
            provider.shutdown()
        if self.config.flagd_file is not None:  # the provider's file watcher stops with it
            api.set_provider(NoOpProvider(), domain=DOMAIN)

    def __enter__(self) -> Shop:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace_back: TracebackType | None,
    ) -> None:
        self.close()


def run(
    http_endpoint: str, grpc_endpoint: str, config: ShopConfig = ShopConfig()
) -> dict[str, int]:
    """Send the shop's traffic; returns counts of what was sent (requests, by cohort)."""
    with Shop(http_endpoint, grpc_endpoint, config) as shop:
        shop.send(config.requests)
    return shop.counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http", default="http://127.0.0.1:4318", help="OTLP/HTTP base URL")
    parser.add_argument("--grpc", default="127.0.0.1:4317", help="OTLP/gRPC host:port")
    parser.add_argument("--requests", type=int, default=ShopConfig.requests)
    parser.add_argument("--seed", type=int, default=ShopConfig.seed)
    parser.add_argument(
        "--flagd",
        type=Path,
        metavar="PATH",
        help="take the flag from these flagd definitions (the flagd provider in file mode, "
        "watching the file) instead of the in-memory rollout",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="stamp each request when it is sent (default: spread over the last hour)",
    )
    args = parser.parse_args()
    config = ShopConfig(
        requests=args.requests, seed=args.seed, flagd_file=args.flagd, live=args.live
    )
    try:
        counts = run(args.http, args.grpc, config)
    except FileNotFoundError as exc:
        parser.exit(2, f"shop.py: {exc}\n")
    except OpenFeatureError as exc:  # the provider could not read the definitions
        parser.exit(2, f"shop.py: flagd definitions {args.flagd}: {exc.__cause__ or exc}\n")
    print(counts)


if __name__ == "__main__":
    main()
