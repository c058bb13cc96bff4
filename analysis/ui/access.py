"""Who may see the UI. On a loopback address: this machine's users, and only under a
loopback host name (a page elsewhere that rebinds its own name to 127.0.0.1 gets a 403,
not the lake). Anywhere else: whoever has the collector's bearer token — sent as
`Authorization: Bearer <token>` (a script, a proxy) or typed once into the sign-in form,
which sets a session cookie (HttpOnly, SameSite=Strict) derived from the token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "flagscope_ui"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def hostname(host_header: str) -> str:
    """The name of a Host header: `[::1]` of `[::1]:4320`, `localhost` of `localhost:80`."""
    text = host_header.strip().lower()
    if text.startswith("["):
        return text.split("]", 1)[0] + "]"
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


@dataclass(frozen=True)
class Access:
    """`token`: required (non-loopback), else None; `check(header, token)`: the collector's
    constant-time bearer check (flagscope.collector.auth, handed in by the CLI)."""

    token: bytes | None
    check: Callable[[str | None, bytes], bool]
    host: str  # what the server listens on

    @property
    def session(self) -> str:
        """The cookie's value: not the token itself, but bound to it."""
        assert self.token is not None
        return hmac.new(self.token, b"flagscope-ui-session", hashlib.sha256).hexdigest()

    def allowed_host(self, host_header: str | None) -> bool:
        """Without a token, only a loopback host name (DNS rebinding); with one, any."""
        if self.token is not None:
            return True
        name = hostname(host_header or "")
        return name in LOOPBACK_NAMES or is_loopback(name) or name == self.host.lower()

    def signed_in(self, authorization: str | None, cookie: str | None) -> bool:
        if self.token is None:
            return True
        if authorization and self.check(authorization, self.token):
            return True
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.session.encode())

    def token_matches(self, typed: str) -> bool:
        assert self.token is not None
        return self.check(f"Bearer {typed.strip()}", self.token)


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a path on this server, never another site."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path
