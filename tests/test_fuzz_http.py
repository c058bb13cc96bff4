"""OTLP-RECEIVER item 54: fuzzed requests to the real HTTP receiver, bounded to seconds.

Arbitrary bytes, and mutations of the OTLP spec's example requests (bytes flipped,
inserted, cut; JSON values replaced by values of other types), are posted as protobuf and
as JSON to /v1/traces, /v1/logs and /v1/metrics. Every answer is one the protocol defines
for the case — 200, 400, 413 or 415, or 503
back-pressure — never a 500, never a hang; and afterwards the collector still stores a
valid request (the lake writer was not stopped by anything acknowledged).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flagscope.collector.decode import parse
from flagscope.collector.otlp import SIGNALS
from tests.otlp_requests import JSON, PB, post, send_marker

EXAMPLES = Path(__file__).resolve().parent / "data" / "otlp-examples"
PATHS = ["/v1/traces", "/v1/logs", "/v1/metrics"]
ALLOWED = {200, 400, 413, 415, 503}
fuzz = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _examples() -> dict[str, tuple[bytes, bytes]]:
    """Per signal path: the spec's example as OTLP/JSON and as protobuf."""
    out = {}
    for path, name in (
        ("/v1/traces", "trace.json"),
        ("/v1/logs", "logs.json"),
        ("/v1/metrics", "metrics.json"),
    ):
        text = (EXAMPLES / name).read_bytes()
        signal = SIGNALS[path.rsplit("/", 1)[1]]
        out[path] = (text, parse(signal, text, JSON).SerializeToString())
    return out


EXAMPLE = _examples()


def _check(reply_status: int, path: str, elapsed: float) -> None:
    assert reply_status in ALLOWED, reply_status
    assert elapsed < 1.0, f"{elapsed:.2f} s"


def _post_timed(server: Any, path: str, body: bytes, content_type: str) -> None:
    started = time.monotonic()
    reply = post(server, path, body, content_type)
    _check(reply.status, path, time.monotonic() - started)


@pytest.mark.parametrize("content_type", [PB, JSON])
@fuzz
@given(path=st.sampled_from(PATHS), body=st.binary(max_size=2048))
def test_arbitrary_bytes_get_a_protocol_status(server, content_type, path, body):
    _post_timed(server, path, body, content_type)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


@pytest.mark.parametrize("path", PATHS)
@fuzz
@given(data=st.data(), as_json=st.booleans())
def test_mutated_example_requests_get_a_protocol_status(server, path, data, as_json):
    text, proto = EXAMPLE[path]
    original = text if as_json or not proto else proto
    body = data.draw(mutated(original))
    _post_timed(server, path, body, JSON if as_json or not proto else PB)


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _leaves(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _leaves(value, (*path, i))
    return out


@pytest.mark.parametrize("path", ["/v1/traces", "/v1/logs"])
@fuzz
@given(data=st.data())
def test_json_with_values_of_any_type_gets_a_protocol_status(server, path, data):
    doc = json.loads(EXAMPLE[path][0])
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(_leaves(doc)))
        node = doc
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = data.draw(VALUES)
    _post_timed(server, path, json.dumps(doc).encode(), JSON)


def test_the_collector_still_stores_after_the_fuzzing(server):
    send_marker(server)  # (the module's tests share one collector and run in file order)
