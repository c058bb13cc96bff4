"""`flagscope flags`: the flags the lake has seen, with their variants, users and dates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flagscope.collector.lake.read import fetch


@dataclass(frozen=True)
class FlagVariant:
    flag: str
    variant: str
    users: int
    evaluations: int
    first_seen: datetime
    last_seen: datetime


SQL = """
SELECT e.key AS flag, e.value AS variant, count(DISTINCT user_id) AS users,
       count(*) AS evaluations, min(time) AS first_seen, max(time) AS last_seen
FROM (SELECT unnest(map_entries(flags)) AS e, user_id, time
      FROM events_raw WHERE cardinality(flags) > 0 {where})
GROUP BY ALL ORDER BY flag, variant
"""


def list_flags(lake_dir: Path, start: datetime | None = None) -> list[FlagVariant]:
    """Every flag and variant evaluated since `start` (ever, without one)."""
    where, params = "", {}
    if start is not None:
        where += " AND time >= $start"
        params["start"] = start
    _, rows = fetch(lake_dir, SQL.format(where=where), params)
    return [FlagVariant(*row) for row in rows]
