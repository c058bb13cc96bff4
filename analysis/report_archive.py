"""Report files on disk: one directory per flag, a file per run, `latest.*`, and a history.

Layout under `out_dir` (one directory per flag; a flag key that is not a safe file name
gets a sanitized name plus a short hash):

    <flag>/20261128T0900Z.html    one file per run and format (html, md, json)
    <flag>/latest.html            the newest of each format, at a stable address
    <flag>/history.jsonl          one line per run: time, verdict, summary, files; and one
                                  per notification attempt: time, notification, problem
    <flag>/state.json             the last verdict, to detect a change
    index.html                    every flag's latest verdict, linked (render.index)

Every file is written under a temporary name, fsynced and renamed into place
(`os.replace`), so a reader or a web server never sees half a report and a crash leaves
the previous `latest.*` intact. A history line is appended with one write. Two processes
writing reports for the same flag at once are not coordinated.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.render import html, json, markdown, terminal
from flagscope.analysis.render import index as index_page
from flagscope.analysis.result import DiffResult
from flagscope.analysis.verdict import Verdict
from flagscope.analysis.window import aware_utc, iso_z
from flagscope.collector.lake import durable

log = logging.getLogger(__name__)

EXTENSIONS = {"html": "html", "md": "md", "json": "json"}  # format -> file extension
ALIASES = {"markdown": "md", "htm": "html"}
# format -> renderer ("table" is the terminal's, for `diff`)
RENDERERS: dict[str, Callable[[DiffResult], str]] = {
    "html": html.render,
    "md": markdown.render,
    "json": json.render,
    "table": terminal.render,
}
PREFERRED_LINK = ("html", "md", "json")  # which file a notification links to


@dataclass(frozen=True)
class ReportFiles:
    """What `write_report` wrote. Paths are under `out_dir`; `files`/`latest` by format."""

    flag: str
    directory: Path
    stamp: str  # the run's UTC timestamp as used in file names, e.g. 20261128T0900Z
    files: dict[str, Path]
    latest: dict[str, Path]
    history: Path
    state: Path
    verdict: Verdict
    previous_verdict: Verdict | None = None

    @property
    def changed(self) -> bool:
        """True when there was a previous run and its verdict differs."""
        return self.previous_verdict is not None and self.previous_verdict is not self.verdict

    def main_file(self) -> Path:
        """The file a notification points to: HTML if written, else Markdown, else JSON."""
        return next(self.files[f] for f in PREFERRED_LINK if f in self.files)


def normalize_formats(formats: Sequence[str], source: str = "formats") -> tuple[str, ...]:
    """Validate format names ('html', 'md' or 'markdown', 'json'), de-duplicated, in order."""
    if isinstance(formats, str):
        formats = [formats]
    out: list[str] = []
    for name in formats:
        key = ALIASES.get(str(name).lower(), str(name).lower())
        if key not in EXTENSIONS:
            raise AnalysisError(
                f"{source}: unknown report format {name!r}; choose from {', '.join(EXTENSIONS)}"
            )
        if key not in out:
            out.append(key)
    if not out:
        raise AnalysisError(f'{source}: no report format given; e.g. formats = ["html", "json"]')
    return tuple(out)


MAX_NAME = 100  # file systems allow 255 bytes per name; the stamp and extension follow


def flag_dir_name(flag: str) -> str:
    """A file name for the flag: the key itself when safe and short, else a sanitized,
    shortened key + a hash of the whole key (so two keys never share a directory)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", flag).strip(".") or "flag"
    if safe == flag and len(flag) <= MAX_NAME:
        return flag
    return f"{safe[:80]}-{hashlib.sha256(flag.encode()).hexdigest()[:8]}"


def stamp_of(now: datetime) -> str:
    """UTC minute stamp for file names: 20261128T0900Z (a naive `now` is UTC)."""
    return aware_utc(now).strftime("%Y%m%dT%H%MZ")


def render(result: DiffResult, fmt: str) -> str:
    """The report text in one format (a RENDERERS key or an alias such as "markdown")."""
    return RENDERERS[ALIASES.get(fmt, fmt)](result)


def write_report(
    result: DiffResult, out_dir: Path, formats: Sequence[str], now: datetime
) -> ReportFiles:
    """Write `result` in each format to `out_dir/<flag>/<stamp>.<ext>`, refresh
    `latest.<ext>`, append to `history.jsonl` and record the verdict in `state.json`.

    `formats`: 'html', 'md' (or 'markdown'), 'json'. `now`: the run's time (naive = UTC),
    which names the files. For charts in the HTML report, call
    `run_diff(..., charts=True)`. Returns the paths written and the verdict of the
    previous run (None on the first), so the caller can tell whether it changed.
    Re-running within the same minute adds seconds (and then a counter) to the name.
    """
    fmts = normalize_formats(formats)
    texts = {fmt: render(result, fmt) for fmt in fmts}  # all rendered before anything is written
    flag = result.options.flag
    directory = Path(out_dir) / flag_dir_name(flag)
    directory.mkdir(parents=True, exist_ok=True)
    previous = previous_verdict(out_dir, flag)
    stamp = _free_stamp(directory, now, fmts)
    files, latest = {}, {}
    for fmt, text in texts.items():
        ext = EXTENSIONS[fmt]
        files[fmt] = directory / f"{stamp}.{ext}"
        latest[fmt] = directory / f"latest.{ext}"
        for path, stem in ((files[fmt], stamp), (latest[fmt], "latest")):
            if fmt == "md" and "html" in texts:  # the Markdown points to its charts
                text_ = (
                    text.rstrip("\n") + f"\n\nCharts and every number: [{stem}.html]({stem}.html)\n"
                )
            else:
                text_ = text
            write_atomically(path, text_.encode())
    record = {
        "time": iso_z(now),
        "flag": flag,
        "verdict": result.verdict.value,
        "previous_verdict": previous.value if previous else None,
        "exit_code": result.exit_code,
        "summary": result.summary,
        "reason": result.reason,
        "window": {"start": iso_z(result.options.start), "end": iso_z(result.options.end)},
        "files": {fmt: p.name for fmt, p in files.items()},
    }
    history, state = directory / "history.jsonl", directory / "state.json"
    append_line(history, record)
    write_atomically(
        state,
        orjson.dumps(
            {k: record[k] for k in ("time", "flag", "verdict", "summary", "files")},
            option=orjson.OPT_INDENT_2,
        )
        + b"\n",
    )
    write_index(out_dir, now)
    return ReportFiles(
        flag, directory, stamp, files, latest, history, state, result.verdict, previous
    )


def record_failure(out_dir: Path, flag: str, now: datetime, error: str) -> Path:
    """Append a failed run to the flag's history (`verdict` null, `error` set); the state,
    and so the previous verdict a change is judged against, stays as it was."""
    directory = Path(out_dir) / flag_dir_name(flag)
    directory.mkdir(parents=True, exist_ok=True)
    history = directory / "history.jsonl"
    append_line(history, {"time": iso_z(now), "flag": flag, "verdict": None, "error": error})
    write_index(out_dir, now)
    return history


INDEX = "index.html"


def write_index(out_dir: Path, now: datetime) -> Path | None:
    """Rewrite `out_dir/index.html` from every flag directory's state and history. A
    failure to write it is logged, not raised: the report itself is already in place."""
    path = Path(out_dir) / INDEX
    try:
        write_atomically(path, index_page.render(index_entries(out_dir), iso_z(now)).encode())
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)
        return None
    return path


def index_entries(out_dir: Path) -> list[index_page.IndexEntry]:
    """One entry per flag directory under `out_dir` that has a run in its history."""
    entries = []
    for directory in sorted(p for p in Path(out_dir).iterdir() if p.is_dir()):
        runs = [h for h in read_jsonl(directory / "history.jsonl") if "verdict" in h]
        if not runs:
            continue
        good = next((h for h in reversed(runs) if h.get("verdict") in Verdict.__members__), None)
        last = runs[-1]
        failed = str(last.get("error") or "failed") if last.get("verdict") is None else None
        files = (good or {}).get("files") or {}
        ext = next((EXTENSIONS[f] for f in PREFERRED_LINK if f in files), None)
        target = f"latest.{ext}" if ext else "history.jsonl"
        entries.append(
            index_page.IndexEntry(
                flag=str(last.get("flag") or directory.name),
                verdict=Verdict(good["verdict"]) if good else None,
                summary=str(good.get("summary") or "") if good else "",
                time=str((good or last).get("time") or ""),
                link=f"{urllib.parse.quote(directory.name)}/{target}",
                failed=failed,
            )
        )
    return entries


def record_notification(
    out_dir: Path, flag: str, now: datetime, state: str, problem: str | None = None
) -> Path:
    """Append a notification attempt (`sent`, `failed` — retried later — or `expired`) to
    the flag's history; it has no `verdict` key, so it is not taken for a run."""
    directory = Path(out_dir) / flag_dir_name(flag)
    directory.mkdir(parents=True, exist_ok=True)
    history = directory / "history.jsonl"
    record = {"time": iso_z(now), "flag": flag, "notification": state, "problem": problem}
    append_line(history, record)
    return history


def previous_verdict(out_dir: Path, flag: str) -> Verdict | None:
    """The verdict of the flag's last successful run: state.json, else the history."""
    directory = Path(out_dir) / flag_dir_name(flag)
    try:
        return Verdict(orjson.loads((directory / "state.json").read_bytes())["verdict"])
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        log.warning("ignoring unreadable %s: %s", directory / "state.json", exc)
    for entry in reversed(read_history(out_dir, flag)):
        if entry.get("verdict") in Verdict.__members__:
            return Verdict(entry["verdict"])
    return None


def read_history(out_dir: Path, flag: str) -> list[dict[str, Any]]:
    """The flag's history, oldest first; a torn or corrupt line is skipped."""
    return read_jsonl(Path(out_dir) / flag_dir_name(flag) / "history.jsonl")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a file of lines, oldest first (none if it does not exist); a
    torn or corrupt line is skipped."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


# -- files ---------------------------------------------------------------------------------
def write_atomically(path: Path, data: bytes) -> None:
    durable.write_atomically(path, lambda handle: handle.write(data))


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write (O_APPEND), then fsync."""
    data = orjson.dumps(record) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        # A line torn by an earlier crash would swallow this one: start on a fresh line.
        if os.fstat(fd).st_size and not _ends_with_newline(path):
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _free_stamp(directory: Path, now: datetime, fmts: Sequence[str]) -> str:
    def taken(stem: str) -> bool:
        return any((directory / f"{stem}.{EXTENSIONS[f]}").exists() for f in fmts)

    stamp = stamp_of(now)
    if not taken(stamp):
        return stamp
    stamp = aware_utc(now).strftime("%Y%m%dT%H%M%SZ")
    n = 2
    candidate = stamp
    while taken(candidate):
        candidate, n = f"{stamp}-{n}", n + 1
    return candidate
