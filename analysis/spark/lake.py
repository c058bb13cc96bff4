"""The lake-wide questions a diff asks besides its cohorts, in Spark SQL over `events_raw`:
the flags and variants known, the time range held, and whether a --service / --route
exists (the same answers, and the same errors, as `flagscope.analysis.diff`'s DuckDB ones).
Times are compared as the lake's exact `time_unix_nano`, as DuckDB's views compare them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from flagscope.analysis.errors import AnalysisError
from flagscope.analysis.spark.session import rows

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_EPOCH = datetime(1970, 1, 1)


def nanos(moment: datetime) -> int:
    """A naive UTC datetime as nanoseconds since the epoch (the lake's `time_unix_nano`)."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def moment(ns: int) -> datetime:
    """The naive UTC datetime of `ns` nanoseconds since the epoch (to the microsecond)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


def known_flags(spark: SparkSession) -> list[str]:
    found = rows(
        spark,
        "SELECT DISTINCT explode(map_keys(flags)) FROM events_raw WHERE cardinality(flags) > 0",
    )
    return sorted(r[0] for r in found)


def lake_variants(spark: SparkSession, flag: str) -> set[str]:
    found = rows(
        spark,
        "SELECT DISTINCT element_at(flags, :flag) FROM events_raw "
        "WHERE map_contains_key(flags, :flag)",
        flag=flag,
    )
    return {r[0] for r in found if r[0] is not None}


def lake_range(spark: SparkSession) -> tuple[datetime | None, datetime | None]:
    first, last = rows(spark, "SELECT min(time_unix_nano), max(time_unix_nano) FROM events_raw")[0]
    return (None if first is None else moment(first)), (None if last is None else moment(last))


_SERVICE = "coalesce(service_name, 'unknown_service')"
_PATH = "coalesce(http_route, name)"
_FULL = f"trim(coalesce(http_method, '') || ' ' || {_PATH})"


def _known(names: list[str], most: int = 20) -> str:
    """As `diff` lists them: the first `most` names (one more was asked for, to know)."""
    shown = ", ".join(repr(n) for n in names[:most])
    more = " and more" if len(names) > most else ""
    return f"known: {shown}{more}" if names else "the lake holds no entry spans"


def check_scope(spark: SparkSession, service: str | None, route: str | None) -> None:
    """`diff.check_scope` in Spark: a --service or --route no entry span has is a usage
    error listing the known ones."""
    if service is not None:
        probe = f"SELECT 1 FROM events_raw WHERE is_entry AND {_SERVICE} = :service LIMIT 1"
        if not rows(spark, probe, service=service):
            names = rows(
                spark,
                f"SELECT DISTINCT {_SERVICE} FROM events_raw WHERE is_entry ORDER BY 1 NULLS LAST LIMIT 21",
            )
            listed = _known([r[0] for r in names])
            raise AnalysisError(f"--service {service!r} is not in the lake; {listed}")
    if route is not None:
        where = "is_entry" + ("" if service is None else f" AND {_SERVICE} = :service")
        scope = {} if service is None else {"service": service}
        probe = f"SELECT 1 FROM events_raw WHERE {where} AND ({_PATH} = :route OR {_FULL} = :route) LIMIT 1"
        if not rows(spark, probe, route=route, **scope):
            names = rows(
                spark,
                f"SELECT DISTINCT {_FULL} FROM events_raw WHERE {where} ORDER BY 1 NULLS LAST LIMIT 21",
                **scope,
            )
            within = "" if service is None else f" of service {service!r}"
            listed = _known([r[0] for r in names])
            raise AnalysisError(f"--route {route!r} is not in the lake{within}; {listed}")
