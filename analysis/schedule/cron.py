"""Five-field cron expressions, UTC: when a scheduled report runs.

`minute hour day-of-month month day-of-week`, as Vixie cron (crontab(5)) reads them:
`*`, lists `1,15`, ranges `MON-FRI`, steps `*/15` and `8-18/2` (and `5/15`, from 5 to the
end), month names JAN–DEC and weekday names SUN–SAT in any case, 0 or 7 for Sunday, and
the macros @hourly, @daily (@midnight), @weekly, @monthly, @yearly (@annually).

Day of month and day of week: when both are restricted (neither starts with `*`) a day
matches if *either* does (`0 9 1 * MON` is the 1st and every Monday); otherwise both
must, which makes the unrestricted one irrelevant. This is Vixie cron's rule, `*/2`
counting as unrestricted.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.window import naive_utc

EXAMPLE = "e.g. '0 * * * *' (hourly) or '0 9 * * MON-FRI' (09:00 UTC on weekdays)"
FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTHS = {m.upper(): i for i, m in enumerate(calendar.month_abbr) if m}
_DAYS = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}
_NAMES = (None, None, None, _MONTHS, _DAYS)
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_SEARCH_YEARS = 9  # Feb 29 can be 8 years away (2096 → 2104)


@dataclass(frozen=True)
class Cron:
    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]  # of the month, 1–31
    months: frozenset[int]  # 1–12
    weekdays: frozenset[int]  # 0 = Sunday … 6 = Saturday
    days_restricted: bool
    weekdays_restricted: bool

    def day_matches(self, moment: datetime) -> bool:
        in_days = moment.day in self.days
        in_weekdays = (moment.weekday() + 1) % 7 in self.weekdays  # Python: Monday = 0
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays

    def matches(self, moment: datetime) -> bool:
        return (
            moment.minute in self.minutes
            and moment.hour in self.hours
            and moment.month in self.months
            and self.day_matches(moment)
        )


def _fail(expr: str, problem: str) -> AnalysisError:
    return AnalysisError(f"cron {expr!r}: {problem}; {EXAMPLE}")


def _value(expr: str, field: int, text: str) -> int:
    names = _NAMES[field]
    if names is not None and text.upper() in names:
        return names[text.upper()]
    if not text.isdigit():
        known = f" or a name ({', '.join(names)})" if names else ""
        raise _fail(expr, f"{FIELDS[field]} {text!r} is not a number{known}")
    lo, hi = _BOUNDS[field]
    value = int(text)
    if not lo <= value <= hi:
        raise _fail(expr, f"{FIELDS[field]} {value} is out of range {lo}-{hi}")
    return value


def _part(expr: str, field: int, part: str) -> set[int]:
    lo, hi = _BOUNDS[field]
    body, slash, step_text = part.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) == 0:
            raise _fail(expr, f"{FIELDS[field]} step {step_text!r} must be a whole number ≥ 1")
        step = int(step_text)
    if body == "*":
        first, last = lo, hi
    elif "-" in body:
        a, _, b = body.partition("-")
        first, last = _value(expr, field, a), _value(expr, field, b)
        if first > last:
            hint = "; Sunday is 0, so Monday to Sunday is 1-7" if field == 4 else ""
            raise _fail(expr, f"{FIELDS[field]} range {body!r} runs backwards{hint}")
    else:
        first = _value(expr, field, body)
        last = hi if slash else first  # `5/15`: from 5 to the end, every 15
    return set(range(first, last + 1, step))


def _field(expr: str, field: int, text: str) -> frozenset[int]:
    if not text or any(not p for p in text.split(",")):
        raise _fail(expr, f"{FIELDS[field]} {text!r} has an empty list item")
    values: set[int] = set()
    for part in text.split(","):
        values |= _part(expr, field, part)
    if field == 4 and 7 in values:  # 7 is Sunday too
        values = (values - {7}) | {0}
    return frozenset(values)


def parse(expr: str) -> Cron:
    """Parse and validate; an AnalysisError names the field and the fix."""
    if not isinstance(expr, str):
        raise AnalysisError(f"cron {expr!r}: expected a string, {EXAMPLE}")
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() not in _MACROS:
            raise _fail(expr, f"unknown macro; known: {', '.join(_MACROS)}")
        text = _MACROS[text.lower()]
    parts = text.split()
    if len(parts) != 5:
        raise _fail(expr, f"expected five fields ({' '.join(FIELDS)}), got {len(parts)}")
    minutes, hours, days, months, weekdays = (_field(expr, i, p) for i, p in enumerate(parts))
    cron = Cron(
        expr,
        minutes,
        hours,
        days,
        months,
        weekdays,
        days_restricted=not parts[2].startswith("*"),
        weekdays_restricted=not parts[4].startswith("*"),
    )
    if cron.days_restricted and not cron.weekdays_restricted:
        longest = max(calendar.monthrange(2024, m)[1] for m in cron.months)  # 2024: leap year
        if min(cron.days) > longest:
            names = ", ".join(calendar.month_abbr[m].upper() for m in sorted(cron.months))
            raise _fail(expr, f"day {min(cron.days)} never occurs in {names}: it never fires")
    return cron


def next_fire(expr: str | Cron, after: datetime) -> datetime:
    """The first minute strictly after `after` that `expr` matches, in UTC.

    A naive `after` is taken as UTC and a naive time is returned; an aware one gives an
    aware UTC time.
    """
    cron = expr if isinstance(expr, Cron) else parse(expr)
    aware = after.tzinfo is not None
    t = naive_utc(after)
    t = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
    limit = t.year + _SEARCH_YEARS
    while t.year <= limit:
        if t.month not in cron.months:
            t = datetime(t.year + t.month // 12, t.month % 12 + 1, 1)
        elif not cron.day_matches(t):
            t = datetime(t.year, t.month, t.day) + timedelta(days=1)
        elif t.hour not in cron.hours:
            t = t.replace(minute=0) + timedelta(hours=1)
        elif t.minute not in cron.minutes:
            t += timedelta(minutes=1)
        else:
            return t.replace(tzinfo=UTC) if aware else t
    raise _fail(cron.expr, f"no matching time within {_SEARCH_YEARS} years: it never fires")
