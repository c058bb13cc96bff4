"""What a flag's page shows over time: the comparison as its window grew, and the variants'
share of users per time bucket.

"When did it go bad, and at what exposure": the same comparison as the page's (`run_diff`
with the same options), over windows that all start at the window's start and end at
`POINTS` evenly spaced moments up to its end, with always-valid intervals (a scheduled
report's looks: looking again and again must not inflate false alarms). Each point is a
whole comparison, verdict included, so nothing is estimated differently from the report.
The window's start is rounded down to a step so that the points (and their cache) stay put
while the page refreshes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from flagscope.analysis.diff import run_diff
from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.result import DiffOptions, DiffResult
from flagscope.analysis.ui.work import bounded

POINTS = 8
_STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)


def step_for(span: timedelta, points: int = POINTS) -> timedelta:
    """A round step (1 min … 1 week) of about `span / points`."""
    want = span.total_seconds() / points
    return timedelta(seconds=next((s for s in _STEPS if s >= want), _STEPS[-1]))


def floor_to(moment: datetime, step: timedelta) -> datetime:
    seconds = step.total_seconds()
    epoch = datetime(1970, 1, 1)
    return epoch + timedelta(
        seconds=math.floor((moment - epoch).total_seconds() / seconds) * seconds
    )


def window_ends(
    start: datetime, end: datetime, step: timedelta, points: int = POINTS
) -> list[datetime]:
    """Where the growing windows end: every `step` after `start` before `end`, then `end`
    (the last `points` of them)."""
    ends, at = [], start + step
    while at < end:
        ends.append(at)
        at += step
    return [*ends[-(points - 1) :], end] if points > 1 else [end]


def growing_windows(
    start: datetime, end: datetime, first_seen: datetime | None, points: int = POINTS
) -> tuple[datetime, list[datetime]]:
    """(the windows' common start, their ends): from the window's start, or from the flag's
    first evaluation if that is later, rounded down to a step of about 1/`points` of what
    is left, so that the points stay put while the page refreshes."""
    begin = max(start, first_seen) if first_seen is not None else start
    step = step_for(end - begin, points)
    begin = floor_to(begin, step)
    return begin, window_ends(begin, end, step, points)


@dataclass(frozen=True)
class GrowingLook:
    end: datetime
    result: DiffResult | None  # None: this window could not be compared (`problem` says why)
    problem: str = ""


def grow(lake: Path, options: DiffOptions, ends: list[datetime]) -> list[GrowingLook]:
    """The comparison of `options` over [options.start, end) for each end, sequential."""
    looks = []
    for end in ends:
        sized = replace(options, end=end, sequential=True)
        try:
            looks.append(GrowingLook(end, run_diff(lake, sized)))
        except AnalysisError as exc:  # e.g. a variant not seen yet this early
            looks.append(GrowingLook(end, None, str(exc)))
    return looks


@dataclass(frozen=True)
class ShareSeries:
    bucket_seconds: int
    # variant -> [(bucket start, users of that variant, share of the bucket's users)]
    variants: dict[str, list[tuple[datetime, int, float]]]


_SHARE_BUCKETS = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400)
MAX_VARIANTS = 8
_SHARE_SQL = """
SELECT time_bucket(to_seconds($bucket), time) AS bucket, flags[$flag] AS variant,
       count(DISTINCT coalesce(user_id, trace_id)) AS users
FROM events_raw
WHERE time >= $start AND time < $end AND map_contains(flags, $flag)
  AND flags[$flag] IS NOT NULL AND NOT coalesce(is_test, false)
GROUP BY ALL ORDER BY ALL
"""


def share_over_time(lake: Path, flag: str, start: datetime, end: datetime) -> ShareSeries:
    """Users (else traces) of each variant per bucket (an hour over a day, at most 48 or
    so buckets), test traffic aside; the `MAX_VARIANTS` most used variants."""
    span = (end - start).total_seconds()
    # per hour for a day or two; finer for a short window, coarser for a long one
    bucket = next((s for s in _SHARE_BUCKETS if span / s <= 48), _SHARE_BUCKETS[-1])

    def query(con: duckdb.DuckDBPyConnection) -> list[tuple[datetime, str, int]]:
        params = {"bucket": bucket, "flag": flag, "start": start, "end": end}
        return con.execute(_SHARE_SQL, params).fetchall()

    rows = bounded(lake, query)
    totals: dict[datetime, int] = {}
    used: dict[str, int] = {}
    for at, variant, users in rows:
        totals[at] = totals.get(at, 0) + users
        used[variant] = used.get(variant, 0) + users
    keep = sorted(used, key=lambda v: -used[v])[:MAX_VARIANTS]
    series: dict[str, list[tuple[datetime, int, float]]] = {v: [] for v in sorted(keep)}
    for at, variant, users in rows:
        if variant in series:
            series[variant].append((at, int(users), users / totals[at]))
    return ShareSeries(bucket, series)
