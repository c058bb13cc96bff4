"""The `flagscope` command. Thin: parse arguments, call the library, print, exit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from collector import config
from collector.errors import CollectorError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="flagscope.toml to read (default: ./flagscope.toml if present)")
    parser.add_argument("--data-dir", help="directory of the WAL and, by default, the lake")
    parser.add_argument("--lake", dest="lake_dir", help="the Parquet lake directory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flagscope",
        description="Receive OpenTelemetry, keep it as wide events in a Parquet lake, and "
        "tell whether a feature flag's cohort is worse off than baseline.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run the OTLP collector (HTTP :4318, gRPC :4317)")
    _common(serve)
    serve.add_argument("--http", dest="http_endpoint", help="OTLP/HTTP host:port ('' disables)")
    serve.add_argument("--grpc", dest="grpc_endpoint", help="OTLP/gRPC host:port ('' disables)")
    serve.add_argument("--max-request-bytes", type=int, help="size limit after decompression")
    serve.add_argument("--writer-id", help="name of this collector's files in a shared lake")
    serve.add_argument("--retention-days", type=float, help="delete partitions older than this")
    serve.add_argument("--help-config", action="store_true",
                       help="print every setting with its environment variable and default")

    _add_diff(commands)
    flags = commands.add_parser("flags", help="list the flags seen in the lake, with variants and users")
    _common(flags)
    flags.add_argument("--since", help="only evaluations in this recent window, e.g. 7d")
    flags.add_argument("--format", choices=("table", "csv", "json"), default="table")

    query = commands.add_parser("query", help="run SQL over the lake's `events` view")
    _common(query)
    query.add_argument("sql", help='e.g. "SELECT service_name, count(*) FROM events GROUP BY 1"')
    query.add_argument("--format", choices=("table", "csv", "json"), default="table")
    return parser


def _add_diff(commands: argparse._SubParsersAction) -> None:
    diff = commands.add_parser(
        "diff", help="compare a flag's treatment cohort with its baseline (exit code = verdict)",
        description="Compare a flag's treatment cohort with its baseline: error rate and "
        "latency, per service and route, with the user as the unit and test traffic excluded. "
        "Exit codes: 0 PASS, 10 IMPROVEMENT, 11 INCONCLUSIVE, 12 NO_DATA, 13 UNHEALTHY, "
        "14 REGRESSION, 2 usage error.",
    )
    _common(diff)
    diff.add_argument("--flag", required=True, help="the flag key, e.g. new-checkout")
    diff.add_argument("--since", help="window ending now, e.g. 6h, 2d (default 24h)")
    diff.add_argument("--from", dest="start", help="window start, ISO 8601 (UTC if no zone)")
    diff.add_argument("--to", dest="end", help="window end, ISO 8601 (default now)")
    diff.add_argument("--variant", help="treatment variant (default: the on/true-like one)")
    diff.add_argument("--baseline", help="baseline variant (default: the other one)")
    diff.add_argument("--service", help="only requests of this service")
    diff.add_argument("--route", help="only this route, e.g. '/checkout' or 'POST /checkout'")
    tests = diff.add_mutually_exclusive_group()
    tests.add_argument("--include-test", action="store_true", help="keep test traffic in")
    tests.add_argument("--only-test", action="store_true", help="compare test traffic only")
    diff.add_argument("--expected-split", help="configured shares for the SRM check, e.g. on=0.2,off=0.8")
    diff.add_argument("--sequential", action="store_true",
                      help="always-valid intervals for repeated looks (scheduled reports)")
    diff.add_argument("--alpha", type=float, default=0.05, help="1 - confidence level (0.05)")
    diff.add_argument("--error-threshold-pp", type=float, default=0.5,
                      help="smallest error-rate change worth acting on, in percentage points")
    diff.add_argument("--latency-threshold-pct", type=float, default=5.0,
                      help="smallest latency change worth acting on, in percent")
    diff.add_argument("--min-users", type=int, default=50, help="users per cohort for a verdict")
    diff.add_argument("--format", choices=("table", "json", "markdown"), default="table")


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
            raise CollectorError(f"--expected-split {text!r}: expected variant=share pairs, "
                                 "e.g. on=0.2,off=0.8")
    return shares


def _diff(args: argparse.Namespace) -> int:
    from analysis import window
    from analysis.cohorts import TrafficFilter
    from analysis.diff import DiffOptions, run_diff
    from analysis.report import json as json_report
    from analysis.report import markdown, terminal
    from analysis.verdict import Thresholds

    settings = _settings(args, ("data_dir", "lake_dir"))
    start, end = window.resolve(args.since, args.start, args.end)
    mode = TrafficFilter.ONLY if args.only_test else TrafficFilter.INCLUDE if args.include_test else TrafficFilter.EXCLUDE
    options = DiffOptions(
        flag=args.flag, start=start, end=end, variant=args.variant, baseline=args.baseline,
        service=args.service, route=args.route, test_mode=mode, alpha=args.alpha,
        sequential=args.sequential, expected_split=_split(args.expected_split),
        thresholds=Thresholds(args.error_threshold_pp, args.latency_threshold_pct, args.min_users),
    )
    result = run_diff(settings.lake_path, options)
    renderer = {"table": terminal, "json": json_report, "markdown": markdown}[args.format]
    sys.stdout.write(renderer.render(result))
    return result.exit_code


def _flags(args: argparse.Namespace) -> int:
    from analysis import window
    from analysis.flags import list_flags
    from analysis.query import format_rows

    settings = _settings(args, ("data_dir", "lake_dir"))
    start = window.resolve(args.since, None, None)[0] if args.since else None
    found = list_flags(settings.lake_path, start)
    columns = ["flag", "variant", "users", "evaluations", "first_seen", "last_seen"]
    rows = [(f.flag, f.variant, f.users, f.evaluations, f.first_seen, f.last_seen) for f in found]
    sys.stdout.write(format_rows(columns, rows, args.format))
    if not found:
        print("no flag evaluations in the lake: send spans with feature_flag.evaluation events "
              "(see README, 'Tagging flags')", file=sys.stderr)
    return 0


def _settings(args: argparse.Namespace, names: Sequence[str]) -> config.Settings:
    overrides = {name: getattr(args, name, None) for name in names}
    return config.load(args.config, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            if args.help_config:
                print(config.describe())
                return 0
            from collector.server import serve

            settings = _settings(args, ("data_dir", "lake_dir", "http_endpoint", "grpc_endpoint",
                                        "max_request_bytes", "writer_id", "retention_days"))
            return serve(settings)
        if args.command == "diff":
            return _diff(args)
        if args.command == "flags":
            return _flags(args)
        if args.command == "query":
            from analysis.query import format_rows, run

            settings = _settings(args, ("data_dir", "lake_dir"))
            columns, rows = run(settings.lake_path, args.sql)
            sys.stdout.write(format_rows(columns, rows, args.format))
            return 0
    except CollectorError as exc:
        print(f"flagscope: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
