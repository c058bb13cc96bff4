"""`flagscope ui`'s pieces that need no server: the answer cache, sorting, access checks,
the span tree of the waterfall."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

from flagscope.analysis.ui import index_page, waterfall
from flagscope.analysis.ui.access import Access, hostname, is_loopback, safe_next
from flagscope.analysis.ui.traces import Row
from flagscope.analysis.ui.work import Work
from tests.synthetic import NOW


def test_the_answer_cache_computes_once_serves_stale_and_says_pending():
    calls: list[int] = []
    release = threading.Event()

    def slow() -> int:
        calls.append(1)
        release.wait(5)
        return len(calls)

    async def scenario() -> None:
        work = Work(1, 1)
        try:
            first, second = await asyncio.gather(
                work.get("k", slow, ttl=0.2, wait=0.05), work.get("k", slow, ttl=0.2, wait=0.05)
            )
            assert first.pending and second.pending and len(calls) == 1  # one computation
            release.set()
            done = await work.get("k", slow, ttl=0.2, wait=5)
            assert done.value == 1 and not done.pending
            time.sleep(0.3)  # expired: the old answer is served while a new one is made
            stale = await work.get("k", slow, ttl=0.2, wait=0.0)
            await asyncio.sleep(0.2)
            assert stale.value == 1 and len(calls) == 2  # … in the background
            broken = await work.get("e", lambda: 1 / 0, ttl=1, wait=5)
            assert broken.value is None and "ZeroDivisionError" in (broken.error or "")
        finally:
            work.close()

    asyncio.run(scenario())


def test_sort_parameters_and_access_helpers():
    assert index_page.parse_sort(None) == ("verdict", False)
    assert index_page.parse_sort("-users") == ("users", True)
    assert index_page.parse_sort("bogus") == ("verdict", False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
    assert hostname("[::1]:4320") == "[::1]" and hostname("localhost:80") == "localhost"
    assert (
        safe_next("//evil.example") == "/" and safe_next("/flag/x?window=6h") == "/flag/x?window=6h"
    )
    open_ = Access(None, lambda *_: False, "127.0.0.1")
    assert open_.allowed_host("127.0.0.1:4320") and not open_.allowed_host("evil.example:4320")


def _row(span_id: str, parent: str | None, at: int) -> Row:
    return Row("span", span_id, parent, "s", span_id, 1, NOW + timedelta(milliseconds=at),
               None, 1.0, 0, None, False, None, None, None, None, {}, False, None, None, None,
               None, None, None)  # fmt: skip


def test_the_waterfall_orders_parents_before_children_and_keeps_orphans():
    rows = [_row("c2", "a", 5), _row("a", None, 0), _row("c1", "a", 1), _row("g", "c1", 2),
            _row("orphan", "missing", 3), _row("loop1", "loop2", 9), _row("loop2", "loop1", 9)]  # fmt: skip
    ordered = [(r.span_id, depth) for r, depth in waterfall.tree_order(rows)]
    assert ordered[:4] == [("a", 0), ("c1", 1), ("g", 2), ("c2", 1)]
    assert ("orphan", 0) in ordered
    assert {s for s, _ in ordered} == {r.span_id for r in rows}  # a cycle loses nothing
