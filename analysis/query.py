"""`flagscope query`: SQL over the lake's `events` view, printed as a table, CSV or JSON."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson

from flagscope.analysis.render.text import printable
from flagscope.collector.errors import LakeQueryError
from flagscope.collector.lake.read import Window, fetch


def run(
    lake_dir: Path, sql: str, window: Window | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of `sql` over the lake; `window` ([start, end), naive UTC):
    its views hold only that window's rows, read from its hour partitions alone, so a
    recent question costs the same however long the lake is (`query --since`).

    The collector may compact or expire files between DuckDB's glob and its read of a
    file; such a query is retried with a fresh listing.
    """
    try:
        return fetch(lake_dir, sql, window=window)
    except LakeQueryError as exc:
        raise LakeQueryError(
            f"{exc}\nhint: query the view 'events' (one row per span or log record), e.g. "
            "SELECT service_name, count(*) FROM events GROUP BY 1"
        ) from exc


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return orjson.dumps(value, default=str).decode()
    return str(value)


def format_rows(
    columns: list[str], rows: list[tuple[Any, ...]], fmt: str, max_width: int = 60
) -> str:
    if fmt == "json":
        records = [dict(zip(columns, row, strict=True)) for row in rows]
        return orjson.dumps(records, default=str, option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(v) for v in row] for row in rows)
        return out.getvalue()
    # The table is for a terminal: control characters from telemetry are shown escaped
    # (CSV and JSON keep the data as stored).
    cells = [[printable(_cell(v)) for v in row] for row in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in row] for row in cells]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join("-" * w for w in widths)
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), line]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(line.rstrip() for line in lines) + "\n"
