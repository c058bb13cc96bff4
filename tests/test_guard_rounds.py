"""The guard over many looks: `[guard]` in flagscope.toml, several flags, notifications that
survive a failing webhook (a real local receiver that fails, then recovers), a failing
look that alerts once, ramp stages with a verdict each, and the ramp advanced in the
flagd file once harm has been ruled out long enough — on lakes built to order."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.guard import config as guard_config
from flagscope.analysis.guard import flagd, slo
from flagscope.analysis.guard.runner import Guard, GuardSpec
from flagscope.analysis.verdict import Thresholds, Verdict
from tests.report_lakes import DAY1, cohort_traffic, write
from tests.webhook_receiver import Hook

FLAG = "checkout-v2"
BAD = {"start": DAY1, "hours": 6, "users": 1500, "share_on": 0.2, "err_on": 0.08, "ms_on": 160.0}
LOOSE = Thresholds(error_rate_pp=3.0, latency_pct=25.0, min_users=20)  # PASS within hours


def _definitions(tmp_path: Path, on: int = 20) -> Path:
    path = tmp_path / "flags.flagd.json"
    path.write_text(
        json.dumps(
            {
                "flags": {
                    FLAG: {
                        "state": "ENABLED",
                        "variants": {"on": True, "off": False},
                        "defaultVariant": "off",
                        "targeting": {"fractional": [["on", on], ["off", 100 - on]]},
                    },
                    "other": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"},
                }
            },
            indent=2,
        )
    )
    return path


def _lake(tmp_path: Path, chunks: list[dict[str, Any]]) -> Path:
    rng, rows = random.Random(5), []
    for chunk in chunks:
        rows += cohort_traffic(rng, FLAG, **chunk)
    return write(tmp_path / "lake", rows)


def _audit(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]


def test_the_documented_config_parses_and_mistakes_are_named(tmp_path: Path) -> None:
    doc = {
        "guard": {
            "every": "30s",
            "webhook_url": "https://hooks.example.com/services/x",
            "alpha": 0.01,
            "slo": [{"service": "checkout", "availability": 0.999}],
            "flag": [
                {"flag": FLAG, "flagd": "flags.flagd.json", "ramp": [5, 25, 100],
                 "advance_after": "2h", "rollout_start": "2026-12-01T09:00:00Z"},
                {"flag": "search-v2", "variant": "b", "baseline": "a", "dry_run": True},
            ],
        }
    }  # fmt: skip
    config = guard_config.parse_config(doc)
    first, second = config.specs
    assert config.every == timedelta(seconds=30)
    assert first.ramp == (5.0, 25.0, 100.0) and first.advance_after == timedelta(hours=2)
    assert first.alpha == 0.01 and first.stage_alpha == pytest.approx(0.01 / 3)
    assert first.since is not None and first.since.hour == 9
    assert second.dry_run and second.variant == "b" and second.flagd_file is None
    assert second.webhook_url == "https://hooks.example.com/services/x"  # the [guard] default
    assert first.slos == second.slos and first.slos[0].objective == 0.999
    env = {"FLAGSCOPE_WEBHOOK_URL": "https://secret.example.com/hook"}
    assert (
        guard_config.parse_config(doc, env=env).specs[0].webhook_url == env["FLAGSCOPE_WEBHOOK_URL"]
    )
    mistakes = [
        ({"flag": [{"flag": FLAG, "ramp": [25, 5]}]}, "rising percentages"),
        ({"flag": [{"flag": FLAG, "advance_after": "1h"}]}, "advance_after needs a ramp"),
        ({"flag": [{"flag": FLAG, "alpha": 0.6}]}, "below 0.5"),
        ({"flag": [{"flag": FLAG, "flagd_file": "x"}]}, "did you mean 'flagd'"),
        ({"flag": [{"flag": FLAG}, {"flag": FLAG}]}, "two [[guard.flag]] tables"),
        ({"flag": {"flag": FLAG}}, "[[guard.flag]] tables"),
        ({"every": "soon"}, "every"),
        ({"flag": [{"flag": FLAG, "dry_run": "yes"}]}, "dry_run = true"),
    ]
    for body, message in mistakes:
        with pytest.raises(AnalysisError, match=message.replace("[", r"\[")):
            guard_config.parse_config({"guard": body})


def test_a_failed_webhook_is_retried_at_the_next_look_and_audited(
    tmp_path: Path, hook: Hook
) -> None:
    lake = _lake(tmp_path, [BAD])
    spec = GuardSpec(FLAG, variant="on", baseline="off", webhook_url=hook.url)  # notify only
    guard = Guard(lake, [spec], tmp_path / "state")
    hook.script = [(503, {}, 0.0), (503, {}, 0.0)]  # the first round's attempt and its retry
    first = guard.look_all(DAY1 + timedelta(hours=6))[0]
    assert first.verdict is Verdict.REGRESSION and first.notified is False
    assert "notification failed; retried" in first.line()
    assert [e.get("notification") for e in _audit(tmp_path / "state")][1:] == ["failed"]
    second = guard.look_all(DAY1 + timedelta(hours=6, minutes=1))[0]
    assert second.verdict is Verdict.REGRESSION and second.actions == ()  # once per episode
    assert second.notified is True and len(hook.requests) == 3
    assert "REGRESSION" in hook.requests[-1]["json"]["text"]
    assert [e.get("notification") for e in _audit(tmp_path / "state")][1:] == ["failed", "sent"]
    assert guard.look_all(DAY1 + timedelta(hours=6, minutes=2))[0].notified is None
    assert len(hook.requests) == 3  # delivered once


def test_one_failing_flag_alerts_once_and_the_others_are_still_watched(
    tmp_path: Path, hook: Hook
) -> None:
    lake = _lake(tmp_path, [{"start": DAY1, "hours": 6, "users": 1500, "share_on": 0.2}])
    good = GuardSpec(FLAG, variant="on", baseline="off")
    broken = GuardSpec(
        "no-such-flag", variant="on", baseline="off", since=DAY1, webhook_url=hook.url
    )  # a rollout start given: the flag must be in the lake
    guard = Guard(lake, [broken, good], tmp_path / "state")
    rounds = [guard.look_all(DAY1 + timedelta(hours=2, minutes=m)) for m in range(3)]
    assert [r[0].verdict for r in rounds] == [None] * 3 and all(r[0].exit_code == 2 for r in rounds)
    assert all(r[1].verdict is not None for r in rounds)  # the good flag's looks go on
    (alert,) = hook.requests
    assert "`no-such-flag` is failing" in alert["json"]["text"]
    assert [r[0].notified for r in rounds] == [True, None, None]


def test_ramp_stages_are_compared_apart_and_each_gets_a_verdict(tmp_path: Path) -> None:
    """20 % for three hours, then 50 %: the users the ramp moves are no crossovers of the
    second stage, whose sample-ratio check expects 50/50."""
    definitions = _definitions(tmp_path, on=20)
    lake = _lake(tmp_path, [{"start": DAY1, "hours": 3, "users": 1500, "share_on": 0.2}])
    spec = GuardSpec(FLAG, variant="on", baseline="off", flagd_file=definitions,
                     thresholds=LOOSE, ramp=(20, 50, 100))  # fmt: skip
    guard = Guard(lake, [spec], tmp_path / "state")
    early = [guard.look(spec, DAY1 + timedelta(hours=h)) for h in (1, 2, 3)]
    assert [o.stage.number for o in early if o.stage] == [1, 1, 1]
    flagd.set_share(definitions, FLAG, "on", "off", 50)  # someone ramps to 50 % at 03:00…
    _lake(
        tmp_path, [{"start": DAY1 + timedelta(hours=3), "hours": 3, "users": 1500, "share_on": 0.5}]
    )
    late = [guard.look(spec, DAY1 + timedelta(hours=h)) for h in (3, 4, 5, 6)]  # …and on
    assert all(o.stage is not None and o.stage.number == 2 for o in late)
    assert late[0].stage is not None and late[0].stage.start == DAY1 + timedelta(hours=3)
    assert late[0].verdict is Verdict.NO_DATA and "stage 2 (50 %" in late[0].summary
    verdicts = [o.verdict for o in early + late]
    assert Verdict.UNHEALTHY not in verdicts and Verdict.PASS in verdicts, verdicts
    stages = guard.history(FLAG).stages()
    assert [(s.stage.number, s.stage.percent) for s in stages] == [(1, 20.0), (2, 50.0)]
    assert [s.verdict for s in stages] == [early[-1].verdict, late[-1].verdict]
    options = guard.options(spec, DAY1, DAY1)
    assert options.alpha == pytest.approx(2 * 0.05 / 3)  # each of 3 stages: alpha / 3
    assert options.expected_split == {"on": 0.5, "off": 0.5}  # the stage's split


def test_a_harmless_stage_is_advanced_once_harm_is_ruled_out_long_enough(
    tmp_path: Path, hook: Hook
) -> None:
    definitions = _definitions(tmp_path, on=20)
    original = json.loads(definitions.read_text())
    lake = _lake(tmp_path, [{"start": DAY1, "hours": 8, "users": 3000, "share_on": 0.2}])
    spec = GuardSpec(FLAG, variant="on", baseline="off", flagd_file=definitions,
                     thresholds=LOOSE, ramp=(20, 50, 100), advance_after=timedelta(hours=2),
                     webhook_url=hook.url)  # fmt: skip
    guard = Guard(lake, [spec], tmp_path / "state")
    outcomes = [guard.look(spec, DAY1 + timedelta(minutes=30 * k)) for k in range(1, 17)]
    passes = [o.at for o in outcomes if o.verdict is Verdict.PASS]
    assert passes, [o.line() for o in outcomes]
    advanced = [o for o in outcomes if any("advanced" in a for a in o.actions)]
    assert len(advanced) == 1, [o.line() for o in outcomes]
    assert advanced[0].at - passes[0] >= timedelta(hours=2)
    assert flagd.expected_split(flagd.read_flags(definitions)[FLAG]) == {"on": 0.5, "off": 0.5}
    after = json.loads(definitions.read_text())
    assert after["flags"]["other"] == original["flags"]["other"]
    (entry,) = [e for e in _audit(tmp_path / "state") if e.get("action") == "advanced"]
    assert entry["stage"]["percent"] == 20.0 and entry["verdict"] == "PASS"
    assert any("from 20 % to 50 %" in r["json"]["text"] for r in hook.requests)
    later = [o for o in outcomes if o.at > advanced[0].at]
    assert all(o.stage is not None and o.stage.number == 2 for o in later)


def test_guard_once_runs_the_declared_flags_and_exits_with_the_worst_code(
    tmp_path: Path,
) -> None:
    lake = _lake(tmp_path, [BAD])
    definitions = _definitions(tmp_path)
    config = tmp_path / "flagscope.toml"
    config.write_text(
        f'[guard]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[[guard.flag]]\nflag = "{FLAG}"\nflagd = "{definitions}"\n'
        f'rollout_start = "{DAY1.isoformat()}"\n'
        '[[guard.flag]]\nflag = "no-such-flag"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "flagscope", "guard", "--lake", str(lake), "--config",
         str(config), "--once", "--dry-run"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 14, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and "REGRESSION" in lines[0] and "would roll back" in lines[0]
    assert "no-such-flag: NO_DATA — treatment not evaluated yet" in lines[1]
    assert json.loads(definitions.read_text())["flags"][FLAG]["targeting"]  # dry run
    flagd.set_share(definitions, FLAG, "on", "off", 50)  # ramped: the next look a new stage
    ramped = subprocess.run(
        [sys.executable, "-m", "flagscope", "guard", "--lake", str(lake), "--config",
         str(config), "--once", "--dry-run"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "stage 2 (50 %" in ramped.stdout and "begins" in ramped.stdout, ramped.stdout
    assert "  stages: 1 (20 %): REGRESSION; 2 (50 %): NO_DATA" in ramped.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "flagscope", "guard", "--lake", str(lake), "--config",
         str(config), "--once", "--variant", "on"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and "give --flag too" in refused.stderr


def test_a_rollback_says_how_bad_in_slo_terms_and_the_message_leads_with_the_severity(
    tmp_path: Path, hook: Hook
) -> None:
    """8 % errors in treatment against a 99.5 % availability SLO burns 16× at 100 %: above
    the workbook's 6× over 6 h and its last 30 m (9×: 3 of 69 requests), a page; a latency
    SLO the flag keeps is no alarm."""
    lake = _lake(tmp_path, [BAD])
    slos = slo.parse_slos(
        [
            {"service": "frontend", "availability": 0.995},
            {"service": "frontend", "latency_ms": 2000, "latency_objective": 0.99},
        ]
    )
    spec = GuardSpec(FLAG, variant="on", baseline="off", webhook_url=hook.url, slos=slos)
    guard = Guard(lake, [spec], tmp_path / "state")
    outcome = guard.look(spec, DAY1 + timedelta(hours=6))
    assert outcome.verdict is Verdict.REGRESSION and outcome.severity is slo.Severity.PAGE
    availability, latency = outcome.budget
    assert "at 100 % this flag would exhaust the 30-day budget in" in availability
    assert availability.endswith("— page") and "the budget is safe" in latency
    assert "\n  frontend availability" in outcome.line()
    (message,) = hook.requests
    assert message["json"]["text"].startswith("[PAGE] flagscope guard `checkout-v2`: ")
    (entry,) = [e for e in _audit(tmp_path / "state") if "verdict" in e]
    assert entry["severity"] == "page" and len(entry["slo"]) == 2
    (six_hours,) = [w for w in entry["slo"][0]["windows"] if w["window"] == "6h"]
    treatment = entry["result"]["cohorts"]["treatment"]
    assert six_hours["treatment"]["requests"] == treatment["requests"]  # the diff's requests
    assert six_hours["treatment"]["burn"] == pytest.approx(treatment["error_rate"] / 0.005)


def test_a_flag_rolled_out_again_after_a_rollback_is_watched_anew(tmp_path: Path) -> None:
    definitions = _definitions(tmp_path, on=20)
    original = definitions.read_text()
    lake = _lake(tmp_path, [BAD])
    spec = GuardSpec(FLAG, variant="on", baseline="off", flagd_file=definitions)
    guard = Guard(lake, [spec], tmp_path / "state")
    first = guard.look(spec, DAY1 + timedelta(hours=3))
    assert first.verdict is Verdict.REGRESSION and "rolled back" in first.actions[0]
    held = guard.look(spec, DAY1 + timedelta(hours=3, minutes=1))
    assert "rolled back at" in held.summary and held.actions == ()
    definitions.write_text(original)  # the team rolls it out again
    again = guard.look(spec, DAY1 + timedelta(hours=3, minutes=2))
    assert again.stage is not None and again.stage.number == 3 and again.stage.percent == 20.0
    assert again.verdict is Verdict.NO_DATA  # a new stage: nothing to compare yet
    second = guard.look(spec, DAY1 + timedelta(hours=6))
    assert second.verdict is Verdict.REGRESSION and "rolled back" in second.actions[0]
    assert json.loads(definitions.read_text())["flags"][FLAG].get("targeting") is None
    rollbacks = [e for e in _audit(tmp_path / "state") if e.get("action") == "rolled_back"]
    assert [e["stage"]["number"] for e in rollbacks] == [1, 3]
