"""Scheduled reports (`flagscope schedule`): each declared flag is diffed on its cron, the
report files written (flagscope.analysis.report_archive), and a webhook POSTed when the verdict changes.

Declared in flagscope.toml (the collector's loader leaves `[reports]` to this module):

    [reports]
    out_dir = "reports"                  # default "reports", relative to the working directory
    webhook_url = "https://hooks.slack.com/services/…"   # optional; FLAGSCOPE_WEBHOOK_URL overrides
    link_base = "https://reports.example.com/"          # optional: notifications link here
    trace_link = "https://jaeger.example/trace/{trace_id}"  # optional: example traces link there
    webhook_timeout_s = 5                # optional, per attempt
    webhook_retries = 3                  # optional, after the first attempt
    # any per-flag setting below may also be set here, as the default of every flag

    [[reports.flag]]
    flag = "new-checkout"                # required; one table per flag
    variant = "on"                       # optional, as `flagscope diff --variant`
    baseline = "off"                     # optional
    service = "shop-frontend"            # optional: only this service's requests
    route = "POST /checkout"             # optional: only this route
    window = "24h"                       # default 24h: the window ending at each run
    cron = "0 * * * *"                   # default hourly; five fields, UTC (flagscope.analysis.schedule.cron)
    formats = ["html", "md", "json"]     # default: all available
    expected_split = { on = 0.2, off = 0.8 }   # optional: sample-ratio-mismatch check
    error_threshold_pp = 0.5             # optional, default 0.5
    latency_threshold_pct = 5            # optional, default 5
    min_users = 50                       # optional, default 50
    max_crossover_share = 0.05           # optional, default 0.05
    alpha = 0.05                         # optional, default 0.05
    test_traffic = "exclude"             # optional: exclude (default), include, only
    incremental = true                   # default true: reuse per-hour summaries kept in
                                         # <out_dir>/.summaries (false: rescan the window)
    webhook_url = ""                     # optional: this flag's own hook; "" turns it off

Scheduled reports always use always-valid (sequential) intervals: they look repeatedly.
Notifications: when the verdict differs from the previous run's; on a flag's first run
only for REGRESSION or UNHEALTHY; once when a report starts failing (not at every failed
run) and once when it works again. They go through an outbox (schedule.outbox,
`<out_dir>/.notifications.jsonl`): a webhook that fails is recorded in the flag's history
and tried again at the next check (at least every minute), not forgotten.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flagscope.analysis import report_archive
from flagscope.analysis.diff import run_diff
from flagscope.analysis.different_query import with_differences
from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.example_query import with_examples
from flagscope.analysis.report_archive import ReportFiles
from flagscope.analysis.schedule import webhook
from flagscope.analysis.schedule.config import (
    ReportsConfig,
    ScheduledReport,
    load_config,
    parse_config,
)
from flagscope.analysis.schedule.cron import next_fire
from flagscope.analysis.schedule.outbox import Delivery, Outbox
from flagscope.analysis.verdict import Verdict
from flagscope.analysis.window import aware_utc
from flagscope.collector.errors import FlagscopeError

__all__ = [
    "ReportsConfig",
    "RunOutcome",
    "ScheduledReport",
    "Scheduler",
    "load_config",
    "next_fire",
    "parse_config",
    "should_notify",
]

log = logging.getLogger(__name__)
MAX_WAIT_S = 60.0  # run_forever re-reads the clock at least this often (clock jumps, suspend)
OUTBOX_NAME = ".notifications.jsonl"
ON_TIME = timedelta(minutes=1)  # a run this soon after its fire time is on time
SUMMARIES_NAME = ".summaries"  # kept per-hour summaries, reused by the next runs
FIRST_RUN_ALERTS = frozenset({Verdict.REGRESSION, Verdict.UNHEALTHY})


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RunOutcome:
    """One report run. `notified`: None when no notification was due (or no webhook is
    configured), else whether the POST succeeded (a failed one is retried at the next
    check). `error`: why the run failed, if it did."""

    flag: str
    time: datetime
    verdict: Verdict | None = None
    previous_verdict: Verdict | None = None
    files: ReportFiles | None = None
    notified: bool | None = None
    error: str | None = None
    notification: str | None = None  # the outbox id of this run's message

    @property
    def ok(self) -> bool:
        return self.error is None


def should_notify(previous: Verdict | None, current: Verdict) -> bool:
    """A change of verdict; on the first run, only a verdict that needs someone now."""
    if previous is None:
        return current in FIRST_RUN_ALERTS
    return previous is not current


class Scheduler:
    """Runs the declared reports on their crons.

    `Scheduler(load_config(path), settings.lake_path).run_forever(stop_event)` is
    `flagscope schedule`; `.run_once()` (or `.run_once("new-checkout")`) runs reports now,
    whatever their schedule, e.g. for `flagscope report`. `clock` returns the current time
    (aware UTC); `sleep(seconds)`, if given, replaces waiting on the stop event (tests);
    `notify` is `webhook.notify` or a stand-in with its signature.
    """

    def __init__(
        self,
        config: ReportsConfig,
        lake_dir: Path,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] | None = None,
        notify: Callable[..., bool] = webhook.notify,
    ) -> None:
        self.config = config
        self.lake_dir = Path(lake_dir)
        self._clock = clock
        self._sleep = sleep
        self.outbox = Outbox(
            self.config.out_dir / OUTBOX_NAME,
            notify,
            timeout_s=config.webhook_timeout_s,
            retries=config.webhook_retries,
        )
        start = aware_utc(clock())
        self._next = {r.flag: next_fire(r.cron, start) for r in config.reports}

    @property
    def next_fires(self) -> dict[str, datetime]:
        """Flag → when its report runs next (aware UTC)."""
        return dict(self._next)

    def run_due(self, now: datetime | None = None) -> list[RunOutcome]:
        """Run every report whose next fire time is at or before `now` (default: the clock),
        then schedule its next fire after `now` (missed fires are not caught up); then
        deliver the notifications due, this round's and earlier failed ones."""
        now = aware_utc(now if now is not None else self._clock())
        outcomes = []
        for report in self.config.reports:
            due = self._next[report.flag]
            if due <= now:
                # The window ends at the fire time (when the run is on time): hourly runs
                # then line up with the hours analysis.incremental keeps.
                end = due if now - due < ON_TIME else now
                outcomes.append(self.run_report(report, now, end))
                self._next[report.flag] = next_fire(report.cron, now)
        return self.deliver(outcomes, now)

    def run_once(
        self, flag_name: str | None = None, now: datetime | None = None
    ) -> list[RunOutcome]:
        """Run one declared report (or all) now; the schedule is left as it is."""
        now = aware_utc(now if now is not None else self._clock())
        chosen = [self.config.report(flag_name)] if flag_name else list(self.config.reports)
        return self.deliver([self.run_report(r, now) for r in chosen], now)

    def deliver(self, outcomes: list[RunOutcome], now: datetime) -> list[RunOutcome]:
        """Send what the outbox holds (all at once, one attempt round each), note each
        attempt in its flag's history, and say in `outcomes` whether theirs went out."""
        if not self.outbox.path.exists():
            return outcomes
        deliveries = {d.id: d for d in self.outbox.deliver(self.webhook_for, now)}
        for delivery in deliveries.values():
            self._record_delivery(delivery, now)
        return [
            replace(o, notified=deliveries[o.notification].state == "sent")
            if o.notification in deliveries
            else o
            for o in outcomes
        ]

    def webhook_for(self, flag: str) -> str | None:
        """The flag's own hook, else the [reports] one ("" on the flag turns it off)."""
        for report in self.config.reports:
            if report.flag == flag and report.webhook_url is not None:
                return report.webhook_url or None
        return self.config.webhook_url

    def run_forever(self, stop_event: threading.Event) -> None:
        """Run reports as they fall due until `stop_event` is set (SIGTERM handler, Ctrl-C)."""
        if not self.config.reports:
            raise AnalysisError(
                "no reports declared: add a [[reports.flag]] table to "
                "flagscope.toml (see 'flagscope schedule --help')"
            )
        for flag, when in self._next.items():
            log.info("report %s: next run %s", flag, f"{when:%Y-%m-%d %H:%M} UTC")
        while not stop_event.is_set():
            self.run_due(self._clock())
            wait = min(t for t in self._next.values()) - aware_utc(self._clock())
            seconds = min(MAX_WAIT_S, max(0.0, wait.total_seconds()))
            if self._sleep is not None:
                self._sleep(seconds)
            else:
                stop_event.wait(seconds)

    def run_report(
        self, report: ScheduledReport, now: datetime, end: datetime | None = None
    ) -> RunOutcome:
        """Diff the window ending at `end` (default `now`), write the files, notify on a
        verdict change. Never raises: a failure is logged, recorded in the flag's history,
        and returned as the outcome's `error`."""
        now = aware_utc(now)
        end = now if end is None else aware_utc(end)
        was_failing = self._failing(report.flag)
        try:
            result = run_diff(
                self.lake_dir,
                report.options(end),
                charts="html" in report.formats,
                summaries=self.summaries if report.incremental else None,
            )
            result = with_examples(self.lake_dir, result, self.config.trace_link)
            result = with_differences(self.lake_dir, result)
            files = report_archive.write_report(result, self.config.out_dir, report.formats, now)
        except Exception as exc:  # noqa: BLE001 - one report's failure must not stop the others
            return self._failed(report, now, exc)
        outcome = RunOutcome(report.flag, now, result.verdict, files.previous_verdict, files)
        log.info(
            "report %s: %s (previous %s) %s",
            report.flag,
            result.verdict.value,
            files.previous_verdict.value if files.previous_verdict else "none",
            files.main_file(),
        )
        if not self.webhook_for(report.flag):
            return outcome
        payload = None
        if should_notify(files.previous_verdict, result.verdict):
            payload = webhook.verdict_changed_payload(
                report.flag,
                files.previous_verdict,
                result.verdict,
                result.summary,
                self.report_link(files),
            )
        elif was_failing:
            payload = webhook.recovered_payload(
                report.flag, result.summary, self.report_link(files)
            )
        if payload is not None:
            outcome = replace(outcome, notification=self.outbox.add(report.flag, payload, now))
        return outcome

    @property
    def summaries(self) -> Path:
        """Where the reports' per-hour summaries are kept (`analysis.incremental`)."""
        return self.config.out_dir / SUMMARIES_NAME

    def report_link(self, files: ReportFiles) -> str:
        """`link_base` + the report's path under out_dir, else the report file's path."""
        main = files.main_file()
        if not self.config.link_base:
            return str(main.resolve())
        relative = main.relative_to(self.config.out_dir).as_posix()
        return self.config.link_base.rstrip("/") + "/" + urllib.parse.quote(relative)

    def _failed(self, report: ScheduledReport, now: datetime, exc: Exception) -> RunOutcome:
        if isinstance(exc, FlagscopeError):  # flagscope's own errors: the message names the fix
            message = str(exc)
            log.error("report %s failed: %s", report.flag, message)
        else:
            message = f"{type(exc).__name__}: {exc}"
            log.exception("report %s failed: %s", report.flag, message)
        notification = None
        try:
            first = not self._failing(report.flag)  # a failing report alerts once, not hourly
            report_archive.record_failure(self.config.out_dir, report.flag, now, message)
            if first and self.webhook_for(report.flag):
                payload = webhook.failing_payload(report.flag, message)
                notification = self.outbox.add(report.flag, payload, now)
        except OSError as write_error:
            log.error("report %s: cannot record the failure: %s", report.flag, write_error)
        return RunOutcome(report.flag, now, error=message, notification=notification)

    def _failing(self, flag: str) -> bool:
        """Whether the flag's last run (its history's last run line) failed."""
        runs = [h for h in report_archive.read_history(self.config.out_dir, flag) if "verdict" in h]
        return bool(runs) and runs[-1].get("verdict") is None

    def _record_delivery(self, delivery: Delivery, now: datetime) -> None:
        try:
            report_archive.record_notification(
                self.config.out_dir, delivery.flag, now, delivery.state, delivery.problem
            )
        except OSError as write_error:
            log.error("report %s: cannot record the notification: %s", delivery.flag, write_error)
