"""`make demo`: collector up, the sample shop's traffic through it, a first look, collector down.

It prints what `flagscope query` sees (events per service), the flags in the lake, and
`flagscope diff` of the flag `new-checkout`: the regression the shop injected on
POST /checkout, found with the QA testers excluded — and writes the report as HTML,
Markdown and JSON, printing the summary and the HTML report's path, and last the command
that opens the web view (`flagscope ui`). The collector runs on free loopback ports with the lake in
./flagscope-data/demo (recreated each run) and is stopped with SIGTERM at the end, so
nothing is left running.

`--guard rollback` (`make demo GUARD=rollback`) shows the guard acting instead: the shop
takes its flag from flagscope-data/demo/flags.flagd.json through the real flagd provider
(in-process, file mode) and serves live traffic; `flagscope guard --once` looks after each
round until it calls the regression and rolls `new-checkout` back in that file; the shop
keeps serving, its provider reads the new file, and the lake shows the evaluations
before and after the rollback, with the guard's audit log line.

`--ui` (`make demo UI=1`) then serves the web view of the demo's lake on 127.0.0.1:4320
until Ctrl-C, instead of only printing the command that does.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shop

DATA_DIR = Path("flagscope-data/demo")
OVERVIEW_SQL = """
SELECT service_name, signal, count(*) AS events, count(*) FILTER (WHERE is_test) AS test_events,
       count(*) FILTER (WHERE cardinality(flags) > 0) AS with_flags
FROM events GROUP BY ALL ORDER BY ALL
"""
ROUND = 3000  # live requests before each of the guard's looks
ROUNDS = 4  # looks before the demo gives up on a rollback (the shop's regression needs one)
AFTER = 3000  # requests served after the rollback, paced at AFTER_PER_S
AFTER_PER_S = 1500
# new-checkout's evaluations (on the checkout service's spans) before and after the rollback
ROLLBACK_SQL = """
SELECT CASE WHEN time < TIMESTAMP '{rollback}' THEN 'before'
            WHEN time < TIMESTAMP '{rollback}' + INTERVAL 500 MILLISECONDS THEN 'first 0.5 s after'
            ELSE 'after' END AS rollback,
       count(DISTINCT user_id) AS users,
       count(DISTINCT user_id) FILTER (WHERE flags['new-checkout'] = 'on') AS users_on,
       round(100 * users_on / users, 1) AS pct_users_on,
       count(*) AS evaluations,
       count(*) FILTER (WHERE flags['new-checkout'] = 'on') AS evaluations_on
FROM events WHERE signal = 'span' AND flags['new-checkout'] IS NOT NULL
GROUP BY 1 ORDER BY min(time)
"""


def flagscope(*args: str) -> list[str]:
    return [sys.executable, "-m", "flagscope", *args]


def start_collector() -> tuple[subprocess.Popen[str], int, int]:
    proc = subprocess.Popen(
        flagscope(
            "serve", "--data-dir", str(DATA_DIR), "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"http=[\d.]+:(\d+) grpc=[\d.]+:(\d+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"the collector did not start: {line!r}")
    return proc, int(match[1]), int(match[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--guard",
        choices=["rollback"],
        help="rollback: the guard rolls new-checkout back in the running shop, for real",
    )
    parser.add_argument(
        "--ui",
        action="store_true",
        help="then serve the web view of the demo's lake (Ctrl-C stops it)",
    )
    args = parser.parse_args(argv)
    code = guard_rollback() if args.guard == "rollback" else first_look()
    return serve_ui() if args.ui and code == 0 else code


def first_look() -> int:
    started = time.monotonic()
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    print(f"1. starting the collector (data in {DATA_DIR}) …", flush=True)
    proc, http_port, grpc_port = start_collector()
    try:
        print(
            "2. running the sample shop: OpenTelemetry SDK + OpenFeature hook, "
            "flag new-checkout at 20 % …",
            flush=True,
        )
        counts = shop.run(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
        print(f"   sent {counts['requests']} requests ({counts['test_requests']} from QA testers)")
    finally:
        print(
            "3. stopping the collector (SIGTERM: in-flight answered, WAL drained to the lake) …",
            flush=True,
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(300)
    print("4. what `flagscope query` sees:\n", flush=True)
    lake = ["--data-dir", str(DATA_DIR)]
    subprocess.run(flagscope("query", *lake, OVERVIEW_SQL), check=True)
    print("\n5. flagscope flags — what can be compared:\n", flush=True)
    subprocess.run(flagscope("flags", *lake), check=True)
    print("\n6. flagscope diff --flag new-checkout --expected-split on=0.2,off=0.8\n", flush=True)
    verdict = subprocess.run(
        flagscope(
            "diff",
            *lake,
            "--flag",
            "new-checkout",
            "--since",
            "2h",
            "--expected-split",
            "on=0.2,off=0.8",
        ),
        check=False,
    )
    print(
        f"\n   (exit code {verdict.returncode}: 0 PASS, 14 REGRESSION — see flagscope diff --help)"
    )
    print("\n7. flagscope report: the same as HTML, Markdown and JSON files\n", flush=True)
    subprocess.run(
        flagscope(
            "report",
            *lake,
            "--flag",
            "new-checkout",
            "--since",
            "2h",
            "--expected-split",
            "on=0.2,off=0.8",
            "--out",
            str(DATA_DIR / "reports"),
        ),
        check=False,
    )
    html = (DATA_DIR / "reports" / "new-checkout" / "latest.html").resolve()
    print(f"\n   open the HTML report: {html.as_uri()}")
    index = (DATA_DIR / "reports" / "index.html").resolve()
    print(f"   every flag's latest verdict: {index.as_uri()}")
    flags = write_flagd_definitions(DATA_DIR / "flags.flagd.json")
    print(
        f"\n8. flagscope guard --once --dry-run: what a guard would do with {flags}\n", flush=True
    )
    subprocess.run(
        flagscope(
            "guard", *lake, "--flag", "new-checkout", "--flagd", str(flags), "--once", "--dry-run"
        ),
        check=False,
    )
    print(
        f"\nNext: export FLAGSCOPE_DATA_DIR={DATA_DIR}, and README's commands read this lake, e.g."
    )
    print('  .venv/bin/flagscope query "SELECT * FROM events LIMIT 5"')
    print(f"demo finished in {time.monotonic() - started:.1f} s")
    print_ui_command()
    return 0


UI_ARGS = ("ui", "--data-dir", str(DATA_DIR), "--reports", str(DATA_DIR / "reports"))


def print_ui_command() -> None:
    """The last lines: how to look at all of it in a browser."""
    print("\nLook at it in a browser (Ctrl-C stops it), or run `make demo UI=1`:")
    print(f"  .venv/bin/flagscope {' '.join(UI_ARGS)}")
    print("  then open http://127.0.0.1:4320/")


def serve_ui() -> int:
    """`make demo UI=1`: the web view of the demo's lake, in the foreground until Ctrl-C."""
    print("\nStarting the web view: open http://127.0.0.1:4320/ (Ctrl-C stops it)\n", flush=True)
    ui = subprocess.Popen(flagscope(*UI_ARGS))
    try:
        return ui.wait()
    except KeyboardInterrupt:
        ui.send_signal(signal.SIGINT)
        ui.wait(30)
        return 0


def write_flagd_definitions(path: Path) -> Path:
    """The shop's rollout as OpenFeature flagd flag definitions: new-checkout on for 20 %
    of users (the first look's shop evaluates with an in-memory provider of the same
    split; `--guard rollback`'s reads this file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(shop.flagd_definitions(), indent=2) + "\n")
    return path


def guard_rollback() -> int:
    """`make demo GUARD=rollback` (see the module doc)."""
    started = time.monotonic()
    shutil.rmtree(DATA_DIR, ignore_errors=True)  # the lake, the guard's state, the flags file
    flags = write_flagd_definitions(DATA_DIR / "flags.flagd.json")
    print(f"1. starting the collector (data in {DATA_DIR}) …", flush=True)
    proc, http_port, grpc_port = start_collector()
    config = shop.ShopConfig(flagd_file=flags, live=True)
    rollback_ns = None
    try:
        print(
            f"2. the sample shop, live, its flag from {flags} through the flagd provider "
            "(file mode): new-checkout on for 20 % of users",
            flush=True,
        )
        with shop.Shop(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", config) as s:
            rollback_ns = look_until_rollback(s, flags)
            if rollback_ns is not None:
                print(
                    f"\n4. the shop keeps serving: {AFTER} more requests, {AFTER_PER_S} a "
                    "second (its flagd provider looks at the file every 0.1 s)",
                    flush=True,
                )
                s.send(AFTER, per_second=AFTER_PER_S)
    finally:
        print("   stopping the collector (SIGTERM: the WAL drained to the lake) …", flush=True)
        proc.send_signal(signal.SIGTERM)
        proc.wait(300)
    if rollback_ns is None:
        print("   the guard did not roll new-checkout back: see its lines above")
        return 1
    rollback = datetime.fromtimestamp(rollback_ns / 1e9, UTC).replace(tzinfo=None)
    print(
        f"\n5. the lake: new-checkout's evaluations before and after the rollback ({rollback:%H:%M:%S.%f} UTC)\n",
        flush=True,
    )
    lake = ["--data-dir", str(DATA_DIR)]
    subprocess.run(flagscope("query", *lake, ROLLBACK_SQL.format(rollback=rollback)), check=True)
    audit = DATA_DIR / "guard" / "audit.jsonl"
    print(f'\n6. the guard\'s audit log, {audit} (here without "result", the whole comparison):\n')
    for line in audit.read_text().splitlines():
        entry = json.loads(line)
        entry.pop("result", None)
        print(json.dumps(entry, indent=2, ensure_ascii=False))
    print(f"\ndemo finished in {time.monotonic() - started:.1f} s")
    print_ui_command()
    return 0


def look_until_rollback(running: shop.Shop, flags: Path) -> int | None:
    """Rounds of traffic, each followed by `flagscope guard --once` once the lake holds all
    of it, until the guard rolls new-checkout back: when it did (the file's mtime, ns)."""
    for _ in range(ROUNDS):
        running.send(ROUND)
        settle(running)
        print(
            f"\n3. flagscope guard --flag new-checkout --flagd {flags} --once, "
            f"after {running.counts['requests']} requests:\n",
            flush=True,
        )
        lake = ["--data-dir", str(DATA_DIR)]
        args = ("guard", *lake, "--flag", "new-checkout", "--flagd", str(flags), "--once")
        subprocess.run(flagscope(*args), check=False)
        if "targeting" not in json.loads(flags.read_text())["flags"]["new-checkout"]:
            return flags.stat().st_mtime_ns
    return None


def settle(running: shop.Shop, timeout_s: float = 120) -> None:
    """Wait until the lake holds every span the shop has sent, so the look sees them all."""
    from flagscope.collector.lake.read import fetch

    running.flush()
    deadline = time.monotonic() + timeout_s
    sql = "SELECT count(*) FROM events WHERE signal = 'span'"
    while (held := fetch(DATA_DIR / "lake", sql)[1][0][0]) < running.spans:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"the lake holds {held} of {running.spans} spans after {timeout_s:g} s"
            )
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
