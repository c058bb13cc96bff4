"""One piece of a window in a few compact tables, computed with the stages of `cohorts`.

For the piece [ps, pe), the flag's evaluations and entry spans are read over
[ps - REACH, pe + REACH) and labelled (`Evaluations.label_entries`: a trace's variant
and user as a whole window labels them), then only the piece's own entry spans kept:

- `cells`: per (cohort, unit, no_user, stratum, entry, test_trace, edges, latency bin) the
  requests `n`, errors `err` and exact latency sum `lat` — what every later step needs,
  since crossover and test users are only known across the whole window (or lake);
- `strata`: each entry's stratum, service, route and path (for --service / --route);
- `firsts`: per (user, arm, from_request) the first time the user was seen in the arm —
  in an evaluation naming them, or on a request carrying their id (crossover);
- `variant_units`: per variant, the units that evaluated it (pair-independent).

`edges` says, bit by bit (`EDGE_BITS`), whether the entry span is its trace's edge
request when the piece starts / ends the window or when the window goes on beyond it:
at a window's edge a trace's spans outside it do not count, inside they do.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa

from flagscope.analysis.cohorts import (
    ARM,
    NARROW,
    OTHER,
    CohortQuery,
    Evaluations,
    edge_sql,
    user_hash_sql,
)
from flagscope.analysis.incremental.bins import bin_sql
from flagscope.analysis.incremental.plan import HOUR, REACH
from flagscope.analysis.result import TrafficFilter
from flagscope.collector.lake import narrow_views

# bit → the entry spans of the trace that compete to be its edge (`Piece.edge_bit`):
# 0 first and last piece, 1 last only, 2 first only, 3 neither.
EDGE_BITS = ("time >= $ps AND time < $pe", "time < $pe", "time >= $ps", None)


def _edges() -> str:
    return " + ".join(
        f"{1 << bit} * ({edge_sql(among)})::UTINYINT" for bit, among in enumerate(EDGE_BITS)
    )


_PIECE_SQL = f"""
CREATE OR REPLACE TEMP TABLE inc_piece AS
WITH crossing AS (SELECT DISTINCT trace_key FROM fs_labelled WHERE time < $ps OR time >= $pe)
SELECT cohort, unit, no_user, stratum, entry, test_trace, duration_ms, err,
       15 * ({edge_sql()})::UTINYINT AS edges
FROM fs_labelled ANTI JOIN crossing USING (trace_key)
UNION ALL
SELECT * EXCLUDE (time) FROM (
    SELECT cohort, unit, no_user, stratum, entry, test_trace, duration_ms, err,
           ({_edges()})::UTINYINT AS edges, time
    FROM fs_labelled SEMI JOIN crossing USING (trace_key))
WHERE time >= $ps AND time < $pe
"""
_CELLS_SQL = f"""
SELECT cohort, unit, no_user, stratum, entry, test_trace, edges, {bin_sql("duration_ms")} AS bin,
       count(*) AS n, sum(err)::BIGINT AS err, sum(duration_ms) AS lat
FROM inc_piece GROUP BY ALL
"""
_STRATA_SQL = (
    "SELECT DISTINCT entry, stratum, service_name, route, path FROM fs_entry_names "
    "WHERE entry IN (SELECT entry FROM inc_piece)"
)
_FIRSTS_SQL = f"""
SELECT unit, arm, from_request, min(time) AS first FROM (
    SELECT user_hash AS unit, {ARM} AS arm, false AS from_request, time FROM fs_evals
    WHERE user_hash IS NOT NULL AND time >= $ps AND time < $pe
    UNION ALL
    SELECT user_hash, arm, true, time FROM fs_entries
    WHERE request_user AND time >= $ps AND time < $pe)
WHERE arm <> {OTHER}
GROUP BY ALL
"""
_VARIANT_UNITS_SQL = (
    "SELECT DISTINCT variant, coalesce(user_hash, hash(trace_key)) AS unit FROM fs_evals "
    "WHERE time >= $ps AND time < $pe"
)
# Evaluations alone (the window's slack, where no request is counted): a view already
# limited to the range.
_EVALUATION_FIRSTS_SQL = f"""
SELECT unit, arm, false AS from_request, min(time) AS first FROM (
    SELECT {user_hash_sql("user_id")} AS unit, {ARM} AS arm, time
    FROM fs_narrow_evaluations WHERE {NARROW.has_flag})
WHERE unit IS NOT NULL AND arm <> {OTHER}
GROUP BY ALL
"""
_TESTERS_SQL = (
    "SELECT DISTINCT hash(user_id) AS user_hash FROM fs_narrow_tests WHERE user_id IS NOT NULL"
)


def _arrow(con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, object]) -> pa.Table:
    return con.sql(sql, params=dict(params) or None).to_arrow_table()


def evaluations(
    con: duckdb.DuckDBPyConnection, flag: str, start: datetime, end: datetime
) -> tuple[Evaluations, pa.Table]:
    """Stage 1 over the piece and its reach, and the piece's `variant_units`."""
    found = Evaluations.collect(con, flag, start - REACH, end + REACH, slack=timedelta(0))
    return found, _arrow(con, _VARIANT_UNITS_SQL, {"ps": start, "pe": end})


def pair_tables(
    con: duckdb.DuckDBPyConnection,
    found: Evaluations,
    flag: str,
    pair: tuple[str, str],
    start: datetime,
    end: datetime,
) -> dict[str, pa.Table]:
    """`cells`, `strata` and `firsts` of the piece for (treatment, baseline) = `pair`."""
    query = CohortQuery(
        flag, pair[0], pair[1], start - REACH, end + REACH, test_mode=TrafficFilter.INCLUDE
    )
    found.label_entries(query, test_users=False)
    piece: dict[str, object] = {"ps": start, "pe": end}
    con.execute(_PIECE_SQL, piece)
    arms = {"treatment": pair[0], "baseline": pair[1]}
    return {
        "cells": _arrow(con, _CELLS_SQL, {}),
        "strata": _arrow(con, _STRATA_SQL, {}),
        "firsts": _arrow(con, _FIRSTS_SQL, piece | arms),
    }


def evaluation_firsts(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    flag: str,
    pair: tuple[str, str],
    start: datetime,
    end: datetime,
) -> pa.Table:
    """`firsts` from the evaluations in [start, end) alone (the window's slack)."""
    narrow_views.define_views(con, lake, (start, end), (start, end))
    params = {"flag": flag, "treatment": pair[0], "baseline": pair[1]}
    return _arrow(con, _EVALUATION_FIRSTS_SQL, params)


def testers(con: duckdb.DuckDBPyConnection, lake: Path, hour: datetime) -> pa.Table:
    """The users test-marked in one hour partition."""
    span = (hour, hour + HOUR)
    narrow_views.define_views(con, lake, span, span, span)
    return _arrow(con, _TESTERS_SQL, {})
