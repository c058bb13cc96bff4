"""The Spark session the cohort stage runs in, the lake as a Spark view, and the one place
Spark's errors become flagscope's.

The master is whatever launched the process (`spark-submit --master …`, or
PYSPARK_SUBMIT_ARGS), else FLAGSCOPE_SPARK_MASTER, else local mode on every core. Two
settings are always made, because the agreement with the DuckDB stage rests on them: the
session time zone is UTC (the lake's times are UTC instants), and ANSI mode is off, so
that a division by zero is NULL as in DuckDB rather than an error.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from flagscope.analysis.errors import AnalysisError
from flagscope.collector.errors import FlagscopeError, LakeError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

T = TypeVar("T")
MASTER_ENV = "FLAGSCOPE_SPARK_MASTER"
DEFAULT_MASTER = "local[*]"
_INSTALL = "pip install 'flagscope[spark]' (pyspark 4)"
_JAVA = (
    "Spark needs a Java 17 or 21 runtime and none was found: run `make java` (as root, "
    "Debian's default-jre-headless), install one, or set JAVA_HOME"
)


def java_found() -> bool:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return True
    return shutil.which("java") is not None


def _launched_with_master() -> bool:
    """spark-submit (whose JVM started this process) or PYSPARK_SUBMIT_ARGS chose one."""
    from pyspark import SparkConf, SparkContext

    if SparkContext._active_spark_context is not None:
        return True
    submit_args = os.environ.get("PYSPARK_SUBMIT_ARGS", "")
    return "--master" in submit_args or SparkConf().contains("spark.master")


def session(master: str | None = None, **conf: str) -> SparkSession:
    """The process's Spark session (created on first use, then shared); `master` and
    `conf` apply when it is created here."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise AnalysisError(f"--engine spark needs pyspark: {_INSTALL}") from exc
    if not java_found():
        raise AnalysisError(_JAVA)
    builder = SparkSession.builder.appName("flagscope")
    chosen = master or os.environ.get(MASTER_ENV)
    if chosen or not _launched_with_master():
        builder = builder.master(chosen or DEFAULT_MASTER)
    for key, value in {"spark.ui.showConsoleProgress": "false", **conf}.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # the JVM failing to start, in any of its forms
        raise AnalysisError(f"Spark could not start: {_first_line(exc)} ({_JAVA})") from exc
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.ansi.enabled", "false")
    return spark


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def define_view(spark: SparkSession, lake: Path | str) -> None:
    """`events_raw`: every stored row of the lake's Parquet files, as they are (files being
    written are `.<name>.tmp`, which Spark skips as hidden)."""
    events = spark.read.option("pathGlobFilter", "*.parquet").parquet(str(lake))
    events.createOrReplaceTempView("events_raw")


def run(lake: Path, work: Callable[[SparkSession], T], spark: SparkSession | None = None) -> T:
    """`work(spark)` with the lake's view defined; Spark's own errors come out as
    `LakeError`s that name the lake (the CLI prints them and exits 2)."""
    from pyspark.errors import PySparkException

    spark = spark or session()
    try:
        define_view(spark, lake)
        return work(spark)
    except FlagscopeError:
        raise
    except (PySparkException, _java_error()) as exc:
        raise LakeError(f"Spark could not read the lake at {lake}: {_first_line(exc)}") from exc
    finally:
        clear(spark)


def _java_error() -> type[Exception]:
    from py4j.protocol import Py4JError

    error: type[Exception] = Py4JError
    return error


def clear(spark: SparkSession) -> None:
    """Forget the stage's cached tables (`fs_*`), so that the next diff starts clean."""
    for table in spark.catalog.listTables():
        if table.isTemporary and table.name.startswith("fs_"):
            spark.catalog.dropTempView(table.name)
    spark.catalog.clearCache()


def rows(spark: SparkSession, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows of `sql` (named parameters `:name`) as plain tuples."""
    return [tuple(r) for r in spark.sql(sql, args=params or None).collect()]


def cache(spark: SparkSession, name: str, sql: str, **params: Any) -> None:
    """`name` := `sql`, computed once now (a Spark view would be recomputed at each use)."""
    frame = spark.sql(sql, args=params or None)
    frame.cache().count()
    frame.createOrReplaceTempView(name)


def view(spark: SparkSession, name: str, sql: str, **params: Any) -> None:
    """`name` := `sql` as a view, for a table read once (computed where it is used)."""
    spark.sql(sql, args=params or None).createOrReplaceTempView(name)


def _literal(value: Any, kind: str) -> str:
    if value is None:
        return f"CAST(NULL AS {kind})"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if "'" in value or "\\" in value:
            raise ValueError(f"not a plain name: {value!r}")
        return f"'{value}'"
    if isinstance(value, float):  # repr round-trips: the same double in the JVM
        return f"CAST('{value!r}' AS DOUBLE)"
    return f"CAST({int(value)} AS {kind})"


def values_view(
    spark: SparkSession, name: str, columns: str, values: list[tuple[Any, ...]]
) -> None:
    """`name` := a few rows computed here, sent in the SQL text: no Python runs on the
    executors (createDataFrame would ship pickles). `columns`: "a INT, b DOUBLE"."""
    names, kinds = zip(*(c.split() for c in columns.split(",")), strict=True)
    if values:
        listed = ", ".join(
            "(" + ", ".join(_literal(v, k) for v, k in zip(row, kinds, strict=True)) + ")"
            for row in values
        )
        sql = f"SELECT * FROM VALUES {listed} AS v({', '.join(names)})"
    else:
        typed = ", ".join(f"CAST(NULL AS {k}) AS {n}" for n, k in zip(names, kinds, strict=True))
        sql = f"SELECT {typed} WHERE false"
    spark.sql(sql).createOrReplaceTempView(name)
