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

    query = commands.add_parser("query", help="run SQL over the lake's `events` view")
    _common(query)
    query.add_argument("sql", help='e.g. "SELECT service_name, count(*) FROM events GROUP BY 1"')
    query.add_argument("--format", choices=("table", "csv", "json"), default="table")
    return parser


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
