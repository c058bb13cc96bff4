"""End to end: the sample shop's real OpenTelemetry + OpenFeature traffic through a real
collector, then `flagscope diff` must find the injected regression on POST /checkout —
measured at the root span while the flag is evaluated in a child span of another
service — with the QA testers (inside the flag) excluded."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flagscope.analysis.diff import run_diff
from flagscope.analysis.result import DiffOptions
from flagscope.analysis.verdict import Verdict
from tests.helpers import RunningCollector, make_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sample_data"))
import shop


def _run_shop(tmp_path: Path, config: shop.ShopConfig) -> tuple[Path, dict[str, int]]:
    running = RunningCollector(make_settings(tmp_path, max_request_bytes=8 * 1024 * 1024)).start()
    try:
        counts = shop.run(running.http_url, running.grpc_target, config)
    finally:
        running.stop()  # drains the WAL into the lake
    return running.lake, counts


def _window() -> tuple[datetime, datetime]:
    now = datetime.now(UTC).replace(tzinfo=None)
    return now - timedelta(hours=2), now + timedelta(minutes=5)


@pytest.fixture(scope="module")
def regressed(tmp_path_factory):
    config = shop.ShopConfig(
        users=500, requests=5000, regression_latency=0.4, regression_errors=0.05, seed=11
    )
    return _run_shop(tmp_path_factory.mktemp("regressed"), config)


def test_the_injected_regression_is_found_on_the_route(regressed):
    lake, _counts = regressed
    start, end = _window()
    result = run_diff(lake, DiffOptions("new-checkout", start, end))
    assert result.verdict is Verdict.REGRESSION
    assert (result.options.variant, result.options.baseline) == ("on", "off")
    checkout = next(s for s in result.breakdown if s.route == "POST /checkout")
    by_metric = {m.metric: m for m in checkout.metrics}
    p95 = by_metric["p95_latency"].estimate
    assert p95.diff_lo > 0 and 0.15 < p95.rel < 0.7  # injected +40 % on every request
    assert by_metric["error_rate"].estimate.diff_lo > 0  # injected +5 pp
    assert "POST /checkout" in result.summary and result.summary.endswith(
        f"— REGRESSION ({result.excluded['test_users']} test users, "
        f"{result.excluded['test_requests']} requests excluded)"
    )


def test_requests_are_counted_at_the_root_and_testers_excluded(regressed):
    lake, counts = regressed
    start, end = _window()
    result = run_diff(lake, DiffOptions("new-checkout", start, end))
    # Every checkout request of a real user is in exactly one cohort; testers in none.
    assert result.treatment.requests == counts["checkout_on"]
    assert result.baseline.requests == counts["checkout_off"]
    assert result.excluded["test_requests"] == counts["checkout_test"] > 0
    assert 0 < result.excluded["test_users"] <= shop.ShopConfig.qa_users
    only = run_diff(lake, DiffOptions("new-checkout", start, end, test_mode="only"))
    assert only.treatment.requests == counts["checkout_test"]
    assert only.baseline.requests == 0 and only.verdict is Verdict.NO_DATA


def test_cli_json_and_exit_code(regressed):
    lake, _ = regressed
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "flagscope",
            "diff",
            "--flag",
            "new-checkout",
            "--lake",
            str(lake),
            "--since",
            "2h",
            "--format",
            "json",
            "--expected-split",
            "on=0.2,off=0.8",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 14, completed.stderr
    doc = json.loads(completed.stdout)
    assert doc["verdict"] == "REGRESSION" and doc["exit_code"] == 14
    assert doc["summary"].startswith("new-checkout on vs off: POST /checkout")
    assert {h["check"] for h in doc["health"]} == {"sample_ratio", "crossover_users", "sample_size"}


def test_no_effect_is_not_a_regression(tmp_path):
    config = shop.ShopConfig(
        users=500, requests=4000, regression_latency=0.0, regression_errors=0.0, seed=12
    )
    lake, _ = _run_shop(tmp_path, config)
    start, end = _window()
    result = run_diff(lake, DiffOptions("new-checkout", start, end))
    assert result.verdict in (Verdict.PASS, Verdict.INCONCLUSIVE), result.reason
