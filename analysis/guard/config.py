"""The `[guard]` section of flagscope.toml, validated: the guarded flags of `flagscope guard`.

[guard]
every = "60s"                       # time between looks (default 60s)
state_dir = "flagscope-data/guard"  # default <data-dir>/guard: audit log, looks, outbox
webhook_url = "https://hooks.slack.com/services/…"  # optional; FLAGSCOPE_WEBHOOK_URL overrides
webhook_timeout_s = 5               # optional, per attempt
# any per-flag setting below may also be set here, as the default of every flag

[[guard.flag]]
flag = "new-checkout"               # required; one table per flag
flagd = "flags.flagd.json"          # the flagd definitions: rolled back in, split read from
variant = "on"                      # optional, as `flagscope diff --variant`
baseline = "off"                    # optional; the variant rolled back to
rollout_start = "2026-12-01T09:00:00Z"  # default: the treatment's first evaluation
alpha = 0.05                        # one-sided: P(a harmless flag is ever rolled back)
expected_users = 1000               # users (both cohorts) the rollout is expected to reach
expected_split = { on = 0.2, off = 0.8 }  # default: read from the flagd targeting
error_threshold_pp = 0.5            # smallest harm worth a rollback (as `diff`)
latency_threshold_pct = 5
min_users = 50
max_crossover_share = 0.05
test_traffic = "exclude"            # exclude (default), include, only
command = "./page-oncall.sh"        # optional: run on a rollback, the look's JSON on stdin
dry_run = false                     # true: say what would be done, change nothing
ramp = [1, 5, 25, 50, 100]          # optional: the treatment's stages, in percent
advance_after = "2h"                # optional (off by default): advance the ramp in the
                                    # flagd file once harm has been ruled out this long
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from flagscope.analysis import window
from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.guard import slo
from flagscope.analysis.guard.runner import GuardSpec
from flagscope.analysis.schedule.config import (
    WEBHOOK_ENV,
    check_known,
    check_url,
    comparison_settings,
    get_setting,
)
from flagscope.collector.config import config_file

DEFAULT_EVERY = "60s"
FLAG_KEYS: dict[str, str] = {
    "flag": "str",
    "flagd": "str",
    "variant": "str",
    "baseline": "str",
    "rollout_start": "str",
    "alpha": "float",
    "expected_users": "int",
    "expected_split": "split",
    "error_threshold_pp": "float",
    "latency_threshold_pct": "float",
    "min_users": "int",
    "max_crossover_share": "float",
    "test_traffic": "str",
    "webhook_url": "str",
    "command": "str",
    "dry_run": "bool",
    "ramp": "numbers",
    "advance_after": "str",
}
GLOBAL_KEYS: dict[str, str] = {
    "every": "str",
    "state_dir": "str",
    "webhook_timeout_s": "float",
    "flag": "tables",
    "slo": "tables",
}


@dataclass(frozen=True)
class GuardConfig:
    specs: tuple[GuardSpec, ...] = ()
    every: timedelta = timedelta(seconds=60)
    state_dir: Path | None = None  # None: <data-dir>/guard
    webhook_timeout_s: float = 5.0
    source: str = "flagscope.toml"


def load_config(
    config_path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> GuardConfig:
    """The [guard] of flagscope.toml, found as the collector finds it (`config_path`, else
    $FLAGSCOPE_CONFIG, else ./flagscope.toml); an empty GuardConfig when there is none."""
    env = os.environ if env is None else env
    path, doc = config_file(config_path, env)
    return parse_config(doc, str(path), env)


def parse_config(
    doc: Mapping[str, Any], source: str = "flagscope.toml", env: Mapping[str, str] | None = None
) -> GuardConfig:
    """Validate a parsed TOML document (only its `guard` table is read). Relative paths
    (flagd, state_dir) are relative to the working directory, as out_dir of [reports]."""
    env = {} if env is None else env
    body = doc.get("guard", {})
    where = f"{source} [guard]"
    if not isinstance(body, Mapping):
        raise AnalysisError(f"{source}: guard must be a table: write [guard]")
    check_known(body, {**GLOBAL_KEYS, **FLAG_KEYS}, where)
    if "flag" in body and not isinstance(body["flag"], list):
        raise AnalysisError(
            f"{where}: flag must be [[guard.flag]] tables, one per flag, "
            'e.g.\n[[guard.flag]]\nflag = "new-checkout"\nflagd = "flags.flagd.json"'
        )
    defaults = {k: v for k, v in body.items() if k in FLAG_KEYS and k != "flag"}
    slos = slo.parse_slos(get_setting(body, "slo", "tables", where, []), f"{source} [[guard.slo]]")
    if env.get(WEBHOOK_ENV):
        defaults["webhook_url"] = env[WEBHOOK_ENV]  # a secret belongs in the environment
    specs: list[GuardSpec] = []
    for i, table in enumerate(get_setting(body, "flag", "tables", where, [])):
        label = f"{source} [[guard.flag]] #{i + 1}"
        check_known(table, FLAG_KEYS, label)
        specs.append(replace(_spec({**defaults, **table}, label), slos=slos))
    names = [s.flag for s in specs]
    for name in names:
        if names.count(name) > 1:
            raise AnalysisError(f"{source}: flag {name!r} has two [[guard.flag]] tables; keep one")
    try:
        every = window.parse_duration(
            get_setting(body, "every", "str", where, DEFAULT_EVERY), "every"
        )
    except AnalysisError as exc:
        raise AnalysisError(f"{where}: {exc}") from exc
    if every <= timedelta(0):
        raise AnalysisError(f'{where}: every must be longer than zero, e.g. every = "60s"')
    timeout = get_setting(body, "webhook_timeout_s", "float", where, 5.0)
    if timeout <= 0:
        raise AnalysisError(f"{where}: webhook_timeout_s must be > 0, e.g. webhook_timeout_s = 5")
    state_dir = get_setting(body, "state_dir", "str", where)
    return GuardConfig(
        tuple(specs), every, None if state_dir is None else Path(state_dir), timeout, source
    )


def _spec(t: Mapping[str, Any], where: str) -> GuardSpec:
    flag = get_setting(t, "flag", "str", where)
    if not flag:
        raise AnalysisError(f'{where}: flag is required, e.g. flag = "new-checkout"')
    where = f"{where} ({flag})"
    c = comparison_settings(t, where)
    if not c.alpha < 0.5:
        raise AnalysisError(f"{where}: alpha = {c.alpha:g}: a one-sided level must be below 0.5")
    since = get_setting(t, "rollout_start", "str", where)
    ramp = tuple(get_setting(t, "ramp", "numbers", where, []))
    if any(not 0 < p <= 100 for p in ramp) or list(ramp) != sorted(set(ramp)):
        raise AnalysisError(
            f"{where}: ramp = {list(ramp)}: rising percentages of the treatment, each in "
            "(0, 100], e.g. ramp = [1, 5, 25, 50, 100]"
        )
    advance = get_setting(t, "advance_after", "str", where)
    flagd_file = get_setting(t, "flagd", "str", where)
    try:
        after = None if advance is None else window.parse_duration(advance, "advance_after =")
        start = None if since is None else window.parse_time(since, "rollout_start =")
    except AnalysisError as exc:
        raise AnalysisError(f"{where}: {exc}") from exc
    if after is not None and (len(ramp) < 2 or flagd_file is None or after <= timedelta(0)):
        raise AnalysisError(
            f"{where}: advance_after needs a ramp of two or more stages and the flagd file to "
            'advance it in, e.g. ramp = [5, 25, 100], flagd = "flags.flagd.json", '
            'advance_after = "2h"'
        )
    hook = get_setting(t, "webhook_url", "str", where)
    if hook:
        check_url(hook, "webhook_url", where)
    return GuardSpec(
        flag,
        variant=c.variant,
        baseline=c.baseline,
        since=start,
        flagd_file=None if flagd_file is None else Path(flagd_file),
        alpha=c.alpha,
        thresholds=c.thresholds,
        expected_users=c.expected_users,
        expected_split=c.expected_split,
        test_mode=c.test_mode,
        webhook_url=hook or None,
        command=get_setting(t, "command", "str", where) or None,
        dry_run=get_setting(t, "dry_run", "bool", where, False),
        ramp=ramp,
        advance_after=after,
    )
