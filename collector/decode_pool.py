"""OTLP/JSON bodies decoded in worker processes, off the front end's interpreter.

Decoding OTLP/JSON is Python work (`otlp_json`, `otlp_json_fast`). In a thread it still holds
the front end's GIL, and every protobuf and gRPC client waits for it between the steps of
its own ack (issue 10 point 1: their ack p90 went from 13 ms to 145–244 ms while two JSON
senders ran). A worker process decodes instead; the front end only hands over the bytes
and gets back the `Prepared` payload the WAL stores.

A worker that dies (killed, out of memory) takes only its requests with it: they are
answered 503 so their clients retry, and the pool is started again. So does a decode that
runs past its deadline (`deadline_s`, ~20 × what the largest allowed body takes): its
worker is killed, as a stuck one would never give its process back.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from flagscope.collector.caps import AttributeCaps
from flagscope.collector.children import child_process_init
from flagscope.collector.decode import Prepared, prepare
from flagscope.collector.errors import Unavailable
from flagscope.collector.malloc import give_back
from flagscope.collector.otlp import SIGNALS, Signal

log = logging.getLogger("flagscope.collector")
# A 64 MiB body (the default size limit) decodes in ~6 s on the 2-core machine measured.
DEFAULT_DEADLINE_S = 120.0
TRIM_AFTER_BYTES = 4 * 1024 * 1024


def prepare_in_worker(
    signal_name: str, body: bytes, content_type: str, received_ns: int, caps: AttributeCaps
) -> Prepared:
    """What a worker runs: `decode.prepare` on the (decompressed) body, with the cyclic
    garbage collector paused. Parsed JSON is ~40 containers a span, all alive until the
    request is written: on Python 3.11 each collection walks them again as they are being
    made, which doubled orjson's time (issue 10 point 1). They hold no cycles (a tree of
    dicts and lists); reference counting frees them, and the collector runs again after."""
    gc.disable()
    try:
        return prepare(SIGNALS[signal_name], body, content_type, received_ns, caps)
    finally:
        gc.enable()
        if len(body) >= TRIM_AFTER_BYTES:  # what it parsed is freed: give it back, so that an
            give_back()  # idle worker does not keep its largest request's peak


def _ready() -> bool:
    return True


class DecodePool:
    """`workers` processes that run `decode.prepare`; `start()` before use, `close()` after."""

    def __init__(self, workers: int, deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        self.workers = workers
        self.deadline_s = deadline_s
        self._executor: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        """Start the workers now, so the first request does not wait for their imports.
        Call it on the event loop's thread: a worker dies with the thread that started it
        (children.die_with_parent), and that thread lives as long as the collector."""
        self._executor = self._new_executor()
        ready = [self._executor.submit(_ready) for _ in range(self.workers)]
        await asyncio.gather(*(asyncio.wrap_future(f) for f in ready))

    async def prepare(
        self, signal: Signal, body: bytes, content_type: str, caps: AttributeCaps
    ) -> Prepared:
        if self._executor is None:
            raise RuntimeError("DecodePool.start() was not called")
        executor = self._executor
        loop = asyncio.get_running_loop()
        try:
            work = loop.run_in_executor(
                executor, prepare_in_worker, signal.name, body, content_type, time.time_ns(), caps
            )
            return await asyncio.wait_for(work, self.deadline_s)
        except BrokenProcessPool as exc:
            self._restart(executor, "an OTLP/JSON decoder process died")
            raise Unavailable("the JSON decoder restarted; retry", retry_after_s=1) from exc
        except TimeoutError:
            self._restart(
                executor, f"an OTLP/JSON decode ran past {self.deadline_s:g} s", kill=True
            )
            raise Unavailable(
                f"decoding took longer than {self.deadline_s:g} s; retry later", retry_after_s=5
            ) from None

    def _restart(self, broken: ProcessPoolExecutor, why: str, kill: bool = False) -> None:
        if self._executor is not broken:  # another request restarted it already
            return
        log.error("%s; starting a new decoder", why)
        if kill:  # a worker busy past its deadline would never be given back
            for process in list(broken._processes.values()):  # stdlib keeps them
                process.kill()
        broken.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        context = get_context("spawn")
        return ProcessPoolExecutor(self.workers, context, initializer=child_process_init)

    def pids(self) -> list[int]:
        """The worker processes' ids (for an operator's `ps`, and tests)."""
        executor = self._executor
        return sorted(executor._processes) if executor is not None else []  # stdlib keeps them

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
