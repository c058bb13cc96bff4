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
    from flagscope.analysis.guard.runner import LookOutcome

DESCRIPTION = (
    "Watch a flag's rollout: every --every, compare the treatment with baseline since the "
    "rollout began, with one-sided always-valid tests for harm, and on REGRESSION (never "
    "on UNHEALTHY, NO_DATA or INCONCLUSIVE) roll the flag back in its flagd definition "
    "file, POST the webhook, run the command hook, and append what it did to the audit "
    "log. Stops on SIGTERM or Ctrl-C; --once looks once and exits with the verdict's code."
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
    guard.add_argument("--flag", required=True, help="the flag key, e.g. new-checkout")
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
    guard.add_argument("--every", default="60s", help="time between looks (default 60s)")
    guard.add_argument("--once", action="store_true", help="look once and exit")
    guard.add_argument(
        "--dry-run", action="store_true", help="say what would be done, change nothing"
    )
    guard.add_argument("--webhook-url", help="Slack-compatible webhook for a rollback")
    guard.add_argument(
        "--command", dest="hook", help="shell command run on a rollback, JSON on stdin"
    )
    guard.add_argument(
        "--audit-log", help="JSON lines of every action (default <data-dir>/guard/audit.jsonl)"
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


def run(
    args: argparse.Namespace,
    lake: Path,
    data_dir: Path,
    split: Callable[[str | None], dict[str, float] | None],
) -> int:
    import logging
    import signal
    import threading

    from flagscope.analysis.guard.runner import Guard, GuardSpec, worst
    from flagscope.analysis.verdict import Thresholds, check_alpha
    from flagscope.analysis.window import parse_duration, parse_time

    check_alpha(args.alpha)
    if not args.alpha < 0.5:
        raise AnalysisError(f"--alpha {args.alpha:g}: a one-sided level must be below 0.5")
    every = parse_duration(args.every, "--every").total_seconds()
    if every <= 0:
        raise AnalysisError(f"--every {args.every!r}: must be longer than zero, e.g. 60s")
    flagd_file = None if args.flagd_file is None else Path(args.flagd_file)
    if flagd_file is not None:
        from flagscope.analysis.guard import flagd

        flagd.read_flags(flagd_file)  # a wrong path or file is named before the first look
    spec = GuardSpec(
        args.flag,
        variant=args.variant,
        baseline=args.baseline,
        since=None
        if args.rollout_start is None
        else parse_time(args.rollout_start, "--rollout-start"),
        flagd_file=flagd_file,
        alpha=args.alpha,
        thresholds=Thresholds(args.error_threshold_pp, args.latency_threshold_pct, args.min_users),
        expected_split=split(args.expected_split),
        webhook_url=args.webhook_url,
        command=args.hook,
        dry_run=args.dry_run,
        **({} if args.expected_users is None else {"expected_users": args.expected_users}),
    )
    audit = Path(args.audit_log) if args.audit_log else data_dir / "guard" / "audit.jsonl"
    guard = Guard(lake, [spec], audit)

    def say(outcome: LookOutcome) -> None:
        print(printable(outcome.line()), flush=True)

    if args.once:
        outcomes = guard.look_all()
        for outcome in outcomes:
            say(outcome)
        return worst(outcomes)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    mode = " (dry run)" if args.dry_run else ""
    print(
        printable(f"flagscope guard{mode}: {args.flag} every {args.every}, lake {lake}"), flush=True
    )
    guard.run_forever(stop, every, say)
    print("flagscope guard: stopped", file=sys.stderr)
    return 0
