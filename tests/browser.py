"""Headless Chromium for the HTML report's tests: find it, load a file:// page, read back a
screenshot, the DOM and the browser's log.

Chromium runs with a fresh profile, no sandbox (tests may run as root in containers), no
GPU, every background service off and every host name unresolvable, so that nothing but
the page itself is loaded. Console messages appear in the log (`--enable-logging=stderr
--v=1`) as `INFO:CONSOLE…] "message", source: …`; recent Chromium omits their level, so a
page that has no script must log none at all.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]\s*(.*)")
PROBLEM = re.compile(r"error|uncaught|failed|refused|violat", re.IGNORECASE)
FILE_LOAD = re.compile(r"FileURLLoader::Start: (file://\S+)")


def find_chromium() -> str | None:
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


def require_chromium() -> str:
    """The browser's path; without one, fail in CI (the Makefile installs it), else skip."""
    path = find_chromium()
    if path:
        return path
    message = (
        f"no headless browser found (looked for {', '.join(CANDIDATES)} on PATH); "
        "install Debian's package with: apt-get install -y chromium"
    )
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass(frozen=True)
class Run:
    stdout: str
    log: str

    def console(self) -> list[str]:
        """Every console message the page produced."""
        return [m.group(1) for line in self.log.splitlines() if (m := CONSOLE.search(line))]

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions, refused or failed loads."""
        lines = [
            line
            for line in self.log.splitlines()
            if "Failed to load resource" in line
            or ((m := CONSOLE.search(line)) and PROBLEM.search(m.group(1)))
        ]
        return lines

    def files_loaded(self) -> list[str]:
        return FILE_LOAD.findall(self.log)


def run(browser: str, page: Path, *args: str, timeout: float = 60) -> Run:
    """Load `page` (a file://, nothing else) with extra switches; stdout and the log."""
    with tempfile.TemporaryDirectory(prefix="flagscope-chromium-") as profile:
        completed = subprocess.run(
            [
                browser,
                *FLAGS,
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=1",
                *args,
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if completed.returncode != 0:
        raise AssertionError(f"{browser} exited {completed.returncode}: {completed.stderr[-2000:]}")
    return Run(completed.stdout, completed.stderr)


def screenshot(browser: str, page: Path, png: Path, width: int, height: int) -> Run:
    return run(
        browser, page, f"--window-size={width},{height}", f"--screenshot={png}", "--hide-scrollbars"
    )


def dump_dom(browser: str, page: Path) -> Run:
    return run(browser, page, "--dump-dom")


# -- reading a screenshot without an imaging library -------------------------------------------
def png_pixels(png: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG (ISO 15948)."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour, *_ = header
    assert depth == 8 and colour in (2, 6), f"unsupported PNG: depth {depth}, colour {colour}"
    bpp = 3 if colour == 2 else 4
    raw, stride, rows = zlib.decompress(idat), width * bpp, []
    prev = bytearray(stride)
    for y in range(height):
        at = y * (stride + 1)
        prev = _unfilter(raw[at], bytearray(raw[at + 1 : at + 1 + stride]), prev, bpp)
        rows.append(bytes(prev))
    return width, height, rows


def _unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> bytearray:
    """Undo one row's filter (PNG specification §9.2: None, Sub, Up, Average, Paeth)."""
    for i in range(len(line) if kind else 0):
        a = line[i - bpp] if i >= bpp else 0
        b, c = prev[i], prev[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + a) & 255
        elif kind == 2:
            line[i] = (line[i] + b) & 255
        elif kind == 3:
            line[i] = (line[i] + (a + b) // 2) & 255
        else:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    return line


def colours(png: Path, step: int = 3) -> dict[tuple[int, int, int], int]:
    """How often each colour occurs, sampling every `step`-th pixel of every `step`-th row."""
    width, _, rows = png_pixels(png)
    bpp = len(rows[0]) // width
    seen: dict[tuple[int, int, int], int] = {}
    for row in rows[::step]:
        for x in range(0, width, step):
            rgb = tuple(row[x * bpp : x * bpp + 3])
            seen[rgb] = seen.get(rgb, 0) + 1
    return seen
