"""Kept summaries on disk: one directory per (what, hour), its tables as Parquet files and
a manifest naming the lake files they were computed from.

A summary is used only while its fingerprint — the number of rows in each hour partition
it read (from the lake files' footers) — is the lake's: a file added (late data, a
second collector, a re-imported quarantine) changes it, and the hour is summarised
again; compaction, which rewrites files but keeps their rows, does not. Entries are
written under a temporary name and renamed into place; a run that dies half way leaves
at worst a stale entry, which the next run replaces.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flagscope.collector.lake.durable import write_atomically
from flagscope.collector.lake.layout import partition_of

# Bumped whenever what a summary holds or how it is computed changes: older entries are
# then recomputed, never misread.
VERSION = 2
_EPOCH = datetime(1970, 1, 1)
_MANIFEST = "manifest.json"


def hour_index(hour: datetime) -> int:
    return int((hour - _EPOCH) // timedelta(hours=1))


class RowCounts:
    """Rows per lake file from its Parquet footer, remembered by (name, size, mtime) in
    `path` so that a run reads the footers of new files only; and per hour partition, once
    a run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._known: dict[str, list[int]] = json.loads(path.read_text())
        except (OSError, ValueError):
            self._known = {}
        self._seen: dict[str, list[int]] = {}
        self._partitions: dict[tuple[Path, int], str] = {}

    def _rows(self, file: os.DirEntry[str], partition: str) -> int:
        info = file.stat()
        key = f"{partition}/{file.name}"
        known = self._known.get(key)
        if known is None or known[:2] != [info.st_size, info.st_mtime_ns]:
            try:
                count = pq.read_metadata(file.path).num_rows
            except (OSError, pa.ArrowException):
                count = -info.st_size  # unreadable (being replaced): changes the print
            known = [info.st_size, info.st_mtime_ns, count]
        self._seen[key] = known
        return known[2]

    def _partition(self, lake: Path, index: int) -> str:
        if (lake, index) not in self._partitions:
            partition = partition_of(index)
            try:
                entries = list(os.scandir(lake / partition))
            except FileNotFoundError:
                entries = []
            files = [
                e
                for e in entries
                if e.name.endswith(".parquet") and not e.name.startswith(("_", "."))
            ]
            rows = sum(self._rows(f, partition) for f in files)
            self._partitions[lake, index] = f"{index}:{len(files) > 0}:{rows}"
        return self._partitions[lake, index]

    def fingerprint(self, lake: Path, hour: datetime, neighbours: int) -> str:
        """The rows in each partition of `hour` ± `neighbours`: late data (more rows)
        changes it; compaction, which rewrites files and keeps their rows, does not."""
        index = hour_index(hour)
        return ",".join(
            self._partition(lake, h) for h in range(index - neighbours, index + neighbours + 1)
        )

    def save(self) -> None:
        """Keep what this run saw (files since removed are forgotten)."""
        if self._seen != self._known:
            data = json.dumps(self._seen).encode()
            write_atomically(self.path, lambda handle: handle.write(data))
            self._known = dict(self._seen)


def safe_name(text: str) -> str:
    """A directory name for a flag or variant key (attacker-controlled telemetry)."""
    kept = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:40].strip(".")
    return f"{kept or 'x'}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


class Store:
    """Summaries under `root` (a report's `<out_dir>/.summaries`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / f"v{VERSION}"

    def entry(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def load(self, entry: Path, expected: str) -> dict[str, Path] | None:
        """The entry's table files, if it was computed from the lake as it is now."""
        found = self.load_any(entry)
        return found[1] if found is not None and found[0] == expected else None

    def load_any(self, entry: Path) -> tuple[str, dict[str, Path]] | None:
        """The entry's fingerprint and table files, whatever lake they came from."""
        try:
            manifest = json.loads((entry / _MANIFEST).read_text())
            files = {name: entry / f"{name}.parquet" for name in manifest["tables"]}
            print_ = str(manifest["fingerprint"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (print_, files) if all(f.exists() for f in files.values()) else None

    def save(self, entry: Path, tables: dict[str, pa.Table], print_: str) -> dict[str, Path]:
        """Write the entry whole, then rename it into place (replacing an older one)."""
        entry.parent.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:8]
        staging = entry.with_name(f".{entry.name}.{token}.tmp")
        staging.mkdir()
        for name, table in tables.items():
            pq.write_table(table, staging / f"{name}.parquet", compression="zstd")
        manifest = {"version": VERSION, "fingerprint": print_, "tables": sorted(tables)}
        (staging / _MANIFEST).write_text(json.dumps(manifest))
        if entry.exists():
            retired = entry.with_name(f".{entry.name}.{token}.old")
            entry.rename(retired)
            shutil.rmtree(retired, ignore_errors=True)
        try:
            staging.rename(entry)
        except OSError:  # another run put the same hour in place meanwhile: keep theirs
            shutil.rmtree(staging, ignore_errors=True)
        return {name: entry / f"{name}.parquet" for name in tables}
