"""`make demo`: collector up, the sample shop's traffic through it, a first look, collector down.

It prints what `flagscope query` sees (events per service), the flags in the lake, and
`flagscope diff` of the flag `new-checkout`: the regression the shop injected on
POST /checkout, found with the QA testers excluded — and writes the report as HTML,
Markdown and JSON, printing the summary and the HTML report's path. The collector runs on free loopback ports with the lake in
./flagscope-data/demo (recreated each run) and is stopped with SIGTERM at the end, so
nothing is left running.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shop

DATA_DIR = Path("flagscope-data/demo")
OVERVIEW_SQL = """
SELECT service_name, signal, count(*) AS events, count(*) FILTER (WHERE is_test) AS test_events,
       count(*) FILTER (WHERE cardinality(flags) > 0) AS with_flags
FROM events GROUP BY ALL ORDER BY ALL
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


def main() -> int:
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
    return 0


def write_flagd_definitions(path: Path) -> Path:
    """The shop's rollout as OpenFeature flagd flag definitions: new-checkout on for 20 %
    of users (the shop itself evaluates with an in-memory provider of the same split)."""
    definitions = {
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": {
            "new-checkout": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"fractional": [["on", 20], ["off", 80]]},
            }
        },
    }
    path.write_text(json.dumps(definitions, indent=2) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
