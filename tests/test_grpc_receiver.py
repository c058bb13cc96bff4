"""OTLP/gRPC receiver: OTLP-RECEIVER.md items 35-41 and 48, against a real collector.

Every test talks to a collector listening on loopback port 0 through a real grpcio channel.
Failure cases check three things: the status code (and its `grpc-status-details-bin`
trailer), that nothing of the refused request reached the lake, and that the next valid
request is answered OK and stored (the server keeps serving).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from tests.helpers import MiB, RunningCollector, make_settings, query, wait_for_count

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LIMIT = 1 * MiB  # make_settings' max_request_bytes, the `server` fixture's limit
TIMEOUT_S = 15

# -- requests ------------------------------------------------------------------------------


def _trace_id() -> bytes:
    return uuid.uuid4().bytes  # 16 random bytes, never all zeros


def _attribute(key: str, value: str) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))


def span_request(
    trace_id: bytes,
    names: tuple[str, ...] = ("span",),
    service: str = "grpc-test",
    padding: str = "",
) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(_attribute("service.name", service))
    scope = resource_spans.scope_spans.add()
    scope.scope.name = "tests.grpc"
    for index, name in enumerate(names):
        span = scope.spans.add(
            trace_id=trace_id,
            span_id=(index + 1).to_bytes(8, "big"),
            name=name,
            kind=2,
            start_time_unix_nano=1_700_000_000_000_000_000,
            end_time_unix_nano=1_700_000_000_250_000_000,
        )
        if padding:
            span.attributes.append(_attribute("padding", padding))
    return request


def sized_span_request(trace_id: bytes, size: int) -> bytes:
    """A valid one-span request whose protobuf encoding is exactly `size` bytes."""
    padding = size - span_request(trace_id).ByteSize()
    for _ in range(8):  # the varint lengths grow with the padding; converge on the size
        payload = span_request(trace_id, padding="p" * padding).SerializeToString()
        if len(payload) == size:
            return payload
        padding += size - len(payload)
    raise AssertionError(f"could not build a request of exactly {size} bytes")


def log_request(trace_id: bytes, body: str) -> logs_service_pb2.ExportLogsServiceRequest:
    request = logs_service_pb2.ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(_attribute("service.name", "grpc-test"))
    record = resource_logs.scope_logs.add().log_records.add(
        time_unix_nano=1_700_000_000_000_000_000,
        severity_number=9,
        severity_text="INFO",
        trace_id=trace_id,
        span_id=b"\x00\x00\x00\x00\x00\x00\x00\x07",
    )
    record.body.string_value = body
    return request


# -- lake and status helpers -----------------------------------------------------------------


def stored(lake: Path, trace_id: bytes, signal: str = "span") -> int:
    """Rows stored for `trace_id`, duplicates included (events_raw, not the de-duplicated view)."""
    sql = "SELECT count(*) FROM events_raw WHERE trace_id = ? AND signal = ?"
    return query(lake, sql, [trace_id.hex(), signal])[0][0]


def total(lake: Path) -> int:
    return query(lake, "SELECT count(*) FROM events_raw")[0][0]


def wait_stored(lake: Path, trace_id: bytes, expected: int, signal: str = "span") -> int:
    sql = "SELECT count(*) FROM events_raw WHERE trace_id = ? AND signal = ?"
    return wait_for_count(lake, sql, expected, params=[trace_id.hex(), signal])


def status_details(error: grpc.RpcError) -> status_pb2.Status | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return None


def retry_info(error: grpc.RpcError) -> error_details_pb2.RetryInfo | None:
    status = status_details(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info
    return None


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=TIMEOUT_S, **kwargs)
    return caught.value


def assert_keeps_serving(
    channel: grpc.Channel, lake: Path, total_before: int, metadata: tuple = ()
) -> None:
    """The next valid request is OK and stored, and it is the only row added since `total_before`.

    Segments are converted in order (one lake writer), so once this request is visible,
    anything an earlier refused request had put in the WAL would be visible too.
    """
    trace_id = _trace_id()
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    response = stub.Export(span_request(trace_id, ("after",)), timeout=TIMEOUT_S, metadata=metadata)
    assert isinstance(response, trace_service_pb2.ExportTraceServiceResponse)
    assert wait_stored(lake, trace_id, 1) == 1
    assert total(lake) == total_before + 1, "a refused request left rows in the lake"


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def channel(server: RunningCollector) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as chan:
        yield chan


@pytest.fixture
def raw_export(channel: grpc.Channel):
    """TraceService/Export without serializers: the bytes go on the wire as given."""
    return channel.unary_unary(TRACE_EXPORT)


# -- 35, 36: valid requests ----------------------------------------------------------------


@pytest.mark.parametrize(
    "compression", [grpc.Compression.NoCompression, grpc.Compression.Gzip], ids=["identity", "gzip"]
)
def test_trace_export_is_ok_and_stored(server, channel, compression):
    trace_id = _trace_id()
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    request = span_request(trace_id, ("grpc.first", "grpc.second"))

    response = stub.Export(request, timeout=TIMEOUT_S, compression=compression)

    assert isinstance(response, trace_service_pb2.ExportTraceServiceResponse)
    assert not response.HasField("partial_success")
    assert wait_stored(server.lake, trace_id, 2) == 2
    rows = query(
        server.lake,
        "SELECT name, span_id, kind, duration_ms, service_name, scope_name FROM events "
        "WHERE trace_id = ? ORDER BY name",
        [trace_id.hex()],
    )
    assert rows == [
        ("grpc.first", "0000000000000001", 2, 250.0, "grpc-test", "tests.grpc"),
        ("grpc.second", "0000000000000002", 2, 250.0, "grpc-test", "tests.grpc"),
    ]


@pytest.mark.parametrize(
    "compression", [grpc.Compression.NoCompression, grpc.Compression.Gzip], ids=["identity", "gzip"]
)
def test_logs_export_is_ok_and_stored(server, channel, compression):
    trace_id = _trace_id()
    body = f"log over grpc {compression.name}"
    stub = logs_service_pb2_grpc.LogsServiceStub(channel)

    response = stub.Export(log_request(trace_id, body), timeout=TIMEOUT_S, compression=compression)

    assert isinstance(response, logs_service_pb2.ExportLogsServiceResponse)
    assert not response.HasField("partial_success")
    assert wait_stored(server.lake, trace_id, 1, signal="log") == 1
    rows = query(
        server.lake,
        "SELECT span_id, severity_number, body, service_name FROM events "
        "WHERE trace_id = ? AND signal = 'log'",
        [trace_id.hex()],
    )
    assert rows == [("0000000000000007", 9, f'"{body}"', "grpc-test")]


def test_empty_request_is_ok_and_stores_nothing(server, channel):
    before = total(server.lake)
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)

    response = stub.Export(trace_service_pb2.ExportTraceServiceRequest(), timeout=TIMEOUT_S)
    empty_resource = trace_service_pb2.ExportTraceServiceRequest()
    empty_resource.resource_spans.add().scope_spans.add()
    response_2 = stub.Export(empty_resource, timeout=TIMEOUT_S)

    assert isinstance(response, trace_service_pb2.ExportTraceServiceResponse)
    assert response.ListFields() == [] and response_2.ListFields() == []
    assert_keeps_serving(channel, server.lake, before)


# -- 37: undecodable bytes and invalid UTF-8 -------------------------------------------------


def test_undecodable_bytes_get_invalid_argument_with_reason(server, channel, raw_export):
    trace_id = _trace_id()
    before = total(server.lake)
    truncated = span_request(trace_id).SerializeToString()[:-5]

    for payload in (truncated, b"\xff\xff\xff\xff\xff\xff\xff\xff"):
        error = rpc_error(raw_export, payload)

        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "Exception deserializing" not in error.details()
        assert "invalid protobuf ExportTraceServiceRequest" in error.details()
        status = status_details(error)
        assert status is not None and status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert status.message == error.details()
        assert retry_info(error) is None
    assert_keeps_serving(channel, server.lake, before)
    assert stored(server.lake, trace_id) == 0


def test_invalid_utf8_span_name_gets_invalid_argument(server, channel, raw_export):
    trace_id = _trace_id()
    before = total(server.lake)
    valid = span_request(trace_id, ("NAME-TO-BREAK",)).SerializeToString()
    payload = valid.replace(b"NAME-TO-BREAK", b"\xff\xfeME-TO-BREAK")
    assert len(payload) == len(valid)

    error = rpc_error(raw_export, payload)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "UTF-8" in error.details()
    assert_keeps_serving(channel, server.lake, before)
    assert stored(server.lake, trace_id) == 0


# -- 38: size limit ----------------------------------------------------------------------------


def test_message_of_exactly_the_limit_is_accepted(server, channel, raw_export):
    trace_id = _trace_id()
    payload = sized_span_request(trace_id, LIMIT)

    response = raw_export(payload, timeout=TIMEOUT_S)

    assert trace_service_pb2.ExportTraceServiceResponse.FromString(response).ListFields() == []
    assert wait_stored(server.lake, trace_id, 1) == 1


def test_message_one_byte_over_the_limit_is_resource_exhausted(server, channel, raw_export):
    trace_id = _trace_id()
    before = total(server.lake)
    payload = sized_span_request(trace_id, LIMIT + 1)

    error = rpc_error(raw_export, payload)

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert retry_info(error) is None  # not transient: clients must not retry it
    assert_keeps_serving(channel, server.lake, before)
    assert stored(server.lake, trace_id) == 0


def test_gzip_message_inflating_beyond_the_limit_is_resource_exhausted(server, channel):
    # grpcio enforces max_receive_message_length on the decompressed message
    # ("Decompressed message larger than max"), so the handler never sees it.
    trace_id = _trace_id()
    before = total(server.lake)
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    request = span_request(trace_id, padding="z" * (4 * LIMIT))

    error = rpc_error(stub.Export, request, compression=grpc.Compression.Gzip)

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert retry_info(error) is None
    assert_keeps_serving(channel, server.lake, before)
    assert stored(server.lake, trace_id) == 0


# -- 39: back-pressure ---------------------------------------------------------------------


def test_wal_backlog_full_is_unavailable_with_retry_info_then_ok(tmp_path):
    # Any unconverted WAL byte is over a backlog limit of 0: the request right after an
    # acknowledged one is refused until the lake writer has caught up.
    collector = RunningCollector(make_settings(tmp_path, wal_max_backlog_bytes=0)).start()
    try:
        with grpc.insecure_channel(collector.grpc_target) as chan:
            stub = trace_service_pb2_grpc.TraceServiceStub(chan)
            first, second = _trace_id(), _trace_id()
            stub.Export(span_request(first), timeout=TIMEOUT_S)

            error = rpc_error(stub.Export, span_request(second))

            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
            info = retry_info(error)
            assert info is not None, "UNAVAILABLE without RetryInfo in grpc-status-details-bin"
            assert info.retry_delay.seconds > 0
            status = status_details(error)
            assert status is not None and status.code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert "retry later" in error.details()

            codes = []
            for _ in range(100):  # once the backlog is converted, the same request is OK
                try:
                    stub.Export(span_request(second), timeout=TIMEOUT_S)
                    break
                except grpc.RpcError as retry_error:
                    codes.append(retry_error.code())
                    time.sleep(0.2)
            else:
                pytest.fail("back-pressure never cleared")
            assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}
            assert wait_stored(collector.lake, first, 1) == 1
            assert wait_stored(collector.lake, second, 1) == 1
            assert total(collector.lake) == 2  # the refused attempts stored nothing
    finally:
        collector.stop()


def test_inflight_budget_exceeded_is_unavailable_with_retry_info(tmp_path):
    # A budget of 1 KiB of request bytes in flight holds one ~700-byte request; the others
    # sent meanwhile on the same channel must be told to retry, not dropped or failed hard.
    settings = make_settings(tmp_path, max_request_bytes=1024, max_inflight_bytes=1024)
    collector = RunningCollector(settings).start()
    try:
        with grpc.insecure_channel(collector.grpc_target) as chan:
            stub = trace_service_pb2_grpc.TraceServiceStub(chan)
            ids = [_trace_id() for _ in range(40)]
            requests = [span_request(t, padding="b" * 600) for t in ids]
            assert all(600 < r.ByteSize() <= 1024 for r in requests)

            futures = [stub.Export.future(r, timeout=TIMEOUT_S) for r in requests]
            accepted, refused = [], []
            for trace_id, future in zip(ids, futures, strict=True):
                error = future.exception()
                if error is None:
                    accepted.append(trace_id)
                else:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
                    assert retry_info(error) is not None
                    refused.append(trace_id)

            assert refused, "40 concurrent requests never exceeded a budget of one request"
            assert accepted
            assert_keeps_serving(chan, collector.lake, len(accepted))
            for trace_id in accepted:
                assert stored(collector.lake, trace_id) == 1
    finally:
        collector.stop()


# -- 40: metrics -----------------------------------------------------------------------------


def test_metrics_export_is_stored(server, channel):
    """Item 5/40 for gRPC: the MetricsService is served (it answered UNIMPLEMENTED before)."""
    before = total(server.lake)
    stub = metrics_service_pb2_grpc.MetricsServiceStub(channel)
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add(name="requests")
    metric.gauge.data_points.add(as_int=1, time_unix_nano=time.time_ns())

    answer = stub.Export(request, timeout=10)

    assert answer.partial_success.rejected_data_points == 0
    sql = "SELECT count(*) FROM events_raw WHERE signal = 'metric' AND name = 'requests'"
    assert wait_for_count(server.lake, sql, 1) == 1
    assert_keeps_serving(channel, server.lake, before + 1)


# -- 41: concurrency ---------------------------------------------------------------------------


def test_100_concurrent_exports_on_one_channel_are_all_stored_once(server, channel):
    service = f"concurrent-{uuid.uuid4().hex[:8]}"
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    ids = [_trace_id() for _ in range(100)]

    futures = [
        stub.Export.future(span_request(t, (f"c{i}",), service=service), timeout=30)
        for i, t in enumerate(ids)
    ]
    responses = [f.result() for f in futures]

    assert all(isinstance(r, trace_service_pb2.ExportTraceServiceResponse) for r in responses)
    assert all(not r.HasField("partial_success") for r in responses)
    sql = "SELECT count(*) FROM events_raw WHERE service_name = ?"
    assert wait_for_count(server.lake, sql, 100, params=[service]) == 100
    rows = query(
        server.lake,
        "SELECT trace_id, name, count(*) FROM events_raw WHERE service_name = ? GROUP BY 1, 2",
        [service],
    )
    expected = sorted((t.hex(), f"c{i}") for i, t in enumerate(ids))
    assert sorted((t, n) for t, n, _ in rows) == expected
    assert {c for _, _, c in rows} == {1}


# -- 48: authentication ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCollector]:
    settings = make_settings(tmp_path_factory.mktemp("authed"), auth_token="s3cret-token")
    collector = RunningCollector(settings).start()
    yield collector
    collector.stop()


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong-token"),),
        (("authorization", "s3cret-token"),),
        (("authorization", "Bearer s3cret-token-and-more"),),
        (("authorization", "Basic s3cret-token"),),
    ],
    ids=["missing", "wrong-token", "no-bearer-scheme", "token-prefix-only", "basic-scheme"],
)
def test_missing_or_wrong_token_is_unauthenticated(authed, metadata):
    trace_id = _trace_id()
    before = total(authed.lake)
    refused = authed.collector.receiver.counts["refused.401"]
    with grpc.insecure_channel(authed.grpc_target) as chan:
        for stub, request in (
            (trace_service_pb2_grpc.TraceServiceStub(chan), span_request(trace_id)),
            (logs_service_pb2_grpc.LogsServiceStub(chan), log_request(trace_id, "no token")),
        ):
            error = rpc_error(stub.Export, request, metadata=metadata)

            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
            assert "Bearer" in error.details()
            assert retry_info(error) is None

        assert_keeps_serving(
            chan, authed.lake, before, metadata=(("authorization", "Bearer s3cret-token"),)
        )
    assert stored(authed.lake, trace_id) == 0
    assert stored(authed.lake, trace_id, signal="log") == 0
    # counted as HTTP's 401s are, so the activity line shows a misconfigured client
    assert authed.collector.receiver.counts["refused.401"] == refused + 2


def test_the_bearer_scheme_is_case_insensitive(authed):
    # RFC 7235 section 2.1 (issue 10 point 16)
    before = total(authed.lake)
    with grpc.insecure_channel(authed.grpc_target) as chan:
        assert_keeps_serving(
            chan, authed.lake, before, metadata=(("authorization", "bearer s3cret-token"),)
        )


def test_unauthenticated_gzip_bomb_is_refused_before_it_is_inflated(authed):
    # 8 MiB of one letter: a few KiB on the wire, 8 x the limit inflated. Had grpcio inflated
    # it, the answer would be RESOURCE_EXHAUSTED ("Decompressed message larger than max");
    # UNAUTHENTICATED shows the token was checked before the message was received.
    trace_id = _trace_id()
    before = total(authed.lake)
    with grpc.insecure_channel(authed.grpc_target) as chan:
        stub = trace_service_pb2_grpc.TraceServiceStub(chan)
        request = span_request(trace_id, padding="z" * (8 * LIMIT))

        error = rpc_error(stub.Export, request, compression=grpc.Compression.Gzip)

        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
        assert_keeps_serving(
            chan, authed.lake, before, metadata=(("authorization", "Bearer s3cret-token"),)
        )
    assert stored(authed.lake, trace_id) == 0
