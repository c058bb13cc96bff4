"""One exception root for flagscope, and the collector's errors under it.

`FlagscopeError` is what flagscope raises on purpose: the CLI prints its message (which
names the fix, CONVENTIONS.md) and exits 2. Under it: `ConfigError` and `LakeError` here,
`AnalysisError` in the analysis, and `ProtocolError`, whose subclasses carry the HTTP
status and the gRPC code (google.rpc.Code numbers) an OTLP client is answered with. The
front ends translate them at one place each (`http_server.error_response`,
`grpc_server._abort`), so the mapping of a failure to the protocol's terms lives here and
nowhere else (OTLP spec, "Failures" and "Throttling"). No protocol library is imported.
"""

from __future__ import annotations


class FlagscopeError(Exception):
    """Root of every error flagscope raises on purpose."""


class ConfigError(FlagscopeError):
    """A user mistake in flagscope.toml, the environment or the command line."""


class LakeError(FlagscopeError):
    """The Parquet lake could not be read or written."""


class LakeQueryError(LakeError):
    """DuckDB refused the SQL itself (a typo, an unknown column), not the lake's files."""


# -- answered to OTLP clients --------------------------------------------------------------
class ProtocolError(FlagscopeError):
    """A request that is answered with an error: `http_status`, `grpc_code`, and for a
    transient failure `retry_after_s`. Raised as is, it is an internal error."""

    http_status = 500
    grpc_code = 13  # INTERNAL
    retry_after_s: int | None = None


class BadRequest(ProtocolError):
    """Malformed data: clients must not retry (HTTP 400 / INVALID_ARGUMENT)."""

    http_status = 400
    grpc_code = 3  # INVALID_ARGUMENT


class Unauthenticated(ProtocolError):
    http_status = 401
    grpc_code = 16  # UNAUTHENTICATED


class NotFound(ProtocolError):
    http_status = 404
    grpc_code = 12  # UNIMPLEMENTED


class RequestTimeout(ProtocolError):
    """The request body did not arrive in time (HTTP 408)."""

    http_status = 408
    grpc_code = 4  # DEADLINE_EXCEEDED


class PayloadTooLarge(ProtocolError):
    """Over the size limit. Not transient, so no RetryInfo (OTLP spec: 413 / RESOURCE_EXHAUSTED)."""

    http_status = 413
    grpc_code = 8  # RESOURCE_EXHAUSTED


class UnsupportedMediaType(ProtocolError):
    http_status = 415
    grpc_code = 3  # INVALID_ARGUMENT


class Unavailable(ProtocolError):
    """Transient: back-pressure, storage full or failing. Clients retry after `retry_after_s`."""

    http_status = 503
    grpc_code = 14  # UNAVAILABLE

    def __init__(self, message: str, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
