"""OTLP metrics (issue 10): the SDK's own metric exporters (HTTP protobuf and gRPC) and the
spec's OTLP/JSON example into a real collector, every data point type into the lake, read
back through the `metrics` view. Before, /v1/metrics answered 404 and gRPC UNIMPLEMENTED,
so every SDK pointed at flagscope logged an export failure each interval."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import duckdb
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.metrics import Observation
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from flagscope.collector.lake.read import define_views
from tests.helpers import RunningCollector, wait_for_count
from tests.otlp_requests import kv

TIMEOUT_S = 10


def _exporter(server: RunningCollector, transport: str):
    if transport == "http":
        return HttpMetricExporter(endpoint=f"{server.http_url}/v1/metrics", timeout=TIMEOUT_S)
    return GrpcMetricExporter(endpoint=server.grpc_target, insecure=True, timeout=TIMEOUT_S)


def _rows(server: RunningCollector, service: str, expected: int) -> dict[str, dict]:
    sql = "SELECT count(*) FROM metrics WHERE service_name = ?"
    assert wait_for_count(server.lake, sql, expected, params=[service]) >= expected
    con = duckdb.connect()
    define_views(con, server.lake)
    cursor = con.execute("SELECT * FROM metrics WHERE service_name = ? ORDER BY name", [service])
    names = [d[0] for d in cursor.description]
    return {
        row[names.index("name")]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()
    }


@pytest.fixture
def meter_provider(server: RunningCollector, request) -> Iterator[tuple[MeterProvider, str]]:
    transport = request.param
    service = f"metrics-{transport}-{time.time_ns()}"
    reader = PeriodicExportingMetricReader(
        _exporter(server, transport), export_interval_millis=3_600_000
    )
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": service}),
        views=[
            View(
                instrument_name="checkout.size",
                aggregation=ExponentialBucketHistogramAggregation(),
            )
        ],
    )
    yield provider, service
    provider.shutdown()


@pytest.mark.parametrize("meter_provider", ["http", "grpc"], indirect=True)
def test_sdk_metrics_arrive_as_data_points(server, meter_provider) -> None:
    provider, service = meter_provider
    meter = provider.get_meter("tests.metrics", "1.0")
    requests = meter.create_counter("http.requests", unit="1", description="requests served")
    requests.add(3, {"feature_flag.key": "new-checkout", "feature_flag.result.variant": "on"})
    requests.add(2, {"feature_flag.key": "new-checkout", "feature_flag.result.variant": "on"})
    meter.create_up_down_counter("queue.depth").add(-4)
    latency = meter.create_histogram("http.duration", unit="ms")
    for ms in (5.0, 20.0, 300.0):
        latency.record(ms)
    size = meter.create_histogram("checkout.size")
    for items in (1, 2, 2, 40):
        size.record(items)
    meter.create_observable_gauge(
        "cpu.temperature", callbacks=[lambda _options: [Observation(61.5, {"core": 0})]]
    )
    assert provider.force_flush(TIMEOUT_S * 1000)

    rows = _rows(server, service, 5)
    counter = rows["http.requests"]
    assert (counter["metric_type"], counter["value"], counter["value_int"]) == ("sum", 5.0, 5)
    assert counter["is_monotonic"] is True and counter["aggregation_temporality"] == 2
    assert json.loads(counter["attributes"])["feature_flag.result.variant"] == "on"
    assert counter["metric_description"] == "requests served" and counter["metric_unit"] == "1"
    assert counter["start_time"] is not None and counter["time"] >= counter["start_time"]
    assert rows["queue.depth"]["value_int"] == -4 and rows["queue.depth"]["is_monotonic"] is False
    histogram = rows["http.duration"]
    assert histogram["metric_type"] == "histogram"
    assert (histogram["point_count"], histogram["point_sum"]) == (3, 325.0)
    assert (histogram["point_min"], histogram["point_max"]) == (5.0, 300.0)
    buckets = json.loads(histogram["buckets"])
    assert sum(buckets["counts"]) == 3 and len(buckets["counts"]) == len(buckets["bounds"]) + 1
    exponential = rows["checkout.size"]
    assert exponential["metric_type"] == "exponential_histogram"
    shape = json.loads(exponential["buckets"])
    assert exponential["point_count"] == 4
    assert sum(shape["positive"]["counts"]) + shape["zero_count"] == 4
    gauge = rows["cpu.temperature"]
    assert (gauge["metric_type"], gauge["value"], gauge["value_int"]) == ("gauge", 61.5, None)
    # metrics never count as requests or as flag evaluations
    con = duckdb.connect()
    define_views(con, server.lake)
    odd = con.execute(
        "SELECT count(*) FROM events WHERE signal = 'metric' AND service_name = ? "
        "AND (is_entry OR cardinality(coalesce(flags, MAP {})) > 0)",
        [service],
    ).fetchone()
    assert odd == (0,)


def _post(server: RunningCollector, body: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"{server.http_url}/v1/metrics", body, {"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
        return answer.status, answer.read()


def test_the_specs_json_example_stores_every_point(server, otlp_examples) -> None:
    """The OTLP spec's metrics.json (sum, gauge, histogram, exponential histogram), its
    times moved to now so retention keeps them, plus a summary (which the SDKs no longer
    produce, though Prometheus-bridged senders do)."""
    doc = json.loads((otlp_examples / "metrics.json").read_text())
    service = f"spec-metrics-{time.time_ns()}"
    now = time.time_ns()
    expected = 0
    for rm in doc["resourceMetrics"]:
        rm["resource"]["attributes"] = [{"key": "service.name", "value": {"stringValue": service}}]
        for sm in rm["scopeMetrics"]:
            for metric in sm["metrics"]:
                kind = next(k for k in metric if k not in ("name", "unit", "description"))
                for point in metric[kind]["dataPoints"]:
                    point["timeUnixNano"] = str(now)
                    point["startTimeUnixNano"] = str(now - 60_000_000_000)
                    expected += 1
    doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"].append(
        {
            "name": "rpc.latency.summary",
            "summary": {
                "dataPoints": [
                    {
                        "timeUnixNano": str(now),
                        "count": "10",
                        "sum": 42.5,
                        "quantileValues": [
                            {"quantile": 0.5, "value": 3.0},
                            {"quantile": 0.99, "value": 12.0},
                        ],
                    }
                ]
            },
        }
    )
    expected += 1
    status, body = _post(server, json.dumps(doc).encode(), "application/json")
    assert status == 200 and json.loads(body or b"{}").get("partialSuccess", {}) == {}
    rows = _rows(server, service, expected)
    kinds = {row["metric_type"] for row in rows.values()}
    assert kinds == {"sum", "gauge", "histogram", "exponential_histogram", "summary"}
    summary = rows["rpc.latency.summary"]
    assert (summary["point_count"], summary["point_sum"]) == (10, 42.5)
    assert json.loads(summary["buckets"])["quantiles"][1] == {"quantile": 0.99, "value": 12.0}
    spec = rows["my.exponential.histogram"]
    assert spec["point_count"] == 3 and json.loads(spec["buckets"])["scale"] == 0


def test_a_point_without_a_time_is_refused_as_partial_success(server) -> None:
    service = f"bad-metrics-{time.time_ns()}"
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", service))
    metric = rm.scope_metrics.add().metrics.add(name="jobs.done")
    good = metric.gauge.data_points.add(time_unix_nano=time.time_ns(), as_int=7)
    metric.gauge.data_points.add(as_int=8)  # no time: the data model requires one
    nameless = rm.scope_metrics[0].metrics.add()
    nameless.gauge.data_points.add(time_unix_nano=time.time_ns(), as_int=9)
    status, body = _post(server, request.SerializeToString(), "application/x-protobuf")
    answer = metrics_service_pb2.ExportMetricsServiceResponse.FromString(body)
    assert status == 200 and answer.partial_success.rejected_data_points == 2
    assert "time_unix_nano is missing" in answer.partial_success.error_message
    assert "no name" in answer.partial_success.error_message
    rows = _rows(server, service, 1)
    assert rows["jobs.done"]["value_int"] == good.as_int
