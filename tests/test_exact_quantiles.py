"""exact_quantiles: the quantile grid read in two passes, against DuckDB's own quantile_cont
(the oracle: the diff read it that way before, and the Spark stage must agree with it)."""

from __future__ import annotations

import math
import random

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagscope.analysis.cohorts import quantile_grid
from flagscope.analysis.exact_quantiles import bin_sql, duckdb_grids, interpolate

GRID = list(quantile_grid())


def _requests(rows: list[tuple[int, int, bool, float]]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    table = pa.table(
        {
            "cohort": pa.array([r[0] for r in rows], pa.int32()),
            "stratum": pa.array([r[1] for r in rows], pa.uint64()),
            "edge": pa.array([r[2] for r in rows], pa.bool_()),
            "duration_ms": pa.array([r[3] for r in rows], pa.float64()),
        }
    )
    con.register("rows_in", table)
    con.execute("CREATE TABLE fs_requests AS SELECT * FROM rows_in")
    return con


def _oracle(con: duckdb.DuckDBPyConnection) -> dict[tuple[int, bool, int], list[float]]:
    rows = con.execute(
        "SELECT cohort, true, 0::UBIGINT, quantile_cont(duration_ms, $g::DOUBLE[]) "
        "FROM fs_requests WHERE edge GROUP BY cohort "
        "UNION ALL SELECT cohort, false, stratum, quantile_cont(duration_ms, $g::DOUBLE[]) "
        "FROM fs_requests GROUP BY cohort, stratum",
        {"g": GRID},
    ).fetchall()
    return {(c, w, s): list(q) for c, w, s, q in rows}


def _latency(rng: random.Random, shape: str) -> float:
    if shape == "lognormal":
        return rng.lognormvariate(3.0, 1.2)
    if shape == "heavy":  # Pareto tail: a few requests 10^4-10^7 times the median
        return 5.0 * rng.paretovariate(0.7)
    if shape == "ties":  # a coarse clock: whole milliseconds, many zeros
        return float(max(0, round(rng.gauss(2.0, 3.0))))
    # across every decade the bins cover, their edges, and beyond them
    return rng.choice(
        [0.0, -1.5, 1e-9, 1e-3, 0.999e-3, 10.0, math.nextafter(10.0, 0), 1e7, 3e9]
        + [10 ** rng.uniform(-4, 8)] * 6  # (a fresh value 6 times in 15)
    )


@pytest.mark.parametrize("shape", ["lognormal", "heavy", "ties", "edges"])
def test_grids_are_quantile_cont_to_the_last_bit(shape: str) -> None:
    """Cohorts and strata of very different sizes (1, 2, a few, tens of thousands), edge
    and non-edge requests, on four latency shapes: every grid value as DuckDB reads it."""
    rng = random.Random(f"exact-{shape}")
    rows = []
    for cohort in (0, 1):
        for stratum, size in ((11, 1), (12, 2), (13, 7), (2**63 + 5, 30_000), (14, 3_000)):
            for _ in range(size if cohort else size // 2 + 1):
                rows.append((cohort, stratum, rng.random() < 0.7, _latency(rng, shape)))
    con = _requests(rows)
    oracle = _oracle(con)
    got = duckdb_grids(con, "fs_requests", GRID)
    assert got.keys() == oracle.keys()
    for group, values in oracle.items():
        assert got[group] == values, group


def test_no_requests_no_groups() -> None:
    assert duckdb_grids(_requests([]), "fs_requests", GRID) == {}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.floats(min_value=-1e9, max_value=1e12, allow_nan=False, allow_infinity=False),
        min_size=2,
        max_size=200,
    )
)
def test_bins_never_reverse_two_latencies(values: list[float]) -> None:
    """The counts add up to ranks only if a larger latency never falls in a lower bin."""
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT x, {bin_sql('x')} FROM unnest($v::DOUBLE[]) t(x) ORDER BY x", {"v": values}
    ).fetchall()
    bins = [b for _, b in rows]
    assert bins == sorted(bins)


def test_bins_at_every_decade_edge() -> None:
    """Each side of each decade's first value, where the bins jump to the next decade's."""
    edges = [10.0**k for k in range(-4, 9)]
    values = sorted({f(x) for x in edges for f in (lambda x: x, lambda x: math.nextafter(x, 0))})
    con = duckdb.connect()
    bins = [
        b
        for (b,) in con.execute(
            f"SELECT {bin_sql('x')} FROM unnest($v::DOUBLE[]) t(x) ORDER BY x", {"v": values}
        ).fetchall()
    ]
    assert bins == sorted(bins)


def test_interpolate_is_duckdbs_two_value_quantile() -> None:
    """Between two values, at any fraction: the value DuckDB's quantile_cont gives."""
    rng = random.Random(7)
    con = duckdb.connect()
    for _ in range(300):
        low = rng.choice([1.0, -1.0, 0.0]) * rng.lognormvariate(2, 2)
        high = low + rng.choice([0.0, rng.random(), rng.lognormvariate(0, 3)])
        d = rng.random()
        want = con.execute(
            "SELECT quantile_cont(x, $d) FROM unnest([$lo, $hi]::DOUBLE[]) t(x)",
            {"d": d, "lo": low, "hi": high},
        ).fetchall()[0][0]
        assert interpolate(low, d, high) == want
    assert interpolate(5.0, 0.25, math.inf) == math.inf  # (no fraction holds it)
