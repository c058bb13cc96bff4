"""The bearer-token check both front ends share (HTTP `Authorization`, gRPC metadata)."""

from __future__ import annotations

import hmac


def bearer_matches(header: str | bytes | None, token: bytes) -> bool:
    """`header` is `Bearer <token>`. The scheme is case-insensitive (RFC 7235 section 2.1);
    the token is compared in constant time."""
    text = header.decode("latin-1") if isinstance(header, bytes) else str(header or "")
    scheme, _, credentials = text.strip().partition(" ")
    same = hmac.compare_digest(credentials.strip().encode("latin-1", "replace"), token)
    return same and scheme.lower() == "bearer"
