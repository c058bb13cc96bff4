"""The cohort stage of `flagscope.analysis.cohorts` in Spark SQL: the same stages, the same
rules (DESIGN contract 3, spelled out in that module's doc), over the lake's files.

`Evaluations.collect` → `.label(query)` → `LabelledRequests` → `.unit_sums()` (`sums`)
give the same `variants`, `Exclusions` and `UnitSums` as the DuckDB stage on the same
lake: counts exactly, floating sums up to the order of addition. What differs is how rows
are keyed, never how they are grouped:

- a trace is its two key halves (`trace_key_hi`, `trace_key_lo`), not one UUID;
- a user is `xxhash64(user_id)` where DuckDB has `hash(user_id)` (both 64 bits: either
  only has to give one id per user), a request without one the hash of its trace key;
- a time is the lake's exact `time_unix_nano`, which DuckDB's views turn into `time`.

A table read more than once is cached as it is built (`session.cache`): a Spark view is
computed again wherever it is used; one read once stays a view (`session.view`).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from flagscope.analysis.cohorts import (
    BASELINE,
    OTHER,
    SLACK,
    TREATMENT,
    CohortQuery,
    Exclusions,
    UnitSums,
)
from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.result import CUPED_WITHOUT_SPARK, TrafficFilter
from flagscope.analysis.spark.lake import moment, nanos
from flagscope.analysis.spark.session import cache, rows, view

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_SLACK_NS = nanos(datetime(1970, 1, 1) + SLACK)
_ARM = (
    f"CASE variant WHEN :treatment THEN {TREATMENT} WHEN :baseline THEN {BASELINE} ELSE {OTHER} END"
)


def _user_hash(column: str) -> str:
    return f"CASE WHEN {column} IS NOT NULL THEN xxhash64({column}) END"


_EVALS_SQL = f"""
SELECT trace_key_hi AS hi, trace_key_lo AS lo, {_user_hash("user_id")} AS user_hash,
       time_unix_nano AS t, element_at(flags, :flag) AS variant
FROM events_raw
WHERE time_unix_nano >= :lower AND time_unix_nano < :end + {_SLACK_NS}
  AND trace_key_hi IS NOT NULL AND trace_key_lo IS NOT NULL
  AND element_at(flags, :flag) IS NOT NULL
"""
_TEST_TRACES_SQL = f"""
SELECT DISTINCT trace_key_hi AS hi, trace_key_lo AS lo FROM events_raw
WHERE is_test AND trace_key_hi IS NOT NULL AND trace_key_lo IS NOT NULL
  AND time_unix_nano >= :start - {_SLACK_NS} AND time_unix_nano < :end + {_SLACK_NS}
"""
_TEST_USERS_SQL = (
    "SELECT DISTINCT xxhash64(user_id) AS user_hash FROM events_raw "
    "WHERE is_test AND user_id IS NOT NULL"
)
# (min_by over one evaluation is that evaluation: no shortcut for the usual case needed)
_TRACES_SQL = f"""
SELECT g.hi, g.lo, g.arm, g.eval_user, x.hi IS NOT NULL AS test_trace FROM (
    SELECT hi, lo, min_by(arm, t) AS arm,
           min_by(user_hash, t) FILTER (WHERE user_hash IS NOT NULL) AS eval_user
    FROM (SELECT hi, lo, t, {_ARM} AS arm, user_hash FROM fs_evals)
    GROUP BY hi, lo) g
LEFT JOIN fs_test_traces x ON x.hi = g.hi AND x.lo = g.lo
WHERE g.arm <> {OTHER}
"""
_ENTRIES_SQL = f"""
SELECT r.trace_key_hi AS hi, r.trace_key_lo AS lo, r.span_key, t.arm, t.test_trace,
       coalesce(t.eval_user, {_user_hash("r.user_id")}) AS user_hash,
       t.eval_user IS NULL AND r.user_id IS NOT NULL AS request_user,
       coalesce(r.parent_span_id, '') = '' AS root,
       coalesce(r.service_name, 'unknown_service') AS service_name,
       trim(coalesce(r.http_method, '') || ' ' || coalesce(r.http_route, r.name)) AS route,
       coalesce(r.http_route, r.name) AS path, r.time_unix_nano AS t, r.duration_ms, r.is_error
FROM events_raw r JOIN fs_traces t ON r.trace_key_hi = t.hi AND r.trace_key_lo = t.lo
WHERE r.is_entry AND r.time_unix_nano >= :start AND r.time_unix_nano < :end
  AND r.duration_ms IS NOT NULL
"""
# The trace's first request user for the entry spans without one (cohorts' UPDATE).
_TRACE_USER_SQL = """
SELECT e.hi, e.lo, e.span_key, e.arm, e.test_trace,
       coalesce(e.user_hash, u.user_hash) AS user_hash, e.request_user, e.root,
       e.service_name, e.route, e.path, e.t, e.duration_ms, e.is_error
FROM fs_entries_own e LEFT JOIN (
    SELECT hi, lo, min_by(user_hash, t) AS user_hash FROM fs_entries_own
    WHERE request_user GROUP BY hi, lo) u
  ON u.hi = e.hi AND u.lo = e.lo
"""
_USER_FIRST_SQL = f"""
SELECT user_hash, min_by(arm, t) AS first_arm FROM (
    SELECT t, arm, user_hash FROM (SELECT t, {_ARM} AS arm, user_hash FROM fs_evals)
    WHERE user_hash IS NOT NULL AND arm <> {OTHER}
    UNION ALL
    SELECT t, arm, user_hash FROM fs_entries WHERE request_user
)
GROUP BY user_hash HAVING min(arm) <> max(arm)
"""
_USER_MARKS_SQL = """
SELECT user_hash, max(first_arm) AS first_arm, bool_or(tester) AS tester FROM (
    SELECT user_hash, first_arm, false AS tester FROM fs_user_first
    UNION ALL
    SELECT user_hash, CAST(NULL AS INT), true FROM fs_test_users
) GROUP BY user_hash
"""
_LABELLED_SQL = """
SELECT e.arm AS cohort, coalesce(e.user_hash, xxhash64(e.hi, e.lo)) AS unit,
       e.user_hash IS NULL AS no_user, xxhash64(e.service_name, e.route) AS stratum,
       e.service_name, e.route, e.t, e.duration_ms, CAST(e.is_error AS INT) AS err,
       e.hi, e.lo, e.span_key, e.root, e.test_trace OR coalesce(um.tester, false) AS is_test,
       coalesce(e.arm <> um.first_arm, false) AS crossed
FROM fs_entries e LEFT JOIN fs_user_marks um ON um.user_hash = e.user_hash
"""
_EXCLUSIONS_SQL = """
SELECT count_if(is_test), count(DISTINCT CASE WHEN is_test THEN unit END),
       count_if(crossed AND NOT is_test), (SELECT count(*) FROM fs_user_first),
       count_if(no_user), count(span_key) - count(DISTINCT hi, lo, span_key)
FROM fs_labelled
"""
_KEEP = {
    TrafficFilter.EXCLUDE: "NOT is_test",
    TrafficFilter.INCLUDE: "true",
    TrafficFilter.ONLY: "is_test",
}
# One request per trace for the overall numbers: its root entry span, else the earliest
# (DuckDB sorts NULL last; Spark's default is first, hence the NULLS LAST).
_EDGE = (
    "coalesce(span_key = first_value(span_key) OVER (PARTITION BY hi, lo "
    "ORDER BY NOT root, t, span_key NULLS LAST), root)"
)


class Evaluations:
    """Stage 1: the flag's evaluations around the window (`fs_evals`)."""

    def __init__(self, spark: SparkSession, variants: dict[str, int]) -> None:
        self._spark = spark
        self.variants = variants

    @classmethod
    def collect(
        cls,
        spark: SparkSession,
        flag: str,
        start: datetime,
        end: datetime,
        not_before: datetime | None = None,
    ) -> Evaluations:
        lower = start - SLACK if not_before is None else max(start - SLACK, not_before)
        cache(spark, "fs_evals", _EVALS_SQL, flag=flag, lower=nanos(lower), end=nanos(end))
        found = rows(
            spark,
            "SELECT variant, count(DISTINCT coalesce(user_hash, xxhash64(hi, lo))) "
            "FROM fs_evals WHERE t >= :start AND t < :end GROUP BY 1 ORDER BY 1",
            start=nanos(start),
            end=nanos(end),
        )
        return cls(spark, {variant: int(n) for variant, n in found})

    def label(self, q: CohortQuery) -> LabelledRequests:
        """Stage 2: `fs_labelled` (every entry span of a compared variant, marked) and
        `fs_requests` (the compared ones, with whether each is its trace's edge)."""
        spark = self._spark
        window = {"start": nanos(q.start), "end": nanos(q.end)}
        arms = {"treatment": q.treatment, "baseline": q.baseline}
        view(spark, "fs_test_traces", _TEST_TRACES_SQL, **window)
        view(spark, "fs_test_users", _TEST_USERS_SQL)
        view(spark, "fs_traces", _TRACES_SQL, **arms)
        cache(spark, "fs_entries_own", _ENTRIES_SQL, **window)
        cache(spark, "fs_entries", _TRACE_USER_SQL)
        cache(spark, "fs_user_first", _USER_FIRST_SQL, **arms)
        view(spark, "fs_user_marks", _USER_MARKS_SQL)
        scope, where = _scope(q)
        cache(spark, "fs_labelled", _LABELLED_SQL + where, **scope)
        excluded, duplicates = _exclusions(spark)
        if duplicates:  # retried spans: keep one copy of each (copies share their labels)
            frame = spark.table("fs_labelled")
            keyed = frame.where("span_key IS NOT NULL").dropDuplicates(["hi", "lo", "span_key"])
            deduplicated = keyed.unionByName(frame.where("span_key IS NULL")).cache()
            deduplicated.count()
            deduplicated.createOrReplaceTempView("fs_labelled")
            excluded, _ = _exclusions(spark)
        edge = "true" if q.service is not None or q.route is not None else _EDGE
        cache(
            spark,
            "fs_requests",
            "SELECT cohort, unit, stratum, service_name, route, t, duration_ms, err, "
            f"{edge} AS edge FROM fs_labelled WHERE NOT crossed AND {_KEEP[q.test_mode]}",
        )
        return LabelledRequests(spark, q, excluded)


def _scope(q: CohortQuery) -> tuple[dict[str, str], str]:
    """--service / --route as a WHERE clause and its parameters."""
    params, terms = {}, []
    if q.service is not None:
        params["service"] = q.service
        terms.append("e.service_name = :service")
    if q.route is not None:
        params["route"] = q.route
        terms.append("(e.path = :route OR e.route = :route)")
    return params, (" WHERE " + " AND ".join(terms)) if terms else ""


def _exclusions(spark: SparkSession) -> tuple[Exclusions, int]:
    *counts, duplicates = rows(spark, _EXCLUSIONS_SQL)[0]
    return Exclusions(*(int(v or 0) for v in counts)), int(duplicates or 0)


def _cohort_name(column: str = "cohort") -> str:
    return f"CASE {column} WHEN {TREATMENT} THEN 'treatment' ELSE 'baseline' END"


class LabelledRequests:
    """The result of stage 2: the compared requests (`fs_requests`) and what was left out."""

    def __init__(self, spark: SparkSession, query: CohortQuery, excluded: Exclusions) -> None:
        self._spark = spark
        self._query = query
        self.excluded = excluded

    def unit_sums(self) -> UnitSums:
        """Stage 3 (`sums.unit_sums`); --cuped is not computed in Spark yet."""
        from flagscope.analysis.spark.sums import unit_sums

        if self._query.pre_exposure is not None:
            raise AnalysisError(CUPED_WITHOUT_SPARK)
        return unit_sums(self._spark)

    def time_series(self, bucket_seconds: int) -> list[dict[str, Any]]:
        """Per cohort and time bucket: requests, errors, p95 latency (the report's charts;
        buckets start at whole multiples of the bucket since the epoch, as DuckDB's
        `time_bucket` places them for buckets that divide a day)."""
        size = int(bucket_seconds) * 1_000_000_000
        found = rows(
            self._spark,
            f"SELECT {_cohort_name()} AS cohort, (t div :size) * :size AS bucket, "
            "count(*) AS requests, sum(err) AS errors, "
            "percentile(duration_ms, 0.95) AS p95_ms "
            "FROM fs_requests GROUP BY 1, 2 ORDER BY 1, 2",
            size=size,
        )
        return [
            {"cohort": c, "bucket": moment(int(b)), "requests": n, "errors": e, "p95_ms": p}
            for c, b, n, e, p in found
        ]

    def latency_histogram(self, bins: int = 40) -> tuple[list[float], dict[str, list[int]]]:
        """Log-spaced latency bins over both cohorts: (bin edges in ms, counts per cohort)."""
        low, high = rows(
            self._spark,
            "SELECT min(duration_ms) FILTER (WHERE duration_ms > 0), max(duration_ms) "
            "FROM fs_requests",
        )[0]
        if low is None or high is None or high <= low:
            return [], {}
        ratio = (high / low) ** (1 / bins)
        edges = [low * ratio**i for i in range(bins + 1)]
        found = rows(
            self._spark,
            f"SELECT {_cohort_name()}, CAST(least(greatest(floor(ln(greatest(duration_ms, "
            ":low) / :low) / ln(:ratio)), 0), :last) AS INT), count(*) FROM fs_requests "
            "GROUP BY 1, 2",
            low=low,
            ratio=ratio,
            last=bins - 1,
        )
        counts: dict[str, list[int]] = {}
        for cohort, index, n in found:
            counts.setdefault(cohort, [0] * bins)[index] += int(n)
        return edges, counts
