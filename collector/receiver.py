"""The ack path shared by HTTP and gRPC: admit, decode, validate, append to the WAL, answer."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter

from google.protobuf.message import Message

from flagscope.collector.caps import NO_CAPS, AttributeCaps
from flagscope.collector.decode import Prepared, decompress, prepare
from flagscope.collector.decode_pool import DecodePool
from flagscope.collector.errors import Unavailable
from flagscope.collector.otlp import JSON, SIGNAL_CODES, Signal, response_message
from flagscope.collector.wal import WalFullError, WalWriter

log = logging.getLogger("flagscope.collector")


SMALL_REQUESTS_SHARE = 8  # 1/8 of the budget is never taken by one request alone


class Budget:
    """Bytes of request bodies held in memory at once; over it, clients are told to retry.

    A request takes what it actually holds, as it comes: the declared length of a body
    (known before it is read), the chunks of a chunked body as they arrive, the inflated
    bytes of a gzip body as they are produced (in a decoding thread, hence the lock). A
    small chunked or gzip request therefore costs its size, not the worst case.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # what one request may take: the rest stays for small ones, so that a request
        # costing the whole budget (a 54 MiB protobuf decodes into ~250 MiB) does not
        # refuse every other client while it decodes
        self.one_request = limit - limit // SMALL_REQUESTS_SHARE
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

    def take_capped(self, size: int) -> None:
        """Take `size`, but never more than one request's share of the budget: a request
        that alone costs more (a large JSON body) runs beside small requests only."""
        self.take(max(0, min(size, self.budget.one_request - self.size)))

    def release(self) -> None:
        self.budget.release(self.size)
        self.size = 0


# What decoding a body of n bytes holds besides the body, as a multiple of n: the parsed
# JSON's Python objects are ~7 n and its wire bytes ~1 n (measured with tracemalloc on a
# 256-span request); a protobuf message parsed by upb, validated and written out again
# ~3.7 n (peak RSS of `prepare` on a 54 MiB, 90,000-span request: +198 MiB), rounded up.
JSON_DECODE_FACTOR = 8
PROTOBUF_DECODE_FACTOR = 4
# Bodies smaller than these are decoded in the front end itself: handing a JSON body to a
# worker process, or any body to a thread, costs more than decoding a few spans.
INLINE_JSON_BYTES = 16 * 1024
INLINE_PROTOBUF_BYTES = 64 * 1024


class Receiver:
    """The ack path both front ends share: a request is decoded, validated and in a
    fsynced WAL record before it is answered 200."""

    def __init__(
        self,
        wal: WalWriter,
        max_request_bytes: int,
        max_inflight_bytes: int,
        decoders: DecodePool | None = None,
        caps: AttributeCaps = NO_CAPS,
    ) -> None:
        self.wal = wal
        self.caps = caps
        self.max_request_bytes = max_request_bytes
        self.budget = Budget(max_inflight_bytes)
        self.decoders = decoders  # None: JSON is decoded in a thread of this process
        self.counts: Counter[str] = Counter()

    async def _prepare(
        self, signal: Signal, body: bytes, content_type: str, encoding: str, hold: Hold
    ) -> Prepared:
        """Decompress and decode within the budget: the inflated bytes, then what decoding
        them costs, are taken from it before the work is done."""
        limit = self.max_request_bytes
        if encoding == "identity":
            raw = decompress(body, encoding, limit)
        else:
            raw = await asyncio.to_thread(decompress, body, encoding, limit, hold.take)
        call = (signal, raw, content_type, None, self.caps)
        if content_type != JSON:
            hold.take_capped(PROTOBUF_DECODE_FACTOR * len(raw))
            in_thread = len(raw) > INLINE_PROTOBUF_BYTES
        elif len(raw) < INLINE_JSON_BYTES:
            in_thread = False
        else:
            hold.take_capped(JSON_DECODE_FACTOR * len(raw))
            if self.decoders is not None:
                return await self.decoders.prepare(signal, raw, content_type, self.caps)
            in_thread = True
        return await asyncio.to_thread(prepare, *call) if in_thread else prepare(*call)

    async def export(
        self,
        signal: Signal,
        body: bytes,
        content_type: str,
        encoding: str = "identity",
        hold: Hold | None = None,
    ) -> Message:
        """Store a request durably and return the Export*ServiceResponse to send. `hold`
        is what the request holds of the in-flight budget (its body, when the front end
        took it); decoding takes more from it as it goes. Without one, a hold of its own
        is taken and given back here."""
        own = hold is None
        hold = self.budget.hold() if hold is None else hold
        try:
            prepared = await self._prepare(signal, body, content_type, encoding, hold)
        finally:
            if own:
                hold.release()
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
