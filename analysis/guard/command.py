"""The `flagscope guard` command line (its parser and what it runs); the work is in
guard.runner, imported only when the command runs so that `--help` stays fast."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.render.text import printable

if TYPE_CHECKING:
    from flagscope.analysis.guard.runner import GuardSpec, LookOutcome

DESCRIPTION = (
    "Watch a flag's rollout: every --every, compare the treatment with baseline since the "
    "rollout's current stage began, with one-sided always-valid tests for harm, and on "
    "REGRESSION (never on UNHEALTHY, NO_DATA or INCONCLUSIVE) roll the flag back in its "
    "flagd definition file, POST the webhook, run the command hook, and append what it did "
    "to the audit log. Without --flag, the flags declared under [guard] in flagscope.toml. "
    "Stops on SIGTERM or Ctrl-C; --once looks once and exits with the worst verdict's code."
)


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    from flagscope.analysis.verdict import Thresholds

    default = Thresholds()
    guard = commands.add_parser(
        "guard", help="watch a rollout and roll a harmful flag back", description=DESCRIPTION
    )
    common(guard)
    guard.add_argument(
        "--flag", help="the flag key, e.g. new-checkout (default: the [[guard.flag]] tables)"
    )
    guard.add_argument("--variant", help="treatment variant (default: the on/true-like one)")
    guard.add_argument("--baseline", help="baseline variant, rolled back to (default: the other)")
    guard.add_argument(
        "--flagd",
        dest="flagd_file",
        help="the flagd flag definitions (JSON) the providers read: rolled back in place, "
        "and the intended split read from the flag's fractional targeting",
    )
    guard.add_argument(
        "--rollout-start",
        help="when the rollout began, ISO 8601 (default: the treatment's first evaluation)",
    )
    guard.add_argument("--every", help="time between looks (default: [guard] every, else 60s)")
    guard.add_argument("--once", action="store_true", help="look once and exit")
    guard.add_argument(
        "--dry-run", action="store_true", help="say what would be done, change nothing"
    )
    guard.add_argument("--webhook-url", help="Slack-compatible webhook for a rollback")
    guard.add_argument(
        "--command", dest="hook", help="shell command run on a rollback, JSON on stdin"
    )
    guard.add_argument(
        "--audit-log", help="JSON lines of every action (default <state-dir>/audit.jsonl)"
    )
    guard.add_argument(
        "--state-dir",
        help="the guard's looks, outbox and audit log (default: [guard] state_dir, else "
        "<data-dir>/guard)",
    )
    guard.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="one-sided: the chance of ever calling a harmless flag harmful (0.05)",
    )
    guard.add_argument(
        "--expected-split", help="intended shares (default: from --flagd), e.g. on=0.2,off=0.8"
    )
    guard.add_argument(
        "--expected-users",
        type=int,
        default=None,
        help="users (both cohorts) the rollout is expected to reach (default 1000)",
    )
    guard.add_argument(
        "--error-threshold-pp", type=float, default=default.error_rate_pp,
        help="smallest error-rate harm worth a rollback, in percentage points",
    )  # fmt: skip
    guard.add_argument(
        "--latency-threshold-pct", type=float, default=default.latency_pct,
        help="smallest latency harm worth a rollback, in percent",
    )  # fmt: skip
    guard.add_argument(
        "--min-users", type=int, default=default.min_users, help="users per cohort for a verdict"
    )


# the options that describe one flag: refused without --flag (the config declares those)
FLAG_OPTIONS = ("variant", "baseline", "flagd_file", "rollout_start", "webhook_url", "hook",
                "expected_split", "expected_users")  # fmt: skip


def run(
    args: argparse.Namespace,
    lake: Path,
    data_dir: Path,
    split: Callable[[str | None], dict[str, float] | None],
) -> int:
    import logging
    import signal
    import threading

    from flagscope.analysis.guard import config as guard_config
    from flagscope.analysis.guard.runner import Guard, worst
    from flagscope.analysis.window import parse_duration

    declared = guard_config.load_config(args.config)
    if args.flag is not None:
        specs: tuple[GuardSpec, ...] = (_spec_from_args(args, split),)
    else:
        given = [f"--{o.replace('_file', '').replace('_', '-')}" for o in FLAG_OPTIONS
                 if getattr(args, o) is not None]  # fmt: skip
        if given:
            raise AnalysisError(
                f"{', '.join(given)} describe one flag: give --flag too, or set them on the "
                "flag's [[guard.flag]] table in flagscope.toml"
            )
        specs = declared.specs
        if args.dry_run:
            from dataclasses import replace

            specs = tuple(replace(s, dry_run=True) for s in specs)
    if not specs:
        raise AnalysisError(
            f"no flag to guard: pass --flag, or declare one in {declared.source}, e.g.\n\n"
            '[[guard.flag]]\nflag = "new-checkout"\nflagd = "flags.flagd.json"\n'
        )
    every = declared.every.total_seconds()
    if args.every is not None:
        every = parse_duration(args.every, "--every").total_seconds()
    if every <= 0:
        raise AnalysisError(f"--every {args.every!r}: must be longer than zero, e.g. 60s")
    for spec in specs:
        if spec.flagd_file is not None:
            from flagscope.analysis.guard import flagd

            flagd.read_flags(spec.flagd_file)  # a wrong path or file is named before any look
    state = Path(args.state_dir) if args.state_dir else declared.state_dir or data_dir / "guard"
    audit = Path(args.audit_log) if args.audit_log else None
    guard = Guard(lake, specs, state, audit_log=audit, webhook_timeout_s=declared.webhook_timeout_s)

    def say(outcome: LookOutcome) -> None:
        print(printable(outcome.line()), flush=True)
        stages = guard.history(outcome.flag).stages()
        if len(stages) > 1:  # a ramp: each stage's verdict, its last look's
            done = "; ".join(
                f"{s.stage.number} ({'?' if s.stage.percent is None else f'{s.stage.percent:g} %'}"
                f"): {s.verdict or 'FAILED'}"
                for s in stages
            )
            print(printable(f"  stages: {done}"), flush=True)

    if args.once:
        outcomes = guard.look_all()
        for outcome in outcomes:
            say(outcome)
        return worst(outcomes)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    mode = " (dry run)" if any(s.dry_run for s in specs) else ""
    names = ", ".join(s.flag for s in specs)
    print(printable(f"flagscope guard{mode}: {names} every {every:g}s, lake {lake}"), flush=True)
    guard.run_forever(stop, every, say)
    print("flagscope guard: stopped", file=sys.stderr)
    return 0


def _spec_from_args(
    args: argparse.Namespace, split: Callable[[str | None], dict[str, float] | None]
) -> GuardSpec:
    from flagscope.analysis.guard.runner import GuardSpec
    from flagscope.analysis.verdict import Thresholds, check_alpha
    from flagscope.analysis.window import parse_time

    check_alpha(args.alpha)
    if not args.alpha < 0.5:
        raise AnalysisError(f"--alpha {args.alpha:g}: a one-sided level must be below 0.5")
    return GuardSpec(
        args.flag,
        variant=args.variant,
        baseline=args.baseline,
        since=None
        if args.rollout_start is None
        else parse_time(args.rollout_start, "--rollout-start"),
        flagd_file=None if args.flagd_file is None else Path(args.flagd_file),
        alpha=args.alpha,
        thresholds=Thresholds(args.error_threshold_pp, args.latency_threshold_pct, args.min_users),
        expected_split=split(args.expected_split),
        webhook_url=args.webhook_url,
        command=args.hook,
        dry_run=args.dry_run,
        **({} if args.expected_users is None else {"expected_users": args.expected_users}),
    )
