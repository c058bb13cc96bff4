"""The incremental cohort stage: what `diff.DuckDBStage` answers, from kept summaries.

`IncrementalStage(store, lake).collect(...)` cuts the window into pieces (`plan`), takes
each whole hour's summary from the store while the lake files it was computed from are
unchanged (`store.fingerprint`), summarises the others (`summarize`), and merges them
(`merge`). What it cannot summarise is a full scan: a CUPED look-back (`diff.run_diff`
does not use this stage then), a window that must not read evaluations before some
moment (a ramp stage), a connection without a lake or set to read the wide rows.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flagscope.analysis.cohorts import (
    SLACK,
    CohortQuery,
    Evaluations,
    lake_tables,
)
from flagscope.analysis.incremental import summarize
from flagscope.analysis.incremental.merge import MergedRequests, Source
from flagscope.analysis.incremental.plan import (
    Piece,
    floor_hour,
    hour_cuts,
    is_whole_hour,
    pieces,
)
from flagscope.analysis.incremental.store import RowCounts, Store, safe_name
from flagscope.collector.lake.layout import partition_hour, partitions
from flagscope.collector.lake.read import lake_of

log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1)
# A piece reads its hour's partition and, within REACH, its neighbours': their files are
# in its fingerprint. The test users come from each hour's own partition.
_NEIGHBOURS = 1


def _stamp(hour: datetime) -> str:
    return f"{hour:%Y%m%dT%H}"


def _parquet(path: Path) -> str:
    return "read_parquet('" + str(path).replace("'", "''") + "')"


@dataclass
class Counts:
    """What a run reused and what it computed (logged; read by tests and the benchmark)."""

    reused: int = 0
    computed: int = 0
    fresh: int = 0  # partial hours, never kept

    def __str__(self) -> str:
        return f"{self.reused} kept hours reused, {self.computed} summarised, {self.fresh} partial"


@dataclass
class IncrementalStage:
    """`base` (`diff.DuckDBStage`) answers the lake-wide questions (known flags, the lake's
    range and variants, --service / --route checks); this stage the cohorts."""

    store: Store
    lake: Path
    base: Any
    counts: Counts = field(default_factory=Counts)

    def known_flags(self, con: duckdb.DuckDBPyConnection) -> list[str]:
        return list(self.base.known_flags(con))

    def lake_range(self, con: duckdb.DuckDBPyConnection) -> tuple[datetime | None, datetime | None]:
        first, last = self.base.lake_range(con)
        return first, last

    def lake_variants(self, con: duckdb.DuckDBPyConnection, flag: str) -> set[str]:
        return set(self.base.lake_variants(con, flag))

    def check_scope(
        self, con: duckdb.DuckDBPyConnection, service: str | None, route: str | None
    ) -> None:
        self.base.check_scope(con, service, route)

    def collect(
        self,
        con: duckdb.DuckDBPyConnection,
        flag: str,
        start: datetime,
        end: datetime,
        not_before: datetime | None = None,
    ) -> Evaluations | IncrementalEvaluations:
        if not_before is not None or lake_of(con) is None or lake_tables() == "wide":
            return Evaluations.collect(con, flag, start, end, not_before)
        return IncrementalEvaluations(con, self, flag, start, end)


class IncrementalEvaluations:
    """Stage 1 from the pieces' `variant_units`; `label` merges the pair's pieces."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        stage: IncrementalStage,
        flag: str,
        start: datetime,
        end: datetime,
    ) -> None:
        self._con = con
        self._stage = stage
        self._flag = flag
        self._window = (start, end)
        self._pieces = pieces(start, end)
        self._flag_dir = stage.store.entry("flags", safe_name(flag))
        self._prints: dict[datetime, str] = {}
        self._rows = RowCounts(stage.store.entry("rows.json"))
        self._units_of: dict[Piece, pa.Table] = {}
        self._collected: tuple[Piece, Evaluations] | None = None  # whose fs_evals are loaded
        self._registered: list[str] = []
        units = [self._units(p) for p in self._pieces]
        rows = con.execute(
            "SELECT variant, count(DISTINCT unit) FROM ("
            + " UNION ALL ".join(f"SELECT * FROM {u}" for u in units)
            + ") GROUP BY 1 ORDER BY 1"
        ).fetchall()
        self.variants = {variant: int(n) for variant, n in rows}
        self._rows.save()

    # -- the store ---------------------------------------------------------------------
    def _print(self, hour: datetime) -> str:
        if hour not in self._prints:
            self._prints[hour] = self._rows.fingerprint(self._stage.lake, hour, _NEIGHBOURS)
        return self._prints[hour]

    def _register(self, table: pa.Table) -> str:
        name = f"inc_fresh_{len(self._registered)}"
        self._con.register(name, table)
        self._registered.append(name)
        return name

    def _collect(self, piece: Piece) -> Evaluations:
        """The piece's stage 1 on the connection (`fs_evals` and the narrow views are one
        piece's at a time)."""
        if self._collected is None or self._collected[0] != piece:
            found, units = summarize.evaluations(self._con, self._flag, piece.start, piece.end)
            self._units_of[piece] = units
            self._collected = (piece, found)
        return self._collected[1]

    def _units(self, piece: Piece) -> str:
        store = self._stage.store
        if not piece.whole_hour:
            self._collect(piece)
            return self._register(self._units_of[piece])
        entry = self._flag_dir / _stamp(piece.start) / "units"
        print_ = self._print(piece.start)
        kept = store.load(entry, print_)
        if kept is None:
            self._collect(piece)
            kept = store.save(entry, {"units": self._units_of[piece]}, print_)
        return _parquet(kept["units"])

    def _pair_entry(self, hour: datetime, pair: tuple[str, str]) -> Path:
        return self._flag_dir / _stamp(hour) / f"{safe_name(pair[0])}~{safe_name(pair[1])}"

    def _pair_files(self, piece: Piece, pair: tuple[str, str]) -> Source:
        store = self._stage.store
        counts = self._stage.counts
        names = ("cells", "strata", "firsts")
        entry = self._pair_entry(piece.start, pair)
        if piece.whole_hour:
            kept = store.load(entry, self._print(piece.start))
            if kept is not None:
                counts.reused += 1
                return Source(piece, *(_parquet(kept[n]) for n in names))
        found = self._collect(piece)
        tables = summarize.pair_tables(self._con, found, self._flag, pair, piece.start, piece.end)
        if piece.whole_hour:
            counts.computed += 1
            kept = store.save(entry, tables, self._print(piece.start))
            return Source(piece, *(_parquet(kept[n]) for n in names))
        counts.fresh += 1
        return Source(piece, *(self._register(tables[n]) for n in names))

    # -- stage 2 -------------------------------------------------------------------------
    def label(self, q: CohortQuery) -> MergedRequests:
        """Stage 2 from the pieces (a CUPED look-back reads users' past in the lake: such a
        diff does not come here, `diff.run_diff`)."""
        pair = (q.treatment, q.baseline)
        sources = [self._pair_files(p, pair) for p in self._pieces]
        slack = self._slack_firsts(pair)
        testers = self._testers()
        self._rows.save()
        self._prune(floor_hour(self._window[0] - SLACK))
        log.info("incremental %s over %d pieces: %s", q.flag, len(sources), self._stage.counts)
        return MergedRequests(self._con, q, sources, slack, testers)

    def _prune(self, before: datetime) -> None:
        """Forget the flag's hours before `before`: later runs' windows start later (one
        report per flag), so the store stays about one window long."""
        try:
            kept = list(self._flag_dir.iterdir())
        except FileNotFoundError:
            return
        for entry in kept:
            try:
                hour = datetime.strptime(entry.name, "%Y%m%dT%H")
            except ValueError:
                continue  # not an hour's (a staging directory is replaced by its writer)
            if hour < before:
                shutil.rmtree(entry, ignore_errors=True)

    def _slack_firsts(self, pair: tuple[str, str]) -> list[str]:
        """The evaluations in the hour before and after the window (`cohorts.SLACK`), which
        name users' first variants as a full scan's do."""
        start, end = self._window
        out = []
        for a, z in ((start - SLACK, start), (end, end + SLACK)):
            for lo, hi in itertools.pairwise(hour_cuts(a, z)):
                kept = (
                    self._stage.store.load(self._pair_entry(lo, pair), self._print(lo))
                    if is_whole_hour(lo, hi)
                    else None
                )
                if kept is not None:
                    out.append(f"SELECT * FROM {_parquet(kept['firsts'])} WHERE NOT from_request")
                else:
                    table = summarize.evaluation_firsts(
                        self._con, self._stage.lake, self._flag, pair, lo, hi
                    )
                    out.append(f"SELECT * FROM {self._register(table)}")
        self._collected = None  # the narrow views are no longer any piece's
        return out

    def _testers(self) -> str:
        """Users test-marked anywhere in the lake: one kept table, per hour partition."""
        store = self._stage.store
        lake = self._stage.lake
        hours = sorted(
            {
                _EPOCH + timedelta(hours=h)
                for p in partitions(lake)
                if (h := partition_hour(p)) is not None
            }
        )
        prints = {_stamp(h): self._rows.fingerprint(lake, h, 0) for h in hours}
        entry = store.entry("testers")
        found = store.load_any(entry)
        parts = []
        same: list[str] = []
        if found is not None:  # its fingerprint: each hour's, as JSON
            kept_prints, files = json.loads(found[0]), found[1]
            same = [s for s, p in prints.items() if kept_prints.get(s) == p]
            kept = pq.read_table(files["testers"])
            parts.append(kept.filter(pc.is_in(kept["hour"], pa.array(same, pa.string()))))
        for hour in hours:
            stamp = _stamp(hour)
            if stamp in same:
                continue
            found = summarize.testers(self._con, lake, hour)
            parts.append(
                pa.table(
                    {
                        "hour": pa.array([stamp] * found.num_rows, pa.string()),
                        "user_hash": found["user_hash"].cast(pa.uint64()),
                    }
                )
            )
        table = (
            pa.concat_tables(parts)
            if parts
            else pa.table(
                {"hour": pa.array([], pa.string()), "user_hash": pa.array([], pa.uint64())}
            )
        )
        if found is None or set(same) != set(prints):
            store.save(entry, {"testers": table}, json.dumps(prints, sort_keys=True))
        self._collected = None
        name = self._register(table)
        return f"(SELECT DISTINCT user_hash FROM {name})"
