"""Crash injection for the durability tests (OTLP-RECEIVER item 43).

`FLAGSCOPE_FAILPOINT=<name>:<n>` makes the collector die as a machine crash would — the
collector process and its lake writers, SIGKILL, no cleanup — the n-th time any process
passes `hit(<name>)`. Unset (always, outside tests) it costs one comparison.

Names: wal.before_fsync, wal.after_fsync (written and fsynced, not yet acknowledged),
lake.before_rename (a Parquet file complete under its .tmp name), lake.after_rename (in
the lake, WAL segment not yet deleted).
"""

from __future__ import annotations

import os
import signal

_name, _, _count = os.environ.get("FLAGSCOPE_FAILPOINT", "").partition(":")
_remaining = int(_count or 1) if _name else 0
# The collector exports its pid so that a lake writer can take the whole collector down.
COLLECTOR_PID_ENV = "FLAGSCOPE_COLLECTOR_PID"


def hit(name: str) -> None:
    global _remaining
    if name != _name:
        return
    _remaining -= 1
    if _remaining > 0:
        return
    collector = int(os.environ.get(COLLECTOR_PID_ENV, "0") or 0)
    if collector and collector != os.getpid():
        os.kill(collector, signal.SIGKILL)  # its other lake writers follow (PDEATHSIG)
    os.kill(os.getpid(), signal.SIGKILL)
