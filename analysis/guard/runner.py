"""`flagscope guard`: watch a rollout and roll a harmful flag back before anyone is paged.

Each look compares the flag's treatment with its baseline over the window from the start
of the rollout's current stage (guard.looks: the first stage from the treatment's first
evaluation in the lake, or `since`; a new one whenever the flagd file's split changes) to
now, with one-sided always-valid bounds (`DiffOptions(one_sided=True, sequential=True)` at
twice the one-sided alpha, stats.sequential): watching every minute for a week keeps the
chance of calling a harmless flag harmful at alpha. A declared ramp of k stages gives each
stage alpha/k, so the whole rollout keeps alpha. Each stage is compared on its own: the
users a ramp moves from baseline to treatment would otherwise be crossovers, and the split
the sample-ratio check expects is the stage's.

Only REGRESSION acts — never UNHEALTHY, NO_DATA or INCONCLUSIVE — and once per episode:

- the flag's flagd definition is rewritten so everyone gets the baseline (guard.flagd);
- the webhook gets a Slack-compatible message, the command hook the look's JSON on stdin;
- every action, and every would-be action of `dry_run`, is appended to the audit log
  (one JSON line: when, which flag, the verdict, its numbers, what changed).

Notifications go through an outbox (schedule.outbox): sent at the end of each round of
looks, all at once; one that fails is retried at the next round, and recorded in the audit
log either way. A guard whose looks keep failing alerts once (and once when they work
again); entering UNHEALTHY alerts once. With `advance_after`, a stage whose harm has been
ruled out (PASS) for that long is advanced to the ramp's next share in the flagd file.
A flag rolled back by this guard (the audit log says so) is not rolled back again.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flagscope.analysis import report_archive
from flagscope.analysis.diff import run_diff
from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.flags import list_flags
from flagscope.analysis.guard import flagd, slo
from flagscope.analysis.guard.looks import LookHistory, Stage, record
from flagscope.analysis.result import (
    DEFAULT_EXPECTED_USERS,
    DiffOptions,
    DiffResult,
    TrafficFilter,
)
from flagscope.analysis.schedule import webhook
from flagscope.analysis.schedule.outbox import Delivery, Outbox
from flagscope.analysis.verdict import EXIT_CODES, Thresholds, Verdict, worst_exit_code
from flagscope.analysis.window import aware_utc, iso_z, naive_utc
from flagscope.collector.errors import FlagscopeError

log = logging.getLogger(__name__)
COMMAND_TIMEOUT_S = 30.0
ROLLED_BACK = "rolled_back"
ADVANCED = "advanced"


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
    ramp: tuple[float, ...] = ()  # the treatment's stages in percent, e.g. (1, 5, 25, 100)
    advance_after: timedelta | None = None  # None: never advance the ramp
    slos: tuple[slo.Slo, ...] = ()  # say how bad in error-budget terms (guard.slo)

    @property
    def stage_alpha(self) -> float:
        return self.alpha / max(1, len(self.ramp))


@dataclass(frozen=True)
class LookOutcome:
    flag: str
    at: datetime
    verdict: Verdict | None  # None: the look failed (error)
    summary: str
    actions: tuple[str, ...] = ()
    error: str | None = None
    stage: Stage | None = None
    notified: bool | None = None  # None: nothing sent this round; else whether it went out
    severity: slo.Severity | None = None  # None: no SLO declared (or none assessable)
    budget: tuple[str, ...] = ()  # each SLO's sentence

    @property
    def exit_code(self) -> int:
        return 2 if self.verdict is None else EXIT_CODES[self.verdict]

    def line(self) -> str:
        what = self.error if self.verdict is None else f"{self.verdict.value} — {self.summary}"
        actions = list(self.actions)
        if self.notified is not None:
            actions.append("notified" if self.notified else "notification failed; retried")
        done = f" [{'; '.join(actions)}]" if actions else ""
        where = f" {self.stage.label()}" if self.stage is not None else ""
        budget = "".join(f"\n  {sentence}" for sentence in self.budget)
        return f"{self.at:%Y-%m-%d %H:%M:%S}Z {self.flag}{where}: {what}{done}{budget}"


class Guard:
    """Looks at the guarded flags and acts. State under `state_dir`: `audit.jsonl` (unless
    `audit_log` says otherwise), `<flag>/looks.jsonl`, `outbox.jsonl`."""

    def __init__(
        self,
        lake_dir: Path,
        specs: Sequence[GuardSpec],
        state_dir: Path,
        *,
        audit_log: Path | None = None,
        notify: Callable[..., bool] = webhook.notify,
        webhook_timeout_s: float = 5.0,
    ) -> None:
        self.lake_dir = lake_dir
        self.specs = tuple(specs)
        self.state_dir = Path(state_dir)
        self.audit_log = audit_log or self.state_dir / "audit.jsonl"
        # one quick retry inside a round; what still fails waits for the next round
        self.outbox = Outbox(
            self.state_dir / "outbox.jsonl", notify, timeout_s=webhook_timeout_s, retries=1
        )
        self._histories: dict[str, LookHistory] = {}

    def history(self, flag: str) -> LookHistory:
        if flag not in self._histories:
            directory = self.state_dir / report_archive.flag_dir_name(flag)
            self._histories[flag] = LookHistory(directory / "looks.jsonl")
        return self._histories[flag]

    # -- the rounds ------------------------------------------------------------------------
    def look_all(self, now: datetime | None = None) -> list[LookOutcome]:
        """One look at every flag, then one delivery round of the notifications."""
        at = aware_utc(now or utc_now())
        return self.deliver([self._look(spec, at) for spec in self.specs], at)

    def look(self, spec: GuardSpec, now: datetime | None = None) -> LookOutcome:
        """One flag's look and the delivery of what it (and earlier rounds) has to say."""
        at = aware_utc(now or utc_now())
        return self.deliver([self._look(spec, at)], at)[0]

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

    def deliver(self, outcomes: list[LookOutcome], now: datetime) -> list[LookOutcome]:
        if not self.outbox.path.exists():
            return outcomes
        deliveries = self.outbox.deliver(self.webhook_for, now)
        for delivery in deliveries:
            self._audit(_delivery_record(delivery, now))
        state = {d.flag: d.state == "sent" for d in deliveries}
        return [replace(o, notified=state[o.flag]) if o.flag in state else o for o in outcomes]

    def webhook_for(self, flag: str) -> str | None:
        return next((s.webhook_url for s in self.specs if s.flag == flag), None)

    # -- one look --------------------------------------------------------------------------
    def _look(self, spec: GuardSpec, at: datetime) -> LookOutcome:
        """Compare, and act. A failure of this flag's look is returned as an outcome (and
        logged), never raised: the other flags are still watched."""
        history = self.history(spec.flag)
        previous = history.last()
        try:
            done = self.rolled_back(spec)
            if done is not None:
                return LookOutcome(spec.flag, at, Verdict.REGRESSION, f"rolled back at {done}")
            outcome, result = self._compare(spec, history, at)
        except FlagscopeError as exc:
            log.warning("guard %s: %s", spec.flag, exc)
            return self._failed(spec, history, previous, at, str(exc))
        except Exception as exc:  # one flag's bug must not stop the watch of the others
            log.exception("guard %s: look failed", spec.flag)
            return self._failed(spec, history, previous, at, f"look failed: {exc!r}")
        if result is None:
            return outcome
        assessments = self.assess(spec, result, outcome.stage, at)
        outcome = replace(
            outcome,
            severity=_worst_severity(assessments),
            budget=tuple(a.sentence for a in assessments),
        )
        actions: tuple[str, ...] = ()
        entering = (  # act once per episode: a new verdict, or a new stage (or rollout)
            previous is None
            or previous.get("verdict") != result.verdict.value
            or (outcome.stage is not None and previous.get("stage") != outcome.stage.number)
        )
        if result.verdict is Verdict.REGRESSION and entering:
            actions = self.act(spec, result, at, outcome.stage, assessments)
            if outcome.stage is not None and self.rolled_back(spec) is not None:
                # the rollback is a stage of its own (0 %): a later rollout starts afresh
                after = Stage(outcome.stage.number + 1, 0.0, naive_utc(at))
                self.history(spec.flag).add(
                    record(at, after, result.verdict.value, "rolled back",
                           variant=result.options.variant, baseline=result.options.baseline)
                )  # fmt: skip
        elif result.verdict is Verdict.UNHEALTHY and entering:
            self._say(spec, at, f"the comparison is broken, nothing done: {result.summary}")
        elif result.verdict is Verdict.PASS and outcome.stage is not None:
            actions = self.advance(spec, result, at, outcome.stage)
        if previous is not None and previous.get("error") and result.verdict not in (
            Verdict.REGRESSION, Verdict.UNHEALTHY
        ):  # fmt: skip
            self._say(spec, at, f"looks work again: {result.summary}")
        return replace(outcome, actions=actions)

    def _compare(
        self, spec: GuardSpec, history: LookHistory, at: datetime
    ) -> tuple[LookOutcome, DiffResult | None]:
        split = self.split(spec)
        last = history.last()
        treatment = spec.variant or (last or {}).get("variant")
        percent = None if split is None or treatment is None else 100 * split.get(treatment, 0.0)
        start = None if history.last_stage() else spec.since or self.rollout_start(spec)
        stage = history.stage(percent, start, at)
        if stage is None:
            return LookOutcome(spec.flag, at, Verdict.NO_DATA, "treatment not evaluated yet"), None
        if stage.start >= naive_utc(at):  # a new stage, seen first at this look
            text = f"{stage.label()} begins: nothing to compare yet"
            history.add(record(at, stage, Verdict.NO_DATA.value, text, variant=treatment))
            return LookOutcome(spec.flag, at, Verdict.NO_DATA, text, stage=stage), None
        options = self.options(spec, stage.start, at, split)
        if stage.number > 1:  # the users this stage moved over are not its crossovers
            options = replace(options, evaluations_from=stage.start)
        result = run_diff(self.lake_dir, options)
        if stage.percent is None and split is not None:  # the first look names the treatment
            stage = replace(stage, percent=100 * split.get(result.options.variant or "", 0.0))
        history.add(
            record(
                at, stage, result.verdict.value, result.summary,
                variant=result.options.variant, baseline=result.options.baseline,
            )
        )  # fmt: skip
        return LookOutcome(spec.flag, at, result.verdict, result.summary, stage=stage), result

    def _failed(
        self,
        spec: GuardSpec,
        history: LookHistory,
        previous: dict[str, Any] | None,
        at: datetime,
        error: str,
    ) -> LookOutcome:
        stage = history.last_stage()
        try:
            history.add(record(at, stage, None, "", error=error))
            if previous is None or not previous.get("error"):  # alert once, not every minute
                self._say(spec, at, f"looks are failing: {error}", failing=True)
        except OSError as exc:
            log.error("guard %s: cannot record the failed look: %s", spec.flag, exc)
        return LookOutcome(spec.flag, at, None, "", error=error, stage=stage)

    def split(self, spec: GuardSpec) -> dict[str, float] | None:
        """The intended shares: declared, else the flagd file's fractional weights."""
        if spec.expected_split is not None or spec.flagd_file is None:
            return spec.expected_split
        definition = flagd.read_flags(spec.flagd_file).get(spec.flag)
        return None if definition is None else flagd.expected_split(definition)

    def options(
        self,
        spec: GuardSpec,
        start: datetime,
        end: datetime,
        split: dict[str, float] | None = None,
    ) -> DiffOptions:
        return DiffOptions(
            spec.flag,
            start,
            end,
            variant=spec.variant,
            baseline=spec.baseline,
            test_mode=spec.test_mode,
            alpha=2 * spec.stage_alpha,  # each end a one-sided bound at the stage's alpha
            sequential=True,
            one_sided=True,
            expected_users=spec.expected_users,
            expected_split=split if split is not None else self.split(spec),
            thresholds=spec.thresholds,
        )

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

    def assess(
        self, spec: GuardSpec, result: DiffResult, stage: Stage | None, now: datetime
    ) -> list[slo.SloAssessment]:
        """Each declared SLO's view of the flag over the windows since the stage began. An
        SLO that cannot be assessed (its service is not in the lake) is logged, not fatal:
        the rollback must not wait on a typo in an SLO."""
        variant, baseline = result.options.variant, result.options.baseline
        if not spec.slos or variant is None or baseline is None:
            return []
        found = []
        for objective in spec.slos:
            try:
                found.append(
                    slo.assess(
                        self.lake_dir, objective, spec.flag, variant, baseline,
                        None if stage is None else stage.start, now, spec.test_mode,
                    )
                )  # fmt: skip
            except FlagscopeError as exc:
                log.warning("guard %s: SLO %s not assessed: %s", spec.flag, objective.name, exc)
        return found

    # -- acting ----------------------------------------------------------------------------
    def act(
        self,
        spec: GuardSpec,
        result: DiffResult,
        now: datetime,
        stage: Stage | None = None,
        assessments: Sequence[slo.SloAssessment] = (),
    ) -> tuple[str, ...]:
        baseline = result.options.baseline or ""
        entry = self._entry(spec, result, now, stage)
        level = _worst_severity(assessments)
        entry["severity"] = None if level is None else str(level)
        entry["slo"] = [a.to_dict() for a in assessments]
        actions: list[str] = []
        if spec.flagd_file is not None:
            change = flagd.roll_back(spec.flagd_file, spec.flag, baseline, spec.dry_run)
            entry["change"] = {"file": str(change.path), "before": change.before,
                               "after": change.after}  # fmt: skip
            verb = "would roll back" if spec.dry_run else "rolled back"
            actions.append(f"{verb} {spec.flag} to {baseline!r} in {change.path}")
            if not spec.dry_run:
                entry["action"] = ROLLED_BACK
        if spec.webhook_url:
            if spec.dry_run:
                actions.append(f"would notify {webhook.redact(spec.webhook_url)}")
            else:
                text = _summary(result, actions, [a.sentence for a in assessments])
                entry["notification"] = self._say(spec, now, text, severity=level)
                actions.append("notification queued")
        if spec.command:
            if spec.dry_run:
                actions.append(f"would run {spec.command!r}")
            else:
                entry["command"] = self.run_command(spec.command, entry)
                actions.append(f"command exit {entry['command']['exit_code']}")
        entry["actions"] = actions
        self._audit(entry)
        return tuple(actions)

    def advance(
        self, spec: GuardSpec, result: DiffResult, now: datetime, stage: Stage
    ) -> tuple[str, ...]:
        """With `advance_after`: once this stage's harm has been ruled out that long, set
        the flagd file to the ramp's next share. Off by default."""
        if spec.advance_after is None or spec.flagd_file is None or stage.percent is None:
            return ()
        later = [p for p in spec.ramp if p > stage.percent + 1e-9]
        since = self.history(spec.flag).harm_ruled_out_since(stage)
        if not later or since is None or naive_utc(now) - since < spec.advance_after:
            return ()
        variant, baseline = result.options.variant or "", result.options.baseline or ""
        change = flagd.set_share(
            spec.flagd_file, spec.flag, variant, baseline, later[0], spec.dry_run
        )
        verb = "would advance" if spec.dry_run else "advanced"
        action = f"{verb} {spec.flag} from {stage.percent:g} % to {later[0]:g} % {variant!r}"
        entry = self._entry(spec, result, now, stage)
        entry.update(
            change={"file": str(change.path), "before": change.before, "after": change.after},
            actions=[action],
            **({} if spec.dry_run else {"action": ADVANCED}),
        )
        self._audit(entry)
        if not spec.dry_run:
            self._say(spec, now, f"{action}: harm ruled out since {iso_z(since)}")
        return (action,)

    def _entry(
        self, spec: GuardSpec, result: DiffResult, now: datetime, stage: Stage | None
    ) -> dict[str, Any]:
        return {
            "at": iso_z(naive_utc(now)),
            "flag": spec.flag,
            "verdict": result.verdict.value,
            "summary": result.summary,
            "reason": result.reason,
            "treatment_variant": result.options.variant,
            "baseline_variant": result.options.baseline or "",
            "stage": None if stage is None else {"number": stage.number, "percent": stage.percent,
                                                 "start": iso_z(stage.start)},
            "dry_run": spec.dry_run,
            "result": result.to_dict(),
        }  # fmt: skip

    def _say(
        self,
        spec: GuardSpec,
        now: datetime,
        text: str,
        failing: bool = False,
        severity: slo.Severity | None = None,
    ) -> str | None:
        """Queue a message for the flag's webhook (none configured, or a dry run: nothing).
        A severity leads the text (`[PAGE]`, `[TICKET]`), so a chat rule can route it."""
        if not spec.webhook_url or spec.dry_run:
            return None
        lead = "" if severity in (None, slo.Severity.NONE) else f"[{str(severity).upper()}] "
        payload = (
            webhook.failing_payload(spec.flag, text)
            if failing
            else {
                "text": f"{lead}flagscope guard `{webhook.escape(spec.flag)}`: "
                f"{webhook.escape(text)}"
            }
        )
        return self.outbox.add(spec.flag, payload, now)

    @staticmethod
    def run_command(command: str, entry: dict[str, Any]) -> dict[str, Any]:
        """The command hook, with the look's JSON on stdin; its exit code (or why none)."""
        import orjson

        try:
            done = subprocess.run(
                command,
                shell=True,  # the operator's own command line, from their config
                input=orjson.dumps(entry),
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
    def _audit(self, entry: dict[str, Any]) -> None:
        self.audit_log.parent.mkdir(parents=True, exist_ok=True)
        report_archive.append_line(self.audit_log, entry)

    def rolled_back(self, spec: GuardSpec) -> str | None:
        """When this guard rolled the flag back (the audit log's last record saying so), as
        long as the rollback holds: once someone rolls the flag out again (its definition in
        the flagd file is no longer what the rollback wrote), the guard watches it anew."""
        for entry in reversed(report_archive.read_jsonl(self.audit_log)):
            if entry.get("flag") == spec.flag and entry.get("action") == ROLLED_BACK:
                written = (entry.get("change") or {}).get("after")
                if (
                    spec.flagd_file is not None
                    and written is not None
                    and flagd.flag_text(spec.flagd_file, spec.flag) != written
                ):
                    return None  # rolled out again
                return str(entry.get("at"))
        return None


def _summary(result: DiffResult, actions: Sequence[str], budget: Sequence[str] = ()) -> str:
    done = "; ".join(actions) or "no rollback configured"
    return "\n".join([f"{result.summary} — {done}", *budget])


_SEVERITY_ORDER = (slo.Severity.NONE, slo.Severity.TICKET, slo.Severity.PAGE)


def _worst_severity(assessments: Sequence[slo.SloAssessment]) -> slo.Severity | None:
    if not assessments:
        return None
    return max((a.severity for a in assessments), key=_SEVERITY_ORDER.index)


def _delivery_record(delivery: Delivery, now: datetime) -> dict[str, Any]:
    return {
        "at": iso_z(naive_utc(now)),
        "flag": delivery.flag,
        "notification": delivery.state,
        "notification_id": delivery.id,
        "problem": delivery.problem,
    }


def worst(outcomes: Sequence[LookOutcome]) -> int:
    """The exit code of a round of looks: the worst verdict's, 2 for a failed look."""
    if not outcomes:
        raise AnalysisError("no flag to guard: pass --flag")
    return worst_exit_code([o.exit_code for o in outcomes])
