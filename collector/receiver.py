"""The ack path shared by HTTP and gRPC: admit, decode, validate, append to the WAL, answer."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable

from google.protobuf.message import Message

from flagscope.collector.decode import Prepared, decompress, prepare
from flagscope.collector.errors import Unavailable
from flagscope.collector.otlp import SIGNAL_CODES, Signal, response_message
from flagscope.collector.wal import WalFullError, WalWriter

log = logging.getLogger("flagscope.collector")
Reserve = Callable[[int], None] | None


class Budget:
    """Bytes of request bodies held in memory at once; over it, clients are told to retry.

    A request takes what it actually holds, as it comes: the declared length of a body
    (known before it is read), the chunks of a chunked body as they arrive, the inflated
    bytes of a gzip body as they are produced (in a decoding thread, hence the lock). A
    small chunked or gzip request therefore costs its size, not the worst case.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def acquire(self, size: int) -> None:
        with self._lock:
            if self.used + size > self.limit:
                raise Unavailable(
                    f"collector is busy ({self.used} request bytes in flight); retry later",
                    retry_after_s=1,
                )
            self.used += size

    def release(self, size: int) -> None:
        with self._lock:
            self.used -= size

    def hold(self) -> Hold:
        return Hold(self)


class Hold:
    """What one request holds against the budget; given back at once when it is answered."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.size = 0

    def take(self, size: int) -> None:
        self.budget.acquire(size)
        self.size += size

    def release(self) -> None:
        self.budget.release(self.size)
        self.size = 0


class Receiver:
    """The ack path both front ends share: a request is decoded, validated and in a
    fsynced WAL record before it is answered 200."""

    def __init__(self, wal: WalWriter, max_request_bytes: int, max_inflight_bytes: int) -> None:
        self.wal = wal
        self.max_request_bytes = max_request_bytes
        self.budget = Budget(max_inflight_bytes)
        self.counts: Counter[str] = Counter()

    def _decode(
        self, signal: Signal, body: bytes, content_type: str, encoding: str, reserve: Reserve
    ) -> Prepared:
        raw = decompress(body, encoding, self.max_request_bytes, reserve)
        return prepare(signal, raw, content_type)

    async def export(
        self,
        signal: Signal,
        body: bytes,
        content_type: str,
        encoding: str = "identity",
        reserve: Reserve = None,
    ) -> Message:
        """Store a request durably and return the Export*ServiceResponse to send.
        `reserve(n)` is called for each inflated chunk of a compressed body (`Hold.take`)."""
        args = (signal, body, content_type, encoding, reserve)
        if len(body) > 65536 or encoding != "identity":
            prepared = await asyncio.to_thread(self._decode, *args)
        else:
            prepared = self._decode(*args)
        if prepared.payload:
            future = self.wal.append(SIGNAL_CODES[signal.name], prepared.payload)
            try:
                await asyncio.wrap_future(future)
            except WalFullError as exc:
                raise Unavailable(f"{exc.strerror}; retry later", retry_after_s=5) from exc
            except OSError as exc:
                raise Unavailable(
                    f"storage unavailable ({exc.strerror or exc}); retry later", retry_after_s=5
                ) from exc
        self.counts[f"{signal.name}.accepted"] += prepared.accepted
        if prepared.rejected:
            self.counts[f"{signal.name}.rejected"] += prepared.rejected
            log.warning("partial success: %s", prepared.error_message)
        return response_message(signal, prepared.rejected, prepared.error_message)
