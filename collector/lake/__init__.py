"""The Parquet lake: the contract between the collector and every reader.

Layout: `<lake>/date=YYYY-MM-DD/hour=HH/<writer>-<seq>-<part>.parquet` (`layout`), rows of
one wide-event schema (`schema`) in types every engine reads, each file written under a
hidden temporary name (`layout.temporary`), fsynced and renamed into place (`durable`), so a reader sees a file completely or not at all. Names
derive from the WAL segment a file came from, so replaying a segment rewrites the same
names (idempotent). The lake writers write (`write`), compact and expire (`maintain`);
readers — DuckDB, Polars, pandas, Spark, and flagscope's analysis through `read` — see
the de-duplicated `events` view. Beside each file, its narrow tables of requests and flag
evaluations (`narrow`), which the cohort diff reads over the hours it needs
(`narrow_views`); each connection's memory is bounded (`resources`).
"""
