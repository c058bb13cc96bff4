"""OTLP/HTTP: POST /v1/traces, /v1/logs and /v1/metrics, protobuf or JSON, optionally gzip/deflate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from flagscope.collector.auth import bearer_matches
from flagscope.collector.decode import check_encoding, media_type
from flagscope.collector.errors import (
    PayloadTooLarge,
    ProtocolError,
    RequestTimeout,
    Unauthenticated,
)
from flagscope.collector.oplog import RateLimitedLog
from flagscope.collector.otlp import JSON, PROTOBUF, SIGNALS, encode_message, status_message
from flagscope.collector.receiver import Receiver

log = logging.getLogger("flagscope.collector")


def error_response(error: ProtocolError, content_type: str | None) -> web.Response:
    """A `google.rpc.Status` body in the request's encoding; plain text if it has none."""
    status = error.http_status
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else {}
    message = str(error) or error.__class__.__name__
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind not in (JSON, PROTOBUF):
        return web.Response(status=status, text=message + "\n", headers=headers)
    body = encode_message(status_message(error.grpc_code, message), kind)
    return web.Response(status=status, body=body, content_type=kind, headers=headers)


# A request refused before its body was read (a wrong token, a content type) still has its
# body on the way: closing at once makes the kernel answer it with a reset, and a client
# that writes its whole body before reading (every Node.js exporter) sees ECONNRESET or
# EPIPE instead of the 401. So up to this much of it is read and dropped (not inflated),
# for at most DISCARD_S, before the connection is closed.
DISCARD_BYTES = 1024 * 1024
DISCARD_S = 2.0


async def _answer_and_close(request: web.Request, response: web.Response, discard: int = 0) -> None:
    """Send `response`, then close the connection after dropping at most `discard` bytes
    of the rest of the body.

    For a chunked body still arriving (over the limit, too slow, refused before reading):
    aiohttp would otherwise keep reading and discarding whatever the client sends for its
    lingering time (OTLP-RECEIVER item 27: stop reading after about the limit).
    """
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError, web.HTTPException):
        async with asyncio.timeout(DISCARD_S):
            while discard > 0 and (chunk := await request.content.readany()):
                discard -= len(chunk)
    request.protocol.force_close()


async def read_body(
    request: web.Request,
    limit: int,
    timeout_s: float,
    reserve: Callable[[int], None] | None = None,
) -> bytes:
    """Read at most `limit` bytes, chunked or not; stop reading as soon as it is exceeded.
    `reserve(n)` is told of each chunk before it is kept (a body of unknown length)."""
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
                if reserve is not None:
                    reserve(len(chunk))
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RequestTimeout(f"request body not received within {timeout_s:g} s") from exc
    return b"".join(chunks)


class HttpFrontEnd:
    def __init__(self, receiver: Receiver, auth_token: str, body_timeout_s: float) -> None:
        self.receiver = receiver
        self.token = auth_token.encode() if auth_token else None
        self.body_timeout_s = body_timeout_s
        self.in_flight = 0  # requests being received or answered, for a graceful stop
        self.closing = False  # set on shutdown: answer, then close the connection
        self.log = RateLimitedLog(log)  # refusals and hang-ups, one line per cause per interval

    def app(
        self,
        middlewares: tuple[Any, ...] = (),
        readiness: Callable[[], list[str]] = lambda: [],
    ) -> web.Application:
        """The OTLP routes, and the probes: GET /healthz (live: the process answers) and
        GET /readyz (ready: `readiness()` found no problem, else 503 and the problems).
        The probes take no token: a kubelet or load balancer carries none."""
        app = web.Application(middlewares=middlewares)
        for name in SIGNALS:
            app.router.add_post(f"/v1/{name}", self._export)

        async def live(_: web.Request) -> web.Response:
            return web.json_response({"live": True})

        async def ready(_: web.Request) -> web.Response:
            problems = ["stopping"] if self.closing else readiness()
            return web.json_response(
                {"ready": not problems, "problems": problems}, status=503 if problems else 200
            )

        app.router.add_get("/healthz", live)
        app.router.add_get("/readyz", ready)
        return app

    def _check_auth(self, request: web.Request) -> None:
        if self.token is None:
            return
        if not bearer_matches(request.headers.get("Authorization"), self.token):
            raise Unauthenticated("missing or wrong bearer token (Authorization: Bearer <token>)")

    def _refused(self, request: web.Request, error: ProtocolError) -> None:
        # 503 is back-pressure the client retries; the rest are a client's mistake. Both
        # are the operator's to see, neither is the collector's error.
        self.receiver.counts[f"refused.{error.http_status}"] += 1
        level = logging.WARNING if error.http_status >= 500 else logging.INFO
        cause = f"refused {request.method} {request.path} with {error.http_status}"
        self.log.report(level, cause, str(error), client=request.remote)

    async def _export(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        try:
            response = await self._handle_export(request)
        finally:
            self.in_flight -= 1
        if self.closing:
            response.force_close()
        return response

    async def _handle_export(self, request: web.Request) -> web.Response:
        signal = SIGNALS[request.path.rsplit("/", 1)[1]]
        header = request.headers.get("Content-Type")
        reading = False  # whether the body has started to be read
        try:
            self._check_auth(request)  # before the body is read or decompressed
            content_type = media_type(header)
            encoding = check_encoding(request.headers.get("Content-Encoding"))
            limit = self.receiver.max_request_bytes
            length = request.content_length
            if length is not None and length > limit:
                raise PayloadTooLarge(
                    f"request body of {length} bytes is over the limit of {limit}"
                )
            hold = self.receiver.budget.hold()  # the bytes this request holds, as it goes
            try:
                if length is not None:
                    hold.take(length)
                reading = True
                body = await read_body(
                    request, limit, self.body_timeout_s, None if length is not None else hold.take
                )
                response = await self.receiver.export(signal, body, content_type, encoding, hold)
            finally:
                hold.release()
            return web.Response(
                body=encode_message(response, content_type), content_type=content_type
            )
        except ProtocolError as error:
            self._refused(request, error)
            response = error_response(error, header)
            if request.content_length is None and not request.content.is_eof():
                discard = 0 if reading else DISCARD_BYTES  # refused before the body was read
                await _answer_and_close(request, response, discard)
            return response
        except ConnectionResetError as exc:  # the client hung up before its body arrived
            self.log.report(
                logging.INFO,
                f"client hung up during {request.path}",
                str(exc),
                client=request.remote,
            )
            return error_response(ProtocolError("connection lost"), header)
        except Exception as exc:  # noqa: BLE001 - logged with its traceback; the process keeps serving
            self.receiver.counts["refused.500"] += 1
            self.log.report(
                logging.ERROR,
                f"unexpected error handling {request.path}",
                repr(exc),
                client=request.remote,
                exc_info=exc,
            )
            return error_response(ProtocolError("internal error"), header)
