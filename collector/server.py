"""`flagscope serve`: the collector process — front ends, WAL writer and lake writers.

Start order: lock the data dir, clear crash leftovers, open the WAL, start the lake
writers (which replay any WAL left by a crash), then listen. Stop order (SIGTERM): close
the listeners and answer in-flight requests, close the WAL, let the lake writers drain it
into the lake, release the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import resource
import signal
import socket
import sys
import time
from errno import EADDRINUSE
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import IO, Any

from aiohttp import web
from grpc import aio

from flagscope.collector import failpoints, tls
from flagscope.collector.activity import describe, report_every
from flagscope.collector.caps import AttributeCaps
from flagscope.collector.children import STOP_SIGNALS
from flagscope.collector.config import Settings, split_endpoint
from flagscope.collector.connections import ConnectionGuard, GuardedSite
from flagscope.collector.cors import Cors
from flagscope.collector.datadir import lock_data_dir
from flagscope.collector.decode_pool import DecodePool
from flagscope.collector.errors import ConfigError
from flagscope.collector.grpc_server import GrpcFrontEnd
from flagscope.collector.http_server import HttpFrontEnd
from flagscope.collector.lake.claims import (
    claim,
    highest_seq,
    identity,
    last_start,
    record_start,
)
from flagscope.collector.lake.write import remove_stale_temporaries
from flagscope.collector.lake_writer import clear_seen, run_worker
from flagscope.collector.malloc import tune_malloc
from flagscope.collector.oplog import RateLimitedLog
from flagscope.collector.receiver import Receiver
from flagscope.collector.wal import WalWriter, list_segments, next_seq, reserve_seq

log = logging.getLogger("flagscope.collector")
START_CLOCK_SLACK_S = 60.0

DRAIN_TIMEOUT_S = 300.0
WORKER_START_TIMEOUT_S = 30.0


_accept_errors = RateLimitedLog(log)


def _middlewares(guard: ConnectionGuard, origins: tuple[str, ...]) -> tuple[Any, ...]:
    """The guard sees every request first; CORS, when configured, answers preflights."""
    return (guard.middleware, Cors(origins).middleware) if origins else (guard.middleware,)


def _loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio logs a traceback for every accept that fails for lack of file descriptors
    (and retries a second later): one line per interval instead."""
    if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
        _accept_errors.report(
            logging.ERROR,
            "cannot accept connections: out of file descriptors or memory",
            str(context.get("exception", "")),
        )
        return
    loop.default_exception_handler(context)


def _raise_file_limit(max_connections: int) -> None:
    """Make room for max_connections on each front end, plus the WAL and lake files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * max_connections + 256
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < want:
        log.warning(
            "the open-file limit (%d) is below what max_connections = %d needs (%d): lower "
            "max_connections or raise the limit (ulimit -n)",
            new,
            max_connections,
            want,
        )


class Collector:
    """One collector; `await start()`, then `await stop()`. Ports are known after start."""

    def __init__(self, settings: Settings, workers: int | None = None) -> None:
        self.settings = settings
        self.workers = workers or settings.lake_writers or os.cpu_count() or 1
        self.wal = WalWriter(
            settings.wal_path,
            settings.segment_bytes,
            settings.flush_interval_s,
            settings.wal_max_backlog_bytes,
            settings.max_lag_s,
        )
        self.decoders = DecodePool(settings.json_decoders) if settings.json_decoders else None
        caps = AttributeCaps(settings.max_attributes, settings.max_attribute_value_bytes)
        self.receiver = Receiver(
            self.wal, settings.max_request_bytes, settings.max_inflight_bytes, self.decoders, caps
        )
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self._lock_file: IO[str] | None = None
        self._runner: web.AppRunner | None = None
        self._http: HttpFrontEnd | None = None
        self._grpc: aio.Server | None = None
        self._processes: list[SpawnProcess] = []
        self._ready: dict[int, Event] = {}  # per lake writer index: set once it runs
        self._drain: Event | None = None
        self._context: SpawnContext | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._activity: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        _raise_file_limit(s.max_connections)
        asyncio.get_running_loop().set_exception_handler(_loop_error)
        Path(s.data_dir).mkdir(parents=True, exist_ok=True)
        s.lake_path.mkdir(parents=True, exist_ok=True)
        self._lock_file = lock_data_dir(s.data_dir)
        claim(s.lake_path, s.writer, identity(Path(s.data_dir)))
        # What the previous run wrote — files of later segments, a crash's temporaries —
        # lies in partitions changed since it started (recorded once its start-up was done;
        # a minute's slack for the clocks of a shared lake): only those are listed, unless
        # the WAL has lost its numbering (a new WAL directory: the whole lake is read).
        started, previous = time.time(), last_start(Path(s.data_dir))
        s.wal_path.mkdir(parents=True, exist_ok=True)
        numbered = next_seq(s.wal_path) > 1
        since = previous - START_CLOCK_SLACK_S if previous is not None and numbered else None
        reserve_seq(s.wal_path, highest_seq(s.lake_path, s.writer, since))
        remove_stale_temporaries(s.lake_path, s.writer, since)
        record_start(Path(s.data_dir), started)
        self.wal.start()
        clear_seen(s.wal_path)
        self._start_workers()
        # Listen once the lake writers run: the WAL a crash left starts converting at once,
        # so even a collector that crashes again soon after each start makes progress.
        await self._workers_ready()
        if self.decoders is not None:
            await self.decoders.start()
        if s.http_endpoint:
            host, port = split_endpoint(s.http_endpoint, "http_endpoint")
            self._http = HttpFrontEnd(self.receiver, s.auth_token, s.body_timeout_s)
            guard = ConnectionGuard(s.max_connections, s.header_timeout_s)
            self._runner = web.AppRunner(
                self._http.app(_middlewares(guard, s.cors_allowed_origins), self.problems),
                access_log=None,
                auto_decompress=False,
                shutdown_timeout=30,
                keepalive_timeout=s.idle_timeout_s,
            )
            await self._runner.setup()
            site = GuardedSite(self._runner, host, port, guard, tls.http_context(s))
            try:
                await site.start()
            except socket.gaierror:
                reason = f"cannot resolve {host}"
                raise _cannot_listen("http_endpoint", s.http_endpoint, None, reason) from None
            except OSError as exc:
                raise _cannot_listen("http_endpoint", s.http_endpoint, exc.errno) from None
            self.http_port = self._runner.addresses[0][1]  # the one site's first socket
        if s.grpc_endpoint:
            host, port = split_endpoint(s.grpc_endpoint, "grpc_endpoint")
            front = GrpcFrontEnd(
                self.receiver, s.auth_token, s.idle_timeout_s, s.max_connections, s.body_timeout_s
            )
            self._grpc = grpc_server = front.server()
            credentials = tls.grpc_credentials(s)
            address = f"{host}:{port}"
            _check_free(host, port, s.grpc_endpoint)  # grpcio would only log "Failed to bind"
            try:
                self.grpc_port = (
                    grpc_server.add_insecure_port(address)
                    if credentials is None
                    else grpc_server.add_secure_port(address, credentials)
                )
            except RuntimeError:  # grpcio says only "Failed to bind"
                self.grpc_port = 0
            if not self.grpc_port:
                raise _cannot_listen("grpc_endpoint", s.grpc_endpoint, None)
            await grpc_server.start()
        if s.activity_log_s > 0:
            every = report_every(self.receiver.counts, s.activity_log_s)
            self._activity = asyncio.get_running_loop().create_task(every)

    def problems(self) -> list[str]:
        """What keeps this collector from taking data now (empty: ready), for /readyz: the
        WAL's state, and every lake writer running."""
        found = self.wal.problems()
        found += [
            f"lake writer {p.name} is not running (it is restarted)"
            for p in self._processes
            if not p.is_alive()
        ]
        return found

    def _start_workers(self) -> None:
        os.environ[failpoints.COLLECTOR_PID_ENV] = str(os.getpid())
        self._context = context = multiprocessing.get_context("spawn")
        self._drain = context.Event()
        self._processes = [self._start_worker(index) for index in range(self.workers)]
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def _workers_ready(self) -> None:
        for index, process in enumerate(self._processes):
            ready = self._ready[index]
            if not await asyncio.to_thread(ready.wait, WORKER_START_TIMEOUT_S):
                log.warning(
                    "lake writer %s has not started after %.0f s; listening anyway "
                    "(acknowledged data waits in the WAL)",
                    process.name,
                    WORKER_START_TIMEOUT_S,
                )

    def _start_worker(self, index: int) -> SpawnProcess:
        context, drain = self._context, self._drain
        if context is None or drain is None:
            raise RuntimeError("lake writers are started by _start_workers()")
        ready = context.Event()
        self._ready[index] = ready
        process = context.Process(
            target=run_worker,
            args=(self.settings, index, self.workers, os.getpid(), drain, ready),
            name=f"flagscope-lake-{index}",
            daemon=False,
        )
        # A SIGTERM for the whole process group (systemd, a terminal's Ctrl-C) must reach
        # only this process, which then drains the WAL: the child starts with the stop
        # signals blocked (the mask survives exec) until it has set them to be ignored.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return process

    async def _supervise(self) -> None:
        """A lake writer that died (a bug, the OOM killer) is restarted: its segments wait
        in the WAL meanwhile, so nothing acknowledged is lost, only delayed."""
        while True:
            await asyncio.sleep(1.0)
            for index, process in enumerate(self._processes):
                if not process.is_alive():
                    log.error(
                        "lake writer %s exited with %s; restarting it",
                        process.name,
                        process.exitcode,
                    )
                    self._processes[index] = self._start_worker(index)

    async def stop(self) -> None:
        if self._runner is not None and self._http is not None:
            # Stop listening first, and let requests whose bodies are still arriving finish:
            # aiohttp's own shutdown stops reading request bodies at once.
            for site in list(self._runner.sites):
                await site.stop()
            self._http.closing = True
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.body_timeout_s + 1
            while self._http.in_flight and loop.time() < deadline:
                await asyncio.sleep(0.02)
            await self._runner.cleanup()
        if self._grpc is not None:
            await self._grpc.stop(grace=30)
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self.decoders is not None:
            await asyncio.to_thread(self.decoders.close)
        await asyncio.to_thread(self.wal.close)
        if self._activity is not None:
            self._activity.cancel()
        if self.http_port or self.grpc_port:  # it did listen
            log.info("this run: %s", describe(self.receiver.counts) or "nothing received")
        if self._drain is not None:
            self._drain.set()
            await self._drain_workers()
        if self._lock_file is not None:
            self._lock_file.close()

    async def _drain_workers(self) -> None:
        """Wait until every lake writer has converted the whole WAL. One that died meanwhile
        (killed with its process group, a bug) is started again: a stop converts everything
        acknowledged, and a crash is the only way to leave segments for the next start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        for index in range(len(self._processes)):
            while True:
                process = self._processes[index]
                await asyncio.to_thread(process.join, max(0.0, deadline - loop.time()))
                if process.is_alive():
                    log.error(
                        "lake writer %s did not finish draining; its WAL is replayed on start",
                        process.name,
                    )
                    process.kill()
                    break
                if process.exitcode == 0 or not self._segments_of(index):
                    break
                log.error(
                    "lake writer %s exited with %s before draining the WAL; restarting it",
                    process.name,
                    process.exitcode,
                )
                self._processes[index] = self._start_worker(index)

    def _segments_of(self, index: int) -> list[int]:
        return [
            seq for seq, _ in list_segments(self.settings.wal_path) if seq % self.workers == index
        ]


# The command-line option of each endpoint setting, for the message that names the fix.
_OPTION = {"http_endpoint": "--http", "grpc_endpoint": "--grpc"}


def _cannot_listen(
    name: str, endpoint: str, errno: int | None, reason: str | None = None
) -> ConfigError:
    """One line for an address that cannot be had — commonly an OpenTelemetry Collector
    already on 4317/4318 — naming the option, instead of tracebacks (issue 11 point 2)."""
    known = errno if errno is not None and errno > 0 else None  # getaddrinfo's are < 0
    why = reason or (os.strerror(known).lower() if known else "address not available")
    if errno == EADDRINUSE:
        why += ": another process, an OpenTelemetry Collector perhaps, listens there"
    return ConfigError(
        f"cannot listen on {endpoint} ({why}): choose another address with "
        f"{_OPTION[name]} HOST:PORT or [collector] {name}, or {_OPTION[name]} '' to turn it off"
    )


def _check_free(host: str, port: int, endpoint: str) -> None:
    """Bind each address `host:port` resolves to once and let go, to name the reason
    before grpcio tries (it binds every address and needs one; it says only "Failed to
    bind"). Refuses only when none of them binds."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise _cannot_listen("grpc_endpoint", endpoint, None, f"cannot resolve {host}") from None
    errors = []
    for family, kind, proto, _, where in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpcio binds
                probe.bind(where)
            return
        except OSError as exc:
            errors.append(exc.errno)
    errno = EADDRINUSE if EADDRINUSE in errors else next(iter(errors), None)
    raise _cannot_listen("grpc_endpoint", endpoint, errno)


def _how_to_send(settings: Settings, http_port: int | None, grpc_port: int | None) -> list[str]:
    """What a service exports to reach this collector (the standard OTLP variables), and
    where the probes are: printed under the ready line."""
    scheme = "https" if settings.tls_cert_file else "http"

    def url(endpoint: str, port: int) -> str:
        host = split_endpoint(endpoint)[0]
        if host in ("0.0.0.0", "::", ""):  # every interface: name this machine
            host = socket.gethostname()
        return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"

    lines = []
    if http_port:
        lines.append(f"export OTEL_EXPORTER_OTLP_ENDPOINT={url(settings.http_endpoint, http_port)}")
    if grpc_port:
        where = url(settings.grpc_endpoint, grpc_port)
        lines.append(
            f"or, for gRPC: OTEL_EXPORTER_OTLP_PROTOCOL=grpc OTEL_EXPORTER_OTLP_ENDPOINT={where}"
        )
    if settings.auth_token:
        lines.append('and OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer <the auth_token>"')
    if http_port:
        base = url(settings.http_endpoint, http_port)
        lines.append(f"probes: {base}/healthz (live), {base}/readyz (ready)")
    return lines


async def _serve(settings: Settings) -> None:
    collector = Collector(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        await collector.start()
    except BaseException:
        # Stop what did start (the lake writers, the WAL, the lock): a failed start must
        # exit, not wait for child processes that wait for a drain signal. The start's
        # error is the one to report, whatever the clean-up meets.
        try:
            await collector.stop()
        except Exception:
            log.exception("stopping after a failed start")
        raise
    endpoints = []
    if collector.http_port:
        endpoints.append(f"http={split_endpoint(settings.http_endpoint)[0]}:{collector.http_port}")
    if collector.grpc_port:
        endpoints.append(f"grpc={split_endpoint(settings.grpc_endpoint)[0]}:{collector.grpc_port}")
    print(f"flagscope collector ready {' '.join(endpoints)} lake={settings.lake_path}", flush=True)
    for line in _how_to_send(settings, collector.http_port, collector.grpc_port):
        print(f"  {line}", flush=True)
    await stop.wait()
    log.info("stopping: answering in-flight requests and flushing the WAL into the lake")
    await collector.stop()
    print("flagscope collector stopped", flush=True)


def serve(settings: Settings) -> int:
    tune_malloc()  # before any thread starts (issue 10 point 9)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(_serve(settings))
    return 0
