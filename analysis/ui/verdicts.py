"""A flag's verdicts over time, from what already judged it: the scheduled reports'
`history.jsonl` (report_archive) and the guard's `looks.jsonl` (guard.looks).

Both are files of JSON lines that only grow; a torn or corrupt line is skipped, and only
the last `MAX_POINTS` of each are read into a page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from flagscope.analysis import report_archive
from flagscope.analysis.guard.looks import LookHistory
from flagscope.analysis.verdict import Verdict
from flagscope.analysis.window import naive_utc, parse_time

MAX_POINTS = 2000
REPORT, GUARD, COMPUTED = "scheduled report", "guard look", "computed from the lake"


@dataclass(frozen=True)
class VerdictPoint:
    at: datetime  # naive UTC
    verdict: Verdict | None  # None: that run or look failed
    summary: str
    source: str  # REPORT or GUARD
    detail: str = ""  # the error of a failed run, a guard look's stage


def report_points(reports_dir: Path, flag: str) -> list[VerdictPoint]:
    """The scheduled reports' runs of `flag` (not their notification lines), oldest first."""
    points = []
    for entry in report_archive.read_history(reports_dir, flag)[-MAX_POINTS:]:
        if "verdict" not in entry:  # a notification attempt, not a run
            continue
        point = _point(entry, "time", REPORT, entry.get("error") or "")
        if point is not None:
            points.append(point)
    return points


def guard_points(guard_dir: Path, flag: str) -> list[VerdictPoint]:
    """The guard's looks at `flag`, oldest first."""
    path = guard_dir / report_archive.flag_dir_name(flag) / "looks.jsonl"
    points = []
    for entry in LookHistory(path).looks[-MAX_POINTS:]:
        stage = entry.get("stage")
        percent = entry.get("percent")
        detail = entry.get("error") or (
            f"stage {stage}" + (f" at {percent:g} %" if isinstance(percent, int | float) else "")
            if isinstance(stage, int)
            else ""
        )
        point = _point(entry, "at", GUARD, detail)
        if point is not None:
            points.append(point)
    return points


def latest(points: list[VerdictPoint]) -> VerdictPoint | None:
    """The newest point that has a verdict."""
    judged = [p for p in points if p.verdict is not None]
    return max(judged, key=lambda p: p.at, default=None)


def _point(entry: dict[str, Any], time_key: str, source: str, detail: str) -> VerdictPoint | None:
    raw_time, raw_verdict = entry.get(time_key), entry.get("verdict")
    if not isinstance(raw_time, str):
        return None
    try:
        at = naive_utc(parse_time(raw_time, time_key))
    except Exception:  # noqa: BLE001 - a damaged line is skipped, not fatal
        return None
    verdict = (
        Verdict(raw_verdict)
        if isinstance(raw_verdict, str) and raw_verdict in Verdict.__members__
        else None
    )
    summary = entry.get("summary")
    return VerdictPoint(at, verdict, summary if isinstance(summary, str) else "", source, detail)


@dataclass(frozen=True)
class CurrentVerdict:
    """A flag's verdict as the flags page shows it, and where it came from."""

    verdict: Verdict | None
    summary: str
    source: str  # REPORT, GUARD, COMPUTED (over the last 24 h); "" when there is none (yet)
    at: datetime | None = None
    note: str = ""  # why there is none: still computing, or the problem met
    pending: bool = False
