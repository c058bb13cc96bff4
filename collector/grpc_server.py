"""OTLP/gRPC: the Trace and Logs services' Export, on raw bytes.

Handlers take the undecoded request so that a malformed message gets INVALID_ARGUMENT with
the parser's reason (grpcio would answer INTERNAL "Exception deserializing request!"), and
share the HTTP path's decoding and durability. The size limit is grpcio's own
`max_receive_message_length` (RESOURCE_EXHAUSTED). The Metrics service is not registered,
so grpcio answers UNIMPLEMENTED.

Memory (issue 10 point 9): grpcio reads a unary call's whole message before its handler
runs, so 16 concurrent 54 MiB calls held 16 messages, and their decoding, at once (5.7 GiB).
Export is therefore served as a request-streaming method (the wire is the same) whose
handler reads the message only once the call is admitted (`_Admission`); a call not yet
read holds no more than its HTTP/2 flow-control window.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import traceback
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from grpc import aio

from flagscope.collector.auth import bearer_matches
from flagscope.collector.errors import BadRequest, ProtocolError, RequestTimeout, Unauthenticated
from flagscope.collector.oplog import RateLimitedLog
from flagscope.collector.otlp import PROTOBUF, SIGNALS, Signal, status_message
from flagscope.collector.receiver import PROTOBUF_DECODE_FACTOR, Budget, Hold, Receiver

log = logging.getLogger("flagscope.collector")
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}  # google.rpc.Code → grpcio's
_refusals = RateLimitedLog(log)  # one line per cause per interval, for every gRPC front end


async def _abort(context: aio.ServicerContext, error: ProtocolError) -> None:
    message = str(error) or error.__class__.__name__
    code = _STATUS_CODES[error.grpc_code]
    level = logging.WARNING if error.http_status >= 500 else logging.INFO
    _refusals.report(level, f"refused gRPC call with {code.name}", message, client=context.peer())
    status = status_message(error.grpc_code, message, error.retry_after_s)
    await context.abort(
        _STATUS_CODES[error.grpc_code],
        message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )


# grpcio ships no type information, so its classes are Any to mypy.
class _AuthInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses a call without the bearer token before its message is received.

    grpcio inflates a request before the handler runs; answering from a request-streaming
    handler that never reads it keeps an unauthenticated gzip bomb from costing any memory
    (OTLP-RECEIVER item 48).
    """

    def __init__(self, token: bytes, counts: Counter[str]) -> None:
        self.token = token
        self.counts = counts  # the receiver's: a refused call shows in the activity line

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if bearer_matches(given, self.token):
            return await continuation(details)
        return grpc.stream_unary_rpc_method_handler(self._refuse)

    async def _refuse(self, _requests: object, context: aio.ServicerContext) -> bytes:
        error = Unauthenticated("missing or wrong bearer token (authorization: Bearer <token>)")
        self.counts[f"refused.{error.http_status}"] += 1  # as HTTP would answer
        await _abort(context, error)
        return b""


# HTTP/2 flow control bounds what a call not yet read costs: chttp2 lets a stream's window
# (and the connection's) grow past this only while the handler is reading its message,
# unless its bandwidth-delay probe grows the windows for every stream by itself.
WINDOW_BYTES = 64 * 1024
FLOW_CONTROL = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", WINDOW_BYTES)]
MAX_PEERS = 4096  # peers whose last message size is remembered


class _Turns:
    """One holder at a time, the waiting served smallest priority first: a small call's
    read is not queued behind the large ones that arrived before it."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def turn(self, priority: int) -> AsyncIterator[None]:
        if self._busy:
            future = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (priority, next(self._order), future))
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():  # handed the turn, then cancelled
                    self._pass_on()
                raise
        self._busy = True
        try:
            yield
        finally:
            self._pass_on()

    def _pass_on(self) -> None:
        while self._waiting:
            future = heapq.heappop(self._waiting)[2]
            if not future.done():  # a waiter cancelled meanwhile has given up its place
                future.set_result(None)
                return
        self._busy = False


class _Admission:
    """When a call may read its message, so that at most one message is held beyond what
    the in-flight budget counts.

    A gRPC call does not say how large its message is before it is read. So a call first
    takes from the budget what its peer's previous message cost (a client keeps its
    connection, and its batches are alike): when that does not fit, it is refused at once
    with UNAVAILABLE and RetryInfo, having cost only its window, as HTTP refuses a
    Content-Length that does not fit. Then calls read one at a time, so a message larger
    than its call took (a new peer's first, or one larger than the last) is the only thing
    over the budget, until its real cost is taken or, not fitting, it is refused. Smaller
    expected messages read first, a new peer's last.
    """

    def __init__(self, budget: Budget, max_request_bytes: int, read_timeout_s: float) -> None:
        self.budget = budget
        self.max_request_bytes = max_request_bytes
        self.read_timeout_s = read_timeout_s
        self.reading = _Turns()
        self.last_size: OrderedDict[str, int] = OrderedDict()

    def cost(self, size: int) -> int:
        """What a message of `size` bytes holds once decoded (Receiver._prepare)."""
        return min(size * (1 + PROTOBUF_DECODE_FACTOR), self.budget.one_request)

    async def read(self, context: aio.ServicerContext, hold: Hold) -> bytes:
        """The call's message, read once the call is admitted; `hold` then holds its bytes
        (decoding takes the rest). Raises Unavailable when there is no room."""
        peer = context.peer()
        expected = self.last_size.get(peer)
        hold.take(self.cost(expected or 0))
        async with self.reading.turn(self.max_request_bytes if expected is None else expected):
            try:
                async with asyncio.timeout(self.read_timeout_s):
                    request = await context.read()
            except TimeoutError:
                raise RequestTimeout(
                    f"request message not received within {self.read_timeout_s:g} s"
                ) from None
        if request is aio.EOF:
            raise BadRequest("the call carried no request message")
        self.last_size[peer] = len(request)
        self.last_size.move_to_end(peer)
        if len(self.last_size) > MAX_PEERS:
            self.last_size.popitem(last=False)
        hold.release()  # what it took ahead, for what the message holds
        hold.take(len(request))
        body: bytes = request
        return body


class GrpcFrontEnd:
    def __init__(
        self,
        receiver: Receiver,
        auth_token: str,
        idle_timeout_s: float,
        max_connections: int,
        read_timeout_s: float = 30.0,
    ) -> None:
        self.receiver = receiver
        self.admission = _Admission(receiver.budget, receiver.max_request_bytes, read_timeout_s)
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        # checked by _AuthInterceptor, before the message is even received
        self.token = auth_token.encode() if auth_token else None

    def server(self) -> aio.Server:
        options = [
            ("grpc.max_receive_message_length", self.receiver.max_request_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
            # an idle connection is closed (GOAWAY) as HTTP's are; at most this many open
            ("grpc.max_connection_idle_ms", int(self.idle_timeout_s * 1000)),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            *FLOW_CONTROL,
        ]
        interceptors = [_AuthInterceptor(self.token, self.receiver.counts)] if self.token else []
        server = aio.server(options=options, interceptors=interceptors)
        for signal in SIGNALS.values():
            handler = grpc.stream_unary_rpc_method_handler(self._handler(signal))
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(signal.grpc_service, {"Export": handler}),)
            )
        return server

    def _handler(self, signal: Signal) -> Callable[[object, aio.ServicerContext], Awaitable[bytes]]:
        async def export(_requests: object, context: aio.ServicerContext) -> bytes:
            try:
                return await self._store(signal, context)
            except ProtocolError as error:
                refusal = error
            except Exception as error:
                log.exception("unexpected error in gRPC %s Export", signal.name)
                forget_locals(error)
                refusal = ProtocolError("internal error")
            forget_locals(refusal)
            self.receiver.counts[f"refused.{refusal.http_status}"] += 1  # as HTTP would answer
            await _abort(context, refusal)
            return b""

        return export

    async def _store(self, signal: Signal, context: aio.ServicerContext) -> bytes:
        hold = self.receiver.budget.hold()
        try:
            request = await self.admission.read(context, hold)
            response = await self.receiver.export(signal, request, PROTOBUF, hold=hold)
        finally:
            hold.release()
        encoded: bytes = response.SerializeToString()  # protobuf's Message is untyped
        return encoded


def forget_locals(error: BaseException) -> None:
    """Clear the finished frames in `error`'s traceback, and its causes'. They hold the
    refused call's message (and what decoding made of it) for as long as the error lives,
    which grpcio's abort prolongs until a garbage collection: 16 clients retrying refused
    6 MiB exports kept 12 messages alive at once, outside the budget."""
    seen: set[int] = set()
    pending: BaseException | None = error
    while pending is not None and id(pending) not in seen:
        seen.add(id(pending))
        traceback.clear_frames(pending.__traceback__)
        pending.__traceback__ = None
        pending = pending.__cause__ or pending.__context__
