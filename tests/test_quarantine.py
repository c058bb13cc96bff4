"""A lake writer that one record cannot stop (issue 10 points 7 and 15).

`convert_segment` runs on real WAL segments written with the WAL's own encoder: damaged
bytes are skipped to the next whole record, an item the converter cannot handle is set
aside as a WAL record (re-importable), and everything else reaches the lake.
"""

from __future__ import annotations

import os
import time

import pytest
from opentelemetry.proto.logs.v1 import logs_pb2

from flagscope.collector import lake_writer, wal
from flagscope.collector.config import Settings
from flagscope.collector.convert import Converter
from flagscope.collector.otlp import SIGNAL_CODES
from flagscope.collector.quarantine import pieces, split
from flagscope.collector.tagging import Tagger
from flagscope.collector.wal import SegmentReader, encode_record
from tests.helpers import make_settings, query
from tests.otlp_requests import logs, make_span, new_trace_id, traces

TRACES, LOGS = SIGNAL_CODES["traces"], SIGNAL_CODES["logs"]


def span_record(trace_id: bytes, spans: int = 2) -> tuple[int, bytes]:
    request = traces(*[make_span(trace_id, name=f"s{i}") for i in range(spans)])
    return TRACES, request.SerializeToString()


def convert(settings: Settings, seq: int, records: list[bytes]) -> int:
    path = settings.wal_path / wal.segment_name(seq)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(records))
    rows = lake_writer.convert_segment(
        settings, Converter(Tagger.from_settings(settings)), seq, path
    )
    assert not path.exists(), "a converted segment is deleted"
    return rows


def traces_in_lake(settings: Settings) -> dict[str, int]:
    found = query(settings.lake_path, "select trace_id, count(*) from events_raw group by 1")
    return dict(found)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return make_settings(tmp_path)


def test_a_corrupt_record_mid_segment_costs_only_its_own_bytes(settings):
    ids = [new_trace_id() for _ in range(10)]
    records = [encode_record(*span_record(t)) for t in ids]
    damaged = bytearray(records[1])
    damaged[-1] ^= 0xFF  # its checksum fails
    records[1] = bytes(damaged)
    records.insert(5, os.urandom(64))  # and a stretch of garbage between two records

    assert convert(settings, 1, records) == 2 * 9
    stored = traces_in_lake(settings)
    assert set(stored) == {t.hex() for i, t in enumerate(ids) if i != 1}
    kept = sorted(
        (settings.wal_path / "quarantine").glob("*.tail"), key=lambda p: int(p.name.split(".")[1])
    )  # <segment>.<offset>.tail
    assert [p.read_bytes() for p in kept] == [records[1], records[5]]


def test_the_reader_resynchronises_after_each_damaged_stretch(tmp_path):
    good = [encode_record(TRACES, b"payload %d" % i) for i in range(4)]
    path = tmp_path / wal.segment_name(1)
    path.write_bytes(good[0] + b"\x00" * 30 + good[1] + good[2][:-3] + good[3] + b"torn")
    reader = SegmentReader(path)
    assert [payload for _, payload in reader] == [b"payload 0", b"payload 1", b"payload 3"]
    first = len(good[0])
    second = first + 30 + len(good[1])
    assert reader.damaged == [
        (first, first + 30),
        (second, second + len(good[2]) - 3),
        (path.stat().st_size - 4, path.stat().st_size),
    ]


def test_an_unconvertible_item_is_quarantined_and_its_siblings_stored(settings):
    # A log record with no time at all cannot be placed in the lake. Decode time now gives
    # every record the receive time, but a WAL written before that rule may hold one.
    trace_id = new_trace_id()
    now = time.time_ns()
    request = logs(
        logs_pb2.LogRecord(trace_id=trace_id, time_unix_nano=now, body={"string_value": "a"}),
        logs_pb2.LogRecord(trace_id=trace_id, body={"string_value": "no time"}),
        logs_pb2.LogRecord(
            trace_id=trace_id, observed_time_unix_nano=now, body={"string_value": "b"}
        ),
    )
    bad_item = list(split((LOGS, request.SerializeToString())))[1]
    before, after = new_trace_id(), new_trace_id()
    records = [
        encode_record(*span_record(before)),
        encode_record(LOGS, request.SerializeToString()),
        encode_record(9, b"a signal from a future version"),
        encode_record(TRACES, b"\xff\xff not protobuf"),
        encode_record(*span_record(after)),
    ]

    assert convert(settings, 7, records) == 2 + 2 + 2
    assert traces_in_lake(settings) == {before.hex(): 2, trace_id.hex(): 2, after.hex(): 2}
    kept = settings.wal_path / "quarantine" / f"{7:012d}.items.wal"
    assert list(SegmentReader(kept)) == [
        bad_item,
        (9, b"a signal from a future version"),
        (TRACES, b"\xff\xff not protobuf"),
    ]


def test_quarantined_items_can_be_requeued_into_the_wal(settings):
    trace_id = new_trace_id()
    items = settings.wal_path / "quarantine" / f"{3:012d}.items.wal"
    items.parent.mkdir(parents=True)
    items.write_bytes(encode_record(*span_record(trace_id, spans=3)))
    writer = wal.WalWriter(settings.wal_path, 1 << 20, 3600.0, 1 << 30)
    writer.start()  # a collector ran here and used segment numbers up to this one
    writer.close()
    used = writer.current_seq

    target = wal.requeue(items, settings.wal_path)
    assert not items.exists()
    seq = int(target.stem)
    assert seq == used + 1 == wal.read_last_seq(settings.wal_path)
    assert target.parent == settings.wal_path
    rows = lake_writer.convert_segment(
        settings, Converter(Tagger.from_settings(settings)), seq, target
    )
    assert rows == 3 and traces_in_lake(settings) == {trace_id.hex(): 3}


def test_flagscope_requeue_moves_items_back_and_refuses_while_a_collector_runs(settings, capsys):
    from flagscope.analysis.cli import main
    from flagscope.collector.datadir import lock_data_dir

    items = settings.wal_path / "quarantine" / f"{5:012d}.items.wal"
    items.parent.mkdir(parents=True)
    items.write_bytes(encode_record(*span_record(new_trace_id())))
    held = lock_data_dir(settings.data_dir)
    try:
        assert main(["requeue", "--data-dir", settings.data_dir]) == 2
        assert "another collector is using" in capsys.readouterr().err and items.exists()
    finally:
        held.close()
    assert main(["requeue", "--data-dir", settings.data_dir]) == 0
    assert "1 quarantined item files requeued" in capsys.readouterr().out
    assert not items.exists() and len(wal.list_segments(settings.wal_path)) == 1


def _large_requests() -> list[tuple[int, bytes]]:
    """A trace request of two resources, 300 padded spans each, and a log request."""
    request = traces(*[make_span(name=f"s{i}", attrs={"pad": "p" * 200}) for i in range(300)])
    second = request.resource_spans.add()
    second.CopyFrom(request.resource_spans[0])
    second.resource.attributes[0].value.string_value = "second-service"
    records = [
        logs_pb2.LogRecord(time_unix_nano=time.time_ns(), severity_number=9) for _ in range(200)
    ]
    for i, record in enumerate(records):
        record.body.string_value = f"line {i} " + "x" * 200
    return [
        (TRACES, request.SerializeToString()),
        (LOGS, logs(*records).SerializeToString()),
    ]


def test_a_record_larger_than_a_chunk_is_converted_in_pieces_into_the_same_rows(
    tmp_path, monkeypatch
):
    records = _large_requests()
    for code, payload in records:
        parts = list(pieces((code, payload), max_bytes=20_000))
        assert len(parts) > 2  # items in order, under their resource and scope
        assert all(len(part) < 20_000 + 1_000 for _, part in parts)  # + resource and scope
        signal = split.__globals__["SIGNAL_BY_CODE"][code]
        whole = [
            item.SerializeToString()
            for r in getattr(signal.request_type.FromString(payload), signal.resources)
            for sc in getattr(r, signal.scopes)
            for item in getattr(sc, signal.items)
        ]
        again = [
            item.SerializeToString()
            for _, part in parts
            for r in getattr(signal.request_type.FromString(part), signal.resources)
            for sc in getattr(r, signal.scopes)
            for item in getattr(sc, signal.items)
        ]
        assert again == whole
    assert list(pieces(records[0], max_bytes=len(records[0][1]))) == [records[0]]

    converted: list[int] = []  # the bytes of each chunk the lake writer converts
    convert_chunk = lake_writer.convert_chunk

    def watched(converter, chunk, quarantine):
        converted.append(sum(len(payload) for _, payload in chunk))
        return convert_chunk(converter, chunk, quarantine)

    monkeypatch.setattr(lake_writer, "convert_chunk", watched)
    lakes = []
    for name, chunk_bytes in (("whole", lake_writer.CHUNK_BYTES), ("pieces", 20_000)):
        monkeypatch.setattr(lake_writer, "CHUNK_BYTES", chunk_bytes)
        converted.clear()
        settings = make_settings(tmp_path / name)
        assert convert(settings, 1, [encode_record(*r) for r in records]) == 800
        lakes.append(
            query(
                settings.lake_path,
                "SELECT event_id, service_name, name, body, attributes FROM events_raw "
                "ORDER BY event_id, service_name",
            )
        )
    assert len(converted) > 10 and max(converted) < 20_000 + 1_000
    assert lakes[0] == lakes[1] and len(lakes[0]) == 800
