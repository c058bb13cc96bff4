"""The testers of each lake file, read once per process.

A diff excludes every user ever marked as a tester, so it reads the testers table of every
lake file (`narrow`). A long-running reader — the guard's looks each minute, the web view —
opened all of them at every diff: 720 files for a 30-day lake compacted to one an hour,
thousands before compaction. A table never changes under its name (a replay or compaction
writes a new file and renames it into place: a new inode), so what was read is kept, keyed
by the file's identity (device, inode, times, size), and only files not seen before are
read. Entries of files since removed stay until the cache holds `_LIMIT` files, when it
starts again: a few bytes each.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import duckdb

from flagscope.collector.lake.read import sql_list

_LIMIT = 100_000  # files kept; past it the cache starts again (a lake rarely holds more)
Identity = tuple[int, int, int, int, int]
_kept: dict[str, tuple[Identity, frozenset[str]]] = {}
_lock = threading.Lock()
TABLE = "_fs_testers"


def _identity(path: str) -> Identity | None:
    try:
        status = os.stat(path)
    except OSError:  # gone: DuckDB, reading it, raises what the readers retry or report
        return None
    return status.st_dev, status.st_ino, status.st_mtime_ns, status.st_ctime_ns, status.st_size


def _read(con: duckdb.DuckDBPyConnection, paths: list[str]) -> dict[str, frozenset[str]]:
    """The user ids of each of `paths` (one DuckDB scan of them all)."""
    files = sql_list([Path(p) for p in paths])
    rows = con.execute(
        f"SELECT filename, list(user_id) FROM read_parquet({files}, filename = true, "
        "hive_partitioning = false) GROUP BY filename"
    ).fetchall()
    found = dict.fromkeys(paths, frozenset[str]())
    found.update({name: frozenset(users) for name, users in rows})
    return found


def cached(con: duckdb.DuckDBPyConnection, paths: list[Path]) -> str:
    """A table on `con` holding the `user_id`s of the testers tables at `paths`, once
    each: those read before as they were kept, the others read now (and kept)."""
    users: set[str] = set()
    unseen: dict[str, Identity | None] = {}
    for path in map(str, paths):
        identity = _identity(path)
        with _lock:
            hit = _kept.get(path)
        if hit is not None and identity is not None and hit[0] == identity:
            users |= hit[1]
        else:
            unseen[path] = identity
    if unseen:
        read = _read(con, list(unseen))
        with _lock:
            if len(_kept) + len(read) > _LIMIT:
                _kept.clear()
            for path, found in read.items():
                users |= found
                identity = unseen[path]
                if identity is not None:
                    _kept[path] = (identity, found)
    # one table a connection: a reader defining its views again (the incremental stage,
    # hour by hour) replaces it with the views
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {TABLE} AS SELECT unnest($users::VARCHAR[]) AS user_id",
        {"users": sorted(users)},
    )
    return TABLE
