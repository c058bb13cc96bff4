"""The `flagscope ui` command line: its options, and the server's start and stop. The web
application is imported only when the command runs, so that `--help` stays fast."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.examples import check_trace_link
from flagscope.analysis.render.text import printable

if TYPE_CHECKING:
    from flagscope.analysis.ui.app import UiConfig

DEFAULT_ENDPOINT = "127.0.0.1:4320"
DESCRIPTION = (
    "Serve a read-only web view of the lake: every flag with its verdict, a flag's full "
    "comparison for a window you pick with its verdict over time, the example traces "
    "behind a route down to their waterfall, and what is different about a regressed "
    "route's failed or slow requests (which attribute values they share). Pages are "
    "rendered on the server (no "
    "JavaScript) and fetch nothing from elsewhere. It listens on loopback unless told "
    "otherwise; on any other address it asks for the collector's auth_token. Stops on "
    "SIGTERM or Ctrl-C."
)


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    ui = commands.add_parser(
        "ui",
        help="a web view of the lake: flags, verdicts, example traces",
        description=DESCRIPTION,
    )
    common(ui)
    ui.add_argument(
        "--http",
        dest="ui_endpoint",
        default=DEFAULT_ENDPOINT,
        help=f"host:port to listen on (default {DEFAULT_ENDPOINT}; port 0: any free port; a "
        "non-loopback host needs the collector's auth_token)",
    )
    ui.add_argument(
        "--reports",
        help="the reports directory whose history gives the verdicts over time (default: "
        "[reports] out_dir of flagscope.toml, else ./reports)",
    )
    ui.add_argument(
        "--guard-dir",
        help="the guard's state directory, for its looks (default: [guard] state_dir, else "
        "<data-dir>/guard)",
    )
    ui.add_argument(
        "--trace-link",
        help="open a trace elsewhere too: a URL with {trace_id}, e.g. "
        "'https://jaeger.example/trace/{trace_id}' (default: [reports] trace_link)",
    )
    ui.add_argument(
        "--refresh", type=float, default=60.0, help="seconds between a page's refreshes (60)"
    )


def run(
    args: argparse.Namespace,
    lake: Path,
    data_dir: Path,
    settings_token: str,
    test_markers: tuple[str, ...],
    bearer_check: Callable[[str | None, bytes], bool],
) -> int:
    """Listen until SIGTERM or Ctrl-C. `bearer_check`: the collector's token comparison
    (flagscope.collector.auth.bearer_matches), handed in by the CLI."""
    import asyncio

    from flagscope.analysis.guard import config as guard_config
    from flagscope.analysis.schedule.config import load_config
    from flagscope.analysis.ui.access import Access, is_loopback
    from flagscope.analysis.ui.app import UiConfig
    from flagscope.collector.config import split_endpoint
    from flagscope.collector.errors import ConfigError

    host, port = split_endpoint(args.ui_endpoint, "--http")
    token = None
    if not is_loopback(host):
        if not settings_token:
            raise ConfigError(
                f"--http {args.ui_endpoint}: listening beyond this machine needs a token: set the "
                "collector's auth_token (FLAGSCOPE_AUTH_TOKEN, or [collector] auth_token in "
                "flagscope.toml), or listen on 127.0.0.1"
            )
        token = settings_token.encode()
    if not args.refresh >= 5:
        raise AnalysisError(f"--refresh {args.refresh:g}: at least 5 seconds, e.g. 60")
    reports = load_config(args.config, require=False)
    if args.reports:
        from dataclasses import replace

        reports = replace(reports, out_dir=Path(args.reports))
    declared_guard = guard_config.load_config(args.config)
    guard_dir = (
        Path(args.guard_dir) if args.guard_dir else declared_guard.state_dir or data_dir / "guard"
    )
    config = UiConfig(
        lake=lake,
        reports=reports,
        guard_dir=guard_dir,
        access=Access(token, bearer_check, host),
        trace_link=check_trace_link(args.trace_link) or reports.trace_link,
        refresh_s=args.refresh,
        test_markers=test_markers,
    )
    return asyncio.run(_serve(config, host, port))


async def _serve(config: UiConfig, host: str, port: int) -> int:
    import asyncio
    import signal

    from aiohttp import web

    from flagscope.analysis.ui.app import build_app
    from flagscope.analysis.ui.work import Work
    from flagscope.collector.errors import ConfigError

    runner = web.AppRunner(build_app(config, Work()), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"--http {host}:{port}: cannot listen there ({exc.strerror or exc}); pick another "
            "port, or port 0 for any free one"
        ) from None
    bound = runner.addresses[0]
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    where = f"http://{shown}:{bound[1]}/"
    guard = "asks for the collector's auth_token" if config.access.token else "this machine only"
    print(printable(f"flagscope ui: {where} ({guard}; lake {config.lake}, reports "
                    f"{config.reports.out_dir}; read-only). Ctrl-C stops it."), flush=True)  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    print("flagscope ui: stopped", flush=True)
    return 0
