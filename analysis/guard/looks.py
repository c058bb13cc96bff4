"""The guard's memory of its looks: one JSON line per look and flag, and the ramp stages
read off it.

`<state_dir>/<flag>/looks.jsonl` (the flag's directory named as report_archive names it):

    {"at": …, "stage": 2, "percent": 25.0, "stage_start": …, "variant": "on",
     "baseline": "off", "verdict": "PASS", "summary": …, "error": null, "severity": …}

A stage is a stretch of the rollout at one treatment share (the flagd file's fractional
weights): the first begins at the rollout's start, each later one at the first look that
saw a new share. Its verdict is its last look's. The history also answers what the guard
must not repeat: a regression already acted on, a failure already alerted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from flagscope.analysis import report_archive
from flagscope.analysis.window import iso_z, naive_utc, parse_time


@dataclass(frozen=True)
class Stage:
    number: int  # 1 for the rollout's first share
    percent: float | None  # the treatment's share in the flagd file; None: not known
    start: datetime  # naive UTC

    def label(self) -> str:
        share = "share unknown" if self.percent is None else f"{self.percent:g} %"
        return f"stage {self.number} ({share} since {self.start:%Y-%m-%d %H:%M}Z)"


@dataclass(frozen=True)
class StageVerdict:
    stage: Stage
    end: datetime  # its last look
    verdict: str | None  # None: its last look failed


class LookHistory:
    """One flag's looks, read once from disk and then kept in memory as they are added."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._looks: list[dict[str, Any]] | None = None

    @property
    def looks(self) -> list[dict[str, Any]]:
        if self._looks is None:
            self._looks = report_archive.read_jsonl(self.path)
        return self._looks

    def last(self) -> dict[str, Any] | None:
        return self.looks[-1] if self.looks else None

    def add(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        report_archive.append_line(self.path, record)
        self.looks.append(record)

    def last_stage(self) -> Stage | None:
        """The stage of the last look that knew one (a failed look may not)."""
        for entry in reversed(self.looks):
            stage = _stage_of(entry)
            if stage is not None:
                return stage
        return None

    def stage(self, percent: float | None, start: datetime | None, at: datetime) -> Stage | None:
        """The stage a look at `at` belongs to: the last look's, unless the share changed
        (then a new one from `at`); the first stage begins at `start` (None: not yet)."""
        previous = self.last_stage()
        if previous is None:
            return None if start is None else Stage(1, percent, naive_utc(start))
        if percent is None or percent == previous.percent:
            return previous
        return Stage(previous.number + 1, percent, naive_utc(at))

    def harm_ruled_out_since(self, stage: Stage) -> datetime | None:
        """The first look of the unbroken run of PASS looks that ends this stage's last."""
        since = None
        for record in reversed(self.looks):
            if record.get("stage") != stage.number or record.get("verdict") != "PASS":
                break
            since = _time(record.get("at"))
        return since

    def stages(self) -> list[StageVerdict]:
        """Every stage so far with its verdict (its last look's), oldest first."""
        found: dict[int, StageVerdict] = {}
        for record in self.looks:
            stage = _stage_of(record)
            at = _time(record.get("at"))
            if stage is not None and at is not None:
                found[stage.number] = StageVerdict(stage, at, record.get("verdict"))
        return [found[n] for n in sorted(found)]


def record(
    at: datetime,
    stage: Stage | None,
    verdict: str | None,
    summary: str,
    *,
    variant: str | None = None,
    baseline: str | None = None,
    error: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "at": iso_z(naive_utc(at)),
        "stage": None if stage is None else stage.number,
        "percent": None if stage is None else stage.percent,
        "stage_start": None if stage is None else iso_z(stage.start),
        "variant": variant,
        "baseline": baseline,
        "verdict": verdict,
        "summary": summary,
        "error": error,
        **extra,
    }


def _stage_of(entry: dict[str, Any] | None) -> Stage | None:
    if entry is None or not isinstance(entry.get("stage"), int):
        return None
    start = _time(entry.get("stage_start"))
    percent = entry.get("percent")
    if start is None:
        return None
    return Stage(
        entry["stage"], float(percent) if isinstance(percent, int | float) else None, start
    )


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return naive_utc(parse_time(value, "looks.jsonl"))
    except Exception:  # noqa: BLE001 - a damaged line is skipped, not fatal
        return None
