"""The `flagscope` command. Thin: parse arguments, call the library, print, exit."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flagscope.analysis.guard import command as guard_command
from flagscope.analysis.render.text import printable
from flagscope.analysis.ui import command as ui_command
from flagscope.collector import config
from flagscope.collector.errors import ConfigError, FlagscopeError

if TYPE_CHECKING:
    from flagscope.analysis.result import DiffOptions
    from flagscope.analysis.schedule.runner import Scheduler


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="flagscope.toml to read (default: ./flagscope.toml if present)"
    )
    parser.add_argument("--data-dir", help="directory of the WAL and, by default, the lake")
    parser.add_argument("--lake", dest="lake_dir", help="the Parquet lake directory")


class _Version(argparse.Action):
    """`--version`, looked up only when given (argparse's own wants the string up front)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        import flagscope

        print(f"flagscope {flagscope.__version__}")  # on stdout, as argparse's own
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flagscope",
        description="Receive OpenTelemetry, keep it as wide events in a Parquet lake, and "
        "tell whether a feature flag's cohort is worse off than baseline.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run the OTLP collector (HTTP :4318, gRPC :4317)")
    _common(serve)
    serve.add_argument("--http", dest="http_endpoint", help="OTLP/HTTP host:port ('' disables)")
    serve.add_argument("--grpc", dest="grpc_endpoint", help="OTLP/gRPC host:port ('' disables)")
    serve.add_argument("--max-request-bytes", type=int, help="size limit after decompression")
    serve.add_argument("--writer-id", help="name of this collector's files in a shared lake")
    serve.add_argument("--retention-days", type=float, help="delete partitions older than this")
    serve.add_argument(
        "--help-config",
        action="store_true",
        help="print every setting with its environment variable and default",
    )

    _add_diff(commands)
    flags = commands.add_parser(
        "flags", help="list the flags seen in the lake, with variants and users"
    )
    _common(flags)
    flags.add_argument("--since", help="only evaluations in this recent window, e.g. 7d")
    flags.add_argument(
        "--stale",
        type=float,
        nargs="?",
        const=30.0,
        metavar="DAYS",
        help="flags not evaluated for DAYS (30), or serving one variant to "
        "everyone for DAYS: ready to remove",
    )
    flags.add_argument("--format", choices=("table", "csv", "json"), default="table")

    requeue = commands.add_parser(
        "requeue",
        help="put quarantined WAL items back for conversion (collector stopped)",
        description="Move every item the lake writers quarantined (WAL quarantine/*.items.wal) "
        "back into the WAL as new segments; the next `flagscope serve` converts them. Run it "
        "while no collector uses the data dir, after upgrading to a version that handles them.",
    )
    _common(requeue)

    query = commands.add_parser("query", help="run SQL over the lake's `events` view")
    _common(query)
    query.add_argument("sql", help='e.g. "SELECT service_name, count(*) FROM events GROUP BY 1"')
    query.add_argument("--format", choices=("table", "csv", "json"), default="table")
    query.add_argument(
        "--since",
        help="only the events of this recent window, e.g. 1h (reads only its hour partitions)",
    )
    query.add_argument("--from", dest="start", help="window start, ISO 8601 (UTC if no zone)")
    query.add_argument(
        "--to", dest="end", help="window end, ISO 8601 (default now; alone: the 24 h before it)"
    )
    ui_command.add_parser(commands, _common)
    return parser


EXIT_HELP = (
    "Exit codes: 0 PASS, 10 IMPROVEMENT, 11 INCONCLUSIVE, 12 NO_DATA, 13 UNHEALTHY, "
    "14 REGRESSION, 2 usage error."
)


def _engine(parser: argparse.ArgumentParser, default: str = "duckdb") -> None:
    parser.add_argument(
        "--engine",
        choices=("duckdb", "spark"),
        help="where the cohort stage runs: DuckDB here, or Spark SQL (local mode, or the "
        f"cluster spark-submit names; README 'Spark'); default: {default}",
    )


def _add_comparison(parser: argparse.ArgumentParser, flag_required: bool = True) -> None:
    """The options `diff` and `report` share: what to compare, and how strictly."""
    _common(parser)
    _engine(parser, "duckdb, or each declared report's engine without --flag")
    parser.add_argument("--flag", required=flag_required, help="the flag key, e.g. new-checkout")
    parser.add_argument("--since", help="window ending now, e.g. 6h, 2d (default 24h)")
    parser.add_argument("--from", dest="start", help="window start, ISO 8601 (UTC if no zone)")
    parser.add_argument("--to", dest="end", help="window end, ISO 8601 (default now)")
    parser.add_argument("--variant", help="treatment variant (default: the on/true-like one)")
    parser.add_argument("--baseline", help="baseline variant (default: the other one)")
    parser.add_argument("--service", help="only requests of this service")
    parser.add_argument("--route", help="only this route, e.g. '/checkout' or 'POST /checkout'")
    tests = parser.add_mutually_exclusive_group()
    tests.add_argument("--include-test", action="store_true", help="keep test traffic in")
    tests.add_argument("--only-test", action="store_true", help="compare test traffic only")
    parser.add_argument(
        "--expected-split", help="configured shares for the SRM check, e.g. on=0.2,off=0.8"
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="always-valid intervals for repeated looks (scheduled reports)",
    )
    parser.add_argument(
        "--cuped",
        nargs="?",
        const="14d",
        metavar="LOOK-BACK",
        help="regression-adjust (CUPED) on each user's requests in this long before their "
        "first exposure, e.g. 14d (the default when given alone)",
    )
    parser.add_argument(
        "--expected-users",
        type=int,
        default=None,
        help="with --sequential: the users (both cohorts) the rollout is expected to reach; "
        "the intervals are tightest there (default 1000)",
    )
    from flagscope.analysis.verdict import DEFAULT_ALPHA, Thresholds

    default = Thresholds()
    parser.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help=f"1 - confidence level ({DEFAULT_ALPHA})"
    )
    parser.add_argument(
        "--error-threshold-pp",
        type=float,
        default=default.error_rate_pp,
        help="smallest error-rate change worth acting on, in percentage points",
    )
    parser.add_argument(
        "--latency-threshold-pct",
        type=float,
        default=default.latency_pct,
        help="smallest latency change worth acting on, in percent",
    )
    parser.add_argument(
        "--min-users", type=int, default=default.min_users, help="users per cohort for a verdict"
    )


def _add_diff(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    diff = commands.add_parser(
        "diff",
        help="compare a flag's treatment cohort with its baseline (exit code = verdict)",
        description="Compare a flag's treatment cohort with its baseline: error rate and "
        "latency, per service and route, with the user as the unit and test traffic excluded. "
        + EXIT_HELP,
    )
    _add_comparison(diff)
    diff.add_argument("--format", choices=("table", "json", "markdown"), default="table")

    report = commands.add_parser(
        "report",
        help="write a diff as HTML, Markdown and JSON files (one-shot, for cron)",
        description="Write the comparison as report files: <out>/<flag>/<time>.<ext> and a "
        "stable latest.<ext>, with a history. Without --flag, runs every report declared in "
        "flagscope.toml once (for cron or a Kubernetes CronJob). " + EXIT_HELP,
    )
    _add_comparison(report, flag_required=False)
    report.add_argument(
        "--out", help="directory for the reports (default: [reports] out_dir, else ./reports)"
    )
    report.add_argument("--format", default="html,md,json", help="comma-separated: html, md, json")
    report.add_argument(
        "--trace-link",
        help="link example traces elsewhere: a URL with {trace_id}, e.g. "
        "'https://jaeger.example/trace/{trace_id}' (default: [reports] trace_link)",
    )
    report.set_defaults(parser=report)  # for the defaults of the per-flag options

    schedule = commands.add_parser(
        "schedule",
        help="run the reports declared in flagscope.toml on their cron schedules",
        description="Run the [[reports.flag]] of flagscope.toml on their crons (UTC), with "
        "always-valid intervals, keeping a history per flag and POSTing the webhook when a "
        "verdict changes. Stops on SIGTERM or Ctrl-C.",
    )
    _common(schedule)
    schedule.add_argument("--once", action="store_true", help="run every report now and exit")
    _engine(schedule, "each report's engine in flagscope.toml, else duckdb")
    guard_command.add_parser(commands, _common)


def _split(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    shares = {}
    for part in text.split(","):
        name, sep, share = part.partition("=")
        try:
            shares[name.strip()] = float(share)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ConfigError(
                f"--expected-split {text!r}: expected variant=share pairs, e.g. on=0.2,off=0.8"
            )
    return shares


def _options(args: argparse.Namespace) -> DiffOptions:
    from flagscope.analysis import window
    from flagscope.analysis.result import DiffOptions, TrafficFilter
    from flagscope.analysis.verdict import Thresholds

    start, end = window.resolve(args.since, args.start, args.end)
    mode = (
        TrafficFilter.ONLY
        if args.only_test
        else TrafficFilter.INCLUDE
        if args.include_test
        else TrafficFilter.EXCLUDE
    )
    return DiffOptions(
        flag=args.flag,
        start=start,
        end=end,
        variant=args.variant,
        baseline=args.baseline,
        service=args.service,
        route=args.route,
        test_mode=mode,
        alpha=args.alpha,
        sequential=args.sequential,
        expected_split=_split(args.expected_split),
        **({} if args.expected_users is None else {"expected_users": args.expected_users}),
        pre_exposure=None if args.cuped is None else window.parse_duration(args.cuped, "--cuped"),
        thresholds=Thresholds(args.error_threshold_pp, args.latency_threshold_pct, args.min_users),
        engine=args.engine or "duckdb",
    )


def _diff(args: argparse.Namespace) -> int:
    from flagscope.analysis.diff import run_diff
    from flagscope.analysis.report_archive import render

    options = _options(args)  # a usage mistake is named before the lake is looked at
    result = run_diff(_lake(args), options)
    sys.stdout.write(render(result, args.format))
    return result.exit_code


# What `report` without --flag cannot apply: each declared report has its own in flagscope.toml.
_PER_FLAG_OPTIONS = (
    "since", "start", "end", "variant", "baseline", "service", "route", "include_test",
    "only_test", "expected_split", "sequential", "cuped", "expected_users", "alpha",
    "error_threshold_pp", "latency_threshold_pct", "min_users", "format",
)  # fmt: skip


def _declared_reports_only(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    given = [n for n in _PER_FLAG_OPTIONS if getattr(args, n) != parser.get_default(n)]
    if given:
        option = "--" + {"start": "from", "end": "to"}.get(given[0], given[0]).replace("_", "-")
        if given[0] == "format":
            option = "--format (each declared report has its own formats)"
        raise ConfigError(
            f"{option} compares one flag: give --flag too, or set it on the report's "
            "[[reports.flag]] in flagscope.toml (report without --flag runs those as declared)"
        )


def _run_declared(scheduler: Scheduler) -> int:
    """Every declared report once: one line each (and what became of its notification),
    then the most alarming code: the worst verdict's, 2 for a failed run (verdict table)."""
    from flagscope.analysis.verdict import EXIT_CODES, FAILED_EXIT_CODE, worst_exit_code

    outcomes = scheduler.run_once()
    for outcome in outcomes:
        where = outcome.files.main_file() if outcome.files else outcome.error
        verdict = outcome.verdict.value if outcome.verdict else "FAILED"
        said = {None: "", True: " [notified]", False: " [notification failed; retried later]"}
        print(printable(f"{outcome.flag}: {verdict} — {where}{said[outcome.notified]}"))
    if not outcomes:
        print("no reports declared: add [[reports.flag]] to flagscope.toml", file=sys.stderr)
    return worst_exit_code(
        [EXIT_CODES[o.verdict] if o.verdict else FAILED_EXIT_CODE for o in outcomes]
    )


def _report(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from flagscope.analysis.diff import run_diff
    from flagscope.analysis.different_query import with_differences
    from flagscope.analysis.example_query import with_examples
    from flagscope.analysis.examples import check_trace_link
    from flagscope.analysis.report_archive import normalize_formats, write_report
    from flagscope.analysis.schedule.config import load_config, with_engine
    from flagscope.analysis.schedule.runner import Scheduler, utc_now

    if args.flag is None:
        _declared_reports_only(args, args.parser)
    options = None if args.flag is None else _options(args)
    config = with_engine(load_config(args.config, require=args.flag is None), args.engine)
    trace_link = check_trace_link(args.trace_link) or config.trace_link
    lake = _lake(args)
    out = Path(args.out) if args.out else config.out_dir
    if args.flag is None:  # one-shot run of the declared reports
        declared = replace(config, out_dir=out, trace_link=trace_link)
        return _run_declared(Scheduler(declared, lake))
    formats = normalize_formats(
        [f.strip() for f in args.format.split(",") if f.strip()], "--format"
    )
    assert options is not None
    result = with_examples(lake, run_diff(lake, options, charts="html" in formats), trace_link)
    result = with_differences(lake, result)
    files = write_report(result, out, formats, utc_now())
    print(printable(result.summary))
    for fmt, path in files.files.items():
        print(printable(f"  {fmt:4} {path}"))
    print(printable(f"  latest: {files.latest[formats[0]].parent}/latest.*"))
    print(printable(f"  every flag: {out / 'index.html'}"))
    return result.exit_code


def _schedule(args: argparse.Namespace) -> int:
    import signal
    import threading

    from flagscope.analysis.schedule.config import load_config, with_engine
    from flagscope.analysis.schedule.runner import Scheduler

    config = with_engine(load_config(args.config), args.engine)
    if args.once:
        return _run_declared(Scheduler(config, _lake(args)))
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    lake = _settings(args, ("data_dir", "lake_dir")).lake_path
    scheduler = Scheduler(config, lake)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(
        printable(
            f"flagscope schedule: {len(scheduler.config.reports)} reports of lake {lake} "
            f"into {scheduler.config.out_dir}"
        ),
        flush=True,
    )
    scheduler.run_forever(stop)
    return 0


def _flags(args: argparse.Namespace) -> int:
    from flagscope.analysis import window
    from flagscope.analysis.flags import list_flags
    from flagscope.analysis.query import format_rows

    lake = _lake(args)
    if args.stale is not None:
        from flagscope.analysis.stale import stale_flags

        stale = stale_flags(lake, args.stale)
        columns = ["flag", "kind", "variant", "last_seen", "days", "message"]
        stale_rows = [
            (f.flag, f.kind.value, f.variant, f.last_seen, round(f.days, 1), f.message)
            for f in stale
        ]
        sys.stdout.write(format_rows(columns, stale_rows, args.format, max_width=100))
        return 0
    start = window.resolve(args.since, None, None)[0] if args.since else None
    found = list_flags(lake, start)
    columns = ["flag", "variant", "users", "evaluations", "first_seen", "last_seen"]
    rows = [(f.flag, f.variant, f.users, f.evaluations, f.first_seen, f.last_seen) for f in found]
    sys.stdout.write(format_rows(columns, rows, args.format))
    if not found:
        print(
            "no flag evaluations in the lake: send spans with feature_flag.evaluation events "
            "(see README, 'Tagging flags')",
            file=sys.stderr,
        )
    return 0


def _requeue(args: argparse.Namespace) -> int:
    from flagscope.collector.datadir import lock_data_dir
    from flagscope.collector.quarantine import requeue_all

    settings = _settings(args, ("data_dir", "lake_dir"))
    with lock_data_dir(settings.data_dir, "requeue its quarantine"):
        segments = requeue_all(settings.wal_path)
    for segment in segments:
        print(f"requeued as {segment}")
    print(
        f"{len(segments)} quarantined item files requeued; start `flagscope serve` to convert them"
    )
    return 0


def _ui(args: argparse.Namespace) -> int:
    from flagscope.collector.auth import bearer_matches

    settings = _settings(args, ("data_dir", "lake_dir"))
    lake = settings.lake_path
    if not lake.is_dir():
        lake = _lake(args)  # the error that names the lake and the fix
    markers = (*settings.test_attributes, "user_agent.synthetic.type")
    return ui_command.run(
        args, lake, Path(settings.data_dir), settings.auth_token, markers, bearer_matches
    )


DEMO_DATA_DIR = "flagscope-data/demo"  # where `make demo` leaves its lake (sample_data/demo.py)


def _lake(args: argparse.Namespace) -> Path:
    """The lake a reading command reads, which must hold events (else exit 2 naming the
    fix, not an empty answer); said on stderr for a person (not with csv/json output)."""
    from flagscope.collector.errors import LakeError
    from flagscope.collector.lake.read import require_events

    lake = _settings(args, ("data_dir", "lake_dir")).lake_path
    try:
        require_events(lake)
    except LakeError as exc:
        demo = Path(DEMO_DATA_DIR) / "lake"
        if lake.resolve() != demo.resolve() and demo.is_dir():
            raise LakeError(f"{exc} (make demo's lake: --data-dir {DEMO_DATA_DIR})") from None
        raise
    human = args.command == "report" or getattr(args, "format", "table") in ("table", "markdown")
    if human:
        print(printable(f"lake: {lake}"), file=sys.stderr)
    if human and sys.stderr.isatty():  # a person waits: DuckDB's bar for a slow query
        from flagscope.collector.lake.read import show_progress

        show_progress(True)
    return lake


def _settings(args: argparse.Namespace, names: Sequence[str]) -> config.Settings:
    overrides = {name: getattr(args, name, None) for name in names}
    return config.load(args.config, overrides=overrides)


# Options whose value may start with "-" (`--since -2h`), which argparse would take for an
# option and answer "expected one argument".
_SIGNED_VALUES = ("--since", "--cuped")


def _join_signed_values(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in _SIGNED_VALUES and re.fullmatch(r"-\d.*", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_join_signed_values(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "serve":
            if args.help_config:
                print(config.describe())
                return 0
            from flagscope.collector.server import serve

            settings = _settings(
                args,
                (
                    "data_dir",
                    "lake_dir",
                    "http_endpoint",
                    "grpc_endpoint",
                    "max_request_bytes",
                    "writer_id",
                    "retention_days",
                ),
            )
            return serve(settings)
        if args.command == "diff":
            return _diff(args)
        if args.command == "flags":
            return _flags(args)
        if args.command == "report":
            return _report(args)
        if args.command == "schedule":
            return _schedule(args)
        if args.command == "guard":
            settings = _settings(args, ("data_dir", "lake_dir"))
            return guard_command.run(args, _lake(args), Path(settings.data_dir), _split)
        if args.command == "requeue":
            return _requeue(args)
        if args.command == "ui":
            return _ui(args)
        if args.command == "query":
            from flagscope.analysis import window
            from flagscope.analysis.query import format_rows, run

            bounded = args.since or args.start or args.end
            span = window.resolve(args.since, args.start, args.end) if bounded else None
            columns, rows = run(_lake(args), args.sql, span)
            sys.stdout.write(format_rows(columns, rows, args.format))
            return 0
    except FlagscopeError as exc:
        # line by line: a message's own line breaks (an example, DuckDB's caret) stay
        text = "\n".join(printable(line) for line in str(exc).splitlines())
        print(f"flagscope: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
