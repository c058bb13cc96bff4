"""One line every interval of what the collector received: the operator's pulse.

Counted in items — spans and log records, what the lake stores — not in requests or
"traces" (an outside reader took "traces.accepted" for traces), and refused requests by
the status they were answered with. Quiet intervals print nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

log = logging.getLogger("flagscope.collector")
_ITEMS = {"traces": "spans", "logs": "log records", "metrics": "data points"}


def describe(delta: Counter[str]) -> str | None:
    """'1,204 spans and 3 log records accepted; 2 spans rejected; 5 requests refused (503 ×5)'
    from the change of `Receiver.counts` over an interval; None when nothing happened."""
    parts = []
    for outcome in ("accepted", "rejected"):
        items = [
            f"{delta[f'{signal}.{outcome}']:,} {noun}"
            for signal, noun in _ITEMS.items()
            if delta[f"{signal}.{outcome}"]
        ]
        if items:
            parts.append(f"{' and '.join(items)} {outcome}")
    refused = sorted(
        (k.split(".", 1)[1], v) for k, v in delta.items() if k.startswith("refused.") and v
    )
    if refused:
        total = sum(v for _, v in refused)
        by_status = ", ".join(f"{status} ×{count}" for status, count in refused)
        parts.append(f"{total:,} request{'s' if total != 1 else ''} refused ({by_status})")
    return "; ".join(parts) if parts else None


async def report_every(counts: Counter[str], interval_s: float) -> None:
    """Log `describe` of each interval's change of `counts` until cancelled."""
    last = Counter(counts)
    while True:
        await asyncio.sleep(interval_s)
        now = Counter(counts)
        line = describe(now - last)
        last = now
        if line:
            log.info("last %g s: %s", interval_s, line)
