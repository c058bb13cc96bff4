"""TLS for both front ends (OTLP-RECEIVER item 49), from PEM files in the settings.

TLS 1.2 is the oldest version offered (RFC 8996 deprecates 1.0 and 1.1); with a client CA,
a client must present a certificate that CA signed (mutual TLS), or the handshake fails.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from flagscope.collector.config import Settings
from flagscope.collector.errors import ConfigError


def http_context(settings: Settings) -> ssl.SSLContext | None:
    """The server context for OTLP/HTTP, or None when TLS is not configured."""
    if not settings.tls_cert_file:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        if settings.tls_client_ca_file:
            context.load_verify_locations(settings.tls_client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot use the TLS files: {exc}") from exc
    return context


def grpc_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The server credentials for OTLP/gRPC (grpc core offers TLS 1.2+), or None."""
    if not settings.tls_cert_file:
        return None
    try:
        key = Path(settings.tls_key_file).read_bytes()
        chain = Path(settings.tls_cert_file).read_bytes()
        ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS files: {exc}") from exc
    return grpc.ssl_server_credentials([(key, chain)], ca, require_client_auth=ca is not None)
