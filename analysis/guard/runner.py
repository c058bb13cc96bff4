"""`flagscope guard`: watch a rollout and roll a harmful flag back before anyone is paged.

Each look compares the flag's treatment with its baseline over the window from the
rollout's start (the treatment's first evaluation in the lake, or `since`) to now, with
one-sided always-valid bounds (`DiffOptions(one_sided=True, sequential=True)` at twice the
guard's one-sided alpha, stats.sequential): watching every minute for a week keeps the
chance of calling a harmless flag harmful at alpha. Only REGRESSION acts — never
UNHEALTHY, NO_DATA or INCONCLUSIVE:

- the flag's flagd definition is rewritten so everyone gets the baseline (guard.flagd);
- the webhook gets a Slack-compatible message, the command hook the look's JSON on stdin;
- every action, and every would-be action of `dry_run`, is appended to the audit log
  (one JSON line: when, which flag, the verdict, its numbers, what changed).

A flag rolled back by this guard (the audit log says so) is not rolled back again.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flagscope.analysis import report_archive
from flagscope.analysis.diff import run_diff
from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.flags import list_flags
from flagscope.analysis.guard import flagd
from flagscope.analysis.result import (
    DEFAULT_EXPECTED_USERS,
    DiffOptions,
    DiffResult,
    TrafficFilter,
)
from flagscope.analysis.schedule import webhook
from flagscope.analysis.verdict import EXIT_CODES, Thresholds, Verdict
from flagscope.analysis.window import aware_utc, iso_z, naive_utc
from flagscope.collector.errors import FlagscopeError

log = logging.getLogger(__name__)
COMMAND_TIMEOUT_S = 30.0
ROLLED_BACK = "rolled_back"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class GuardSpec:
    """One guarded flag."""

    flag: str
    variant: str | None = None
    baseline: str | None = None
    since: datetime | None = None  # the rollout's start; None: treatment's first evaluation
    flagd_file: Path | None = None  # the definitions to roll back in; None: notify only
    alpha: float = 0.05  # one-sided: P(an A/A flag is ever called harmful) <= alpha
    thresholds: Thresholds = field(default_factory=Thresholds)
    expected_users: int = DEFAULT_EXPECTED_USERS
    expected_split: dict[str, float] | None = None  # None: from the flagd definition
    test_mode: TrafficFilter = TrafficFilter.EXCLUDE
    webhook_url: str | None = None
    command: str | None = None  # run through the shell, the look's JSON on stdin
    dry_run: bool = False


@dataclass(frozen=True)
class LookOutcome:
    flag: str
    at: datetime
    verdict: Verdict | None  # None: the look failed (error)
    summary: str
    actions: tuple[str, ...] = ()
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return 2 if self.verdict is None else EXIT_CODES[self.verdict]

    def line(self) -> str:
        what = self.error if self.verdict is None else f"{self.verdict.value} — {self.summary}"
        done = f" [{'; '.join(self.actions)}]" if self.actions else ""
        return f"{self.at:%Y-%m-%d %H:%M:%S}Z {self.flag}: {what}{done}"


class Guard:
    def __init__(
        self,
        lake_dir: Path,
        specs: Sequence[GuardSpec],
        audit_log: Path,
        *,
        notify: Callable[[str, dict[str, Any]], bool] = webhook.notify,
    ) -> None:
        self.lake_dir = lake_dir
        self.specs = tuple(specs)
        self.audit_log = audit_log
        self.notify = notify

    # -- one look --------------------------------------------------------------------------
    def look(self, spec: GuardSpec, now: datetime | None = None) -> LookOutcome:
        """Compare, and act on REGRESSION. A failure of this flag's look is returned as an
        outcome (logged), never raised: the other flags are still watched."""
        at = aware_utc(now or utc_now())
        try:
            done = self.rolled_back(spec.flag)
            if done is not None:
                return LookOutcome(spec.flag, at, Verdict.REGRESSION, f"rolled back at {done}")
            result = self.compare(spec, at)
            if result is None:
                return LookOutcome(spec.flag, at, Verdict.NO_DATA, "treatment not evaluated yet")
            actions = self.act(spec, result, at) if result.verdict is Verdict.REGRESSION else ()
            return LookOutcome(spec.flag, at, result.verdict, result.summary, actions)
        except FlagscopeError as exc:
            log.warning("guard %s: %s", spec.flag, exc)
            return LookOutcome(spec.flag, at, None, "", error=str(exc))
        except Exception as exc:  # one flag's bug must not stop the watch of the others
            log.exception("guard %s: look failed", spec.flag)
            return LookOutcome(spec.flag, at, None, "", error=f"look failed: {exc!r}")

    def options(self, spec: GuardSpec, start: datetime, end: datetime) -> DiffOptions:
        split = spec.expected_split
        if split is None and spec.flagd_file is not None:
            definition = flagd.read_flags(spec.flagd_file).get(spec.flag)
            split = None if definition is None else flagd.expected_split(definition)
        return DiffOptions(
            spec.flag,
            start,
            end,
            variant=spec.variant,
            baseline=spec.baseline,
            test_mode=spec.test_mode,
            alpha=2 * spec.alpha,  # each end a one-sided bound at spec.alpha
            sequential=True,
            one_sided=True,
            expected_users=spec.expected_users,
            expected_split=split,
            thresholds=spec.thresholds,
        )

    def compare(self, spec: GuardSpec, now: datetime) -> DiffResult | None:
        start = spec.since or self.rollout_start(spec)
        if start is None:
            return None
        return run_diff(self.lake_dir, self.options(spec, start, now))

    def rollout_start(self, spec: GuardSpec) -> datetime | None:
        """The treatment's first evaluation in the lake (any variant but the baseline when
        no treatment is named)."""
        seen = [
            v.first_seen
            for v in list_flags(self.lake_dir)
            if v.flag == spec.flag
            and (v.variant == spec.variant if spec.variant else v.variant != spec.baseline)
        ]
        return min(seen) if seen else None

    # -- acting ----------------------------------------------------------------------------
    def act(self, spec: GuardSpec, result: DiffResult, now: datetime) -> tuple[str, ...]:
        baseline = result.options.baseline or ""
        record: dict[str, Any] = {
            "at": iso_z(naive_utc(now)),
            "flag": spec.flag,
            "verdict": result.verdict.value,
            "summary": result.summary,
            "reason": result.reason,
            "treatment_variant": result.options.variant,
            "baseline_variant": baseline,
            "dry_run": spec.dry_run,
            "result": result.to_dict(),
        }
        actions: list[str] = []
        if spec.flagd_file is not None:
            change = flagd.roll_back(spec.flagd_file, spec.flag, baseline, spec.dry_run)
            record["change"] = {
                "file": str(change.path),
                "before": change.before,
                "after": change.after,
            }
            verb = "would roll back" if spec.dry_run else "rolled back"
            actions.append(f"{verb} {spec.flag} to {baseline!r} in {change.path}")
            if not spec.dry_run:
                record["action"] = ROLLED_BACK
        if spec.webhook_url:
            if spec.dry_run:
                actions.append(f"would notify {webhook.redact(spec.webhook_url)}")
            else:
                sent = self.notify(spec.webhook_url, self.message(result, actions))
                record["webhook"] = "sent" if sent else "failed"
                actions.append(f"webhook {record['webhook']}")
        if spec.command:
            if spec.dry_run:
                actions.append(f"would run {spec.command!r}")
            else:
                record["command"] = self.run_command(spec.command, record)
                actions.append(f"command exit {record['command']['exit_code']}")
        record["actions"] = actions
        self.audit_log.parent.mkdir(parents=True, exist_ok=True)
        report_archive.append_line(self.audit_log, record)
        return tuple(actions)

    @staticmethod
    def message(result: DiffResult, actions: Sequence[str]) -> dict[str, Any]:
        done = "; ".join(actions) or "no rollback configured"
        return {
            "text": f"flagscope guard: {webhook.escape(result.summary)} — {webhook.escape(done)}"
        }

    @staticmethod
    def run_command(command: str, record: dict[str, Any]) -> dict[str, Any]:
        """The command hook, with the look's JSON on stdin; its exit code (or why none)."""
        import orjson

        try:
            done = subprocess.run(
                command,
                shell=True,  # the operator's own command line, from their config
                input=orjson.dumps(record),
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"exit_code": None, "error": f"timed out after {COMMAND_TIMEOUT_S:g} s"}
        except OSError as exc:
            return {"exit_code": None, "error": str(exc)}
        return {
            "exit_code": done.returncode,
            "stderr": done.stderr[-2000:].decode(errors="replace"),
        }

    # -- the audit log -----------------------------------------------------------------------
    def rolled_back(self, flag: str) -> str | None:
        """When this guard rolled `flag` back (the audit log's last record saying so)."""
        for entry in reversed(report_archive.read_jsonl(self.audit_log)):
            if entry.get("flag") == flag and entry.get("action") == ROLLED_BACK:
                return str(entry.get("at"))
        return None

    # -- the watch ---------------------------------------------------------------------------
    def look_all(self, now: datetime | None = None) -> list[LookOutcome]:
        return [self.look(spec, now) for spec in self.specs]

    def run_forever(
        self,
        stop: threading.Event,
        every_s: float,
        report: Callable[[LookOutcome], None] = lambda _: None,
    ) -> None:
        while not stop.is_set():
            for outcome in self.look_all():
                report(outcome)
            stop.wait(every_s)


def worst(outcomes: Sequence[LookOutcome]) -> int:
    """The exit code of a round of looks: the worst verdict's, 2 for a failed look."""
    if not outcomes:
        raise AnalysisError("no flag to guard: pass --flag")
    return max(outcomes, key=lambda o: _RANK.get(o.exit_code, 0)).exit_code


# exit codes from the least to the most alarming (README's verdict table; 2: the look failed)
_RANK = {0: 0, 10: 1, 11: 2, 12: 3, 2: 4, 13: 5, 14: 6}
