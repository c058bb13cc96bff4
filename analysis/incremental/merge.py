"""A window's kept and fresh pieces merged into the tables stage 3 reads (`fs_per_unit`,
`fs_quantiles`): the same sums `cohorts.LabelledRequests.unit_sums` forms from requests,
here from per-piece cells of binned latencies (`bins`).

What only the whole window knows is decided here, as `cohorts` decides it: a user's
first compared variant and so the crossover (from every piece's `firsts` and the
evaluations of the hour around the window), the test users (marked anywhere in the
lake), --service / --route (by entry), and which entry span is a trace's edge (the
piece's bit for its place in the window).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from flagscope.analysis.cohorts import (
    KEEP,
    QUANTILES,
    CohortQuery,
    Exclusions,
    UnitSums,
    cohort_name,
    entry_scope_sql,
    latency_histogram,
    quantile_grid,
    unit_sums_from_tables,
)
from flagscope.analysis.incremental import bins
from flagscope.analysis.incremental.plan import Piece, floor_hour


@dataclass(frozen=True)
class Source:
    """One piece's tables, each as SQL naming a relation (a Parquet file or a view)."""

    piece: Piece
    cells: str
    strata: str
    firsts: str


def _union(parts: Iterable[str]) -> str:
    return " UNION ALL ".join(parts)


def _table(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """A temporary table `name` holding `table` (built in Python)."""
    con.register(f"{name}_arrow", table)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")
    con.unregister(f"{name}_arrow")


# A view: its two readers (the exclusions' counts, the compared cells) each pass over it
# once, and the joins are with a few marked users. Materialised, it and then a copy of its
# compared rows took 0.69–0.80 s of a ~4.4 s incremental run at 10 M events
# (bench/incremental.py's lake); as a view, 0.62–0.64 s.
# (A view has no parameters: --service and --route are written in as literals.)
_LABELLED_SQL = """
CREATE OR REPLACE TEMP VIEW inc_labelled AS
SELECT c.cohort, c.unit, c.no_user, c.stratum, c.bin, c.n, c.err, c.lat, c.bucket,
       {edge} AS edge,
       c.test_trace OR (NOT c.no_user AND t.user_hash IS NOT NULL) AS is_test,
       coalesce(NOT c.no_user AND c.cohort <> f.first_arm, false) AS crossed
FROM inc_cells c
LEFT JOIN inc_testers t ON t.user_hash = c.unit AND NOT c.no_user
LEFT JOIN fs_user_first f ON f.user_hash = c.unit AND NOT c.no_user
WHERE {scope}
"""


class MergedRequests:
    """`cohorts.LabelledRequests`' answers from merged pieces (`inc_requests`)."""

    finest_bucket_s = 3600  # the charts' resolution: one point per kept hour at most

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        query: CohortQuery,
        sources: Sequence[Source],
        slack_firsts: Sequence[str],
        testers: str,
    ) -> None:
        self._con = con
        self._query = query
        cells = (
            f"SELECT c.*, {s.piece.edge_bit}::UTINYINT AS pos, "
            f"'{floor_hour(s.piece.start)}'::TIMESTAMP AS bucket FROM {s.cells} c"
            for s in sources
        )
        con.execute(f"CREATE OR REPLACE TEMP VIEW inc_cells AS {_union(cells)}")
        strata = _union(f"SELECT * FROM {s.strata}" for s in sources)
        con.execute(f"CREATE OR REPLACE TEMP TABLE inc_strata AS SELECT DISTINCT * FROM ({strata})")
        firsts = _union([*(f"SELECT * FROM {s.firsts}" for s in sources), *slack_firsts])
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE fs_user_first AS
            SELECT unit AS user_hash, arg_min(arm, first) AS first_arm FROM ({firsts})
            GROUP BY 1 HAVING min(arm) <> max(arm)""")
        con.execute(f"CREATE OR REPLACE TEMP VIEW inc_testers AS SELECT * FROM {testers}")
        scoped = query.service is not None or query.route is not None
        edge = "true" if scoped else "((c.edges >> c.pos) & 1) = 1"
        scope = entry_scope_sql(query.service, query.route, row="c", names="inc_strata")
        con.execute(_LABELLED_SQL.format(edge=edge, scope=scope))
        counts = con.execute("""
            SELECT coalesce(sum(n) FILTER (WHERE is_test), 0),
                   count(DISTINCT unit) FILTER (WHERE is_test),
                   coalesce(sum(n) FILTER (WHERE crossed AND NOT is_test), 0),
                   (SELECT count(*) FROM fs_user_first),
                   coalesce(sum(n) FILTER (WHERE no_user), 0)
            FROM inc_labelled""").fetchall()[0]
        self.excluded = Exclusions(*(int(v or 0) for v in counts))
        con.execute(
            "CREATE OR REPLACE TEMP TABLE inc_requests AS "
            "SELECT cohort, unit, stratum, bin, n, err, lat, bucket, edge FROM inc_labelled "
            f"WHERE NOT crossed AND {KEEP[query.test_mode]}"
        )

    def unit_sums(self) -> UnitSums:
        """Stage 3 (`cohorts.LabelledRequests.unit_sums`) on the binned latencies."""
        con = self._con
        grid = list(quantile_grid())
        rows = con.execute("""
            SELECT cohort, NULL::UBIGINT AS stratum, bin, sum(n) FROM inc_requests WHERE edge
            GROUP BY ALL
            UNION ALL
            SELECT cohort, stratum, bin, sum(n) FROM inc_requests GROUP BY ALL
            ORDER BY 1, 2 NULLS FIRST, 3""").fetchall()
        names = dict(
            con.execute(
                "SELECT stratum, [any_value(service_name), any_value(route)] FROM inc_strata "
                "GROUP BY 1"
            ).fetchall()
        )
        groups: dict[tuple[int, int | None], list[tuple[int, int]]] = {}
        for cohort, stratum, index, n in rows:
            groups.setdefault((cohort, stratum), []).append((int(index), int(n)))
        keys = list(groups)
        qs = {key: bins.quantiles(groups[key], grid) for key in keys}
        table = pa.table(
            {
                "cohort": pa.array([k[0] for k in keys], pa.uint8()),
                "stratum": pa.array([k[1] for k in keys], pa.uint64()),
                "qs": pa.array([qs[k] for k in keys], pa.list_(pa.float64())),
                "service_name": pa.array(
                    [None if k[1] is None else names[k[1]][0] for k in keys], pa.string()
                ),
                "route": pa.array(
                    [None if k[1] is None else names[k[1]][1] for k in keys], pa.string()
                ),
            }
        )
        _table(con, "fs_quantiles", table)
        _table(con, "inc_cuts", _cuts(groups, qs, grid))
        ks = range(len(QUANTILES))
        # CASE sums: about half the time of as many FILTERed ones
        below = ", ".join(
            f"sum(CASE WHEN r.bin < c.cb{k} THEN r.n WHEN r.bin = c.cb{k} THEN r.n * c.cf{k} "
            f"ELSE 0 END) AS b{k}, "
            f"sum(CASE WHEN NOT r.edge THEN 0 WHEN r.bin < c.ocb{k} THEN r.n "
            f"WHEN r.bin = c.ocb{k} THEN r.n * c.ocf{k} ELSE 0 END) AS o{k}"
            for k in ks
        )
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE fs_per_unit AS
            SELECT r.cohort, r.stratum, r.unit, sum(r.n)::BIGINT AS req,
                   sum(r.err)::BIGINT AS err, sum(r.lat) AS lat,
                   sum(CASE WHEN r.edge THEN r.n ELSE 0 END)::BIGINT AS ereq,
                   sum(CASE WHEN r.edge THEN r.err ELSE 0 END)::BIGINT AS eerr,
                   sum(CASE WHEN r.edge THEN r.lat ELSE 0 END) AS elat, {below}
            FROM inc_requests r JOIN inc_cuts c USING (cohort, stratum)
            GROUP BY ALL""")
        return unit_sums_from_tables(con, self._query)

    def time_series(self, bucket_seconds: int) -> list[dict[str, Any]]:
        """Per cohort and time bucket (whole hours at least): requests, errors, p95."""
        bucket = max(int(bucket_seconds), self.finest_bucket_s)
        result = self._con.execute(
            f"SELECT {cohort_name()} AS cohort, time_bucket(to_seconds($bucket), bucket) AS b, "
            "bin, sum(n), sum(err) FROM inc_requests GROUP BY ALL ORDER BY 1, 2, 3",
            {"bucket": bucket},
        ).fetchall()
        grouped: dict[tuple[str, datetime], list[tuple[int, int, int]]] = {}
        for cohort, moment, index, n, err in result:
            grouped.setdefault((cohort, moment), []).append((int(index), int(n), int(err)))
        out = []
        for (cohort, moment), cells in grouped.items():
            counts = [(b, n) for b, n, _ in cells]
            out.append(
                {
                    "cohort": cohort,
                    "bucket": moment,
                    "requests": sum(n for _, n in counts),
                    "errors": sum(e for _, _, e in cells),
                    "p95_ms": bins.quantiles(counts, [0.95])[0],
                }
            )
        return out

    def latency_histogram(self, count: int = 40) -> tuple[list[float], dict[str, list[int]]]:
        """`cohorts.LabelledRequests.latency_histogram` over the bins' centres."""
        present = self._con.execute("SELECT DISTINCT bin FROM inc_requests").fetchall()
        indices = [int(b) for (b,) in present]
        values = [bins.value(b) for b in indices]
        _table(
            self._con,
            "inc_values",
            pa.table({"bin": pa.array(indices, pa.int16()), "value": pa.array(values)}),
        )
        source = "inc_requests r JOIN inc_values v USING (bin)"
        return latency_histogram(self._con, source, "v.value", "r.n", "r.cohort", count)


def _cuts(
    groups: dict[tuple[int, int | None], list[tuple[int, int]]],
    qs: dict[tuple[int, int | None], list[float]],
    grid: list[float],
) -> pa.Table:
    """Per cohort and stratum, where each quantile estimate of the stratum (cb{k}, cf{k})
    and of the whole cohort (ocb{k}, ocf{k}) falls among the bins (`bins.split`)."""
    places = [grid.index(round(p, 6)) for p in QUANTILES]
    columns: dict[str, list[Any]] = {"cohort": [], "stratum": []}
    for cohort, stratum in groups:
        if stratum is None:
            continue
        columns["cohort"].append(cohort)
        columns["stratum"].append(stratum)
        whole = (cohort, None)
        for k, place in enumerate(places):
            b, f = bins.split(groups[cohort, stratum], qs[cohort, stratum][place])
            columns.setdefault(f"cb{k}", []).append(b)
            columns.setdefault(f"cf{k}", []).append(f)
            ob, of = (
                bins.split(groups[whole], qs[whole][place]) if whole in groups else (None, None)
            )
            columns.setdefault(f"ocb{k}", []).append(ob)
            columns.setdefault(f"ocf{k}", []).append(of)
    types = {"cohort": pa.uint8(), "stratum": pa.uint64()}
    return pa.table(
        {
            name: pa.array(
                values,
                types.get(name, pa.int32() if name.startswith(("cb", "ocb")) else pa.float64()),
            )
            for name, values in columns.items()
        }
    )
