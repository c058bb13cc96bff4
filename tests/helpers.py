"""Shared test plumbing: a real collector on loopback port 0, and lake polling."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from flagscope.collector.config import Settings
from flagscope.collector.lake.read import fetch
from flagscope.collector.server import Collector

# The tests' Spark JVMs live a minute on a busy machine: the JIT's quick tier only and one
# GC thread (three diffs of the sample lake: 50 CPU-s against 98, 39 s against 54).
SHORT_LIVED_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"

MiB = 1024 * 1024


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: loopback port 0, 1 MiB limit, fast flushes."""
    base = Settings(
        http_endpoint="127.0.0.1:0",
        grpc_endpoint="127.0.0.1:0",
        data_dir=str(data_dir),
        max_request_bytes=1 * MiB,
        max_inflight_bytes=64 * MiB,
        flush_interval_s=0.1,
        compact_interval_s=3600,
        retention_days=0,
        writer_id="test",
    )
    return dataclasses.replace(base, **overrides)


class RunningCollector:
    """A Collector running in its own event-loop thread, as `flagscope serve` runs it."""

    def __init__(self, settings: Settings, workers: int = 1) -> None:
        self.settings = settings
        self.collector = Collector(settings, workers=workers)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> RunningCollector:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.collector.start(), self._loop).result(60)
        return self

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.collector.stop(), self._loop).result(120)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()  # its self-pipe sockets and executor, as asyncio.run does

    def run(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.collector.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.collector.grpc_port}"

    @property
    def lake(self) -> Path:
        return self.settings.lake_path


def query(lake_dir: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """`sql`'s rows, read as the product reads a live lake (`read.fetch`: listed again when
    a running collector's compaction merged a file away mid-read)."""
    return fetch(lake_dir, sql, params)[1]


def wait_for_count(
    lake_dir: Path, sql: str, expected: int, timeout: float = 20.0, params: list[Any] | None = None
) -> int:
    """Poll `sql` (a single count) until it equals `expected`; return the last value seen."""
    deadline = time.monotonic() + timeout
    value = -1
    while time.monotonic() < deadline:
        value = query(lake_dir, sql, params)[0][0]
        if value == expected:
            return value
        time.sleep(0.05)
    return value


class CollectorProcess:
    """`flagscope serve` as a subprocess, for signal and crash tests."""

    READY = re.compile(r"ready http=[\d.]+:(\d+) grpc=[\d.]+:(\d+)")

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        max_open_files: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.max_open_files = max_open_files
        self.args = [
            sys.executable,
            "-m",
            "flagscope",
            "serve",
            "--data-dir",
            str(data_dir),
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            *extra,
        ]
        self.env = {**os.environ, "FLAGSCOPE_FLUSH_INTERVAL_S": "0.2", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.http_port = self.grpc_port = 0

    def start(self, timeout: float = 60) -> CollectorProcess:
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        if self.max_open_files:  # set on the running process: no preexec_fn in a threaded test
            limit = self.max_open_files
            resource.prlimit(self.proc.pid, resource.RLIMIT_NOFILE, (limit, limit))
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            match = self.READY.search(line)
            if match:
                self.http_port, self.grpc_port = int(match[1]), int(match[2])
                return self
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError(
            f"collector did not start: {self.proc.stderr.read() if self.proc.stderr else ''}"
        )

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def terminate(self, timeout: float = 120) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the collector (its lake writers die with it: PR_SET_PDEATHSIG)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def close(self) -> None:
        """Kill the collector if it still runs, and close its stdout and stderr pipes."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def record_regressed_shop(data_dir: Path) -> Path:
    """The sample shop's traffic with its regression (400 users, 3,000 requests, seed 11),
    through a real collector into `data_dir`'s lake, which it returns: what the browser
    tests open."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sample_data"))
    import shop

    running = RunningCollector(make_settings(data_dir, max_request_bytes=8 * MiB)).start()
    try:
        config = shop.ShopConfig(
            users=400, requests=3000, regression_latency=0.4, regression_errors=0.05, seed=11
        )
        shop.run(running.http_url, running.grpc_target, config)
    finally:
        running.stop()  # drains the WAL into the lake
    return running.lake
