"""Conversion that one record cannot stop: what the converter cannot handle is set aside.

Decode time already refuses or normalises what the lake cannot hold (flagscope.collector.decode,
flagscope.collector.convert); this is the second line. A chunk of WAL records converts as a whole
in the common case. When it raises, each record is converted alone, and a record that
still fails is split into one-item requests (same resource and scope) so that only the
item at fault is quarantined: its siblings in the request and the rest of the segment
reach the lake. Quarantined items are kept as WAL records (`<seq>.items.wal` in the WAL's
`quarantine/` folder), so they can be inspected with the protobuf tools and re-imported
with `flagscope requeue` once the converter handles them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from flagscope.collector.convert import Converter
from flagscope.collector.lake.durable import write_atomically
from flagscope.collector.lake.schema import SCHEMA
from flagscope.collector.otlp import SIGNAL_BY_CODE, Signal
from flagscope.collector.wal import SUFFIX, encode_record, requeue, segment_name

Record = tuple[int, bytes]


class Quarantine:
    """The items of one WAL segment that could not be converted, and why."""

    def __init__(self, wal_dir: Path, seq: int) -> None:
        self.path = wal_dir / "quarantine" / segment_name(seq).replace(SUFFIX, ".items.wal")
        self.items: list[Record] = []
        self.first_error = ""

    def add(self, record: Record, error: BaseException) -> None:
        if not self.items:
            self.first_error = f"{type(error).__name__}: {error}"
        self.items.append(record)

    def save(self) -> Path | None:
        """Write the items durably (before their segment is deleted); None if there are none."""
        if not self.items:
            return None
        data = b"".join(encode_record(code, payload) for code, payload in self.items)
        write_atomically(self.path, lambda handle: handle.write(data))
        return self.path


def requeue_all(wal_dir: Path) -> list[Path]:
    """Every quarantined item file back into the WAL (the data dir's lock held by the
    caller); returns the new segments. Items that still cannot be converted come back."""
    return [requeue(path, wal_dir) for path in sorted((wal_dir / "quarantine").glob("*.items.wal"))]


def convert_chunk(converter: Converter, chunk: list[Record], quarantine: Quarantine) -> pa.Table:
    """`chunk` as one table of wide events; items that cannot be converted are quarantined."""
    try:
        return converter.table(chunk)
    except Exception:  # noqa: BLE001 - any failure: find the item at fault below
        pass
    tables = [table for record in chunk if (table := _record(converter, record, quarantine))]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def _record(converter: Converter, record: Record, quarantine: Quarantine) -> pa.Table | None:
    try:
        return converter.table([record])
    except Exception:  # noqa: BLE001 - split it and keep what converts
        pass
    tables = []
    for item in split(record):
        try:
            tables.append(converter.table([item]))
        except Exception as exc:  # noqa: BLE001 - the item at fault
            quarantine.add(item, exc)
    return pa.concat_tables(tables) if tables else None


def split(record: Record) -> Iterator[Record]:
    """A WAL record as one record per span or log record, each with its resource and scope.

    A payload that does not even parse is yielded whole (there is nothing to split)."""
    return pieces(record, max_bytes=0)


def pieces(record: Record, max_bytes: int) -> Iterator[Record]:
    """A WAL record as records of at most about `max_bytes` each: runs of consecutive items
    (spans, log records, metrics) with their resource and scope; `max_bytes=0`, one item
    each (`split`). A record within `max_bytes`, and one that does not parse, is yielded
    whole.

    The lake writers convert one ~`max_bytes` chunk at a time; a single 28 MiB record (a
    60 MiB OTLP/JSON request, decoded) took one of them to ~1 GiB. Ids do not change: a
    log record's or data point's digest is of its resource, scope and content."""
    code, payload = record
    signal = SIGNAL_BY_CODE.get(code)
    if signal is None or (max_bytes and len(payload) <= max_bytes):
        yield record
        return
    try:
        request = signal.request_type.FromString(payload)
    except Exception:  # noqa: BLE001 - DecodeError and friends
        yield record
        return
    for resource in getattr(request, signal.resources):
        for scope in getattr(resource, signal.scopes):
            run: list[Any] = []
            size = 0
            for item in getattr(scope, signal.items):
                item_bytes = item.ByteSize()
                if run and size + item_bytes > max_bytes:
                    yield code, _items(signal, resource, scope, run)
                    run, size = [], 0
                run.append(item)
                size += item_bytes
            if run:
                yield code, _items(signal, resource, scope, run)


def _items(signal: Signal, resource: Any, scope: Any, items: list[Any]) -> bytes:
    request = signal.request_type()
    outer = getattr(request, signal.resources).add()
    outer.resource.CopyFrom(resource.resource)
    outer.schema_url = resource.schema_url
    inner = getattr(outer, signal.scopes).add()
    inner.scope.CopyFrom(scope.scope)
    inner.schema_url = scope.schema_url
    getattr(inner, signal.items).extend(items)
    encoded: bytes = request.SerializeToString()  # protobuf's Message is untyped
    return encoded
