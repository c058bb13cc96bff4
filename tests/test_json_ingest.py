"""OTLP/JSON through a real collector, decoded in a worker process (issue 10 points 1, 9).

A JSON body past a few KiB is decoded by `collector/decode_pool.py` (not in the front end,
whose event loop answers every other client) and must be stored exactly as the same
request sent as protobuf is; a decoder process that dies costs its clients a retry, not
the collector; and what decoding costs is taken from the in-flight budget.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from flagscope.collector.caps import NO_CAPS
from flagscope.collector.errors import Unavailable
from flagscope.collector.receiver import Budget
from tests.helpers import RunningCollector, make_settings, query
from tests.otlp_requests import (
    JSON,
    PB,
    dumps,
    make_span,
    new_trace_id,
    otlp_json,
    post,
    traces,
    wait_rows,
)

MiB = 1024 * 1024
SPANS = 300


def _request(trace_id: bytes, start_ns: int | None = None):
    start_ns = time.time_ns() if start_ns is None else start_ns
    spans = []
    for i in range(SPANS):
        span = make_span(
            trace_id,
            name=f"GET /item/{i % 7}",
            attrs={
                "http.request.method": "GET",
                "http.route": f"/item/{i % 7}",
                "http.response.status_code": 200 + (i % 3) * 100,
                "enduser.id": f"user-{i % 11}",
                "feature_flag.key": "new-checkout",
                "sampled.ratio": 0.25,
                "retry": i % 2 == 0,
            },
            kind=trace_pb2.Span.SPAN_KIND_SERVER if i % 5 else trace_pb2.Span.SPAN_KIND_CLIENT,
            status={"code": 2 if i % 13 == 0 else 0, "message": "boom" if i % 13 == 0 else ""},
            start_time_unix_nano=start_ns + i * 1_000_000,
            end_time_unix_nano=start_ns + i * 1_000_000 + (i % 17) * 250_000,
        )
        span.events.add(name="feature_flag.evaluation", time_unix_nano=span.start_time_unix_nano)
        spans.append(span)
    return traces(*spans)


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory):
    settings = make_settings(tmp_path_factory.mktemp("json"), json_decoders=1)
    running = RunningCollector(settings).start()
    yield running
    running.stop()


# every column but the ids and what is derived from them
COLUMNS = (
    "time, end_time, signal, service_name, scope_name, name, kind, duration_ms, status_code, "
    "status_message, is_error, http_method, http_route, http_status_code, user_id, flags, "
    "is_test, attributes, resource_attributes, span_events, span_links, is_entry"
)


def test_a_large_json_request_is_stored_exactly_like_the_same_request_as_protobuf(collector):
    json_trace, pb_trace = new_trace_id(), new_trace_id()
    start = time.time_ns()
    json_request, pb_request = _request(json_trace, start), _request(pb_trace, start)
    body = dumps(otlp_json(json_request))
    assert len(body) > 64 * 1024  # well past what the front end decodes itself
    assert post(collector, "/v1/traces", body, JSON).status == 200
    assert post(collector, "/v1/traces", pb_request.SerializeToString(), PB).status == 200
    for trace in (json_trace, pb_trace):
        wait_rows(collector, "trace_id = ?", [trace.hex()], SPANS)

    def rows(trace: bytes) -> list[tuple]:
        sql = f"SELECT {COLUMNS} FROM events WHERE trace_id = ? ORDER BY time"
        return query(collector.lake, sql, [trace.hex()])

    json_rows, pb_rows = rows(json_trace), rows(pb_trace)
    # the two requests differ in their trace ids only
    assert len(json_rows) == SPANS
    assert json_rows == pb_rows


def test_a_decoder_process_that_dies_costs_one_retry_not_the_collector(collector):
    pool = collector.collector.decoders
    assert pool is not None
    (pid,) = pool.pids()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)  # the pool notices its worker is gone
    statuses = []
    trace = new_trace_id()
    for _ in range(10):
        reply = post(collector, "/v1/traces", dumps(otlp_json(_request(trace))), JSON)
        statuses.append(reply.status)
        if reply.status == 200:
            break
        assert reply.status == 503 and reply.headers["Retry-After"] == "1"
        time.sleep(1)
    assert statuses[-1] == 200, statuses
    assert pool.pids() and pool.pids() != [pid]  # a new worker decodes
    wait_rows(collector, "trace_id = ?", [trace.hex()], SPANS)
    # protobuf never depended on it
    pb_request = _request(new_trace_id())
    assert post(collector, "/v1/traces", pb_request.SerializeToString(), PB).status == 200


def test_a_decode_past_its_deadline_is_killed_answered_503_and_the_pool_goes_on(collector):
    """A worker busy past `deadline_s` never gives its process back: it is killed, the
    request told to retry, and the next request decodes in a new worker."""
    import asyncio

    from flagscope.collector.decode_pool import DecodePool
    from flagscope.collector.otlp import SIGNALS

    body = dumps(otlp_json(_request(new_trace_id())))
    pool = DecodePool(1, deadline_s=0.001)  # no 300-span decode is that fast

    async def run() -> None:
        await pool.start()
        (stuck,) = pool.pids()
        with pytest.raises(Unavailable, match=r"longer than 0\.001 s"):
            await pool.prepare(SIGNALS["traces"], body, JSON, NO_CAPS)
        pool.deadline_s = 60.0
        prepared = await pool.prepare(SIGNALS["traces"], body, JSON, NO_CAPS)
        assert prepared.accepted == SPANS
        assert pool.pids() and pool.pids() != [stuck]

    try:
        asyncio.run(run())
    finally:
        pool.close()


def test_what_decoding_costs_comes_out_of_the_budget_but_never_all_of_it():
    budget = Budget(100)
    hold = budget.hold()
    hold.take(30)  # the body
    hold.take_capped(8 * 30)  # its decoding: capped at one request's share, 7/8 of it all
    assert budget.used == 88
    small = budget.hold()
    small.take(12)  # a small request still fits beside it
    with pytest.raises(Unavailable):
        budget.hold().take(1)  # anything more waits for it (503 + Retry-After)
    hold.release()
    small.release()
    assert budget.used == 0
    other = budget.hold()
    other.take(60)
    with pytest.raises(Unavailable):
        budget.hold().take_capped(50)  # 50 does not fit beside 60, capped or not
