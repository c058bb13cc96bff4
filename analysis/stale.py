"""`flagscope flags --stale`: flags that are ready to be removed from the code.

Two kinds:

- NOT_EVALUATED: no evaluation in the last `days` days ("not evaluated for 45 days") — the
  code that asks for the flag is gone or never runs.
- SINGLE_VARIANT: every evaluation of real traffic in the last `days` days returned one
  variant, and it has done so for at least `days` days ("serving 'on' to everyone since
  2026-10-29: ready to remove the dead path"). Test traffic does not count here: a tester
  forcing the old variant does not keep a dead path alive for users.

One aggregate query over the `flags` map column (DuckDB reads only `time`, `flags` and
`is_test` from the Parquet files); the rest is a few rows per variant in Python.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.window import naive_utc
from flagscope.collector.lake.read import fetch


class Staleness(StrEnum):
    NOT_EVALUATED = "NOT_EVALUATED"
    SINGLE_VARIANT = "SINGLE_VARIANT"


@dataclass(frozen=True)
class StaleFlag:
    flag: str
    kind: Staleness
    last_seen: datetime  # last evaluation of any variant (naive UTC, as the lake stores)
    since: datetime  # NOT_EVALUATED: = last_seen; SINGLE_VARIANT: when the others stopped
    days: float  # how long it has been so, in days
    variant: str | None = None  # SINGLE_VARIANT: the variant everyone gets
    evaluations: int = 0  # SINGLE_VARIANT: evaluations of real traffic in the window

    @property
    def message(self) -> str:
        if self.kind is Staleness.NOT_EVALUATED:
            return (
                f"not evaluated for {self.days:.0f} days "
                f"(last seen {self.last_seen:%Y-%m-%d %H:%M} UTC): remove the flag"
            )
        return (
            f"serving {self.variant!r} to everyone since {self.since:%Y-%m-%d %H:%M} UTC "
            f"({self.days:.0f} days): ready to remove the dead path"
        )


# Per flag and variant: last evaluation of any traffic, first and last of real traffic.
SQL = """
SELECT e.key AS flag, e.value AS variant, max(time) AS last_seen,
       min(time) FILTER (WHERE NOT is_test) AS first_real,
       max(time) FILTER (WHERE NOT is_test) AS last_real,
       count(*) FILTER (WHERE NOT is_test AND time >= $cutoff) AS recent_real
FROM (SELECT unnest(map_entries(flags)) AS e, time, coalesce(is_test, false) AS is_test
      FROM events_raw WHERE cardinality(flags) > 0 AND time < $now)
GROUP BY ALL ORDER BY flag, variant
"""


def stale_flags(lake_dir: Path, days: float, now: datetime | None = None) -> list[StaleFlag]:
    """Flags not evaluated for `days` days, then flags serving one variant for `days` days,
    each sorted by how long (longest first). `now` defaults to the current time; a naive
    `now` is UTC. Evaluations after `now` are ignored."""
    if not days > 0:
        raise AnalysisError(f"--stale {days}: the number of days must be greater than 0, e.g. 30")
    now = naive_utc(now or datetime.now(UTC))
    cutoff = now - timedelta(days=days)
    _, rows = fetch(lake_dir, SQL, {"now": now, "cutoff": cutoff})
    by_flag: dict[str, list[_Variant]] = defaultdict(list)
    for flag, *rest in rows:
        by_flag[flag].append(_Variant(*rest))
    found = [
        s
        for flag, variants in by_flag.items()
        if (s := _judge(flag, variants, now, cutoff)) is not None
    ]
    return sorted(found, key=lambda s: (s.kind is not Staleness.NOT_EVALUATED, -s.days, s.flag))


class _Variant(NamedTuple):
    variant: str
    last_seen: datetime
    first_real: datetime | None  # real = not test traffic
    last_real: datetime | None
    recent_real: int  # real evaluations since the cutoff


def _judge(
    flag: str, variants: list[_Variant], now: datetime, cutoff: datetime
) -> StaleFlag | None:
    last_seen = max(v.last_seen for v in variants)
    if last_seen < cutoff:
        return StaleFlag(
            flag, Staleness.NOT_EVALUATED, last_seen, last_seen, _days(now - last_seen)
        )
    recent = [v for v in variants if v.recent_real > 0]  # what real users got in the window
    if len(recent) != 1:
        return None
    (served,) = recent
    others = [v.last_real for v in variants if v is not served and v.last_real is not None]
    # Since the last time a real user got another variant; if none ever did, since the first.
    since = max(others) if others else served.first_real
    if since is None or since > cutoff:
        return None
    return StaleFlag(
        flag,
        Staleness.SINGLE_VARIANT,
        last_seen,
        since,
        _days(now - since),
        served.variant,
        served.recent_real,
    )


def _days(delta: timedelta) -> float:
    return delta.total_seconds() / 86400
