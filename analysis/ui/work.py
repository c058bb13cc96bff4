"""The UI's lake work, off the event loop: thread pools, a cache of answers, a deadline.

DuckDB blocks, so every query runs in a thread, on a connection of its own (the lake's
readers, `flagscope.collector.lake.read`, open one per call). Two pools keep a page's
quick lookups (the flags, a trace, example requests) from waiting behind comparisons that
take seconds over a large lake: `light` and `heavy`.

Answers are kept by key. A fresh one is served as it is; an expired one is still served
while a new one is computed (stale-while-revalidate), so a page someone looked at once
answers at once after that; one not there yet is awaited for at most `wait` seconds, and
the page then says it is being computed and refreshes itself. The same key is never
computed twice at once, and at most `max_running` computations are queued or running.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import duckdb

from flagscope.collector.errors import FlagscopeError, LakeError
from flagscope.collector.lake.read import run

log = logging.getLogger("flagscope.ui")
T = TypeVar("T")
QUERY_LIMIT_S = 60.0  # a page's own query is stopped after this long
ERROR_TTL_S = 10.0  # a failed answer is retried after at most this long


@dataclass(frozen=True)
class Answer(Generic[T]):
    """What a page gets: the value, or the error's message (it names the fix), or neither
    yet (`pending`). `computed_at` is wall-clock time (epoch seconds) of the value."""

    value: T | None = None
    error: str | None = None
    pending: bool = False
    computed_at: float | None = None

    @property
    def ready(self) -> bool:
        return self.value is not None


@dataclass
class _Entry:
    task: asyncio.Future[Any] | None = None
    value: Any = None
    error: str | None = None
    done_at: float | None = None  # monotonic
    wall_at: float | None = None
    ttl: float = 0.0
    used: float = field(default_factory=time.monotonic)


class Work:
    def __init__(
        self,
        light_threads: int = 2,
        heavy_threads: int = 2,
        max_entries: int = 512,
        max_running: int = 32,
    ) -> None:
        self._pools = {
            "light": ThreadPoolExecutor(light_threads, thread_name_prefix="flagscope-ui-light"),
            "heavy": ThreadPoolExecutor(heavy_threads, thread_name_prefix="flagscope-ui-heavy"),
        }
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._max_entries = max_entries
        self._max_running = max_running

    def running(self) -> int:
        return sum(1 for e in self._entries.values() if e.task is not None)

    async def get(
        self,
        key: Hashable,
        compute: Callable[[], T],
        *,
        ttl: float,
        wait: float,
        pool: str = "light",
    ) -> Answer[T]:
        """The answer for `key`: cached, or computed by `compute()` in `pool`'s threads."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
            self._evict()
        self._entries.move_to_end(key)
        entry.used = time.monotonic()
        expired = entry.done_at is None or time.monotonic() - entry.done_at > entry.ttl
        if expired and entry.task is None:
            if self.running() >= self._max_running:
                return self._answer(entry, pending=True)
            entry.task = self._start(key, entry, compute, ttl, pool)
        if entry.done_at is not None:  # an answer, maybe being refreshed
            return self._answer(entry)
        assert entry.task is not None
        await asyncio.wait({entry.task}, timeout=wait)
        return self._answer(entry, pending=entry.done_at is None)

    def _start(
        self, key: Hashable, entry: _Entry, compute: Callable[[], T], ttl: float, pool: str
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pools[pool], _guarded, compute)

        def finish(done: asyncio.Future[Any]) -> None:
            entry.task = None
            if done.cancelled():
                return
            value, error = done.result()
            entry.value, entry.error = value, error
            entry.done_at, entry.wall_at = time.monotonic(), time.time()
            entry.ttl = ttl if error is None else min(ttl, ERROR_TTL_S)

        future.add_done_callback(finish)
        return future

    @staticmethod
    def _answer(entry: _Entry, pending: bool = False) -> Answer[Any]:
        if entry.done_at is None:
            return Answer(pending=True)
        if entry.error is not None:
            return Answer(error=entry.error, pending=pending, computed_at=entry.wall_at)
        return Answer(value=entry.value, pending=pending, computed_at=entry.wall_at)

    def forget(self, key: Hashable) -> None:
        """Drop the answer for `key` (not one being computed): the next `get` computes it."""
        entry = self._entries.get(key)
        if entry is not None and entry.task is None:
            del self._entries[key]

    def _evict(self) -> None:
        while len(self._entries) > self._max_entries:
            idle = next((k for k, e in self._entries.items() if e.task is None), None)
            if idle is None:
                return
            del self._entries[idle]

    def close(self) -> None:
        """Stop taking work; queued computations are dropped (running ones finish)."""
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


def _guarded(compute: Callable[[], T]) -> tuple[T | None, str | None]:
    """(value, None), or (None, the message) for an error: flagscope's errors name their
    fix and are shown as they are; anything else is logged with its traceback."""
    try:
        return compute(), None
    except FlagscopeError as exc:
        return None, str(exc)
    except Exception as exc:
        log.exception("ui: a computation failed")
        return None, f"internal error: {exc!r} (the server's log has the traceback)"


def bounded(
    lake: Path, work: Callable[[duckdb.DuckDBPyConnection], T], seconds: float = QUERY_LIMIT_S
) -> T:
    """`work(con)` over the lake's views, interrupted after `seconds`."""
    fired = threading.Event()

    def guarded(con: duckdb.DuckDBPyConnection) -> T:
        with _deadline(con, seconds, fired):
            return work(con)

    try:
        return run(lake, guarded)
    except LakeError as exc:
        if fired.is_set():
            raise LakeError(
                f"the lake query took longer than {seconds:g} s and was stopped: "
                "pick a shorter window"
            ) from exc
        raise


@contextmanager
def _deadline(con: duckdb.DuckDBPyConnection, seconds: float, fired: threading.Event) -> Any:
    def stop() -> None:
        fired.set()
        con.interrupt()

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
