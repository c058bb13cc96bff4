"""`flagscope flags --stale`: flags no longer evaluated, and flags serving one variant to
everyone, found with SQL over a real lake (rows in the collector's schema)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.stale import Staleness, stale_flags
from tests import synthetic
from tests.report_lakes import write

NOW = datetime(2026, 11, 28, 12, 0)


def daily(
    flag: str, variants: tuple[str, ...], first_day: int, last_day: int, test: bool = False
) -> list[dict]:
    """One evaluation per variant per day, `first_day`…`last_day` days before NOW."""
    rows = []
    for days_ago in range(first_day, last_day - 1, -1):
        for i, variant in enumerate(variants):
            rows += synthetic.request(
                f"{'qa' if test else 'user'}-{flag}-{i}",
                variant,
                flag=flag,
                at=NOW - timedelta(days=days_ago, hours=1),
                test_child="test_user=true" if test else None,
            )
    return rows


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    rows = (
        daily("old-banner", ("on", "off"), 70, 40)  # last seen 40 days ago
        + daily("dark-mode", ("on", "off"), 60, 30)
        + daily("dark-mode", ("on",), 29, 0)
        + daily("new-checkout", ("on", "off"), 20, 0)  # a live experiment
        + daily("fresh-flag", ("on",), 3, 0)  # one variant, but only for three days
        + daily("qa-forced", ("on",), 50, 0)
        + daily("qa-forced", ("off",), 5, 0, test=True)
        + daily("future-flag", ("on", "off"), 0, 0)
        + synthetic.request("user-x", "on", flag="future-flag", at=NOW + timedelta(days=2))
    )
    return write(tmp_path_factory.mktemp("lake"), rows)


def test_finds_the_unevaluated_and_the_single_variant_flags(lake):
    found = {s.flag: s for s in stale_flags(lake, days=21, now=NOW)}
    assert set(found) == {"old-banner", "dark-mode", "qa-forced"}
    old = found["old-banner"]
    assert old.kind is Staleness.NOT_EVALUATED and round(old.days) == 40
    assert old.last_seen == NOW - timedelta(days=40, hours=1)
    assert old.message.startswith("not evaluated for 40 days (last seen 2026-10-19 11:00 UTC)")
    dark = found["dark-mode"]
    assert dark.kind is Staleness.SINGLE_VARIANT and dark.variant == "on"
    assert dark.since == NOW - timedelta(days=30, hours=1) and round(dark.days) == 30
    assert dark.evaluations == 21  # real evaluations in the last 21 days
    assert dark.message == (
        "serving 'on' to everyone since 2026-10-29 11:00 UTC (30 days): "
        "ready to remove the dead path"
    )


def test_order_is_unevaluated_first_then_longest(lake):
    assert [s.flag for s in stale_flags(lake, days=21, now=NOW)] == [
        "old-banner",
        "qa-forced",
        "dark-mode",
    ]


def test_testers_forcing_another_variant_do_not_keep_a_dead_path_alive(lake):
    qa = next(s for s in stale_flags(lake, days=21, now=NOW) if s.flag == "qa-forced")
    assert qa.kind is Staleness.SINGLE_VARIANT and qa.variant == "on"
    assert qa.since == NOW - timedelta(days=50, hours=1)  # first real evaluation


def test_the_threshold_decides(lake):
    found = {s.flag: s.kind for s in stale_flags(lake, days=45, now=NOW)}
    # dark-mode served 'off' 30 days ago and old-banner ran 40 days ago: within 45 days.
    assert found == {"qa-forced": Staleness.SINGLE_VARIANT}
    found = {s.flag: s.kind for s in stale_flags(lake, days=2, now=NOW)}
    assert found["fresh-flag"] is Staleness.SINGLE_VARIANT and "new-checkout" not in found


def test_later_evaluations_are_ignored_and_aware_now_is_utc(lake):
    # A day on, future-flag's evaluation two days on has not happened yet.
    aware = NOW.replace(tzinfo=UTC) + timedelta(days=1)
    found = {s.flag: s for s in stale_flags(lake, days=0.5, now=aware)}
    assert found["future-flag"].kind is Staleness.NOT_EVALUATED
    assert found["future-flag"].last_seen == NOW - timedelta(hours=1)
    # Five days on it has: only 'on' since NOW - 1 h.
    found = {s.flag: s for s in stale_flags(lake, days=3, now=NOW + timedelta(days=5))}
    assert found["future-flag"].kind is Staleness.SINGLE_VARIANT
    assert found["future-flag"].since == NOW - timedelta(hours=1)


def test_an_empty_lake_has_no_stale_flags(tmp_path):
    assert stale_flags(tmp_path / "empty", days=30, now=NOW) == []


def test_days_must_be_positive(lake):
    with pytest.raises(AnalysisError, match=r"greater than 0, e\.g\. 30"):
        stale_flags(lake, days=0, now=NOW)
