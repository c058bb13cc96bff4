"""Where a row's file goes and what its name says: hour partitions, file stems."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from pathlib import Path

HOUR_NS = 3_600_000_000_000
GLOB = "**/*.parquet"
# A file being written is `.<name>.tmp` beside its final name: the rename into place stays
# within one directory (atomic), and no reader lists it — `*.parquet` globs do not match,
# and Spark/Hadoop, pyarrow datasets and Polars skip names starting with a dot.
TEMPORARY_NAME = ".*.parquet.tmp"
TEMPORARY_GLOB = f"**/{TEMPORARY_NAME}"


def temporary(path: Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    return path.with_name(f".{path.name}.tmp")


def published(temporary_path: Path) -> Path:
    """The file a temporary name stands for (`temporary`'s inverse)."""
    return temporary_path.with_name(temporary_path.name[1 : -len(".tmp")])


def partition_of(hour_index: int) -> str:
    moment = datetime.fromtimestamp(hour_index * 3600, tz=UTC)
    return f"date={moment:%Y-%m-%d}/hour={moment:%H}"


def file_stem(writer: str, seq: int) -> str:
    """The stem of the files converted from WAL segment `seq` (the "-000" keeps the
    `<writer>-<seq>-<part>` form that `covered_seq` parses)."""
    return f"{writer}-{seq:012d}-000"


def covered_seq(stem: str, writer: str) -> int | None:
    """Highest WAL segment a file of `writer` holds data of, or None if not this writer's.

    Stems: `<writer>-<seq>-<part>` (from a segment), `compact-<writer>-<first>-<last>`.
    """
    prefix = f"compact-{writer}-" if stem.startswith("compact-") else f"{writer}-"
    if not stem.startswith(prefix):
        return None
    numbers = stem[len(prefix) :].split("-")
    if len(numbers) != 2 or not all(n.isdigit() for n in numbers):
        return None
    return int(numbers[1]) if stem.startswith("compact-") else int(numbers[0])


def partitions(lake: Path) -> list[Path]:
    """The `date=*/hour=*` directories (os.scandir: a 30-day lake has 720 of them, and
    every reader lists them)."""
    found = []
    for day in _directories(lake, "date="):
        found += _directories(day, "hour=")
    return sorted(found)


def _directories(parent: Path, prefix: str) -> list[Path]:
    try:
        with os.scandir(parent) as entries:
            return [parent / e.name for e in entries if e.name.startswith(prefix) and e.is_dir()]
    except OSError:  # no lake yet, expired meanwhile, or unreadable: as a glob skips it
        return []


def changed_at(directory: Path) -> float:
    """When a file was last created, renamed or removed in `directory` (0 if it is gone):
    a partition unchanged since a moment holds no file made after it."""
    try:
        return directory.stat().st_mtime
    except FileNotFoundError:  # expired meanwhile
        return 0.0


def lake_files(lake: Path, *patterns: str, changed_since: float | None = None) -> list[list[Path]]:
    """For each of `patterns`, the files named like it anywhere in the lake; with
    `changed_since` (seconds since the epoch) only in the hour partitions whose directory
    changed since then, which hold every file created or renamed there since (start-up,
    issue 12: not the whole lake's listing)."""
    if changed_since is None:
        return [list(lake.glob(f"**/{pattern}")) for pattern in patterns]
    changed = [p for p in partitions(lake) if changed_at(p) >= changed_since]
    return [[path for p in changed for path in p.glob(pattern)] for pattern in patterns]


def has_files(lake: Path) -> bool:
    return any(lake.glob(GLOB)) if lake.exists() else False


_EPOCH = datetime(1970, 1, 1)  # naive UTC, as the readers' windows
_EPOCH_DAY = _EPOCH.date()


def partition_hour(partition: Path) -> int | None:
    """The hour (since the epoch) of a `date=YYYY-MM-DD/hour=HH` directory, or None."""
    try:
        day = partition.parent.name.split("=", 1)[1]
        # the writers' YYYY-MM-DD fast (a reader parses every partition's name); any
        # other form strptime reads, as retention does
        if len(day) == 10 and day[4] == "-" and day[7] == "-" and day.isascii():
            days = (date.fromisoformat(day) - _EPOCH_DAY).days
        else:
            days = (datetime.strptime(day, "%Y-%m-%d") - _EPOCH).days
        hour = int(partition.name.split("=", 1)[1])
    except (IndexError, ValueError):
        return None
    return days * 24 + hour if 0 <= hour < 24 else None


def unix_nanos(moment: datetime) -> int:
    """A naive UTC datetime as integer nanoseconds since the epoch, exactly."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _hours(moment: datetime) -> float:
    return (moment - _EPOCH).total_seconds() / 3600


def files_between(lake: Path, start: datetime | None, end: datetime | None) -> list[Path]:
    """The lake files of the hour partitions that overlap [start, end) (naive UTC, None
    unbounded); a partition whose name does not parse is always read."""
    chosen: list[Path] = []
    for partition in partitions(lake):
        hour = partition_hour(partition)
        if hour is not None and (
            (end is not None and hour >= _hours(end))
            or (start is not None and hour + 1 <= _hours(start))
        ):
            continue
        chosen += _lake_files_in(partition)
    return chosen


def _lake_files_in(partition: Path) -> list[Path]:
    """`*.parquet` in one partition, sorted (os.scandir, as `partitions`)."""
    try:
        with os.scandir(partition) as entries:
            names = sorted(e.name for e in entries if e.name.endswith(".parquet"))
    except OSError:  # expired meanwhile, or unreadable: as a glob skips it
        return []
    return [partition / name for name in names]
