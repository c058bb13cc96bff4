"""CORS for browser OpenTelemetry SDKs (OTLP-RECEIVER item 51): off unless origins are
configured (`cors_allowed_origins`).

A browser sends a preflight `OPTIONS` before a cross-origin POST with an OTLP content
type; it is answered here, before authentication (a preflight never carries the token).
An allowed origin gets `Access-Control-Allow-Origin` on the preflight and the POST; any
other origin gets no CORS header, so its browser does not send the data (Fetch standard,
"CORS protocol").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What an OTLP exporter in a page sends: its content type and encoding, a bearer token
ALLOWED_HEADERS = "Content-Type, Content-Encoding, Authorization"
MAX_AGE_S = 600


class Cors:
    def __init__(self, origins: tuple[str, ...]) -> None:
        self.origins = frozenset(origins)

    def allows(self, origin: str | None) -> bool:
        return origin is not None and ("*" in self.origins or origin in self.origins)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if not self.allows(origin):
                return web.Response(status=403, text=f"origin {origin!r} is not allowed\n")
            return web.Response(
                status=204,
                headers={
                    **self._headers(origin),
                    "Access-Control-Allow-Methods": "POST",
                    "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                    "Access-Control-Max-Age": str(MAX_AGE_S),
                },
            )
        response = await handler(request)
        if self.allows(origin):
            response.headers.update(self._headers(origin))
        return response

    @staticmethod
    def _headers(origin: str | None) -> dict[str, str]:
        return {"Access-Control-Allow-Origin": origin or "", "Vary": "Origin"}
