"""Whatever the collector acknowledges, the lake writer can convert (issue 10 point 7).

Hypothesis builds requests with arbitrary values wherever the OTLP schema allows them
(times, kinds, status codes, counts, severities, and any AnyValue type for the attributes
the converter promotes to columns); every item `decode.prepare` accepts must convert.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.logs.v1 import logs_pb2

from flagscope.collector.config import Settings
from flagscope.collector.convert import Converter
from flagscope.collector.decode import prepare
from flagscope.collector.otlp import LOGS, PROTOBUF, SIGNAL_CODES, TRACES
from flagscope.collector.tagging import Tagger
from tests.otlp_requests import any_value, kv, logs, make_span, new_trace_id, traces

PROMOTED = [
    "service.name",
    "http.route",
    "http.request.method",
    "http.method",
    "http.response.status_code",
    "http.status_code",
    "user_agent.synthetic.type",
    "enduser.id",
    "feature_flag.key",
    "feature_flag.result.variant",
    "event.name",
    "test_user",
]
u64 = st.integers(0, 2**64 - 1)
scalars = st.one_of(
    st.text(max_size=12),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=True),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
attributes = st.dictionaries(st.sampled_from(PROMOTED), values, max_size=6)
CONVERTER = Converter(Tagger.from_settings(Settings()))
checks = settings(max_examples=200, deadline=None, database=None)


def _converts(signal, request) -> None:
    prepared = prepare(signal, request.SerializeToString(), PROTOBUF)
    if prepared.payload:
        table = CONVERTER.table([(SIGNAL_CODES[signal.name], prepared.payload)])
        assert table.num_rows == prepared.accepted


@checks
@given(
    start=u64,
    end=u64,
    kind=st.integers(-(2**31), 2**31 - 1),
    status=st.integers(-(2**31), 2**31 - 1),
    dropped=st.integers(0, 2**32 - 1),
    attrs=attributes,
    resource=attributes,
)
def test_every_accepted_span_converts(start, end, kind, status, dropped, attrs, resource):
    span = make_span(
        new_trace_id(),
        attrs=attrs,
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        kind=kind,
        status={"code": status},
        dropped_attributes_count=dropped,
    )
    request = traces(span)
    request.resource_spans[0].resource.attributes.extend(kv(k, v) for k, v in resource.items())
    _converts(TRACES, request)


@checks
@given(
    when=u64, observed=u64, severity=st.integers(-(2**31), 2**31 - 1), attrs=attributes, body=values
)
def test_every_accepted_log_record_converts(when, observed, severity, attrs, body):
    record = logs_pb2.LogRecord(
        time_unix_nano=when,
        observed_time_unix_nano=observed,
        severity_number=severity,
        body=any_value(body),
        attributes=[kv(k, v) for k, v in attrs.items()],
    )
    _converts(LOGS, logs(record))
