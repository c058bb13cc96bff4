"""OTLP/gRPC: the Trace and Logs services' Export, on raw bytes.

Handlers take the undecoded request so that a malformed message gets INVALID_ARGUMENT with
the parser's reason (grpcio would answer INTERNAL "Exception deserializing request!"), and
share the HTTP path's decoding and durability. The size limit is grpcio's own
`max_receive_message_length` (RESOURCE_EXHAUSTED). The Metrics service is not registered,
so grpcio answers UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable

import grpc
from grpc import aio

from flagscope.collector.auth import bearer_matches
from flagscope.collector.errors import ProtocolError, Unauthenticated
from flagscope.collector.oplog import RateLimitedLog
from flagscope.collector.otlp import PROTOBUF, SIGNALS, Signal, status_message
from flagscope.collector.receiver import Receiver

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


class GrpcFrontEnd:
    def __init__(
        self, receiver: Receiver, auth_token: str, idle_timeout_s: float, max_connections: int
    ) -> None:
        self.receiver = receiver
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
        ]
        interceptors = [_AuthInterceptor(self.token, self.receiver.counts)] if self.token else []
        server = aio.server(options=options, interceptors=interceptors)
        for signal in SIGNALS.values():
            handler = grpc.unary_unary_rpc_method_handler(self._handler(signal))
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(signal.grpc_service, {"Export": handler}),)
            )
        return server

    def _handler(self, signal: Signal) -> Callable[[bytes, aio.ServicerContext], Awaitable[bytes]]:
        async def export(request: bytes, context: aio.ServicerContext) -> bytes:
            try:
                hold = self.receiver.budget.hold()
                try:
                    hold.take(len(request))
                    response = await self.receiver.export(signal, request, PROTOBUF, hold=hold)
                finally:
                    hold.release()
            except ProtocolError as error:
                self.receiver.counts[f"refused.{error.http_status}"] += 1  # as HTTP would answer
                await _abort(context, error)
            except Exception:
                log.exception("unexpected error in gRPC %s Export", signal.name)
                self.receiver.counts["refused.500"] += 1
                await _abort(context, ProtocolError("internal error"))
            encoded: bytes = response.SerializeToString()  # protobuf's Message is untyped
            return encoded

        return export
