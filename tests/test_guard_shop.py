"""End to end (issue 14 point 2): the sample shop serves `new-checkout` through the real
OpenFeature flagd provider reading a flagd definitions file (in-process, file mode), its
OpenTelemetry traffic goes through a real collector into the lake; the guard looks until
it calls the shop's injected regression REGRESSION and rolls the flag back in the file;
the shop keeps running, its provider picks the rewrite up, and the lake shows the
evaluations back on baseline."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.provider.no_op_provider import NoOpProvider

from flagscope.analysis.guard.runner import Guard, GuardSpec, LookOutcome
from flagscope.analysis.verdict import Verdict
from tests.helpers import RunningCollector, make_settings, query, wait_for_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sample_data"))
import shop

pytestmark = pytest.mark.slow

FLAG = shop.FLAG
ROUND = 1500  # requests before each look
LOOKS = 8  # looks before the test gives up on a REGRESSION (the shop's shows at the first)
# The provider looks at the file every 0.1 s: evaluations later than this after the
# rollback must all be baseline, however loaded the machine.
GRACE_S = 5.0
AFTER = 1500  # requests served once the grace period is over
SPANS = "SELECT count(*) FROM events WHERE signal = 'span'"
# Each checkout's evaluation, on the checkout service's span (the user is the targeting
# key, the variant the one served), by when the rollback happened.
PHASES = """
SELECT CASE WHEN time < $1 THEN 'before'
            WHEN time > $2 THEN 'after' ELSE 'switching' END AS phase,
       starts_with(user_id, 'qa-') AS tester,
       count(DISTINCT user_id) AS users,
       count(DISTINCT user_id) FILTER (WHERE flags[$3] = 'on') AS users_on,
       count(*) AS evaluations,
       count(*) FILTER (WHERE flags[$3] = 'on') AS evaluations_on,
       count(*) FILTER (WHERE flags[$3] = 'off') AS evaluations_off
FROM events
WHERE signal = 'span' AND flags[$3] IS NOT NULL
GROUP BY ALL
"""
OTHER_FLAG = {  # a flag the rollback must leave alone, with a shared evaluator
    "state": "ENABLED",
    "variants": {"dark": "dark", "light": "light"},
    "defaultVariant": "light",
    "targeting": {"if": [{"$ref": "is-staff"}, "dark", "light"]},
}


def _definitions() -> dict[str, Any]:
    definitions = shop.flagd_definitions()
    definitions["flags"]["theme"] = OTHER_FLAG
    definitions["$evaluators"] = {"is-staff": {"ends_with": [{"var": "email"}, "@example.com"]}}
    return definitions


def _settle(running: RunningCollector, the_shop: shop.Shop) -> None:
    """Wait until the lake holds every span the shop has sent: exported, acknowledged and
    converted, so that a look sees all of it."""
    assert the_shop.flush(), "the shop's exporters did not finish"
    seen = wait_for_count(running.lake, SPANS, the_shop.spans, timeout=90)
    assert seen == the_shop.spans, f"the lake holds {seen} of {the_shop.spans} spans"


def _look_until_rollback(
    running: RunningCollector, the_shop: shop.Shop, guard: Guard, spec: GuardSpec
) -> LookOutcome:
    outcomes = []
    for _ in range(LOOKS):
        the_shop.send(ROUND)
        _settle(running, the_shop)
        outcomes.append(guard.look(spec))
        if outcomes[-1].verdict is Verdict.REGRESSION:
            return outcomes[-1]
    pytest.fail("the guard never said REGRESSION:\n" + "\n".join(o.line() for o in outcomes))


def _serve_past_grace(the_shop: shop.Shop, rollback_ns: int) -> None:
    """The shop keeps serving, paced, until AFTER requests have been served later than the
    grace period after the rollback."""
    late = 0
    while late < AFTER:
        past_grace = time.time_ns() > rollback_ns + GRACE_S * 1e9
        the_shop.send(50, per_second=1000)
        late += 50 if past_grace else 0


def _naive_utc(ns: float) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC).replace(tzinfo=None)


def test_the_guard_rolls_the_running_shop_back_to_baseline(tmp_path: Path) -> None:
    flags_file = tmp_path / "flags.flagd.json"
    original = _definitions()
    flags_file.write_text(json.dumps(original, indent=2) + "\n")
    # the split for the sample-ratio check is read off the file's fractional rule
    spec = GuardSpec(FLAG, variant="on", baseline="off", flagd_file=flags_file)
    config = shop.ShopConfig(flagd_file=flags_file, live=True, seed=21)
    running = RunningCollector(
        make_settings(tmp_path / "data", max_request_bytes=8 * 1024 * 1024)
    ).start()
    guard = Guard(running.lake, [spec], tmp_path / "guard")
    try:
        with shop.Shop(running.http_url, running.grpc_target, config) as the_shop:
            outcome = _look_until_rollback(running, the_shop, guard, spec)
            rollback_ns = flags_file.stat().st_mtime_ns
            _serve_past_grace(the_shop, rollback_ns)
            _settle(running, the_shop)
            again = guard.look(spec)
    finally:
        running.stop()

    assert outcome.actions == (f"rolled back {FLAG} to 'off' in {flags_file}",), outcome.line()
    assert again.actions == () and "rolled back at" in again.summary  # not twice
    (record,) = [json.loads(line) for line in guard.audit_log.read_text().splitlines()]
    assert record["action"] == "rolled_back" and record["verdict"] == "REGRESSION"
    assert record["result"]["settings"]["expected_split"] == {"on": 0.2, "off": 0.8}

    rows = query(
        running.lake,
        PHASES,
        [_naive_utc(rollback_ns), _naive_utc(rollback_ns + GRACE_S * 1e9), FLAG],
    )
    columns = ("users", "users_on", "evaluations", "on", "off")
    by = {(phase, tester): dict(zip(columns, row, strict=True)) for phase, tester, *row in rows}
    before = by["before", False]
    assert before["users"] > 200 and 0.12 < before["users_on"] / before["users"] < 0.28, by
    for tester in (False, True):  # everyone on baseline, the testers too
        after = by["after", tester]
        assert after["on"] == after["users_on"] == 0, by
        assert after["off"] == after["evaluations"] > 0, by
    assert by["after", False]["evaluations"] > 100, by

    rewritten = json.loads(flags_file.read_text())
    rolled = rewritten["flags"].pop(FLAG)
    definition = original["flags"].pop(FLAG)
    assert rewritten == original  # every other flag, the evaluators and the schema untouched
    assert rolled == {k: v for k, v in definition.items() if k != "targeting"} | {
        "defaultVariant": "off"
    }
    _the_file_still_loads(flags_file)


def _the_file_still_loads(flags_file: Path) -> None:
    """A fresh flagd provider reads the rewritten file: the flag serves baseline, statically,
    and the other flag still follows its rule."""
    domain = "test-guard-shop-reread"
    api.set_provider_and_wait(shop.flagd_provider(flags_file), domain=domain)
    try:
        client = api.get_client(domain)
        details = client.get_boolean_details(FLAG, True, EvaluationContext("qa-01"))
        assert (details.value, details.variant, details.error_code) == (False, "off", None)
        assert details.reason == "STATIC"
        staff = EvaluationContext("u", {"email": "a@example.com"})
        assert client.get_string_value("theme", "?", staff) == "dark"
        assert client.get_string_value("theme", "?", EvaluationContext("u")) == "light"
    finally:
        api.set_provider(NoOpProvider(), domain=domain)
