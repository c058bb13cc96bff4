"""Example requests behind a comparison: the model (a request, a route's lists of them)
and the trace link template. Plain data, no lake: the renderers and the UI read it;
`flagscope.analysis.example_query` fills it from the lake."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.window import iso_z

KINDS = {"failed": "most recent failed requests", "slowest": "slowest requests"}


@dataclass(frozen=True)
class Example:
    kind: str  # "failed" or "slowest"
    trace_id: str
    time: datetime
    duration_ms: float
    is_error: bool
    http_status_code: int | None
    status_code: int | None
    status_message: str | None
    user_id: str | None
    service_name: str
    route: str
    variant: str
    is_test: bool

    def status(self) -> str:
        """'500 ERROR', '200', 'ERROR' or 'ok'."""
        code = str(self.http_status_code) if self.http_status_code is not None else ""
        return " ".join(x for x in (code, "ERROR" if self.is_error else "") if x) or "ok"


@dataclass(frozen=True)
class Examples:
    rows: tuple[Example, ...]
    # variant -> (requests, errors, test requests) of the route in the window
    counts: dict[str, tuple[int, int, int]]

    def of(self, variant: str, kind: str) -> list[Example]:
        return [e for e in self.rows if e.variant == variant and e.kind == kind]


@dataclass(frozen=True)
class RouteExamples:
    """A report's example requests of one regressed route (`route` None: every route)."""

    service: str | None
    route: str | None
    treatment: str  # the variants
    baseline: str
    examples: Examples
    trace_link: str | None = None  # a template with {trace_id}

    @property
    def scope(self) -> str:
        return " · ".join(x for x in (self.route, self.service) if x) or "every route"

    def link(self, trace_id: str) -> str | None:
        return trace_url(self.trace_link, trace_id)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report's `examples` entry (README "The JSON report")."""

        def one(e: Example) -> dict[str, Any]:
            return {
                "trace_id": e.trace_id,
                "time": iso_z(e.time),
                "user": e.user_id,
                "test_user": e.is_test,
                "latency_ms": e.duration_ms,
                "error": e.is_error,
                "http_status_code": e.http_status_code,
                "service": e.service_name,
                "route": e.route,
                "link": self.link(e.trace_id),
            }

        cohorts = {"treatment": self.treatment, "baseline": self.baseline}
        return {
            "service": self.service,
            "route": self.route,
            **{
                cohort: {
                    "variant": variant,
                    **{kind: [one(e) for e in self.examples.of(variant, kind)] for kind in KINDS},
                }
                for cohort, variant in cohorts.items()
            },
        }


def trace_url(template: str | None, trace_id: str) -> str | None:
    """The same trace in Jaeger, Tempo or Honeycomb, from the link template."""
    return template.replace("{trace_id}", quote(trace_id, safe="")) if template else None


def check_trace_link(template: str | None, source: str = "--trace-link") -> str | None:
    """`template`, or an error naming what a link template must look like."""
    if not template:
        return None
    parts = urlsplit(template)
    if parts.scheme not in ("http", "https") or not parts.netloc or "{trace_id}" not in template:
        raise AnalysisError(
            f"{source} {template!r}: expected an http(s) URL with {{trace_id}} in it, e.g. "
            "'https://jaeger.example/trace/{trace_id}'"
        )
    return template
