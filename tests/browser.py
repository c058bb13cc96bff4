"""Headless Chromium for the HTML report's and the UI's tests: find it, load a file:// page,
read back a screenshot, the DOM and the browser's log; or drive it over the DevTools
protocol (`DevTools`) through a server's pages, clicking like a person.

Chromium runs with a fresh profile, no sandbox (tests may run as root in containers), no
GPU, every background service off and every host name unresolvable, so that nothing but
the page itself is loaded. Console messages appear in the log (`--enable-logging=stderr
--v=1`) as `INFO:CONSOLE…] "message", source: …`; recent Chromium omits their level, so a
page that has no script must log none at all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# For a page on a server on loopback: that one address stays reachable, nothing else resolves.
SERVER_FLAGS = (
    *(f for f in FLAGS if not f.startswith("--host-resolver-rules")),
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
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


def remove_profile(profile: str) -> None:
    """Remove a browser profile; Chromium's helper processes (crashpad, the GPU process) can
    still write into it for a moment after the browser exits, so a failed pass is retried."""
    for _ in range(50):
        try:
            shutil.rmtree(profile)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    shutil.rmtree(profile, ignore_errors=True)  # a temp dir: what is left is not a failure


@contextlib.contextmanager
def profile_dir() -> Iterator[str]:
    profile = tempfile.mkdtemp(prefix="flagscope-chromium-")
    try:
        yield profile
    finally:
        remove_profile(profile)


def run(browser: str, page: Path, *args: str, timeout: float = 60) -> Run:
    """Load `page` (a file://, nothing else) with extra switches; stdout and the log."""
    with profile_dir() as profile:
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


# -- driving it: the DevTools protocol, over aiohttp's WebSocket client -----------------------
class DevTools:
    """One headless Chromium driven over the Chrome DevTools Protocol (CDP), for pages on a
    server: navigate, click like a person (mouse events at the element), read the DOM,
    take full-page screenshots; every request the page makes and every console message,
    exception and browser log entry (a CSP violation, a failed load) is recorded.

    Use as `async with DevTools(chromium) as tab: await tab.open(url) ...`.
    """

    def __init__(self, browser: str, width: int = 1366, height: int = 900) -> None:
        self.browser, self.width, self.height = browser, width, height
        self.requests: list[str] = []  # every URL the page asked for
        self.console: list[str] = []  # console messages (any level)
        self.errors: list[str] = []  # exceptions, error-level console and log entries
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._loaded = asyncio.Event()
        self.url = "about:blank"  # the main frame's, as last navigated

    async def __aenter__(self) -> DevTools:
        self._profile = tempfile.mkdtemp(prefix="flagscope-chromium-")
        self._proc = subprocess.Popen(
            [self.browser, *SERVER_FLAGS, f"--user-data-dir={self._profile}",
             "--remote-debugging-port=0", f"--window-size={self.width},{self.height}",
             "--hide-scrollbars", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._http: Any = None
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        try:
            await self._connect()
        except BaseException:
            await self.__aexit__()  # never leave a browser running
            raise
        return self

    async def _connect(self) -> None:
        import aiohttp

        active = Path(self._profile) / "DevToolsActivePort"
        for _ in range(300):
            if active.exists() and len(active.read_text().split()) == 2:
                break
            await asyncio.sleep(0.05)
        port, path = active.read_text().split()
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            await self.send(f"{domain}.enable", session=True)
        await self.resize(self.width, self.height)

    async def __aexit__(self, *_: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        remove_profile(self._profile)

    async def send(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        self._waiting[number] = future = asyncio.get_running_loop().create_future()
        try:
            await self._ws.send_json(message)
            answer = await asyncio.wait_for(future, 60)
        finally:
            self._waiting.pop(number, None)
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def _read(self) -> None:
        async for frame in self._ws:
            message = json.loads(frame.data)
            if "id" in message and message["id"] in self._waiting:
                self._waiting[message["id"]].set_result(message)
            else:
                self._event(message.get("method", ""), message.get("params", {}))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(text)
            if params["type"] in ("error", "assert", "warning"):
                self.errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            self.errors.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            entry = params["entry"]
            self.errors.append(f"log {entry['level']}: {entry['text']} {entry.get('url', '')}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            self.errors.append(f"failed load: {params.get('errorText')}")
        elif method == "Page.frameNavigated" and not params["frame"].get("parentId"):
            self.url = params["frame"]["url"]
        elif method == "Page.loadEventFired":
            self._loaded.set()

    async def resize(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        await self.send(
            "Emulation.setDeviceMetricsOverride", session=True,
            width=width, height=height, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip

    async def open(self, url: str) -> None:
        self._loaded.clear()
        await self.send("Page.navigate", session=True, url=url)
        await asyncio.wait_for(self._loaded.wait(), 60)

    async def evaluate(self, expression: str) -> Any:
        """The value of `expression` in the page (DevTools' evaluation is not the page's
        script: the page's Content-Security-Policy does not apply to it)."""
        result = await self.send(
            "Runtime.evaluate", session=True, expression=expression, returnByValue=True
        )
        return result["result"].get("value")

    async def click(self, selector: str) -> str:
        """Scroll the first element matching `selector` into view and click its middle with
        the mouse, as a person would; wait for the page it leads to. Its href."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getClientRects()[0];"
            " return [r.left + r.width / 2, r.top + r.height / 2, e.href && (e.href.baseVal ?? e.href)]; })()"
        )
        assert box, f"nothing matches {selector!r} on {self.url}"
        before = self.url
        self._loaded.clear()
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", session=True,
                type=kind, x=box[0], y=box[1], button="left", clickCount=1,
            )  # fmt: skip
        async with asyncio.timeout(60):  # a meta refresh of the old page is not the click's
            while not (self._loaded.is_set() and self.url != before):
                self._loaded.clear()
                await self._loaded.wait()
        return str(box[2])

    async def html(self) -> str:
        return str(await self.evaluate("document.documentElement.outerHTML"))

    async def screenshot(self, png: Path, top: float = 0, height: float | None = None) -> Path:
        """The page from `top` down, `height` CSS pixels of it (all of it: None), as a PNG."""
        metrics = await self.send("Page.getLayoutMetrics", session=True)
        height = height or metrics["cssContentSize"]["height"] - top
        shot = await self.send(
            "Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True,
            clip={"x": 0, "y": top, "width": self.width, "height": height, "scale": 1},
        )  # fmt: skip
        png.write_bytes(base64.b64decode(shot["data"]))
        return png


# Every <text> of every chart whose box leaves its <svg>'s box, as Chromium lays them out.
OUTSIDE_SVG = """(() => {
  const charts = [...document.querySelectorAll('svg.chart')];
  const out = charts.flatMap(svg => {
    const box = svg.getBoundingClientRect();
    return [...svg.querySelectorAll('text')].filter(t => {
      const b = t.getBoundingClientRect();
      return b.left < box.left - 0.5 || b.right > box.right + 0.5
        || b.top < box.top - 0.5 || b.bottom > box.bottom + 0.5;
    }).map(t => svg.dataset.chart + ': ' + t.textContent);
  });
  return {charts: charts.length, texts: document.querySelectorAll('svg text').length, out};
})()"""
