"""Several collectors, one lake: each writer id belongs to one collector (issue 12).

A collector's files are named after its writer id and its WAL segment numbers
(`layout.file_stem`), and it compacts and cleans up only files of its own id. Two
collectors with one id would overwrite each other's files of the same hour and delete each
other's temporaries; a collector whose data directory was wiped would start numbering its
segments at 1 again and overwrite its own files of the current hour. So:

- each data directory has an identity (`<data_dir>/collector-id`, made once);
- the lake records which identity owns each writer id (`<lake>/.writers/<id>`; hidden, so
  no engine reading the lake lists it), created exclusively: a second collector with the
  same id is refused at start with the fix;
- a collector starting with an empty WAL numbers its segments above the highest one of
  its id already in the lake (found in the partitions changed since its previous start,
  `last-start`; for a new or wiped data directory, in all).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from flagscope.collector.errors import ConfigError
from flagscope.collector.lake.durable import fsync_dir, write_atomically
from flagscope.collector.lake.layout import covered_seq, lake_files

CLAIMS = ".writers"
IDENTITY = "collector-id"
LAST_START = "last-start"  # when the collector of this data directory last started


def identity(data_dir: Path) -> str:
    """This data directory's identity, made on first use (kept with the WAL it names)."""
    path = data_dir / IDENTITY
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = uuid.uuid4().hex
    write_atomically(path, lambda handle: handle.write(value.encode()))
    fsync_dir(data_dir)
    return value


def claim(lake: Path, writer: str, owner: str) -> None:
    """Record that `owner` writes the lake's files of `writer`; ConfigError if another
    collector does."""
    claims = lake / CLAIMS
    claims.mkdir(parents=True, exist_ok=True)
    path = claims / writer
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        holder = path.read_text().strip()
        if holder == owner:
            return
        if not holder:  # a crash between creating and writing the claim: ours to take
            write_atomically(path, lambda handle: handle.write(owner.encode()))
            return
        raise ConfigError(
            f"writer id {writer!r} already belongs to another collector of lake {lake} "
            f"(its data directory holds {IDENTITY} {holder}): give each collector its own "
            "writer_id ([lake] writer_id in flagscope.toml, or FLAGSCOPE_WRITER_ID). If "
            f"that collector's data directory is gone for good, delete {path} to reuse the id"
        ) from None
    try:
        os.write(fd, owner.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(claims)


def highest_seq(lake: Path, writer: str, changed_since: float | None = None) -> int:
    """The highest WAL segment number that `writer`'s files in the lake hold data of.

    With `changed_since` (seconds since the epoch: the previous start) only the hour
    partitions whose directory changed since then are listed, not the whole lake: a lake
    file is created or renamed into its partition, which sets the directory's time, so a
    partition unchanged since then holds no file the previous run wrote."""
    (paths,) = lake_files(lake, "*.parquet", changed_since=changed_since)
    seqs = (covered_seq(path.stem, writer) for path in paths)
    return max((seq for seq in seqs if seq is not None), default=0)


def last_start(data_dir: Path) -> float | None:
    """When this data directory's collector last started and finished its start-up clean-up
    (seconds since the epoch), or None if unknown."""
    try:
        return float((data_dir / LAST_START).read_text())
    except (FileNotFoundError, ValueError):
        return None


def record_start(data_dir: Path, started: float) -> None:
    write_atomically(data_dir / LAST_START, lambda handle: handle.write(f"{started:.3f}".encode()))
