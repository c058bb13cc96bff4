"""`flagscope guard`: the flagd rollback on real flagd definition files read back by the
real OpenFeature flagd provider (in-process, file mode), the intended split read from
fractional targeting, and the guard's look on lakes built to order — REGRESSION rolls
back, notifies a real local HTTP receiver, runs the command hook and writes the audit
log; anything else changes nothing; a dry run only says what it would do."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.guard import flagd
from flagscope.analysis.guard.runner import Guard, GuardSpec
from flagscope.analysis.verdict import Verdict
from tests.report_lakes import DAY1, cohort_traffic, write

FLAG = "checkout-v2"

# flagd's own kinds of definitions: fractional rollout, a targeting rule with a shared
# evaluator, a plain boolean flag — and the formatting a person leaves in such a file.
DEFINITIONS = """{
  "$schema": "https://flagd.dev/schema/v0/flags.json",
  "flags": {
    "checkout-v2": {
      "state": "ENABLED",
      "variants": { "on": true, "off": false },
      "defaultVariant": "off",
      "targeting": {
        "fractional": [
          { "var": "targetingKey" },
          [ "on", 20 ],
          [ "off", 80 ]
        ]
      }
    },
    "search-v2":   {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
                    "targeting": {"if": [{"$ref": "is-staff"}, "b", "a"]}},
    "banner": { "state": "DISABLED", "variants": { "yes": true, "no": false }, "defaultVariant": "no" }
  },
  "$evaluators": {
    "is-staff": { "ends_with": [ { "var": "email" }, "@example.com" ] }
  }
}
"""


@pytest.fixture
def definitions(tmp_path: Path) -> Path:
    path = tmp_path / "flags.flagd.json"
    path.write_text(DEFINITIONS)
    return path


def test_the_split_is_read_from_fractional_targeting(definitions: Path) -> None:
    flags = flagd.read_flags(definitions)
    assert flagd.expected_split(flags[FLAG]) == {"on": 0.2, "off": 0.8}
    assert flagd.expected_split(flags["search-v2"]) is None  # a rule picks some users first
    assert flagd.expected_split(flags["banner"]) is None  # no targeting: everyone the default


def test_a_rollback_changes_only_the_guarded_flag(definitions: Path) -> None:
    definitions.chmod(0o640)
    change = flagd.roll_back(definitions, FLAG, "off")
    text = definitions.read_text()
    start = DEFINITIONS.index('"checkout-v2": {') + len('"checkout-v2": ')
    end = DEFINITIONS.index('    "search-v2"')
    old_object = DEFINITIONS[start:end].rstrip().rstrip(",")
    assert change.before == old_object
    assert text == DEFINITIONS.replace(old_object, change.after)  # every other byte kept
    assert json.loads(change.after) == {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
    }
    after = json.loads(text)
    before = json.loads(DEFINITIONS)
    assert after["flags"]["search-v2"] == before["flags"]["search-v2"]
    assert after["$evaluators"] == before["$evaluators"]
    assert definitions.stat().st_mode & 0o777 == 0o640
    assert not list(definitions.parent.glob("*.tmp"))
    again = flagd.roll_back(definitions, FLAG, "off")
    assert not again.changed and definitions.read_text() == text


def test_a_dry_run_writes_nothing_and_mistakes_are_named(definitions: Path) -> None:
    change = flagd.roll_back(definitions, FLAG, "off", dry_run=True)
    assert change.changed and definitions.read_text() == DEFINITIONS
    with pytest.raises(AnalysisError, match="no variant 'of' to roll back to"):
        flagd.roll_back(definitions, FLAG, "of")
    with pytest.raises(AnalysisError, match="no flag 'checkout'"):
        flagd.roll_back(definitions, "checkout", "off")
    with pytest.raises(AnalysisError, match="not found"):
        flagd.read_flags(definitions.with_name("missing.json"))
    broken = definitions.with_name("broken.json")
    broken.write_text('{"flags": {')
    with pytest.raises(AnalysisError, match="is not JSON"):
        flagd.read_flags(broken)


PROVIDER = """
import sys, time
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType

api.set_provider(FlagdProvider(resolver_type=ResolverType.FILE,
                               offline_flag_source_path=sys.argv[1], deadline_ms=100))
client = api.get_client()
users = [EvaluationContext(targeting_key=f"user-{i}") for i in range(200)]

def served():
    return sum(client.get_boolean_value("checkout-v2", False, u) for u in users)

deadline = time.monotonic() + 10  # set_provider initialises in the background
while client.get_boolean_details("checkout-v2", False, users[0]).error_code is not None:
    assert time.monotonic() < deadline, "the provider never became ready"
    time.sleep(0.02)
print("before", served(), flush=True)
sys.stdin.readline()  # the test rolls back, then says so
deadline = time.monotonic() + 10
while served() and time.monotonic() < deadline:
    time.sleep(0.05)
staff = client.get_string_value("search-v2", "?", EvaluationContext("s", {"email": "a@example.com"}))
print("after", served(), staff, flush=True)
"""


def test_the_flagd_provider_serves_baseline_after_the_rollback(definitions: Path) -> None:
    """The real provider, reading the file in-process, picks the rewrite up: the 20 %
    fractional rollout becomes 0 users on, and the other flags still evaluate as before."""
    with subprocess.Popen(
        [sys.executable, "-c", PROVIDER, str(definitions)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        before = child.stdout.readline().split()
        assert before and before[0] == "before" and 20 <= int(before[1]) <= 70, (
            before
        )  # ~20 % of 200
        time.sleep(0.05)  # a later mtime than the provider's first read
        flagd.roll_back(definitions, FLAG, "off")
        child.stdin.write("rolled back\n")
        child.stdin.flush()
        assert child.stdout.readline().split() == ["after", "0", "b"]
        child.stdin.close()
        assert child.wait(timeout=30) == 0


# -- the guard's look ----------------------------------------------------------------------
class _Receiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:  # http.server's name
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def receiver():
    _Receiver.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver.bodies
    server.shutdown()
    server.server_close()


def _lake(tmp_path: Path, bad: bool) -> Path:
    rows = cohort_traffic(
        random.Random(3), FLAG, DAY1, 6, 1500, share_on=0.2,
        ms_on=160.0 if bad else 100.0, err_on=0.08 if bad else 0.01,
    )  # fmt: skip
    return write(tmp_path / "lake", rows)


def _spec(definitions: Path, **changes: Any) -> GuardSpec:
    return GuardSpec(FLAG, variant="on", baseline="off", flagd_file=definitions, **changes)


def test_a_regression_rolls_back_notifies_runs_the_hook_and_is_audited(
    tmp_path: Path, definitions: Path, receiver
) -> None:
    url, bodies = receiver
    lake = _lake(tmp_path, bad=True)
    hook_out = tmp_path / "hook.json"
    spec = _spec(definitions, webhook_url=url, command=f"cat > {hook_out}")
    guard = Guard(lake, [spec], tmp_path)
    outcome = guard.look(spec, DAY1 + timedelta(hours=6))
    assert outcome.verdict is Verdict.REGRESSION, outcome.summary
    assert outcome.exit_code == 14
    assert json.loads(definitions.read_text())["flags"][FLAG].get("targeting") is None
    assert bodies and "checkout-v2" in bodies[0]["text"] and "rolled back" in bodies[0]["text"]
    hooked = json.loads(hook_out.read_text())
    assert hooked["verdict"] == "REGRESSION" and hooked["result"]["settings"]["one_sided"]
    record, delivery = [
        json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()
    ]
    assert record["flag"] == FLAG and record["action"] == "rolled_back"
    assert (
        delivery["notification"] == "sent" and delivery["notification_id"] == record["notification"]
    )
    assert outcome.notified is True
    assert record["change"]["after"] == json.dumps(
        {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"},
        separators=(", ", ": "),
    )
    assert record["command"]["exit_code"] == 0
    assert record["result"]["settings"]["expected_split"] == {"on": 0.2, "off": 0.8}
    # the next look does not act again
    later = guard.look(spec, DAY1 + timedelta(hours=7))
    assert later.actions == () and "rolled back at" in later.summary
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 2 and len(bodies) == 1


def test_a_harmless_flag_changes_nothing(tmp_path: Path, definitions: Path, receiver) -> None:
    url, bodies = receiver
    spec = _spec(definitions, webhook_url=url)
    guard = Guard(_lake(tmp_path, bad=False), [spec], tmp_path)
    outcome = guard.look(spec, DAY1 + timedelta(hours=6))
    assert outcome.verdict is not Verdict.REGRESSION and outcome.actions == ()
    assert definitions.read_text() == DEFINITIONS
    assert not bodies and not (tmp_path / "audit.jsonl").exists()


def test_a_dry_run_says_what_it_would_do(tmp_path: Path, definitions: Path, receiver) -> None:
    url, bodies = receiver
    spec = _spec(definitions, webhook_url=url, command="exit 3", dry_run=True)
    guard = Guard(_lake(tmp_path, bad=True), [spec], tmp_path)
    outcome = guard.look(spec, DAY1 + timedelta(hours=6))
    assert outcome.verdict is Verdict.REGRESSION
    assert [a.split()[0:2] for a in outcome.actions] == [
        ["would", "roll"],
        ["would", "notify"],
        ["would", "run"],
    ]
    assert definitions.read_text() == DEFINITIONS and not bodies
    (record,) = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert record["dry_run"] and "action" not in record


def test_guard_once_from_the_command_line(tmp_path: Path, definitions: Path) -> None:
    lake = _lake(tmp_path, bad=True)
    audit = tmp_path / "audit.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "flagscope", "guard", "--lake", str(lake), "--flag", FLAG,
         "--flagd", str(definitions), "--once", "--rollout-start", DAY1.isoformat(),
         "--audit-log", str(audit), "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 14, done.stderr
    assert "REGRESSION" in done.stdout and "rolled back checkout-v2 to 'off'" in done.stdout
    assert json.loads(definitions.read_text())["flags"][FLAG]["defaultVariant"] == "off"
    wrong = subprocess.run(
        [sys.executable, "-m", "flagscope", "guard", "--lake", str(lake), "--flag", FLAG,
         "--flagd", str(tmp_path / "nope.json"), "--once"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert wrong.returncode == 2 and "not found" in wrong.stderr and "Traceback" not in wrong.stderr
