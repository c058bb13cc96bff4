"""Log lines an operator can use: one line per cause per interval, with counts and clients.

A misconfigured fleet refuses the same way thousands of times a minute (a wrong token, a
size limit, back-pressure) and an OS fault repeats as fast as it is retried: logging each
occurrence floods the log, logging none hides it. `RateLimitedLog` writes the first
occurrence of a cause at once and then at most one line per `interval_s`, saying how many
occurrences (and from how many clients) it folded in since the last line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class _Cause:
    last: float
    folded: int = 0
    clients: set[str] = field(default_factory=set)


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._causes: dict[str, _Cause] = {}
        self.counts: Counter[str] = Counter()  # every occurrence, by cause

    def report(
        self,
        level: int,
        cause: str,
        detail: str,
        client: str | None = None,
        exc_info: BaseException | None = None,
    ) -> None:
        """`cause` groups occurrences (e.g. "refused 401"); `detail` is this one's message."""
        self.counts[cause] += 1
        now = time.monotonic()
        state = self._causes.get(cause)
        if state is not None and now - state.last < self.interval_s:
            state.folded += 1
            if client is not None and len(state.clients) < 1000:
                state.clients.add(client)
            return
        more = ""
        if state is not None and state.folded:
            clients = f" from {len(state.clients)} clients" if state.clients else ""
            more = f" ({state.folded} more{clients} since the last report)"
        self._causes[cause] = _Cause(now)
        source = f" from {client}" if client else ""
        self.logger.log(level, "%s%s: %s%s", cause, source, detail, more, exc_info=exc_info)
