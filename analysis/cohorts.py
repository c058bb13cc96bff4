"""The SQL that forms a flag's cohorts and reduces them to sufficient statistics (DESIGN contract 3).

- An entry span is a SERVER span, or a root span (not a flag evaluation's own
  `feature_flag.evaluation` span; `is_entry` in the lake). A *request*, for the overall
  numbers, is what the end user experienced: one per trace, its edge — the root entry
  span, else the trace's earliest entry span — so a checkout through three services is one
  request and at most one error. The per-(service, route) breakdown counts every entry
  span of that service. With --service or --route, every entry span asked for counts.
- A trace belongs to the variant of the flag's first evaluation anywhere in it (often a
  child span of another service), so the whole request is labelled.
- The unit is the user: the evaluation's targeting key, else the user id the trace's
  requests carry (the first entry span with one: a downstream service often sees none),
  else (no user known) the trace itself.
- A unit seen in both compared variants (crossover) keeps the first of them: requests of
  its traces under the other variant are left out, and the count is reported. Both the
  evaluations naming a user and the requests carrying one (when the evaluation names
  nobody, as OpenFeature JS's TracingHook) say which variants a unit saw; evaluations of
  a third variant do not count.
- Test traffic is excluded by trace (any test marker in the trace) and by user (a user
  ever marked as a tester, anywhere in the lake), unless asked to include it or to look
  only at it.

The SQL runs in three stages, each a method of the previous stage's result, so they
cannot run out of order: `Evaluations.collect` (the flag's evaluations around the window)
→ `.label(query)` → `LabelledRequests` (every compared request with its cohort, unit,
stratum and exclusion marks) → `.unit_sums()` → `UnitSums` (per cohort, and per cohort and
stratum, the per-user sums the statistics need, as typed values). Everything heavy runs in
DuckDB; Python receives a few rows per cohort and stratum.
The stages read the narrow tables beside each lake file (`Tables`, issue 12 point 2:
entry spans and flag evaluations in a few columns, only the hour partitions the window
needs), or the wide rows (`events_raw`) where asked; both give the same answers.
Traces are joined on the lake's `trace_key` (16 bytes, not 32 hex characters), requests
found by `is_entry`, and users and units carried as 64-bit hashes: at 10 M events that
took a diff from 5.6 s to about 3 s (bench/RESULTS.md).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa

from flagscope.analysis.adjustment import AdjustedMoments, adjusted_moments, collect_pre_exposure
from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.exact_quantiles import Group, duckdb_grids
from flagscope.analysis.result import TrafficFilter
from flagscope.analysis.stats import RatioStats
from flagscope.collector.lake import narrow, narrow_views
from flagscope.collector.lake.read import lake_of, sql_literal

QUANTILES = (0.5, 0.9, 0.95, 0.99)
# Probabilities around each quantile at which the empirical quantile function is read,
# so a rank interval (flagscope.analysis.stats.quantiles) can be mapped back to latencies by
# interpolation without another pass over the data.
# Every 0.001 out to 0.01 on each side: above p99 the grid used to step from 0.995 straight
# to the sample maximum, and interpolating there widened the upper end of the p99 interval
# by whatever the slowest request took (an outside audit's finding).
_OFFSETS = (0.0, 0.0005, *(i / 1000 for i in range(1, 11)), 0.015, 0.02, 0.03, 0.04, 0.06, 0.08)
_TAIL = (0.9995, 0.9999)  # beyond p99 + 0.009


def quantile_grid() -> tuple[float, ...]:
    """Fine steps around each reported quantile, and every 5th percentile as a coarse
    fallback for small samples (each probability costs time in DuckDB's quantile_cont)."""
    fine = {
        min(max(p + sign * d, 0.0), 1.0) for p in QUANTILES for d in _OFFSETS for sign in (-1, 1)
    }
    coarse = {i / 20 for i in range(21)}
    return tuple(sorted({round(g, 6) for g in fine | coarse | set(_TAIL)}))


@dataclass(frozen=True)
class CohortQuery:
    flag: str
    treatment: str
    baseline: str
    start: datetime  # UTC, naive (the lake's timestamps are UTC without a zone)
    end: datetime
    service: str | None = None
    route: str | None = None
    test_mode: TrafficFilter = TrafficFilter.EXCLUDE
    pre_exposure: timedelta | None = None  # CUPED look-back (analysis.adjustment), or none


# Evaluations may precede the entry span's start a little (clock skew between services)
# and follow it by up to the request's duration: look a little beyond the window.
SLACK = timedelta(hours=1)


@dataclass(frozen=True)
class Tables:
    """Where the stages read evaluations, test marks and requests: the wide rows
    (`events_raw`), or the narrow tables beside each lake file (`narrow_views`, issue 12),
    which hold the same rows in fewer columns and only the hours the window needs."""

    evaluations: str
    tests: str  # the test marks of the whole lake (users ever marked)
    requests: str  # as `r`, with its names' keys (`k`) where it has no keys of its own
    variant: str  # the flag's variant in an evaluations row
    has_flag: str
    root: str  # a request without a parent
    is_entry: str  # the filter that keeps entry spans, if the table has others
    stratum: str  # a request's stratum key (narrow.STRATUM_KEY)
    entry: str  # … and entry key (narrow.ENTRY_KEY)

    def sql(self, template: str) -> str:
        for name, value in asdict(self).items():
            template = template.replace("{" + name + "}", value)
        return template


WIDE = Tables(
    "events_raw",
    "events_raw",
    f"events_raw r LEFT JOIN fs_entry_keys k ON {narrow.same_names('r', 'k')}",
    "flags[$flag]",
    "map_contains(flags, $flag) AND flags[$flag] IS NOT NULL",
    "coalesce(r.parent_span_id, '') = ''",
    "r.is_entry AND",
    # (a name first seen in a file published after fs_entry_keys: its key worked out here)
    f"coalesce(k.stratum, {narrow.stratum_key('r.')})",
    f"coalesce(k.entry, {narrow.entry_key('r.')})",
)
NARROW = Tables(
    "fs_narrow_evaluations",
    "fs_narrow_tests",
    "fs_narrow_requests r",
    "variant",
    "flag = $flag AND variant IS NOT NULL",
    "r.root",
    "",
    "r.stratum",
    "r.entry",
)
# `wide` reads the wide rows (the path before issue 12, for comparison); default `narrow`.
TABLES_ENV = "FLAGSCOPE_LAKE_TABLES"

# Arms: the compared variants coded as small integers, so the per-trace and per-user
# bookkeeping over millions of rows moves bytes, not strings.
TREATMENT, BASELINE, OTHER = 1, 0, 2
_NAMES = {TREATMENT: "treatment", BASELINE: "baseline"}
ARM = (
    f"CASE variant WHEN $treatment THEN {TREATMENT} WHEN $baseline THEN {BASELINE} ELSE {OTHER} END"
)


def cohort_name(column: str = "cohort") -> str:
    return f"CASE {column} WHEN {TREATMENT} THEN 'treatment' ELSE 'baseline' END"


# Units and users are compared by a 64-bit hash of the id (DuckDB's `hash`): grouping and
# joining on an integer is several times cheaper than on strings. Two of a million users
# share a hash with probability ~3e-8; the cost would be two users counted as one unit.
# (`hash(NULL)` is not NULL, hence the CASE.)
def user_hash_sql(column: str) -> str:
    return f"CASE WHEN {column} IS NOT NULL THEN hash({column}) END"


# (`map_contains` first: it rejects the rows without the flag faster than extracting.)
_EVALS_SQL = f"""
CREATE OR REPLACE TEMP TABLE fs_evals AS
SELECT trace_key, {user_hash_sql("user_id")} AS user_hash, time, {{variant}} AS variant
FROM {{evaluations}}
WHERE time >= $lower AND time < $upper
  AND trace_key IS NOT NULL AND {{has_flag}}
"""

# Test traffic: traces marked in the window (± slack), and users ever marked as testers
# (one boolean column scanned across the lake: a tester marked last week is still staff).
_TESTS_SQL = """
CREATE OR REPLACE TEMP TABLE fs_tests AS
SELECT trace_key, NULL::UBIGINT AS user_hash FROM {evaluations}
WHERE is_test AND trace_key IS NOT NULL AND time >= $lower AND time < $upper
"""
_TEST_USERS_SQL = """
INSERT INTO fs_tests
SELECT DISTINCT NULL, hash(user_id) FROM {tests} WHERE is_test AND user_id IS NOT NULL
"""

# A trace's arm and unit: those of its first evaluation (of the first one naming a user);
# and whether anything in it was marked as test traffic. (A test-marked log record
# without a trace has a NULL key, and `x IN (…, NULL)` is NULL rather than false for
# every other trace: hence the filter.)
_TRACES_SQL = f"""
CREATE OR REPLACE TEMP TABLE fs_traces AS
SELECT *, trace_key IN (SELECT trace_key FROM fs_tests WHERE trace_key IS NOT NULL) AS test_trace FROM (
    SELECT trace_key, arg_min(arm, time) AS arm,
           arg_min(user_hash, time) FILTER (WHERE user_hash IS NOT NULL) AS eval_user
    FROM (SELECT trace_key, time, {ARM} AS arm, user_hash FROM fs_evals)
    GROUP BY trace_key HAVING arg_min(arm, time) <> {OTHER})
"""
# The same when no trace evaluated the flag twice (the usual case): no grouping needed.
_ONE_EVALUATION_PER_TRACE_SQL = "SELECT count(*) = count(DISTINCT trace_key) FROM fs_evals"
_TRACES_ONE_EVALUATION_SQL = f"""
CREATE OR REPLACE TEMP TABLE fs_traces AS
SELECT trace_key, arm, user_hash AS eval_user,
       trace_key IN (SELECT trace_key FROM fs_tests WHERE trace_key IS NOT NULL) AS test_trace
FROM (SELECT trace_key, {ARM} AS arm, user_hash FROM fs_evals) WHERE arm <> {OTHER}
"""

# Every entry span of the window in a traced, compared variant: its arm, unit (the
# evaluation's user, else the request's own user id), whether it is the trace's root, and
# its stratum's and entry's keys (their names in fs_entry_names). (--service and --route
# apply in _LABELLED_SQL.)
_ENTRIES_TEMPLATE = """
CREATE OR REPLACE TEMP TABLE fs_entries AS
SELECT r.trace_key, r.span_key, t.arm, t.test_trace,
       {user_hash} AS user_hash, {request_user} AS request_user,
       {{root}} AS root, {{stratum}} AS stratum, {{entry}} AS entry,
       r.time, r.duration_ms, r.is_error
FROM {{requests}} JOIN fs_traces t USING (trace_key)
WHERE {{is_entry}} r.time >= $start AND r.time < $end AND r.duration_ms IS NOT NULL
"""
# Where every flagged trace's evaluation names its user (OpenFeature's Python hook sends
# the targeting key; JS's TracingHook does not), the requests' own user ids are never
# used; not reading them took the statement from 0.68 to 0.55–0.57 s at 10 M events
# (bench/RESULTS.md: the string column is the costliest of the requests scan).
_ENTRIES_WITH_USERS_SQL = _ENTRIES_TEMPLATE.format(
    user_hash=f"coalesce(t.eval_user, {user_hash_sql('r.user_id')})",
    request_user="t.eval_user IS NULL AND r.user_id IS NOT NULL",
)
_ENTRIES_NAMED_SQL = _ENTRIES_TEMPLATE.format(user_hash="t.eval_user", request_user="false")
# The names of the window's strata and entries: the narrow tables' (`name_entries`), or
# worked out from the wide rows, whose requests take their keys from `fs_entry_keys`. (The
# wide rows' names are read again after the requests: a file published in between may
# name a new entry; every name a request had is still there.)
_WIDE_KEYS = narrow.keys_sql("events_raw WHERE is_entry AND time >= $start AND time < $end")
_WIDE_KEYS_SQL = f"CREATE OR REPLACE TEMP TABLE fs_entry_keys AS {_WIDE_KEYS}"
_WIDE_NAMES_SQL = "CREATE OR REPLACE TEMP TABLE fs_entry_names AS " + narrow.names_sql(
    f"({_WIDE_KEYS})"
)
# A trace whose evaluation names nobody is the user of its request: the entry spans of
# services that do not see the user id (a downstream SERVER span) take the trace's first
# one, instead of each becoming a unit of its own.
_TRACE_USER_SQL = """
UPDATE fs_entries e SET user_hash = u.user_hash
FROM (SELECT trace_key, arg_min(user_hash, time) AS user_hash
      FROM fs_entries WHERE request_user GROUP BY trace_key) u
WHERE e.trace_key = u.trace_key AND e.user_hash IS NULL
"""

# Users seen in both compared variants (crossover), with the first compared variant they
# saw. A user is known from the evaluations that name one and, where the evaluation names
# nobody (OpenFeature JS's TracingHook sends no targeting key), from the request's own
# user id: the unit the request is counted under. Evaluations of other variants neither
# make a crossover nor count as the first one.
_USER_FIRST_SQL = f"""
CREATE OR REPLACE TEMP TABLE fs_user_first AS
SELECT user_hash, arg_min(arm, time) AS first_arm FROM (
    SELECT time, arm, user_hash FROM (SELECT time, {ARM} AS arm, user_hash FROM fs_evals)
    WHERE user_hash IS NOT NULL AND arm <> {OTHER}
    UNION ALL
    SELECT time, arm, user_hash FROM fs_entries WHERE request_user
)
GROUP BY user_hash HAVING min(arm) <> max(arm)
"""
# … and test users: one table, so that each request needs one lookup by user.
_USER_MARKS_SQL = """
CREATE OR REPLACE TEMP TABLE fs_user_marks AS
SELECT user_hash, max(first_arm) AS first_arm, bool_or(tester) AS tester FROM (
    SELECT user_hash, first_arm, false AS tester FROM fs_user_first
    UNION ALL
    SELECT user_hash, NULL, true FROM fs_tests WHERE user_hash IS NOT NULL
) GROUP BY user_hash
"""
# A view, not a table: the join with the few marked users is cheap, and its readers (the
# exclusions, the compared requests) each need a few of its columns; materialising every
# entry span once more took ~9 % of a 100 M diff. (A view has no parameters: the scope is
# written in as literals.)
_LABELLED_SQL = """
CREATE OR REPLACE TEMP VIEW fs_labelled AS
SELECT e.arm AS cohort, coalesce(e.user_hash, hash(e.trace_key)) AS unit,
       e.user_hash IS NULL AS no_user, e.stratum, e.entry,
       e.time, e.duration_ms, e.is_error::UTINYINT AS err,
       e.trace_key, e.span_key, e.root, e.test_trace,
       e.test_trace OR coalesce(um.tester, false) AS is_test,
       coalesce(e.arm <> um.first_arm, false) AS crossed
FROM {entries} e LEFT JOIN fs_user_marks um USING (user_hash)
WHERE {scope}
"""


def scope_sql(service: str | None, route: str | None, row: str = "") -> str:
    """The --service / --route condition on a row with `service_name`, `route` and `path`
    (`row`: its qualifier), values as literals."""
    conditions = ["true"]
    if service is not None:
        conditions.append(f"{row}service_name = {sql_literal(service)}")
    if route is not None:
        value = sql_literal(route)
        conditions.append(f"({row}path = {value} OR {row}route = {value})")
    return " AND ".join(conditions)


def entry_scope_sql(
    service: str | None, route: str | None, row: str = "e", names: str = "fs_entry_names"
) -> str:
    """`scope_sql` on a row `row` with an entry key, by that entry's names in `names`
    (`true` without --service / --route: no lookup)."""
    if service is None and route is None:
        return "true"
    return f"{row}.entry IN (SELECT entry FROM {names} WHERE {scope_sql(service, route)})"


# Each stratum's service and route: the requests carry only its key (strings carried
# through the edge window took ~40 % of its time; the join that labels the requests took
# 0.85 s with them at 10 M events, 0.61 s with the keys).
STRATA_SQL = (
    "SELECT stratum, any_value(service_name) AS service_name, any_value(route) AS route "
    "FROM fs_entry_names GROUP BY stratum"
)

# A client that retried may have delivered a span twice. Checking is cheap; removing
# duplicates is not, so it happens only when there are any. Copies of a span share their
# trace and user, hence their labels: keeping any one of them is exact.
# Counting distinct span keys alone is cheaper and still sound: equal (trace, span) pairs
# share a span key, and two spans of different traces sharing one (~1e-7 at a million
# spans) only sends the lake through the exact de-duplication.
_DUPLICATES = "count(span_key) - count(DISTINCT span_key)"
_DEDUP_SQL = (
    "CREATE OR REPLACE TEMP TABLE fs_unique_entries AS "
    "SELECT DISTINCT ON (trace_key, span_key) * FROM fs_entries WHERE span_key IS NOT NULL "
    "UNION ALL SELECT * FROM fs_entries WHERE span_key IS NULL"
)


@dataclass(frozen=True)
class Exclusions:
    """What was left out of the comparison, for the report."""

    test_requests: int
    test_users: int
    crossover_requests: int
    crossover_users: int
    requests_without_user: int

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class CohortSums:
    """One cohort's (or one cohort's share of a stratum's) per-user sufficient statistics.

    Each metric is a ratio over requests with the user as the unit (`RatioStats`): errors
    per request, latency per request, and for each of `QUANTILES` the requests at or below
    that quantile's estimate. `grid` is the empirical quantile function read at
    `quantile_grid()` (probability → ms), from which the quantile intervals are read.
    """

    cohort: str  # "treatment" or "baseline"
    service_name: str | None  # None for the cohort as a whole
    route: str | None
    errors: RatioStats
    latency: RatioStats
    below_quantile: tuple[RatioStats, ...]
    grid: dict[float, float]

    @property
    def users(self) -> int:
        return self.errors.n

    @property
    def requests(self) -> int:
        return round(self.errors.sum_y)


@dataclass(frozen=True)
class UnitSums:
    """The result of the last stage: per cohort, and per (service, route) and cohort."""

    overall: dict[str, CohortSums]  # by cohort name; a cohort without requests is absent
    strata: tuple[CohortSums, ...]  # ordered by service, route, cohort
    # metric ("error_rate", "mean_latency") → cohort → its route-mix adjusted moments
    adjusted: dict[str, dict[str, AdjustedMoments]]


class Evaluations:
    """Stage 1: the flag's evaluations around the window (`fs_evals`, one scan)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        variants: dict[str, int],
        tables: Tables = WIDE,
        slack: timedelta = SLACK,
    ) -> None:
        self._con = con
        self.variants = variants  # users (or traces, without a user) per variant in the window
        self.tables = tables
        self.slack = slack

    @classmethod
    def collect(
        cls,
        con: duckdb.DuckDBPyConnection,
        flag: str,
        start: datetime,
        end: datetime,
        not_before: datetime | None = None,
        tables: str | None = None,
        slack: timedelta = SLACK,
    ) -> Evaluations:
        """`not_before`: no evaluation before it is read, not even within the slack (a ramp
        stage's start: a user the ramp moved to the treatment is no crossover of it).
        `tables`: `narrow` (the default, or `TABLES_ENV`) or `wide` (`Tables`); a
        connection without a lake (`read.lake_of`) reads `events_raw`. `slack`: how far
        beyond the window evaluations (and test marks) are read (`SLACK`)."""
        lower = start - slack if not_before is None else max(start - slack, not_before)
        chosen = _tables(con, start, end, tables, slack)
        bounds = {"lower": lower, "upper": end + slack}
        con.execute(chosen.sql(_EVALS_SQL), {"flag": flag, **bounds})
        rows = con.execute(
            "SELECT variant, count(DISTINCT coalesce(user_hash, hash(trace_key))) FROM fs_evals "
            "WHERE time >= $start AND time < $end GROUP BY 1 ORDER BY 1",
            {"start": start, "end": end},
        ).fetchall()
        return cls(con, {variant: int(n) for variant, n in rows}, chosen, slack)

    def label(self, q: CohortQuery, test_users: bool = True) -> LabelledRequests:
        """Stage 2: every entry span of the window in a compared variant, with its cohort,
        unit, stratum, test and crossover marks (`fs_labelled`), and the ones compared
        (`fs_requests`). Without `test_users`, only test-marked traces are test traffic,
        not the requests of users marked elsewhere in the lake (`incremental` adds those
        when it merges hours). Once per `Evaluations`: it lets go of the evaluations it
        read (`_release_entries`)."""
        excluded = self.label_entries(q, test_users, release=True)
        con = self._con
        # The overall numbers count what the end user experienced: one request per trace,
        # its edge (the root entry span, else the earliest); a service or route filter
        # asks for that service's own entry spans, every one of them.
        keep = KEEP[q.test_mode]
        if q.service is not None or q.route is not None:
            con.execute(_REQUESTS_SQL.format(edge="true", keep=keep))
        else:
            _edge_requests(con, keep)
        if q.pre_exposure is None:  # (CUPED reads each compared user's first request)
            _release_entries(con)
        return LabelledRequests(con, q, excluded)

    def label_entries(
        self, q: CohortQuery, test_users: bool = True, release: bool = False
    ) -> Exclusions:
        """`fs_labelled` (and `fs_entries`, `fs_evals`' arms) without the compared subset:
        `label`'s first part, which `incremental` summarises per hour. `release`: drop
        `fs_evals` once read (`label`: nothing after it reads the evaluations)."""
        con = self._con
        bounds = {"lower": q.start - self.slack, "upper": q.end + self.slack}
        con.execute(self.tables.sql(_TESTS_SQL), bounds)
        if test_users:
            con.execute(self.tables.sql(_TEST_USERS_SQL))
        one_each = con.execute(_ONE_EVALUATION_PER_TRACE_SQL).fetchall()[0][0]
        arms = {"treatment": q.treatment, "baseline": q.baseline}
        con.execute(_TRACES_ONE_EVALUATION_SQL if one_each else _TRACES_SQL, arms)
        # Crossover is found over every entry span, before --service / --route narrow the
        # compared set: a filter must not change who counts as a crossover user.
        _entries(con, q, self.tables)
        con.execute(_TRACE_USER_SQL)
        con.execute(_USER_FIRST_SQL, arms)
        if release:
            con.execute("DROP TABLE fs_evals")
        con.execute(_USER_MARKS_SQL)
        scope = entry_scope_sql(q.service, q.route)
        con.execute(_LABELLED_SQL.format(entries="fs_entries", scope=scope))
        excluded, duplicates = _exclusions(con)
        if duplicates:
            con.execute(_DEDUP_SQL)
            con.execute(_LABELLED_SQL.format(entries="fs_unique_entries", scope=scope))
            excluded, _ = _exclusions(con)
        return excluded


_REQUESTS_SQL = (
    "CREATE OR REPLACE TEMP TABLE fs_requests AS "
    "SELECT cohort, unit, stratum, time, duration_ms, err, {edge} AS edge "
    "FROM fs_labelled WHERE NOT crossed AND {keep}"
)
# Traces among the compared requests without exactly one root entry span: only theirs
# need the window that finds the earliest (in the others the root is the edge, and the
# span keys of a trace's requests are distinct by then: `_exclusions` counts copies).
_ODD_TRACES_SQL = """
CREATE OR REPLACE TEMP TABLE fs_odd_traces AS
SELECT trace_key FROM fs_labelled WHERE NOT crossed AND {keep}
GROUP BY trace_key HAVING count(*) FILTER (WHERE root) <> 1
"""
_SPLIT_REQUESTS_SQL = """
CREATE OR REPLACE TEMP TABLE fs_requests AS
WITH kept AS MATERIALIZED (
    SELECT cohort, unit, stratum, time, duration_ms, err, trace_key, span_key, root
    FROM fs_labelled WHERE NOT crossed AND {keep})
SELECT cohort, unit, stratum, time, duration_ms, err, root AS edge
FROM kept ANTI JOIN fs_odd_traces USING (trace_key)
UNION ALL
SELECT cohort, unit, stratum, time, duration_ms, err, {edge} AS edge
FROM kept SEMI JOIN fs_odd_traces USING (trace_key)
"""


def _edge_requests(con: duckdb.DuckDBPyConnection, keep: str) -> None:
    """`fs_requests` with each trace's edge. With the window over every compared request
    the statement took 0.34 s on the 10 M bench lake (whose traces all have their root),
    0.16 s split this way; but 0.53 s split when every trace needed the window, so where
    most traces lack exactly one root (services behind a caller outside the lake) the
    window runs alone. (Half is a line drawn between those two; not measured in between.)"""
    con.execute(_ODD_TRACES_SQL.format(keep=keep))
    odd, traces = con.execute(
        "SELECT (SELECT count(*) FROM fs_odd_traces), (SELECT count(*) FROM fs_traces)"
    ).fetchall()[0]
    if odd == 0:
        con.execute(_REQUESTS_SQL.format(edge="root", keep=keep))
    elif 2 * odd <= traces:
        con.execute(_SPLIT_REQUESTS_SQL.format(edge=edge_sql(), keep=keep))
    else:
        con.execute(_REQUESTS_SQL.format(edge=edge_sql(), keep=keep))


# Stage 2's largest tables, not read once `fs_requests` holds the compared requests (and
# `fs_evals` once the users' first arms are known). Beside ~3.3 GB of them at 100 M
# events, stage 3's per-unit sums took 7.0-7.7 s instead of 4.6 s under the default
# memory limit (one of two runs spilled 425 MiB; bench/RESULTS.md).
_STAGE_2_TABLES = ("fs_traces", "fs_entries", "fs_unique_entries")


def _release_entries(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("DROP VIEW IF EXISTS fs_labelled")
    for table in _STAGE_2_TABLES:
        con.execute(f"DROP TABLE IF EXISTS {table}")


def edge_sql(among: str | None = None) -> str:
    """Whether an entry span is its trace's edge request: the root entry span, else the
    earliest; `among`, a condition, limits the competing spans to those meeting it."""
    partition = "trace_key" if among is None else f"trace_key, {among}"
    return (
        f"coalesce(span_key = first_value(span_key) OVER (PARTITION BY {partition} "
        "ORDER BY NOT root, time, span_key), root)"
    )


def lake_tables(chosen: str | None = None) -> str:
    """`narrow` or `wide`: as asked, else `TABLES_ENV`, else narrow."""
    chosen = chosen or os.environ.get(TABLES_ENV, "").strip() or "narrow"
    if chosen not in ("narrow", "wide"):
        raise AnalysisError(f"{TABLES_ENV}={chosen!r}: expected 'narrow' (the default) or 'wide'")
    return chosen


def _tables(
    con: duckdb.DuckDBPyConnection,
    start: datetime,
    end: datetime,
    chosen: str | None,
    slack: timedelta = SLACK,
) -> Tables:
    """The tables asked for; the narrow ones' views defined over the window's hours (the
    evaluations' and test marks' with the slack around it)."""
    lake = lake_of(con)
    if lake_tables(chosen) == "wide" or lake is None:
        return WIDE
    narrow_views.define_views(con, lake, (start, end), (start - slack, end + slack))
    return NARROW


def _entries(con: duckdb.DuckDBPyConnection, q: CohortQuery, tables: Tables) -> None:
    """`fs_entries`, with the flagged traces as the hash join's build side: the entry spans
    scanned are the more. DuckDB cannot estimate a window over the view's `time` (computed
    from `time_unix_nano`, issue 12) and built on the lake's side instead, which took the
    10 M bench diff's statement from 1.8 to 3.0 s and its memory up by 0.8 GiB. The
    requests' user ids are read only if some flagged trace's evaluation names nobody. Then
    `fs_entry_names`, the names of their keys."""
    window = {"start": q.start, "end": q.end}
    lake = lake_of(con) if tables == NARROW else None  # (narrow tables have a lake)
    if lake is None:
        con.execute(_WIDE_KEYS_SQL, window)
    unnamed = con.execute(
        "SELECT EXISTS (SELECT 1 FROM fs_traces WHERE eval_user IS NULL)"
    ).fetchall()[0][0]
    entries = _ENTRIES_WITH_USERS_SQL if unnamed else _ENTRIES_NAMED_SQL
    con.execute("SET disabled_optimizers = 'build_side_probe_side'")
    try:
        con.execute(tables.sql(entries), window)
    finally:
        con.execute("RESET disabled_optimizers")
    if lake is None:
        con.execute(_WIDE_NAMES_SQL, window)
    else:
        narrow_views.name_entries(con, lake, (q.start, q.end), "fs_entries")


KEEP = {
    TrafficFilter.EXCLUDE: "NOT is_test",
    TrafficFilter.INCLUDE: "true",
    TrafficFilter.ONLY: "is_test",
}


def _exclusions(con: duckdb.DuckDBPyConnection) -> tuple[Exclusions, int]:
    """What was left out, and how many rows are extra copies of a span (one pass)."""
    *counts, duplicates = con.execute(f"""
        SELECT count(*) FILTER (WHERE is_test),
               count(DISTINCT unit) FILTER (WHERE is_test),
               count(*) FILTER (WHERE crossed AND NOT is_test),
               (SELECT count(*) FROM fs_user_first),
               count(*) FILTER (WHERE no_user),
               {_DUPLICATES}
        FROM fs_labelled""").fetchall()[0]
    return Exclusions(*(int(v or 0) for v in counts)), int(duplicates or 0)


def columns_at(grid: list[float], table: str, prefix: str) -> str:
    """`table.qs[i] AS <prefix>k` for the k-th reported quantile's place i in the grid: the
    estimates join each request as plain columns (a 74-element list per row would be
    copied through the join)."""
    return ", ".join(
        f"{table}.qs[{grid.index(p) + 1}] AS {prefix}{k}" for k, p in enumerate(QUANTILES)
    )


def _sums(below: str) -> str:
    """Across units: count, sums, squares and cross products with requests."""
    columns = ["count(*) AS n", "sum(req) AS req", "sum(req * req) AS req2"]
    for x in ("err", "lat", *(f"{below}{k}" for k in range(len(QUANTILES)))):
        name = x.replace(below, "b") if x.startswith(below) else x
        columns += [
            f"sum({x}) AS {name}",
            f"sum({x} * {x}) AS {name}_2",
            f"sum({x} * req) AS {name}_req",
        ]
    return ", ".join(columns)


def ratio_stats(row: dict[str, Any], x: str) -> RatioStats:
    """Metric `x`'s per-unit sums from a row of the sums query (`{x}_loo`, `{x}_loo2`: the
    leave-one-out sums, where computed); shared with the Spark stage."""
    total, squares = row.get(f"{x}_loo"), row.get(f"{x}_loo2")
    return RatioStats(
        int(row["n"]),
        float(row[x]),
        float(row["req"]),
        float(row[f"{x}_2"]),
        float(row["req2"]),
        float(row[f"{x}_req"]),
        None if total is None or squares is None else (float(total), float(squares)),
    )


_QUANTILES_SCHEMA = pa.schema(
    [("cohort", pa.int32()), ("stratum", pa.uint64()), ("qs", pa.list_(pa.float64()))]
)


def _quantile_table(con: duckdb.DuckDBPyConnection, grids: dict[Group, list[float]]) -> None:
    """`fs_quantiles` (cohort, stratum: NULL for the whole cohort, qs, and the stratum's
    service_name and route) from `exact_quantiles.duckdb_grids`' groups."""
    rows = [
        {"cohort": cohort, "stratum": None if whole else stratum, "qs": qs}
        for (cohort, whole, stratum), qs in grids.items()
    ]
    con.register("fs_quantile_rows", pa.Table.from_pylist(rows, schema=_QUANTILES_SCHEMA))
    try:
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE fs_quantiles AS
            SELECT cohort, stratum, qs, NULL AS service_name, NULL AS route
            FROM fs_quantile_rows WHERE stratum IS NULL
            UNION ALL
            SELECT cohort, stratum, qs, service_name, route
            FROM fs_quantile_rows JOIN ({STRATA_SQL}) USING (stratum)""")
    finally:
        con.unregister("fs_quantile_rows")


def cuts_from_quantiles(con: duckdb.DuckDBPyConnection) -> None:
    """`fs_cuts`: per cohort and stratum, the stratum's (cut{k}) and the whole cohort's
    (ocut{k}) estimate of each reported quantile, from `fs_quantiles`."""
    grid = list(quantile_grid())
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE fs_cuts AS
        SELECT s.cohort, s.stratum, {columns_at(grid, "s", "cut")},
               {columns_at(grid, "o", "ocut")}
        FROM fs_quantiles s LEFT JOIN fs_quantiles o
          ON o.cohort = s.cohort AND o.stratum IS NULL
        WHERE s.stratum IS NOT NULL""")


def unit_sums_from_tables(con: duckdb.DuckDBPyConnection, query: CohortQuery) -> UnitSums:
    """Stage 3's sums across units, from `fs_per_unit` (per cohort, stratum and unit: req,
    err, lat, the edge requests' ereq, eerr, elat, and b{k} / o{k}, the requests at or
    below the stratum's / the cohort's k-th quantile estimate) and `fs_quantiles` (per
    cohort, and per cohort and stratum: `qs`, the quantile function on `quantile_grid()`,
    with its service_name and route): `LabelledRequests.unit_sums` builds them from the
    requests, `incremental` from kept per-hour summaries."""
    grid = list(quantile_grid())
    ks = range(len(QUANTILES))
    xs = ("err", "lat", *(f"b{k}" for k in ks))
    # each unit's leave-one-out change of each ratio, r = (x - R req) / (Y - req), for
    # the jackknife variance (stats.ratio); keyed by stratum, 0 for the whole cohort
    loo = ", ".join(
        f"sum((u.{x} - t.{x} / t.req * u.req) / (t.req - u.req)) AS {x}_loo, "
        f"sum(((u.{x} - t.{x} / t.req * u.req) / (t.req - u.req)) ** 2) AS {x}_loo2"
        for x in xs
    )
    result = con.execute(f"""
    WITH per_cohort_unit AS (
        SELECT cohort, unit, sum(ereq) AS req, sum(eerr) AS err, sum(elat) AS lat,
               {", ".join(f"sum(o{k}) AS o{k}" for k in ks)}
        FROM fs_per_unit GROUP BY ALL HAVING sum(ereq) > 0
    ), totals AS (
        SELECT cohort, stratum, {_sums("b")} FROM fs_per_unit GROUP BY ALL
        UNION ALL
        SELECT cohort, NULL, {_sums("o")} FROM per_cohort_unit GROUP BY ALL
    ), unit_rows AS (
        SELECT cohort, stratum AS key, req, err, lat, {", ".join(f"b{k}" for k in ks)}
        FROM fs_per_unit
        UNION ALL
        SELECT cohort, 0, req, err, lat, {", ".join(f"o{k}" for k in ks)}
        FROM per_cohort_unit
    ), leave_one_out AS (
        SELECT u.cohort, u.key, {loo}
        FROM unit_rows u JOIN totals t
          ON t.cohort = u.cohort AND coalesce(t.stratum, 0) = u.key
        WHERE t.n > 1
        GROUP BY ALL
    )
    SELECT t.* REPLACE ({cohort_name("t.cohort")} AS cohort), l.* EXCLUDE (cohort, key),
           q.qs, q.service_name, q.route
    FROM totals t JOIN fs_quantiles q
      ON q.cohort = t.cohort AND q.stratum IS NOT DISTINCT FROM t.stratum
    LEFT JOIN leave_one_out l ON l.cohort = t.cohort AND l.key = coalesce(t.stratum, 0)
    ORDER BY t.stratum IS NOT NULL, q.service_name, q.route, t.cohort
    """)
    columns = [d[0] for d in result.description]
    overall: dict[str, CohortSums] = {}
    strata: list[CohortSums] = []
    for values in result.fetchall():
        row = dict(zip(columns, values, strict=True))
        whole = row["stratum"] is None
        sums = CohortSums(
            cohort=row["cohort"],
            service_name=None if whole else row["service_name"],
            route=None if whole else row["route"],
            errors=ratio_stats(row, "err"),
            latency=ratio_stats(row, "lat"),
            below_quantile=tuple(ratio_stats(row, f"b{k}") for k in ks),
            grid=dict(zip(grid, row["qs"], strict=True)),
        )
        if whole:
            overall[sums.cohort] = sums
        else:
            strata.append(sums)
    if query.pre_exposure is not None:
        collect_pre_exposure(con, query.flag, query.pre_exposure)
    moments = adjusted_moments(con, TREATMENT, BASELINE, query.pre_exposure is not None)
    adjusted = {
        metric: {_NAMES[arm]: m for arm, m in by_arm.items()} for metric, by_arm in moments.items()
    }
    return UnitSums(overall, tuple(strata), adjusted)


class LabelledRequests:
    """The result of stage 2: the compared requests (`fs_requests`) and what was left out."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, query: CohortQuery, excluded: Exclusions
    ) -> None:
        self._con = con
        self._query = query
        self.excluded = excluded

    def unit_sums(self) -> UnitSums:
        """Stage 3: per cohort (over edge requests), and per cohort and stratum (service,
        route; over every entry span), the sufficient statistics of the delta method and
        of the cluster-aware quantile intervals; and the route-mix adjusted moments.

        Pass 1 reads the empirical quantile functions on `quantile_grid()`
        (`exact_quantiles`: DuckDB's `quantile_cont`, counted by latency bin and ranked in
        the few bins it reads). Pass 2 sums per unit (user) and stratum in one scan (`fs_per_unit`): req, err, lat, and b{k} / o{k}
        = requests at or below the k-th quantile estimate of the stratum / of the whole
        cohort, and the same sums over edge requests only; then across units — for strata
        from those rows, for cohorts after adding each unit's strata up. Pass 3
        (`analysis.adjustment`) evaluates each unit's influence on the post-stratified
        estimates, regression-adjusted on pre-exposure behaviour if the query asks.
        """
        con = self._con
        grid = list(quantile_grid())
        ks = range(len(QUANTILES))
        _quantile_table(con, duckdb_grids(con, "fs_requests", grid))
        cuts_from_quantiles(con)
        below = ", ".join(
            f"count(*) FILTER (WHERE r.duration_ms <= c.cut{k}) AS b{k}, "
            f"count(*) FILTER (WHERE r.edge AND r.duration_ms <= c.ocut{k}) AS o{k}"
            for k in ks
        )
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE fs_per_unit AS
            SELECT r.cohort, r.stratum, r.unit, count(*) AS req, sum(r.err) AS err,
                   sum(r.duration_ms) AS lat, count(*) FILTER (WHERE r.edge) AS ereq,
                   coalesce(sum(r.err) FILTER (WHERE r.edge), 0) AS eerr,
                   coalesce(sum(r.duration_ms) FILTER (WHERE r.edge), 0) AS elat, {below}
            FROM fs_requests r JOIN fs_cuts c USING (cohort, stratum)
            GROUP BY ALL""")
        return unit_sums_from_tables(con, self._query)

    def time_series(self, bucket_seconds: int) -> list[dict[str, Any]]:
        """Per cohort and time bucket: requests, errors, p95 latency (the report's charts)."""
        result = self._con.execute(
            f"SELECT {cohort_name()} AS cohort, "
            "time_bucket(to_seconds($bucket), time) AS bucket, "
            "count(*) AS requests, sum(err) AS errors, "
            "quantile_cont(duration_ms, 0.95) AS p95_ms "
            "FROM fs_requests GROUP BY ALL ORDER BY ALL",
            {"bucket": int(bucket_seconds)},
        )
        names = [d[0] for d in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]

    def latency_histogram(self, bins: int = 40) -> tuple[list[float], dict[str, list[int]]]:
        """Log-spaced latency bins over both cohorts: (bin edges in ms, counts per cohort)."""
        return latency_histogram(self._con, "fs_requests", "duration_ms", "1", "cohort", bins)


def latency_histogram(
    con: duckdb.DuckDBPyConnection, source: str, latency: str, weight: str, cohort: str, bins: int
) -> tuple[list[float], dict[str, list[int]]]:
    """`bins` log-spaced latency bins between the least positive and the largest `latency`
    of `source` (SQL: a relation): their edges in ms, and per cohort the sum of `weight`
    (1 for requests) in each."""
    low, high = con.execute(
        f"SELECT min({latency}) FILTER (WHERE {latency} > 0), max({latency}) FROM {source}"
    ).fetchall()[0]
    if low is None or high is None or high <= low:
        return [], {}
    ratio = (high / low) ** (1 / bins)
    edges = [low * ratio**i for i in range(bins + 1)]
    rows = con.execute(
        f"SELECT {cohort_name(cohort)} AS cohort, least(greatest(floor(ln(greatest("
        f"{latency}, $low) / $low) / ln($ratio)), 0), $last)::INTEGER AS bin, sum({weight}) "
        f"FROM {source} GROUP BY ALL",
        {"low": low, "ratio": ratio, "last": bins - 1},
    ).fetchall()
    counts: dict[str, list[int]] = {}
    for name, index, n in rows:
        counts.setdefault(name, [0] * bins)[index] += int(n)
    return edges, counts
