"""Time windows from the command line: `--since 6h`, or `--from/--to` timestamps (UTC)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from flagscope.analysis.errors import AnalysisError

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
DEFAULT_SINCE = "24h"


def parse_duration(text: str, option: str = "--since") -> timedelta:
    """`6h`, `30m`, `7d`; `-2h` ("since two hours ago", as people write it) is `2h`."""
    match = re.fullmatch(r"\s*-?\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not match:
        raise AnalysisError(f"{option} {text!r}: expected a number and a unit, e.g. 30m, 6h, 7d")
    return timedelta(**{_UNITS[match[2]]: float(match[1])})


def naive_utc(moment: datetime) -> datetime:
    """The lake's form of a time: UTC without a zone (a naive time is taken as UTC)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def aware_utc(moment: datetime) -> datetime:
    """The same instant as an aware UTC time (a naive time is taken as UTC)."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso_z(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, as the JSON files write times (a naive time is UTC)."""
    return aware_utc(moment).isoformat().replace("+00:00", "Z")


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC. Returned naive UTC, as the lake stores."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise AnalysisError(
            f"{option} {text!r}: expected an ISO 8601 time, e.g. 2026-11-28T09:00 or "
            "2026-11-28T09:00+01:00"
        ) from exc
    return naive_utc(moment)


def resolve(
    since: str | None, start: str | None, end: str | None, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """(start, end) as naive UTC datetimes; `--since` and `--from` exclude each other."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    if since and start:
        raise AnalysisError("use either --since or --from/--to, not both")
    stop = parse_time(end, "--to") if end else now
    begin = parse_time(start, "--from") if start else stop - parse_duration(since or DEFAULT_SINCE)
    if begin >= stop:
        raise AnalysisError(
            f"the window is empty: --from {begin:%Y-%m-%d %H:%M} is not before --to {stop:%Y-%m-%d %H:%M}"
        )
    return begin, stop
