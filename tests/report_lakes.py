"""Lakes for the report, schedule and stale-flag tests, built with tests/synthetic.py
(rows in the collector's exact schema, written with flagscope.collector.lake.write_table)."""

from __future__ import annotations

import itertools
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests import synthetic

_names = itertools.count(1)

# A fixed past day: the scheduler tests run on an injected clock, not the real one.
DAY1 = datetime(2026, 11, 20)
DAY2 = DAY1 + timedelta(days=1)


def cohort_traffic(
    rng: random.Random,
    flag: str,
    start: datetime,
    hours: float,
    users: int,
    *,
    ms_on: float = 100.0,
    ms_off: float = 100.0,
    err_on: float = 0.01,
    err_off: float = 0.01,
    share_on: float = 0.5,
) -> list[dict[str, Any]]:
    """`users` users (half on, half off), 2–4 requests each, spread over [start, start+hours)."""
    rows = []
    for i in range(users):
        variant = "on" if rng.random() < share_on else "off"
        for _ in range(rng.randint(2, 4)):
            at = start + timedelta(seconds=rng.random() * hours * 3600)
            ms = (ms_on if variant == "on" else ms_off) * rng.lognormvariate(0, 0.35)
            error = rng.random() < (err_on if variant == "on" else err_off)
            rows += synthetic.request(
                f"{flag}-user-{i}", variant, flag=flag, ms=ms, error=error, at=at
            )
    return rows


def write(lake_dir: Path, rows: list[dict[str, Any]]) -> Path:
    return synthetic.write(lake_dir, rows, name=f"reports-{next(_names):012d}-000")


def build_flip_lake(lake_dir: Path, users: int = 1200) -> Path:
    """Two flags, six hours of traffic on each of DAY1 and DAY2 (00:00–06:00):

    - `checkout-v2` is harmless on DAY1 and regresses on DAY2 (+60 % latency, +7 pp errors);
    - `search-v2` is harmless on both days.
    """
    rng = random.Random(7)
    rows = []
    for day in (DAY1, DAY2):
        bad = day == DAY2
        rows += cohort_traffic(
            rng,
            "checkout-v2",
            day,
            6,
            users,
            ms_on=160.0 if bad else 100.0,
            err_on=0.08 if bad else 0.01,
        )
        rows += cohort_traffic(rng, "search-v2", day, 6, users)
    return write(lake_dir, rows)
