"""Scheduled reports: the cron parser, the [reports] config, the scheduler on an injected
clock over a real lake, and webhooks POSTed to a real HTTP server on loopback port 0."""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.report_archive import read_history
from flagscope.analysis.schedule import cron, webhook
from flagscope.analysis.schedule.runner import (
    Scheduler,
    load_config,
    next_fire,
    parse_config,
    should_notify,
)
from flagscope.analysis.verdict import Verdict
from tests.report_lakes import DAY1, build_flip_lake


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- cron ------------------------------------------------------------------------------------
# 2026-11-27 is a Friday, 2026-11-30 a Monday, 2028 a leap year.
@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("*/15 * * * *", utc(2026, 11, 28, 10, 7), utc(2026, 11, 28, 10, 15)),
        ("*/15 * * * *", utc(2026, 11, 28, 10, 15), utc(2026, 11, 28, 10, 30)),  # strictly after
        ("*/15 * * * *", utc(2026, 11, 28, 10, 15, 59, 999), utc(2026, 11, 28, 10, 30)),
        ("*/15 * * * *", utc(2026, 11, 28, 23, 50), utc(2026, 11, 29, 0, 0)),
        ("0 9 * * MON-FRI", utc(2026, 11, 26, 8, 59), utc(2026, 11, 26, 9, 0)),
        ("0 9 * * MON-FRI", utc(2026, 11, 27, 9, 0), utc(2026, 11, 30, 9, 0)),  # skips the weekend
        ("0 9 * * 1-5", utc(2026, 11, 27, 9, 0), utc(2026, 11, 30, 9, 0)),
        ("0 0 31 * *", utc(2026, 11, 1), utc(2026, 12, 31)),  # November has 30 days
        ("0 0 31 * *", utc(2027, 1, 31), utc(2027, 3, 31)),  # nor has February
        ("0 12 29 FEB *", utc(2026, 3, 1), utc(2028, 2, 29, 12, 0)),  # leap day
        ("0 0 1 1 *", utc(2026, 12, 31, 23, 59), utc(2027, 1, 1)),
        ("30 23 31 12 *", utc(2026, 12, 31, 23, 30), utc(2027, 12, 31, 23, 30)),  # year rollover
        ("0 9 1 * MON", utc(2026, 11, 28), utc(2026, 11, 30, 9, 0)),  # dom and dow: either (Monday)
        (
            "0 9 1 * MON",
            utc(2026, 11, 30, 9, 0),
            utc(2026, 12, 1, 9, 0),
        ),  # … or the 1st (a Tuesday)
        ("0 9 1 * MON", utc(2026, 12, 1, 9, 0), utc(2026, 12, 7, 9, 0)),
        ("0 9 1 * *", utc(2026, 11, 28), utc(2026, 12, 1, 9, 0)),  # only dom restricted
        (
            "0 0 */2 * MON",
            utc(2026, 11, 28),
            utc(2026, 12, 7),
        ),  # `*/2` is unrestricted: AND (Vixie)
        ("0 0 * * 7", utc(2026, 11, 27), utc(2026, 11, 29)),  # 7 is Sunday
        ("0 0 * * SUN", utc(2026, 11, 27), utc(2026, 11, 29)),
        ("5/20 8-10/2 * jan,Jul *", utc(2026, 11, 28), utc(2027, 1, 1, 8, 5)),
        ("0 22-23,1 * * *", utc(2026, 11, 28, 23, 0), utc(2026, 11, 29, 1, 0)),
        ("@hourly", utc(2026, 11, 28, 10, 7), utc(2026, 11, 28, 11, 0)),
        ("@weekly", utc(2026, 11, 28), utc(2026, 11, 29)),
    ],
)
def test_next_fire_known_cases(expr, after, expected):
    assert next_fire(expr, after) == expected


def test_next_fire_keeps_naive_and_converts_zones():
    assert next_fire("*/15 * * * *", datetime(2026, 11, 28, 10, 7)) == datetime(
        2026, 11, 28, 10, 15
    )
    plus_two = datetime(2026, 11, 28, 10, 7, tzinfo=timezone(timedelta(hours=2)))
    assert next_fire("*/15 * * * *", plus_two) == utc(2026, 11, 28, 8, 15)


def test_next_fire_agrees_with_a_minute_by_minute_search():
    rng = random.Random(3)
    fields = [
        ["*", "*/7", "5,35", "10-20/5", "0"],
        ["*", "9-17", "*/6", "0,12"],
        ["*", "1,15", "10-12", "*/3"],
        ["*", "11-12,1", "NOV,DEC,JAN"],
        ["*", "MON-FRI", "0,6", "3"],
    ]
    for _ in range(25):
        expr = " ".join(rng.choice(f) for f in fields)
        parsed = cron.parse(expr)
        after = utc(2026, 11, 28) + timedelta(minutes=rng.randrange(60 * 24 * 30))
        found = next_fire(parsed, after)
        t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        while t < found:
            assert not parsed.matches(t), (expr, after, t)
            t += timedelta(minutes=1)
        assert parsed.matches(found) and found > after


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", r"expected five fields \(minute hour day-of-month month day-of-week\), got 4"),
        ("0 9 * * * *", "got 6"),
        ("60 * * * *", "minute 60 is out of range 0-59"),
        ("0 24 * * *", "hour 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
        ("0 0 * 13 *", "month 13 is out of range 1-12"),
        ("*/0 * * * *", "step '0' must be a whole number ≥ 1"),
        ("0 9 * * FRI-MON", "day-of-week range 'FRI-MON' runs backwards; Sunday is 0"),
        ("0 0 30 2 *", "day 30 never occurs in FEB: it never fires"),
        ("0 0 * * FUNDAY", "day-of-week 'FUNDAY' is not a number or a name"),
        ("1,,2 * * * *", "empty list item"),
        ("@reboot", "unknown macro"),
        ("", "expected five fields"),
    ],
)
def test_invalid_cron_is_rejected_with_the_fix(expr, message):
    with pytest.raises(AnalysisError, match=message) as caught:
        cron.parse(expr)
    assert "e.g. '0 * * * *'" in str(caught.value)


# -- config ----------------------------------------------------------------------------------
def test_config_parses_the_documented_example(tmp_path):
    path = tmp_path / "flagscope.toml"
    path.write_text("""
[lake]
retention_days = 7

[reports]
out_dir = "out"
webhook_url = "http://127.0.0.1:9/hook"
link_base = "https://reports.example.com/"
min_users = 20

[[reports.flag]]
flag = "new-checkout"
variant = "on"
baseline = "off"
window = "24h"
cron = "0 * * * *"
formats = ["md", "json"]
expected_split = { on = 0.2, off = 0.8 }
error_threshold_pp = 0.5
latency_threshold_pct = 5

[[reports.flag]]
flag = "dark-mode"
webhook_url = ""
""")
    config = load_config(path, env={})
    assert config.out_dir == Path("out") and config.link_base == "https://reports.example.com/"
    first, second = config.reports
    assert (first.flag, first.variant, first.baseline, first.window) == (
        "new-checkout",
        "on",
        "off",
        timedelta(hours=24),
    )
    assert first.formats == ("md", "json") and first.expected_split == {"on": 0.2, "off": 0.8}
    assert (
        first.thresholds.min_users == 20 and second.thresholds.min_users == 20
    )  # [reports] default
    assert first.webhook_url is None and second.webhook_url == ""  # inherit / turned off
    assert second.cron.expr == "0 * * * *" and second.window == timedelta(hours=24)
    options = first.options(utc(2026, 11, 28, 9))
    assert options.sequential and options.end == datetime(2026, 11, 28, 9)
    assert options.start == datetime(2026, 11, 27, 9)
    assert load_config(path, env={"FLAGSCOPE_WEBHOOK_URL": "https://h.example/x"}).webhook_url == (
        "https://h.example/x"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '[[reports.flag]]\nflag = "f"\nwindw = "1h"',
            r"unknown setting 'windw'; did you mean 'window'\?",
        ),
        (
            '[[reports.flag]]\nflag = "f"\ncron = "0 25 * * *"',
            r"\(f\): cron '0 25 \* \* \*': hour 25",
        ),
        (
            '[[reports.flag]]\nflag = "f"\nwindow = "1 day"',
            r"window '1 day': expected a number and a unit",
        ),
        (
            '[[reports.flag]]\nflag = "f"\nformats = ["pdf"]',
            r"unknown report format 'pdf'; choose from",
        ),
        (
            '[[reports.flag]]\nflag = "f"\nvariant = "on"\nexpected_split = { a = 0.5, b = 0.5 }',
            "expected_split needs a share > 0 for each compared variant",
        ),
        (
            '[[reports.flag]]\nflag = "f"\n[[reports.flag]]\nflag = "f"',
            "'f' has two \\[\\[reports.flag\\]\\] tables",
        ),
        ('[[reports.flag]]\nvariant = "on"', 'flag is required, e.g. flag = "new-checkout"'),
        (
            '[[reports.flag]]\nflag = "f"\nmin_users = "many"',
            "min_users = 'many': expected e.g. min_users = 50",
        ),
        ('[[reports.flag]]\nflag = "f"\ntest_traffic = "skip"', "choose exclude, include or only"),
        ('[reports]\nwebhook_url = "hooks.example.com/x"', "expected an http:// or https:// URL"),
        ('[reports]\nflag = "f"', r"flag must be \[\[reports.flag\]\] tables"),
        ('[report]\nout_dir = "x"', r"unknown section \[report\]"),
    ],
)
def test_config_errors_name_the_fix(tmp_path, body, message):
    path = tmp_path / "flagscope.toml"
    path.write_text(body)
    with pytest.raises(AnalysisError, match=message):
        load_config(path, env={})


def test_no_reports_declared_is_an_error_with_an_example(tmp_path):
    path = tmp_path / "flagscope.toml"
    path.write_text("[lake]\nretention_days = 7\n")
    with pytest.raises(AnalysisError, match=r"no reports declared .* \[\[reports.flag\]\]"):
        load_config(path, env={})
    assert load_config(path, env={}, require=False).reports == ()


def test_unknown_flag_for_run_once_suggests_the_declared_one():
    config = parse_config({"reports": {"flag": [{"flag": "new-checkout"}]}})
    with pytest.raises(AnalysisError, match="did you mean 'new-checkout'"):
        config.report("new-chekout")


def test_notification_rule():
    assert should_notify(None, Verdict.REGRESSION) and should_notify(None, Verdict.UNHEALTHY)
    assert not should_notify(None, Verdict.PASS) and not should_notify(None, Verdict.INCONCLUSIVE)
    assert should_notify(Verdict.PASS, Verdict.REGRESSION)
    assert should_notify(Verdict.REGRESSION, Verdict.PASS)
    assert not should_notify(Verdict.REGRESSION, Verdict.REGRESSION)


PAYLOAD = {"text": "checkout-v2 on vs off: … — REGRESSION — reports/checkout-v2/x.html"}


def test_webhook_posts_slack_json(hook):
    assert webhook.notify(hook.url, PAYLOAD) is True
    (request,) = hook.requests
    assert request["path"] == "/services/T000/B000/secret" and request["json"] == PAYLOAD
    assert request["headers"]["Content-Type"] == "application/json"


def test_webhook_retries_5xx_with_backoff(hook):
    hook.script = [(500, {}, 0.0), (503, {}, 0.0)]
    waits: list[float] = []
    assert webhook.notify(hook.url, PAYLOAD, backoff_s=0.01, sleep=waits.append) is True
    assert len(hook.requests) == 3 and waits == [0.01, 0.02]


def test_webhook_honours_retry_after(hook):
    hook.script = [(429, {"Retry-After": "2"}, 0.0)]
    waits: list[float] = []
    assert webhook.notify(hook.url, PAYLOAD, backoff_s=0.01, sleep=waits.append) is True
    assert waits == [2.0] and len(hook.requests) == 2


def test_webhook_gives_up_after_the_retries_and_logs_one_line(hook, caplog):
    hook.script = [(500, {}, 0.0)] * 5
    with caplog.at_level(logging.WARNING, logger="flagscope.analysis.schedule.webhook"):
        assert webhook.notify(hook.url, PAYLOAD, retries=2, backoff_s=0.0) is False
    assert len(hook.requests) == 3
    (record,) = caplog.records
    assert "failed after 3 attempt(s): HTTP 500" in record.getMessage()
    assert "secret" not in record.getMessage()  # the hook's path is its password


def test_webhook_does_not_retry_a_client_error(hook):
    hook.script = [(404, {}, 0.0)]
    assert webhook.notify(hook.url, PAYLOAD, backoff_s=0.0) is False
    assert len(hook.requests) == 1


def test_webhook_times_out_each_attempt(hook, caplog):
    hook.script = [(200, {}, 30.0), (200, {}, 30.0)]  # answers only after 30 s
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flagscope.analysis.schedule.webhook"):
        assert webhook.notify(hook.url, PAYLOAD, timeout_s=0.3, retries=1, backoff_s=0.0) is False
    assert time.monotonic() - started < 5 and len(hook.requests) == 2
    assert "timed out" in caplog.records[-1].getMessage()


def test_webhook_never_raises_on_a_bad_url_or_a_closed_port(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert (
        webhook.notify(f"http://127.0.0.1:{closed}/x", PAYLOAD, retries=1, backoff_s=0.0) is False
    )
    assert webhook.notify("ftp://127.0.0.1/x", PAYLOAD) is False
    assert webhook.notify("http://[::1", PAYLOAD) is False
    assert webhook.notify("http://127.0.0.1:1/x", {"not json": object()}) is False


def test_verdict_changed_payload():
    payload = webhook.verdict_changed_payload(
        "new-checkout",
        Verdict.PASS,
        Verdict.REGRESSION,
        "a <b> & c — REGRESSION",
        "https://reports.example.com/new-checkout/20261128T0900Z.html",
    )
    assert payload["text"] == (
        "a &lt;b&gt; &amp; c — REGRESSION — "
        "https://reports.example.com/new-checkout/20261128T0900Z.html"
    )
    assert "PASS → REGRESSION" in payload["blocks"][0]["text"]["text"]
    first = webhook.verdict_changed_payload("f", None, "UNHEALTHY", "s", "reports/f/x.md")
    assert first["text"] == "s — reports/f/x.md" and "first verdict UNHEALTHY" in json.dumps(first)


# -- the scheduler on an injected clock ----------------------------------------------------
@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    return build_flip_lake(tmp_path_factory.mktemp("lake"))


def config_for(out_dir: Path, webhook_url: str | None = None, *flags: dict):
    flags = flags or ({"flag": "checkout-v2"}, {"flag": "search-v2"})
    body = {
        "out_dir": str(out_dir),
        "window": "6h",
        "cron": "0 6 * * *",
        "formats": ["json", "md"],
        "error_threshold_pp": 4.0,
        "latency_threshold_pct": 60.0,
        "link_base": "https://reports.example.com/",
        "flag": list(flags),
    }
    if webhook_url:
        body["webhook_url"] = webhook_url
    return parse_config({"reports": body})


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


SIX = DAY1.replace(hour=6, tzinfo=UTC)  # reports fire daily at 06:00 over the 6 h before


def test_runs_due_reports_on_time_not_early(lake, tmp_path):
    clock = Clock(SIX - timedelta(minutes=30))
    scheduler = Scheduler(config_for(tmp_path), lake, clock=clock)
    assert scheduler.next_fires == {"checkout-v2": SIX, "search-v2": SIX}
    assert scheduler.run_due(SIX - timedelta(seconds=1)) == []
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    outcomes = scheduler.run_due(SIX)
    assert [(o.flag, o.verdict, o.error) for o in outcomes] == [
        ("checkout-v2", Verdict.PASS, None),
        ("search-v2", Verdict.PASS, None),
    ]
    assert scheduler.run_due(SIX + timedelta(seconds=30)) == []  # once per fire
    assert scheduler.next_fires == {
        "checkout-v2": SIX + timedelta(days=1),
        "search-v2": SIX + timedelta(days=1),
    }
    history = read_history(tmp_path, "checkout-v2")
    assert [(h["time"], h["verdict"]) for h in history] == [("2026-11-20T06:00:00Z", "PASS")]
    assert history[0]["window"] == {"start": "2026-11-20T00:00:00Z", "end": "2026-11-20T06:00:00Z"}
    report = json.loads((tmp_path / "checkout-v2" / "latest.json").read_text())
    assert report["settings"]["sequential"] is True  # scheduled reports look repeatedly
    assert (tmp_path / "checkout-v2" / "20261120T0600Z.md").exists()


def test_webhook_is_posted_on_a_verdict_change_and_not_otherwise(lake, tmp_path, hook):
    clock = Clock(SIX - timedelta(minutes=1))
    scheduler = Scheduler(config_for(tmp_path, hook.url), lake, clock=clock)
    day1 = scheduler.run_due(SIX)  # both PASS on a first run: nothing to say
    assert [o.verdict for o in day1] == [Verdict.PASS, Verdict.PASS] and hook.requests == []
    assert [o.notified for o in day1] == [None, None]
    day2 = scheduler.run_due(SIX + timedelta(days=1))  # checkout-v2 regressed
    assert [(o.flag, o.previous_verdict, o.verdict, o.notified) for o in day2] == [
        ("checkout-v2", Verdict.PASS, Verdict.REGRESSION, True),
        ("search-v2", Verdict.PASS, Verdict.PASS, None),
    ]
    (request,) = hook.requests
    text = request["json"]["text"]
    assert text.startswith("checkout-v2 on vs off:") and "REGRESSION" in text
    assert text.endswith(" — https://reports.example.com/checkout-v2/20261121T0600Z.md")
    assert "PASS → REGRESSION" in json.dumps(request["json"]["blocks"], ensure_ascii=False)
    again = scheduler.run_once("checkout-v2", SIX + timedelta(days=1, minutes=30))
    assert again[0].verdict is Verdict.REGRESSION and again[0].notified is None
    assert len(hook.requests) == 1  # same verdict: no second message


def test_a_failed_webhook_is_recorded_and_sent_at_the_next_check(lake, tmp_path, hook):
    config = config_for(tmp_path, hook.url)
    config = type(config)(**{**config.__dict__, "webhook_retries": 0})
    scheduler = Scheduler(config, lake, clock=Clock(SIX))
    scheduler.run_due(SIX)
    hook.script = [(503, {}, 0.0)]  # down for the regression's message, then back
    day2 = scheduler.run_due(SIX + timedelta(days=1))
    assert (day2[0].flag, day2[0].verdict, day2[0].notified) == (
        "checkout-v2",
        Verdict.REGRESSION,
        False,
    )
    assert read_history(tmp_path, "checkout-v2")[-1]["notification"] == "failed"
    assert scheduler.run_due(SIX + timedelta(days=1, minutes=1)) == []  # nothing due, but…
    assert len(hook.requests) == 2 and hook.requests[0]["json"] == hook.requests[1]["json"]
    assert "REGRESSION" in hook.requests[1]["json"]["text"]
    assert [h.get("notification") for h in read_history(tmp_path, "checkout-v2")][-2:] == [
        "failed",
        "sent",
    ]
    assert (tmp_path / ".notifications.jsonl").read_bytes() == b""  # nothing left pending
    scheduler.run_due(SIX + timedelta(days=1, minutes=2))
    assert len(hook.requests) == 2  # delivered once, not again


def test_a_report_that_keeps_failing_alerts_once_and_says_when_it_works_again(
    lake, tmp_path, hook, monkeypatch
):
    from flagscope.analysis.schedule import runner

    real = runner.run_diff

    def broken(*args, **kwargs):
        raise AnalysisError("the lake is on a disk that went away")

    config = config_for(tmp_path, hook.url, {"flag": "search-v2"})
    scheduler = Scheduler(config, lake, clock=Clock(SIX))
    assert scheduler.run_once(now=SIX)[0].verdict is Verdict.PASS
    monkeypatch.setattr(runner, "run_diff", broken)
    failed = [scheduler.run_once(now=SIX + timedelta(minutes=m))[0] for m in (1, 2, 3)]
    assert [o.notified for o in failed] == [True, None, None]
    (alert,) = hook.requests
    assert "is failing: the lake is on a disk that went away" in alert["json"]["text"]
    monkeypatch.setattr(runner, "run_diff", real)
    back = scheduler.run_once(now=SIX + timedelta(minutes=4))[0]
    assert back.verdict is Verdict.PASS and back.notified is True
    assert "works again" in hook.requests[-1]["json"]["text"] and len(hook.requests) == 2
    assert scheduler.run_once(now=SIX + timedelta(minutes=5))[0].notified is None


def test_a_first_run_notifies_only_bad_news(lake, tmp_path, hook):
    scheduler = Scheduler(config_for(tmp_path, hook.url), lake, clock=Clock(SIX))
    outcomes = scheduler.run_once(now=SIX + timedelta(days=1))
    assert [(o.flag, o.verdict, o.notified) for o in outcomes] == [
        ("checkout-v2", Verdict.REGRESSION, True),
        ("search-v2", Verdict.PASS, None),
    ]
    (request,) = hook.requests
    assert "first verdict REGRESSION" in json.dumps(request["json"], ensure_ascii=False)


def test_without_link_base_the_message_carries_the_file_path(lake, tmp_path, hook):
    config = parse_config(
        {
            "reports": {
                "out_dir": str(tmp_path),
                "webhook_url": hook.url,
                "window": "6h",
                "formats": ["md"],
                "flag": [{"flag": "checkout-v2"}],
            }
        }
    )
    Scheduler(config, lake, clock=Clock(SIX)).run_once(now=SIX + timedelta(days=1))
    expected = (tmp_path / "checkout-v2" / "20261121T0600Z.md").resolve()
    assert hook.requests[0]["json"]["text"].endswith(f" — {expected}")


def test_a_failing_report_does_not_stop_the_others(lake, tmp_path, caplog):
    config = config_for(tmp_path, None, {"flag": "no-such-flag"}, {"flag": "checkout-v2"})
    scheduler = Scheduler(config, lake, clock=Clock(SIX - timedelta(minutes=1)))
    with caplog.at_level(logging.ERROR, logger="flagscope.analysis.schedule.runner"):
        outcomes = scheduler.run_due(SIX)
    assert [o.flag for o in outcomes] == ["no-such-flag", "checkout-v2"]
    assert "not in the lake" in outcomes[0].error and not outcomes[0].ok
    assert outcomes[1].ok and outcomes[1].verdict is Verdict.PASS
    assert scheduler.next_fires["no-such-flag"] == SIX + timedelta(days=1)  # still scheduled
    assert any("no-such-flag" in r.getMessage() for r in caplog.records)
    (failure,) = read_history(tmp_path, "no-such-flag")
    assert failure["verdict"] is None and "not in the lake" in failure["error"]


def test_a_broken_lake_fails_every_report_but_the_scheduler_goes_on(tmp_path, caplog):
    broken = tmp_path / "lake" / "date=2026-11-20" / "hour=03"
    broken.mkdir(parents=True)
    (broken / "w-000000000001-000.parquet").write_bytes(b"not parquet at all")
    scheduler = Scheduler(
        config_for(tmp_path / "out"), tmp_path / "lake", clock=Clock(SIX - timedelta(minutes=1))
    )
    with caplog.at_level(logging.ERROR, logger="flagscope.analysis.schedule.runner"):
        outcomes = scheduler.run_due(SIX)
    assert [o.ok for o in outcomes] == [False, False]
    assert all(f"the lake at {tmp_path / 'lake'}" in o.error for o in outcomes)
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 2
    assert set(scheduler.next_fires.values()) == {SIX + timedelta(days=1)}


def test_an_unexpected_error_is_logged_with_its_traceback(lake, tmp_path, caplog, monkeypatch):
    from flagscope.analysis import report_archive

    def crash(*args, **kwargs):
        raise ZeroDivisionError("renderer bug")

    monkeypatch.setattr(report_archive, "write_report", crash)
    scheduler = Scheduler(config_for(tmp_path), lake, clock=Clock(SIX))
    with caplog.at_level(logging.ERROR, logger="flagscope.analysis.schedule.runner"):
        outcomes = scheduler.run_once("search-v2", SIX)
    assert outcomes[0].error == "ZeroDivisionError: renderer bug"
    assert caplog.records[-1].exc_info is not None


def test_run_forever_sleeps_until_due_and_stops(lake, tmp_path):
    clock = Clock(SIX - timedelta(minutes=3))
    stop = threading.Event()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.sleep(seconds)
        if clock.now >= SIX + timedelta(minutes=2):
            stop.set()

    Scheduler(config_for(tmp_path), lake, clock=clock, sleep=sleep).run_forever(stop)
    assert slept == [60.0] * 5  # never more than a minute without reading the clock
    for flag in ("checkout-v2", "search-v2"):  # each ran once, when due
        assert [h["time"] for h in read_history(tmp_path, flag)] == ["2026-11-20T06:00:00Z"]
