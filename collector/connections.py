"""What an HTTP connection may cost before it sends a request (issue 10 point 11).

aiohttp keeps a connection that sends nothing, or trickles its request line and headers,
open for good; ~1,100 of them took a 1024-file limit and wedged the collector. The guard
wraps each connection's protocol (aiohttp's `RequestHandler`, created by the protocol
factory) and adds:

- a header timeout: from the connection's start, and from the first byte of each later
  request, its request line and headers must arrive within `header_timeout_s`, or the
  connection is closed (the body has `body_timeout_s`, and an idle kept-alive connection
  aiohttp's keep-alive timeout);
- a connection limit: beyond `max_connections` open at once, a new one is answered
  `503 Service Unavailable` with `Retry-After` before any of it is parsed; then its write
  side is shut and what it still sends is read and dropped (up to `DRAIN_BYTES`, for
  `DRAIN_S`) before it is closed — closing with its request unread would send a TCP reset,
  and a client still writing its body would see EPIPE instead of the 503 (18 of 30 with a
  2 MB body);
- one log line per cause per interval, with counts, instead of nothing (or a traceback
  per refused accept).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from flagscope.collector.oplog import RateLimitedLog

log = logging.getLogger("flagscope.collector")
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 50\r\n\r\n"
    b"collector has too many open connections; retry\r\n\r\n"
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DRAIN_BYTES = 8 * 1024 * 1024  # read and dropped from a refused connection at most…
DRAIN_S = 2.0  # …for at most this long


class _Connection:
    """One connection's state: whether a request is being handled, and its timer."""

    __slots__ = ("in_request", "timer", "transport")

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.in_request = False
        self.timer: asyncio.TimerHandle | None = None


class _Guarded(asyncio.Protocol):
    """Stands between the transport and aiohttp's protocol (which has __slots__, so its
    methods cannot be wrapped in place), and tells the guard what happens."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard, self.inner = guard, inner
        self.draining: _Drain | None = None  # a refused connection, read until it is closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.guard.admit(self.inner, transport):
            self.inner.connection_made(transport)
        else:
            self.draining = _Drain(transport)

    def data_received(self, data: bytes) -> None:
        if self.draining is not None:
            self.draining.drop(len(data))
            return
        self.guard.data(self.inner)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.draining is not None:
            return False  # close: the client has sent all it will
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.draining is not None:
            self.draining.stop()
        elif self.guard.release(self.inner):
            self.inner.connection_lost(exc)


class _Drain:
    """A refused connection after its 503: its bytes dropped, then it is closed."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.left = transport, DRAIN_BYTES
        self.timer = asyncio.get_running_loop().call_later(DRAIN_S, transport.close)

    def drop(self, size: int) -> None:
        self.left -= size
        if self.left <= 0:
            self.transport.close()

    def stop(self) -> None:
        self.timer.cancel()


class ConnectionGuard:
    def __init__(self, max_connections: int, header_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.open: dict[object, _Connection] = {}
        self.log = RateLimitedLog(log)

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server`: `make()`'s protocols, guarded."""
        return lambda: _Guarded(self, make())

    def admit(self, protocol: object, transport: asyncio.BaseTransport) -> bool:
        """Whether a new connection is served (else it was answered 503 and closed)."""
        if len(self.open) >= self.max_connections:
            self._refuse(transport)
            return False
        connection = self.open[protocol] = _Connection(transport)
        self._arm(connection)
        return True

    def data(self, protocol: object) -> None:
        connection = self.open.get(protocol)
        if connection is not None and not connection.in_request and connection.timer is None:
            self._arm(connection)  # the first byte of a request on a kept-alive connection

    def release(self, protocol: object) -> bool:
        """The connection is gone; False if it was never admitted."""
        connection = self.open.pop(protocol, None)
        if connection is None:
            return False
        if connection.timer is not None:
            connection.timer.cancel()
        return True

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.log.report(
            logging.WARNING,
            f"refused connections beyond max_connections = {self.max_connections}",
            "answered 503",
            client=peer[0] if peer else None,
        )
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(BUSY)
            if transport.can_write_eof():
                transport.write_eof()  # the answer, then FIN; what the client sends is drained
                return
        transport.close()

    def _arm(self, connection: _Connection) -> None:
        loop = asyncio.get_running_loop()
        connection.timer = loop.call_later(self.header_timeout_s, self._expire, connection)

    def _expire(self, connection: _Connection) -> None:
        connection.timer = None
        if connection.in_request:
            return
        peer = connection.transport.get_extra_info("peername")
        self.log.report(
            logging.INFO,
            f"closed connections without request headers within {self.header_timeout_s:g} s",
            "header timeout",
            client=peer[0] if peer else None,
        )
        connection.transport.close()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks a connection busy while its request is handled: the headers are in."""
        connection = self.open.get(request.protocol)
        if connection is None:
            return await handler(request)
        connection.in_request = True
        if connection.timer is not None:
            connection.timer.cancel()
            connection.timer = None
        try:
            return await handler(request)
        finally:
            connection.in_request = False


class GuardedSite(web.BaseSite):
    """aiohttp's TCPSite, with the guard wrapped around each connection's protocol."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        ssl_context: ssl.SSLContext | None = None,
    ):
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port, self._guard = host, port, guard

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        if server is None:
            raise RuntimeError("the runner is set up before its site starts")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._guard.factory(server),
            self._host,
            self._port,
            reuse_address=True,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self._guard.header_timeout_s if self._ssl_context else None,
        )
