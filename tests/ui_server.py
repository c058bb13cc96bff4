"""`flagscope ui` as its own process on loopback port 0, and a plain HTTP client for it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    text: str


class UiProcess:
    """`python -m flagscope ui ARGS --http 127.0.0.1:0`, in `cwd` (no flagscope.toml there
    unless the test writes one), with FLAGSCOPE_* and OTEL_* variables cleared."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FLAGSCOPE_", "OTEL_"))}
        self.args = [sys.executable, "-m", "flagscope", "ui", *args]
        if "--http" not in args:
            self.args += ["--http", "127.0.0.1:0"]
        self.cwd, self.env = cwd, {**base, **(env or {})}
        self.url = ""

    def start(self, timeout: float = 60) -> UiProcess:
        self.proc = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the first line says where it listens
        match = re.search(r"(http://\S+/)", line)
        if not match:
            self.proc.kill()
            _, err = self.proc.communicate(timeout)
            raise AssertionError(f"flagscope ui did not start: {line!r} {err[-2000:]}")
        self.url = match[1].replace("0.0.0.0", "127.0.0.1")
        return self

    def stop(self) -> str:
        """SIGTERM, then what it wrote on stderr."""
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(60)
        return err

    def get(
        self,
        path: str,
        *,
        settle: bool = True,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        timeout: float = 120,
    ) -> Answer:
        """The answer to GET (POST with `data`) `path`; with `settle`, asked again until
        nothing on the page is still being computed."""
        deadline = time.monotonic() + timeout
        while True:
            answer = fetch(self.url.rstrip("/") + path, headers, data)
            if not settle or "data-pending" not in answer.text or time.monotonic() > deadline:
                return answer
            time.sleep(0.5)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_: object, **__: object) -> None:
        return None


def fetch(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> Answer:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=120) as response:
            return Answer(response.status, dict(response.headers), response.read().decode())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers), exc.read().decode())
