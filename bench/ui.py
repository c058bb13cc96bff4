"""UI benchmark: how fast `flagscope ui` answers its pages over a large lake.

For N events (default 10 M; the lake comes from bench/make_lake.py through the same cache
as bench/analysis.py, bench/out/lakes), a real `flagscope ui` process on loopback port 0
is asked, page after page (the flags page, the flag under study, what is different about
its regressed route, that route's example traces, one of their traces), over a window that
covers the lake:

  first     the first answer (the server's cache empty: it waits up to 1.5 s for its
            answers, then says "computing" and lets the page refresh itself)
  complete  until the page holds everything (no part still computing): what the
            server's thread pools took to compute it
  warm      the answer once computed, `--rounds` times (median and max): what someone
            who keeps the page open or comes back gets (answers are kept and refreshed
            in the background, stale-while-revalidate)

The target (issue 13): a page over a 10 M-event lake answers in under 2 s warm. Prints a
table and the machine, and writes bench/out/ui.json.

Run: `.venv/bin/python bench/ui.py` (`--events 1e6` for a quick one).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.analysis import DEFAULT_CACHE, FLAG, lake_for
from bench.machine import machine
from tests.ui_server import UiProcess, fetch

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "ui.json"


def timed(url: str) -> tuple[float, str, int]:
    start = time.perf_counter()
    answer = fetch(url)
    return time.perf_counter() - start, answer.text, answer.status


def measure(base: str, path: str, rounds: int, limit_s: float = 600) -> dict[str, object]:
    url = base.rstrip("/") + path
    first, text, status = timed(url)
    started = time.perf_counter()
    while "data-pending" in text:
        if time.perf_counter() - started > limit_s:
            raise RuntimeError(f"{path} still computing after {limit_s:g} s")
        time.sleep(0.25)
        _, text, status = timed(url)
    complete = first + time.perf_counter() - started
    warm = [timed(url)[0] for _ in range(rounds)]
    return {
        "path": path,
        "status": status,
        "bytes": len(text.encode()),
        "first_s": round(first, 3),
        "complete_s": round(complete, 2),
        "warm_median_s": round(statistics.median(warm), 4),
        "warm_max_s": round(max(warm), 4),
        "text": text,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=float, default=1e7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    events = int(args.events)
    lake, manifest, generated = lake_for(args.cache, events, args.seed)
    start = datetime.fromisoformat(manifest["start"])
    hours = math.ceil((datetime.now(UTC) - start).total_seconds() / 3600)
    window = f"{hours}h"  # the whole lake, whenever it was generated
    print(f"lake {lake}: {manifest.get('events', events):,} events from {start:%Y-%m-%d %H:%M} "
          f"UTC{' (generated now)' if generated else ''}; window {window}", flush=True)  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory(prefix="flagscope-ui-bench-") as tmp:
        ui = UiProcess(Path(tmp), "--lake", str(lake.resolve()), "--reports", tmp).start()
        try:
            pages = [("flags", "/"), ("flag", f"/flag/{FLAG}?window={window}")]
            for name, path in pages:
                results.append({"page": name, **measure(ui.url, path, args.rounds)})
                print(f"  {name}: done", flush=True)
            flag_page = str(results[-1]["text"])
            different = re.search(
                r'href="(/different/[^"]+route=POST\+%2Fcheckout[^"]*)"', flag_page
            )
            assert different, "the flag page links POST /checkout's what is different"
            results.append(
                {"page": "different", **measure(ui.url, html.unescape(different[1]), args.rounds)}
            )
            examples = re.search(r'href="(/examples/[^"]+route=POST\+%2Fcheckout[^"]*)"', flag_page)
            assert examples, "the flag page links POST /checkout's example traces"
            results.append(
                {"page": "examples", **measure(ui.url, html.unescape(examples[1]), args.rounds)}
            )
            trace = re.search(r'href="(/trace/[^"]+)"', str(results[-1]["text"]))
            assert trace, "the examples page links a trace"
            results.append(
                {"page": "trace", **measure(ui.url, html.unescape(trace[1]), args.rounds)}
            )
        finally:
            ui.stop()
    print(f"\n`flagscope ui` over {events:,} events, window {window}; {args.rounds} warm rounds")
    print(f"{'page':10} {'status':>6} {'KiB':>6} {'first s':>8} {'complete s':>11} "
          f"{'warm median s':>14} {'warm max s':>11}")  # fmt: skip
    for r in results:
        print(f"{r['page']:10} {r['status']:>6} {int(r['bytes']) / 1024:>6.0f} {r['first_s']:>8} "
              f"{r['complete_s']:>11} {r['warm_median_s']:>14} {r['warm_max_s']:>11}")  # fmt: skip
    facts = machine()
    print("machine:", ", ".join(f"{k} {v}" for k, v in facts.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for r in results:
        r.pop("text")
    args.out.write_text(
        json.dumps(
            {"events": events, "window": window, "pages": results, "machine": facts}, indent=2
        )
    )


if __name__ == "__main__":
    main()
