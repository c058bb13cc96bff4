"""How far the lake is behind the WAL, in seconds of conversion (issue 10 point 13).

A byte limit on the WAL backlog alone let the lake fall 192 s behind after a minute of
overload: at the lake writers' pace, 1.6 GB is minutes of work. `Lag` estimates the
conversion rate from what leaves the WAL (segments converted and deleted) over a sliding
30 s window, and the lag as backlog ÷ rate; ingest answers 503 + Retry-After beyond
`max_lag_s`, so a reader can rely on the lake being at most about that far behind
(plus `flush_interval_s`) whatever the load.
"""

from __future__ import annotations

from collections import deque

# The rate is measured over this much of the recent past: longer than converting one
# segment takes, so a window never sees no deletion only because one is in progress.
WINDOW_S = 30.0


class Lag:
    def __init__(self, max_lag_s: float, segment_bytes: int) -> None:
        self.max_lag_s = max_lag_s
        self.segment_bytes = segment_bytes
        self._left = 0  # bytes that have left the WAL (converted), in all
        self._samples: deque[tuple[float, int]] = deque()  # (time, _left)
        self.backlog = 0

    def observe(self, now: float, backlog: int, appended: int) -> None:
        """`backlog`: the WAL's size now; `appended`: bytes added since the last call."""
        left = self.backlog + appended - backlog
        self.backlog = backlog
        self._left += max(0, left)
        self._samples.append((now, self._left))
        while len(self._samples) > 2 and now - self._samples[1][0] >= WINDOW_S:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Bytes converted per second over the window; None until a window was seen."""
        if len(self._samples) < 2:
            return None
        (t0, left0), (t1, left1) = self._samples[0], self._samples[-1]
        if t1 - t0 < WINDOW_S / 2:
            return None
        return (left1 - left0) / (t1 - t0)

    def seconds(self) -> float:
        """The estimated lag: 0 while at most two segments wait (one being written, one
        converting), else backlog ÷ rate (infinite when nothing was converted lately)."""
        if self.backlog <= 2 * self.segment_bytes:
            return 0.0
        rate = self.rate()
        if rate is None:
            return 0.0
        return self.backlog / rate if rate > 0 else float("inf")

    def over(self) -> bool:
        return self.seconds() > self.max_lag_s
