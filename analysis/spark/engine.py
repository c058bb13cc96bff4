"""`--engine spark`: the cohort stage and the lake-wide questions of a diff in Spark, as
one object `diff` calls where it would call DuckDB's (`diff.DUCKDB_STAGE`), and the run
of a diff's work in a Spark session (`run`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from flagscope.analysis.spark import lake, session
from flagscope.analysis.spark.cohorts import Evaluations

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

T = TypeVar("T")


class SparkStage:
    """What a diff asks of its engine, each taking the session first."""

    collect = staticmethod(Evaluations.collect)
    known_flags = staticmethod(lake.known_flags)
    lake_range = staticmethod(lake.lake_range)
    lake_variants = staticmethod(lake.lake_variants)
    check_scope = staticmethod(lake.check_scope)


def run(lake_dir: Path, work: Callable[[SparkSession], T]) -> T:
    """`work(spark)` over the lake in the process's Spark session (`session.session`)."""
    return session.run(lake_dir, work)
