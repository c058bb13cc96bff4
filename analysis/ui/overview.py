"""The flags page's data: every flag in the lake with its variants' users and shares, first
and last evaluation (`flagscope flags`) and whether it is stale (`flagscope flags --stale`),
and how the page sorts them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from flagscope.analysis.flags import list_flags
from flagscope.analysis.stale import StaleFlag, stale_flags
from flagscope.analysis.verdict import Verdict


@dataclass(frozen=True)
class VariantUse:
    variant: str
    users: int
    evaluations: int
    share: float  # of the flag's users (a user seen in two variants counts in both)


@dataclass(frozen=True)
class FlagOverview:
    flag: str
    variants: tuple[VariantUse, ...]
    first_seen: datetime  # naive UTC
    last_seen: datetime
    stale: StaleFlag | None

    @property
    def users(self) -> int:
        return sum(v.users for v in self.variants)

    @property
    def evaluations(self) -> int:
        return sum(v.evaluations for v in self.variants)


@dataclass(frozen=True)
class Overview:
    flags: tuple[FlagOverview, ...]
    computed_at: datetime  # naive UTC, the `now` of the stale test


def overview(lake: Path, stale_days: float, now: datetime | None = None) -> Overview:
    """Every flag ever evaluated in the lake, by name."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    by_flag: dict[str, list[tuple[str, int, int, datetime, datetime]]] = {}
    for row in list_flags(lake):
        by_flag.setdefault(row.flag, []).append(
            (row.variant, row.users, row.evaluations, row.first_seen, row.last_seen)
        )
    stale = {s.flag: s for s in stale_flags(lake, stale_days, now)}
    flags = []
    for flag, rows in sorted(by_flag.items()):
        total = sum(users for _, users, *_ in rows) or 1
        variants = tuple(
            VariantUse(variant, users, evaluations, users / total)
            for variant, users, evaluations, *_ in sorted(rows, key=lambda r: -r[1])
        )
        flags.append(
            FlagOverview(
                flag,
                variants,
                min(r[3] for r in rows),
                max(r[4] for r in rows),
                stale.get(flag),
            )
        )
    return Overview(tuple(flags), now)


# From the most to the least alarming: what someone must look at first.
SEVERITY = (
    Verdict.REGRESSION,
    Verdict.UNHEALTHY,
    Verdict.INCONCLUSIVE,
    Verdict.NO_DATA,
    Verdict.PASS,
    Verdict.IMPROVEMENT,
)
SORTS = ("verdict", "flag", "users", "first", "last", "stale")


def sort_key(sort: str, flag: FlagOverview, verdict: Verdict | None) -> tuple[object, ...]:
    """The key of one row for `sort` (one of SORTS); ties go by flag key."""
    rank = SEVERITY.index(verdict) if verdict is not None else len(SEVERITY)
    keys: dict[str, tuple[object, ...]] = {
        "verdict": (rank, flag.flag),
        "flag": (flag.flag,),
        "users": (flag.users, flag.flag),
        "first": (flag.first_seen, flag.flag),
        "last": (flag.last_seen, flag.flag),
        "stale": (flag.stale is None, -(flag.stale.days if flag.stale else 0), flag.flag),
    }
    return keys[sort]
