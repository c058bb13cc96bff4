"""The recorded lake in sample_data/ works without running anything (sample_data/record.py)."""

import json
import subprocess
import sys
from pathlib import Path

LAKE = Path(__file__).resolve().parents[1] / "sample_data" / "lake"


def flagscope(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flagscope", *args], capture_output=True, text=True, check=False
    )


def test_the_recorded_lake_answers_queries():
    done = flagscope(
        "query",
        "--lake",
        str(LAKE),
        "--format",
        "json",
        "SELECT service_name, count(*) AS n FROM events GROUP BY 1 ORDER BY 1",
    )
    assert done.returncode == 0, done.stderr
    assert {row["service_name"] for row in json.loads(done.stdout)} == {
        "checkout-service",
        "shop-frontend",
    }


def test_the_recorded_lake_shows_the_shops_regression():
    flags = json.loads(flagscope("flags", "--lake", str(LAKE), "--format", "json").stdout)
    first = min(row["first_seen"] for row in flags)[:13] + ":00"
    last = max(row["last_seen"] for row in flags)[:13] + ":59"
    done = flagscope(
        "diff",
        "--lake",
        str(LAKE),
        "--flag",
        "new-checkout",
        "--from",
        first,
        "--to",
        last,
        "--format",
        "json",
    )
    doc = json.loads(done.stdout)
    assert done.returncode == 14 and doc["verdict"] == "REGRESSION"
    assert doc["summary"].startswith("new-checkout on vs off: POST /checkout")
    assert doc["excluded"]["test_users"] == 12
