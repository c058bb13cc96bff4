"""A realistic OTLP trace export request: spans with a dozen attributes and a flag event.

Some attributes repeat from span to span (method, route, host, versions) and some hardly
ever do (user id, URL path, client address), as in real traffic.
"""

from __future__ import annotations

import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

ROUTES = ["/checkout", "/cart", "/product/{id}", "/search", "/login", "/home"]


def _kv(key: str, value: object) -> KeyValue:
    kv = KeyValue(key=key)
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, float):
        kv.value.double_value = value
    else:
        kv.value.string_value = str(value)
    return kv


def trace_request(
    spans: int = 512, seed: int = 1, start_ns: int = 1_764_000_000_000_000_000
) -> bytes:
    """Serialized ExportTraceServiceRequest with `spans` server spans of one service."""
    rng = random.Random(seed)
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    for key, value in (
        ("service.name", "shop-frontend"),
        ("service.version", "1.4.2"),
        ("deployment.environment", "production"),
        ("host.name", "web-7"),
    ):
        rs.resource.attributes.append(_kv(key, value))
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.flask"
    ss.scope.version = "0.50b0"
    for i in range(spans):
        span = ss.spans.add()
        span.trace_id = rng.randbytes(16)
        span.span_id = rng.randbytes(8)
        span.name = "GET " + ROUTES[i % len(ROUTES)]
        span.kind = 2
        t0 = start_ns + i * 1_000_000
        span.start_time_unix_nano = t0
        span.end_time_unix_nano = t0 + rng.randint(2_000_000, 90_000_000)
        user = f"user-{rng.randint(1, 50_000)}"
        status = 500 if rng.random() < 0.01 else 200
        for key, value in (
            ("http.request.method", "GET"),
            ("http.route", ROUTES[i % len(ROUTES)]),
            ("http.response.status_code", status),
            ("url.scheme", "https"),
            ("url.path", f"/product/{rng.randint(1, 20_000)}"),
            ("server.address", "shop.example"),
            ("server.port", 443),
            ("client.address", f"198.51.{rng.randint(0, 255)}.{rng.randint(1, 254)}"),
            ("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64)"),
            ("network.protocol.version", "1.1"),
            ("enduser.id", user),
            ("app.cart.items", rng.randint(0, 9)),
        ):
            span.attributes.append(_kv(key, value))
        event = span.events.add()
        event.name = "feature_flag.evaluation"
        event.time_unix_nano = t0 + 1000
        variant = "on" if rng.random() < 0.2 else "off"
        for key, value in (
            ("feature_flag.key", "new-checkout"),
            ("feature_flag.result.variant", variant),
            ("feature_flag.provider.name", "in-memory"),
            ("feature_flag.context.id", user),
        ):
            event.attributes.append(_kv(key, value))
        if status == 500:
            span.status.code = 2
    return request.SerializeToString()
