"""The cohort stage as Spark SQL over the same lake (`--engine spark`, issue 12)."""

from flagscope.analysis.spark.engine import SparkStage, run

__all__ = ["SparkStage", "run"]
