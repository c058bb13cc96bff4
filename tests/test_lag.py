"""Issue 10 point 13: the lake's lag behind the WAL is bounded in seconds of conversion,
not only in bytes: `Lag` measures the conversion rate over a window, and the WAL refuses
appends (503 + Retry-After for the client) while backlog ÷ rate is over max_lag_s."""

from __future__ import annotations

import pytest

from flagscope.collector.lag import WINDOW_S, Lag
from flagscope.collector.wal import WalFullError, WalWriter

MB = 1_000_000


def feed(lag: Lag, seconds: float, appended_per_s: float, converted_per_s: float) -> None:
    """Half-second observations: the WAL grows by what is appended, shrinks by what is
    converted."""
    now, backlog = getattr(lag, "_now", 0.0), lag.backlog
    for _ in range(int(seconds * 2)):
        now += 0.5
        appended = int(appended_per_s / 2)
        backlog = max(0, backlog + appended - int(converted_per_s / 2))
        lag.observe(now, backlog, appended)
    lag._now = now  # type: ignore[attr-defined]  # the test's clock


def test_the_lag_is_backlog_over_the_measured_conversion_rate():
    lag = Lag(max_lag_s=30, segment_bytes=1 * MB)
    feed(lag, WINDOW_S, appended_per_s=10 * MB, converted_per_s=10 * MB)
    assert lag.seconds() == 0.0  # keeping up
    feed(lag, 20, appended_per_s=30 * MB, converted_per_s=10 * MB)  # 3× overload
    assert lag.rate() == pytest.approx(10 * MB, rel=0.01)
    assert lag.seconds() == pytest.approx(lag.backlog / (10 * MB), rel=0.01)
    assert 35 < lag.seconds() < 45 and lag.over()  # 400 MB behind at 10 MB/s
    feed(lag, 60, appended_per_s=0, converted_per_s=10 * MB)  # the lake catches up
    assert lag.seconds() == 0.0 and not lag.over()


def test_a_stalled_lake_with_a_backlog_is_infinitely_behind_but_startup_is_not():
    lag = Lag(max_lag_s=30, segment_bytes=1 * MB)
    feed(lag, 2, appended_per_s=50 * MB, converted_per_s=0)
    assert not lag.over()  # less than half a window seen: no rate yet
    feed(lag, WINDOW_S, appended_per_s=1 * MB, converted_per_s=0)
    assert lag.seconds() == float("inf") and lag.over()


def test_the_wal_refuses_appends_while_the_lake_is_too_far_behind(tmp_path):
    # not started: its thread would measure the real backlog meanwhile (refusals come first)
    wal = WalWriter(tmp_path, segment_bytes=1 << 20, flush_interval_s=1, max_backlog_bytes=1 << 40,
                    max_lag_s=5)  # fmt: skip
    assert wal.lag is not None
    feed(wal.lag, WINDOW_S, appended_per_s=1 * MB, converted_per_s=1 * MB)
    with pytest.raises(OSError, match="not running"):  # in time: on to the writer
        wal.append(1, b"x").result(1)
    feed(wal.lag, WINDOW_S, appended_per_s=40 * MB, converted_per_s=1 * MB)
    with pytest.raises(WalFullError, match=r"the lake is \d+ s behind the write-ahead log"):
        wal.append(1, b"y").result(1)
