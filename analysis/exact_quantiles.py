"""The empirical quantile functions of the compared requests on a grid of probabilities,
to the last bit of DuckDB's `quantile_cont`, without its cost.

DuckDB's `quantile_cont(x, [p1, …, pk])` makes one selection over the whole group per
probability: the diff's grid has ~74 (`cohorts.quantile_grid`), which took 2.8 s at 100 M
events where a single probability took 0.35 s (bench/RESULTS.md). Only two values a
probability are needed, so instead:

1. one pass counts each group's requests per latency bin (`bin_sql`: ~9,000 bins a decade,
   monotone in the latency, so the bins' counts add up to ranks);
2. the ranks each probability needs (`positions`) are found in those counts; a bin whose
   requests all took the same time (a coarse clock) gives its value from the count pass;
3. a second pass ranks the requests of just the other bins (a few thousand rows of
   millions) and reads the values at those ranks;
4. `interpolate` reads between them as DuckDB's build does.

The values are `quantile_cont`'s to the last bit, except that where -0.0 and 0.0 are
both among the latencies either may be read (they compare equal: no count changes).

The Spark stage ranks its requests itself and shares steps 2 and 4 (`read_grid`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import duckdb
import numpy as np
import pyarrow as pa

Group = tuple[int, bool, int]  # (cohort, whole cohort?, stratum; 0 for the whole cohort)

# Latencies (ms) in [10^k, 10^(k+1)) for k in _DECADES get bins (k + 4) * _SPAN +
# floor(x * 10^(3 - k)): 9,000 a decade, ~0.01-0.1 % wide. A product with a positive
# constant and floor never reverse the order of two doubles, and each decade's bins lie
# above the last's, so the bins are in the latencies' order; everything under 1 µs (zero,
# a negative clock difference) shares bin 0, everything from 10^7 ms the top one (and NaN,
# which DuckDB sorts last; the collector writes none: a duration is end - start or null).
# Finer bins made the counting pass slower than the ranking pass saved (1.07-1.27 s
# against 0.85-1.00 s at 100 M; coarser: 2.0-2.4 s).
_DECADES = range(-3, 7)
_SPAN = 10**5


def bin_sql(x: str) -> str:
    """SQL for the latency bin of `x` (ms): a BIGINT, non-decreasing in `x`."""
    cases = " ".join(
        f"WHEN {x} < 1e{k + 1}::DOUBLE THEN {(k + 4) * _SPAN} + floor({x} * 1e{3 - k}::DOUBLE)"
        for k in _DECADES
    )
    top = (_DECADES.stop + 4) * _SPAN
    return f"(CASE WHEN {x} < 1e{_DECADES.start}::DOUBLE THEN 0 {cases} ELSE {top} END)::BIGINT"


def positions(n: int, grid: Sequence[float]) -> list[tuple[float, int, int]]:
    """(RN, ⌊RN⌋, ⌈RN⌉) at each grid probability, as DuckDB's Interpolator computes them:
    RN = (n - 1) p over n sorted values (Hyndman & Fan 1996, type 7)."""
    out = []
    for p in grid:
        rn = float(n - 1) * p
        out.append((rn, math.floor(rn), math.ceil(rn)))
    return out


def interpolate(low: float, d: float, high: float) -> float:
    """low (1 - d) + high d as DuckDB's build evaluates it: one fused multiply-add,
    fma(low, 1 - d, high d), rounded once (checked against DuckDB on random samples with
    ties; tests/test_exact_quantiles.py). A cut a last bit off would move a run of equal
    latencies across it and change the "at or below the quantile" counts. (An infinite
    or NaN value, which no fraction holds, gives what the plain formula gives.)"""
    if not (math.isfinite(low) and math.isfinite(high)):
        return low * (1.0 - d) + high * d
    return float(Fraction(low) * Fraction(1.0 - d) + Fraction(high * d))


def read_grid(n: int, grid: Sequence[float], at: Callable[[int], float]) -> list[float]:
    """The quantile function of n values at `grid`, from `at(rank)`: the value of 0-based
    rank `rank` in sorted order."""
    read = []
    for rn, lo, hi in positions(n, grid):
        low = at(lo)
        read.append(low if hi == lo else interpolate(low, rn - lo, at(hi)))
    return read


_COUNTS_SQL = f"""
WITH h AS (
    SELECT cohort, stratum, edge, {bin_sql("duration_ms")} AS bin, count(*) AS n,
           min(duration_ms) AS low, max(duration_ms) AS high
    FROM {{table}} GROUP BY ALL)
SELECT cohort, false AS whole, stratum, bin, sum(n)::BIGINT AS n, min(low) AS low,
       max(high) AS high
FROM h GROUP BY ALL
UNION ALL
SELECT cohort, true, 0::UBIGINT, bin, sum(n)::BIGINT, min(low), max(high)
FROM h WHERE edge GROUP BY ALL
ORDER BY cohort, whole, stratum, bin
"""
# The requests of the wanted bins, ranked within their bin, at the wanted ranks. (A
# request is in its stratum's group and, if it is the edge, its cohort's.)
_VALUES_SQL = f"""
WITH bins AS (SELECT DISTINCT cohort, whole, stratum, bin FROM fs_quantile_ranks),
picked AS (
    SELECT b.cohort, b.whole, b.stratum, b.bin, r.duration_ms
    FROM (SELECT cohort, stratum, edge, duration_ms, {bin_sql("duration_ms")} AS bin
          FROM {{table}}) r
    JOIN bins b ON b.cohort = r.cohort AND b.bin = r.bin
     AND ((NOT b.whole AND b.stratum = r.stratum) OR (b.whole AND r.edge))),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY cohort, whole, stratum, bin
                                 ORDER BY duration_ms) - 1 AS pos
    FROM picked)
SELECT w.cohort, w.whole, w.stratum, w.rank, r.duration_ms
FROM ranked r JOIN fs_quantile_ranks w USING (cohort, whole, stratum, bin, pos)
"""
_RANKS_SCHEMA = pa.schema(
    [
        ("cohort", pa.int32()),
        ("whole", pa.bool_()),
        ("stratum", pa.uint64()),
        ("bin", pa.int64()),
        ("pos", pa.int64()),  # rank within the bin
        ("rank", pa.int64()),  # rank within the group
    ]
)


def duckdb_grids(
    con: duckdb.DuckDBPyConnection, table: str, grid: Sequence[float]
) -> dict[Group, list[float]]:
    """Per group of `table` (cohort, stratum, edge, duration_ms: each (cohort, stratum)
    over all its rows, and each cohort over its edge rows), `quantile_cont(duration_ms,
    grid)`; a group without rows is absent."""
    counts = con.execute(_COUNTS_SQL.format(table=table)).fetchnumpy()
    cohort, whole, stratum, bins, n, low, high = (
        np.asarray(counts[c]) for c in ("cohort", "whole", "stratum", "bin", "n", "low", "high")
    )
    if len(n) == 0:
        return {}
    new_group = (cohort[1:] != cohort[:-1]) | (whole[1:] != whole[:-1])
    edges = np.flatnonzero(new_group | (stratum[1:] != stratum[:-1])) + 1
    starts, ends = np.concatenate([[0], edges]), np.concatenate([edges, [len(n)]])
    sizes: dict[Group, int] = {}
    values: dict[Group, dict[int, float]] = {}  # the values at the wanted ranks
    wanted: list[tuple[int, bool, int, int, int, int]] = []  # ranks left to look up
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        group = (int(cohort[start]), bool(whole[start]), int(stratum[start]))
        before = np.cumsum(n[start:end])  # values in this bin and those below it
        sizes[group] = size = int(before[-1])
        values[group] = {}
        ranks = sorted({r for _, lo, hi in positions(size, grid) for r in (lo, hi)})
        bin_of = np.searchsorted(before, ranks, side="right").tolist()
        for rank, j in zip(ranks, bin_of, strict=True):
            i = start + j
            if low[i] == high[i]:  # one value fills the bin
                values[group][rank] = float(low[i])
                continue
            first = int(before[j] - n[i])  # the group's rank of the bin's first value
            wanted.append((*group, int(bins[i]), rank - first, rank))
    ranks_table = pa.Table.from_pylist(
        [dict(zip(_RANKS_SCHEMA.names, w, strict=True)) for w in wanted], schema=_RANKS_SCHEMA
    )
    con.register("fs_quantile_ranks", ranks_table)
    try:
        rows = con.execute(_VALUES_SQL.format(table=table)).fetchall()
    finally:
        con.unregister("fs_quantile_ranks")
    for c, w, s, rank, v in rows:
        values[c, w, s][rank] = v
    return {g: read_grid(size, grid, values[g].__getitem__) for g, size in sizes.items()}
