"""Durable files, for the WAL, the lake and the reports: a reader sees all or nothing, and
what was published survives a crash."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def publish(handle: BinaryIO, path: Path) -> None:
    """Make the file written through `handle` (open on a temporary name beside `path`)
    durable under `path`: fsync, close, rename into place, fsync the directory. Readers
    see all or nothing."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.replace(handle.name, path)
    fsync_dir(path.parent)


def write_atomically(
    path: Path, write: Callable[[BinaryIO], object], tmp: Path | None = None
) -> None:
    """`write(file)` under `tmp` (default `<name>.tmp` beside `path`), then `publish` it
    as `path`. A failed write leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp or path.with_name(path.name + ".tmp")
    handle = open(tmp, "wb")  # noqa: SIM115 - publish() closes it
    try:
        write(handle)
        publish(handle, path)
    except BaseException:
        handle.close()
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
