"""One exception root for the collector; each error knows its HTTP status and gRPC code.

Handlers raise these; the HTTP and gRPC front ends translate them at one place each
(`http_server._error_response`, `grpc_server._abort`), so the mapping of a failure to the
protocol's terms lives here and nowhere else (OTLP spec, "Failures" and "Throttling").
"""

from __future__ import annotations

import grpc


class CollectorError(Exception):
    """Root of every error the collector raises on purpose."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    retry_after_s: int | None = None


class BadRequest(CollectorError):
    """Malformed data: clients must not retry (HTTP 400 / INVALID_ARGUMENT)."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(CollectorError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class NotFound(CollectorError):
    http_status = 404
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class RequestTimeout(CollectorError):
    """The request body did not arrive in time (HTTP 408)."""

    http_status = 408
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class PayloadTooLarge(CollectorError):
    """Over the size limit. Not transient, so no RetryInfo (OTLP spec: 413 / RESOURCE_EXHAUSTED)."""

    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnsupportedMediaType(CollectorError):
    http_status = 415
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class Unavailable(CollectorError):
    """Transient: back-pressure, storage full or failing. Clients retry after `retry_after_s`."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConfigError(CollectorError):
    """A user mistake in flagscope.toml, the environment or the command line."""


class LakeError(CollectorError):
    """The Parquet lake could not be read or written."""
