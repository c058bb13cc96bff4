"""Wide events built directly in the collector's schema, for precise cohort tests."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from flagscope.collector.lake.schema import INPUT_SCHEMA, complete
from flagscope.collector.lake.write import write_table

_ids = itertools.count(1)
NOW = datetime.now(UTC).replace(tzinfo=None)


def _ns(moment: datetime) -> int:
    return int(moment.replace(tzinfo=UTC).timestamp() * 1e9)


def span(
    trace: str,
    *,
    kind: int = 2,
    parent: str | None = None,
    service: str = "frontend",
    route: str = "/checkout",
    method: str = "GET",
    ms: float = 100.0,
    error: bool = False,
    user: str | None = None,
    flags: dict[str, str] | None = None,
    test: str | None = None,
    at: datetime | None = None,
    span_id: str | None = None,
) -> dict[str, Any]:
    start = _ns(at or NOW - timedelta(minutes=30))
    return {
        "time": start,
        "end_time": start + int(ms * 1e6),
        "signal": "span",
        "event_id": trace + (span_id or f"{next(_ids):016x}"),
        "trace_id": trace,
        "span_id": span_id or f"{next(_ids):016x}",
        "parent_span_id": parent,
        "service_name": service,
        "name": f"{method} {route}",
        "kind": kind,
        "duration_ms": ms,
        "status_code": 2 if error else 0,
        "is_error": error,
        "http_method": method,
        "http_route": route,
        "user_id": user,
        "flags": list((flags or {}).items()),
        "is_test": test is not None,
        "test_reason": test,
        "attributes": "{}",
        "resource_attributes": "{}",
    }


def request(
    user: str | None,
    variant: str | None,
    *,
    flag: str = "f",
    ms: float = 100.0,
    error: bool = False,
    route: str = "/checkout",
    method: str = "GET",
    test_root: str | None = None,
    test_child: str | None = None,
    at: datetime | None = None,
) -> list[dict[str, Any]]:
    """A trace: a root SERVER span (latency measured here) and, when `variant` is given, a
    child span in another service that evaluated the flag for `user`."""
    trace = f"{next(_ids):032x}"
    root_id = f"{next(_ids):016x}"
    rows = [
        span(
            trace,
            span_id=root_id,
            route=route,
            method=method,
            ms=ms,
            error=error,
            user=user,
            test=test_root,
            at=at,
        )
    ]
    if variant is not None:
        rows.append(
            span(
                trace,
                kind=1,
                parent=root_id,
                service="checkout",
                ms=ms / 2,
                user=user,
                flags={flag: variant},
                test=test_child,
                at=at,
            )
        )
    return rows


def write(lake_dir: Path, rows: list[dict[str, Any]], name: str = "syn-000000000001-000") -> Path:
    """The rows as one lake file; the join keys are derived from the hex ids as the
    collector derives them from the raw ones."""
    fields = list(INPUT_SCHEMA)
    table = pa.Table.from_pydict(
        {f.name: [r.get(f.name) for r in rows] for f in fields}, schema=pa.schema(fields)
    )
    write_table(lake_dir, complete(table), name)
    return lake_dir


def population(
    rng: random.Random,
    users: int,
    *,
    flag: str = "f",
    share_on: float = 0.5,
    ms_on: float = 100.0,
    ms_off: float = 100.0,
    err_on: float = 0.02,
    err_off: float = 0.02,
    route: str = "/checkout",
    routes: dict[str, tuple[float, float]] | None = None,
) -> list[dict[str, Any]]:
    """Users with 1–8 requests each and a user-level latency effect (clustering).
    `routes`: route → (share for 'on' users, share for 'off' users) to shift the mix."""
    rows = []
    for i in range(users):
        variant = "on" if rng.random() < share_on else "off"
        user_factor = rng.lognormvariate(0, 0.2)
        for _ in range(rng.randint(1, 8)):
            chosen = route
            if routes:
                names = list(routes)
                chosen = rng.choices(
                    names, [routes[n][0 if variant == "on" else 1] for n in names]
                )[0]
            base = ms_on if variant == "on" else ms_off
            if routes:
                base = {"/slow": 400.0, "/fast": 40.0}.get(chosen, base)
            ms = base * user_factor * rng.lognormvariate(0, 0.3)
            error = rng.random() < (err_on if variant == "on" else err_off)
            rows += request(f"user-{i}", variant, flag=flag, ms=ms, error=error, route=chosen)
    return rows
