"""The `[reports]` section of flagscope.toml, validated (schema: analysis/schedule.py).

Every error names the setting, the table it is in, and what to write instead.
"""

from __future__ import annotations

import difflib
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flagscope.analysis import report_archive, window
from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.examples import check_trace_link
from flagscope.analysis.result import (
    CUPED_WITHOUT_SPARK,
    DEFAULT_EXPECTED_USERS,
    ENGINES,
    DiffOptions,
    TrafficFilter,
)
from flagscope.analysis.schedule import cron as cronlib
from flagscope.analysis.verdict import DEFAULT_ALPHA, Thresholds, check_alpha
from flagscope.analysis.window import naive_utc
from flagscope.collector.config import config_file

WEBHOOK_ENV = "FLAGSCOPE_WEBHOOK_URL"
DEFAULT_CRON = "0 * * * *"

# Settings of one report; all but `flag` may be given in [reports] as defaults.
FLAG_KEYS: dict[str, str] = {
    "flag": "str",
    "variant": "str",
    "baseline": "str",
    "service": "str",
    "route": "str",
    "window": "str",
    "cron": "str",
    "formats": "list",
    "expected_split": "split",
    "error_threshold_pp": "float",
    "latency_threshold_pct": "float",
    "min_users": "int",
    "max_crossover_share": "float",
    "alpha": "float",
    "expected_users": "int",
    "cuped": "str",
    "engine": "str",
    "incremental": "bool",
    "test_traffic": "str",
    "webhook_url": "str",
}
GLOBAL_KEYS: dict[str, str] = {
    "out_dir": "str",
    "link_base": "str",
    "trace_link": "str",
    "webhook_timeout_s": "float",
    "webhook_retries": "int",
    "flag": "tables",
}
_EXAMPLES = {
    "str": '"text"',
    "list": '["html", "md", "json"]',
    "split": "{ on = 0.2, off = 0.8 }",
    "float": "0.5",
    "int": "50",
    "tables": '[[reports.flag]] tables with flag = "…"',
    "bool": "true",
    "numbers": "[1, 5, 25, 50, 100]",
}


@dataclass(frozen=True)
class ScheduledReport:
    flag: str
    cron: cronlib.Cron
    window: timedelta
    formats: tuple[str, ...]
    variant: str | None = None
    baseline: str | None = None
    service: str | None = None
    route: str | None = None
    expected_split: dict[str, float] | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    alpha: float = DEFAULT_ALPHA
    test_mode: TrafficFilter = TrafficFilter.EXCLUDE
    webhook_url: str | None = None  # None: the [reports] webhook; "": none for this flag
    expected_users: int = DEFAULT_EXPECTED_USERS
    pre_exposure: timedelta | None = None  # cuped = "14d"
    engine: str = "duckdb"  # engine = "spark": the cohort stage in Spark SQL
    incremental: bool = True  # reuse kept per-hour summaries (analysis.incremental)

    def options(self, now: datetime) -> DiffOptions:
        """The diff of a run at `now`: the window ending then, always-valid intervals."""
        end = naive_utc(now)
        return DiffOptions(
            flag=self.flag,
            start=end - self.window,
            end=end,
            variant=self.variant,
            baseline=self.baseline,
            service=self.service,
            route=self.route,
            test_mode=self.test_mode,
            alpha=self.alpha,
            sequential=True,
            expected_users=self.expected_users,
            pre_exposure=self.pre_exposure,
            engine=self.engine,
            expected_split=self.expected_split,
            thresholds=self.thresholds,
        )


@dataclass(frozen=True)
class ReportsConfig:
    out_dir: Path = Path("reports")
    reports: tuple[ScheduledReport, ...] = ()
    webhook_url: str | None = None
    link_base: str | None = None
    webhook_timeout_s: float = 5.0
    webhook_retries: int = 3
    source: str = "flagscope.toml"
    trace_link: str | None = None  # a URL with {trace_id}: reports and the UI link traces

    def report(self, flag: str) -> ScheduledReport:
        """The declared report of `flag`; the error names the closest declared one."""
        for r in self.reports:
            if r.flag == flag:
                return r
        names = [r.flag for r in self.reports]
        close = difflib.get_close_matches(flag, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        declared = f"declared: {', '.join(names)}" if names else "none is declared"
        raise AnalysisError(
            f"no report for flag {flag!r} in {self.source}; {hint}{declared} "
            '(add a [[reports.flag]] table with flag = "…")'
        )


def load_config(
    config_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    require: bool = True,
) -> ReportsConfig:
    """The [reports] of flagscope.toml, found as the collector finds it: `config_path`, else
    $FLAGSCOPE_CONFIG, else ./flagscope.toml. `require`: at least one report must be
    declared. $FLAGSCOPE_WEBHOOK_URL overrides `webhook_url` (keep secrets out of files)."""
    env = os.environ if env is None else env
    path, doc = config_file(config_path, env)
    config = parse_config(doc, str(path), env)
    if require and not config.reports:
        raise AnalysisError(
            f"no reports declared in {path}: add a [reports] section with a [[reports.flag]] "
            'table, e.g.\n\n[[reports.flag]]\nflag = "new-checkout"\ncron = "0 * * * *"\n'
        )
    return config


def parse_config(
    doc: Mapping[str, Any], source: str = "flagscope.toml", env: Mapping[str, str] | None = None
) -> ReportsConfig:
    """Validate a parsed TOML document (only its `reports` table is read)."""
    env = {} if env is None else env
    if "report" in doc:
        raise AnalysisError(
            f"{source}: unknown section [report]; scheduled reports are "
            "declared as [reports] with [[reports.flag]] tables"
        )
    body = doc.get("reports", {})
    where = f"{source} [reports]"
    if not isinstance(body, Mapping):
        raise AnalysisError(f"{source}: reports must be a table: write [reports]")
    check_known(body, {**GLOBAL_KEYS, **FLAG_KEYS}, where)
    if "flag" in body and not isinstance(body["flag"], list):
        raise AnalysisError(
            f"{where}: flag must be [[reports.flag]] tables, one per flag, "
            'e.g.\n[[reports.flag]]\nflag = "new-checkout"'
        )
    # [reports] webhook_url is the fallback, not a per-flag default: $FLAGSCOPE_WEBHOOK_URL
    # must be able to replace it.
    defaults = {
        k: v for k, v in body.items() if k in FLAG_KEYS and k not in ("flag", "webhook_url")
    }
    reports_ = []
    for i, table in enumerate(body.get("flag", [])):
        if not isinstance(table, Mapping):
            raise AnalysisError(f"{where}: flag entry #{i + 1} must be a [[reports.flag]] table")
        label = f"{source} [[reports.flag]] #{i + 1}"
        check_known(table, FLAG_KEYS, label)
        reports_.append(_report({**defaults, **table}, label))
    seen: set[str] = set()
    for r in reports_:
        if r.flag in seen:
            raise AnalysisError(
                f"{source}: flag {r.flag!r} has two [[reports.flag]] tables; "
                "keep one (a flag has one report directory)"
            )
        seen.add(r.flag)
    webhook_url = env.get(WEBHOOK_ENV) or get_setting(body, "webhook_url", "str", where) or None
    if webhook_url:
        check_url(webhook_url, "webhook_url", where)
    link_base = get_setting(body, "link_base", "str", where) or None
    if link_base:
        check_url(link_base, "link_base", where)
    default = ReportsConfig()
    timeout = get_setting(body, "webhook_timeout_s", "float", where, default.webhook_timeout_s)
    retries = get_setting(body, "webhook_retries", "int", where, default.webhook_retries)
    if timeout <= 0 or retries < 0:
        raise AnalysisError(f"{where}: webhook_timeout_s must be > 0 and webhook_retries ≥ 0")
    return ReportsConfig(
        Path(get_setting(body, "out_dir", "str", where, str(default.out_dir))),
        tuple(reports_),
        webhook_url,
        link_base,
        timeout,
        retries,
        source,
        check_trace_link(get_setting(body, "trace_link", "str", where), f"{where}: trace_link"),
    )


def _report(t: Mapping[str, Any], where: str) -> ScheduledReport:
    flag = get_setting(t, "flag", "str", where)
    if not flag:
        raise AnalysisError(f'{where}: flag is required, e.g. flag = "new-checkout"')
    where = f"{where} ({flag})"
    cron_text = get_setting(t, "cron", "str", where, DEFAULT_CRON)
    try:
        cron = cronlib.parse(cron_text)
        span = window.parse_duration(
            get_setting(t, "window", "str", where, window.DEFAULT_SINCE), "window"
        )
        cuped = get_setting(t, "cuped", "str", where)
        pre_exposure = None if cuped is None else window.parse_duration(cuped, "cuped =")
    except AnalysisError as exc:
        raise AnalysisError(f"{where}: {exc}") from exc
    if span <= timedelta(0):
        raise AnalysisError(f'{where}: window must be longer than zero, e.g. window = "24h"')
    fmts = report_archive.normalize_formats(
        get_setting(t, "formats", "list", where, tuple(report_archive.EXTENSIONS)),
        f"{where}: formats",
    )
    c = comparison_settings(t, where)
    return ScheduledReport(
        flag,
        cron,
        span,
        fmts,
        c.variant,
        c.baseline,
        get_setting(t, "service", "str", where),
        get_setting(t, "route", "str", where),
        c.expected_split,
        c.thresholds,
        c.alpha,
        c.test_mode,
        c.webhook_url,
        c.expected_users,
        pre_exposure,
        _engine(t, where, pre_exposure),
        bool(get_setting(t, "incremental", "bool", where, True)),
    )


def _engine(t: Mapping[str, Any], where: str, pre_exposure: timedelta | None) -> str:
    engine = str(get_setting(t, "engine", "str", where, "duckdb"))
    if engine not in ENGINES:
        raise AnalysisError(
            f'{where}: engine = "{engine}" is not one of {", ".join(ENGINES)}, e.g. engine = "spark"'
        )
    if engine == "spark" and pre_exposure is not None:
        raise AnalysisError(f"{where}: {CUPED_WITHOUT_SPARK}")
    return engine


def with_engine(config: ReportsConfig, engine: str | None) -> ReportsConfig:
    """Every declared report run by `engine` (--engine on the command line), if given."""
    if engine is None:
        return config
    for r in config.reports:
        if engine == "spark" and r.pre_exposure is not None:
            raise AnalysisError(f"--engine spark, report of {r.flag!r}: {CUPED_WITHOUT_SPARK}")
    reports = tuple(replace(r, engine=engine) for r in config.reports)
    return replace(config, reports=reports)


@dataclass(frozen=True)
class Comparison:
    """The settings a scheduled report and a guard share, validated."""

    variant: str | None
    baseline: str | None
    expected_split: dict[str, float] | None
    thresholds: Thresholds
    alpha: float
    expected_users: int
    test_mode: TrafficFilter
    webhook_url: str | None


def comparison_settings(t: Mapping[str, Any], where: str) -> Comparison:
    """variant, baseline, expected_split, the thresholds, alpha, expected_users,
    test_traffic and webhook_url of one [[reports.flag]] or [[guard.flag]] table."""
    variant = get_setting(t, "variant", "str", where)
    baseline = get_setting(t, "baseline", "str", where)
    if variant and variant == baseline:
        raise AnalysisError(f"{where}: variant and baseline must differ")
    split = get_setting(t, "expected_split", "split", where)
    if split is not None:
        missing = [v for v in (variant, baseline) if v and v not in split]
        if missing or any(s <= 0 for s in split.values()):
            raise AnalysisError(
                f"{where}: expected_split needs a share > 0 for each compared "
                f"variant, e.g. expected_split = {_EXAMPLES['split']}"
            )
    default = Thresholds()
    try:
        th = Thresholds(
            get_setting(t, "error_threshold_pp", "float", where, default.error_rate_pp),
            get_setting(t, "latency_threshold_pct", "float", where, default.latency_pct),
            get_setting(t, "min_users", "int", where, default.min_users),
            get_setting(t, "max_crossover_share", "float", where, default.max_crossover_share),
        )
        alpha = check_alpha(get_setting(t, "alpha", "float", where, DEFAULT_ALPHA))
        expected_users = get_setting(t, "expected_users", "int", where, DEFAULT_EXPECTED_USERS)
        if expected_users < 1:
            raise AnalysisError(
                f"expected_users = {expected_users}: the users (both cohorts) the rollout is "
                "expected to reach, at least 1, e.g. expected_users = 2000"
            )
    except AnalysisError as exc:
        raise AnalysisError(f"{where}: {exc}") from exc
    mode = get_setting(t, "test_traffic", "str", where, "exclude")
    if mode not in TrafficFilter.__members__.values():
        raise AnalysisError(f"{where}: test_traffic = {mode!r}: choose exclude, include or only")
    hook = get_setting(t, "webhook_url", "str", where)
    if hook:
        check_url(hook, "webhook_url", where)
    return Comparison(
        variant, baseline, split, th, alpha, expected_users, TrafficFilter(mode), hook
    )


def check_known(table: Mapping[str, Any], keys: Mapping[str, str], where: str) -> None:
    for key in table:
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise AnalysisError(f"{where}: unknown setting {key!r}; {hint}known: {', '.join(keys)}")


def get_setting(
    table: Mapping[str, Any], key: str, kind: str, where: str, default: Any = None
) -> Any:
    if key not in table:
        return default
    value = table[key]
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "list": isinstance(value, (list, str)) and all(isinstance(v, str) for v in value),
        "split": isinstance(value, Mapping)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()),
        "bool": isinstance(value, bool),
        "numbers": isinstance(value, list)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value),
        "tables": isinstance(value, list) and all(isinstance(v, Mapping) for v in value),
    }[kind]
    if not ok:
        raise AnalysisError(f"{where}: {key} = {value!r}: expected e.g. {key} = {_EXAMPLES[kind]}")
    if kind == "float":
        return float(value)
    if kind == "split":
        return {str(k): float(v) for k, v in value.items()}
    if kind == "list":
        return [value] if isinstance(value, str) else list(value)
    if kind == "numbers":
        return [float(v) for v in value]
    return value


def check_url(url: str, key: str, where: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AnalysisError(f"{where}: {key} = {url!r}: expected an http:// or https:// URL")
