"""OTLP-RECEIVER item 51: CORS is off by default; with allowed origins, a preflight from
one of them gets the CORS headers (before authentication: a preflight carries no token)
and one from another origin does not."""

from __future__ import annotations

import pytest

from tests.helpers import RunningCollector, make_settings
from tests.otlp_requests import PB, one_span, post, wait_rows

APP = "https://app.example"
PREFLIGHT = {
    "Origin": APP,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type, authorization",
}


@pytest.fixture(scope="module")
def with_cors(tmp_path_factory):
    settings = make_settings(
        tmp_path_factory.mktemp("cors"), cors_allowed_origins=(APP,), auth_token="s3cret"
    )
    running = RunningCollector(settings).start()
    yield running
    running.stop()


def test_cors_is_off_by_default(server):
    reply = post(server, "/v1/traces", None, None, headers=PREFLIGHT, method="OPTIONS")
    assert reply.status == 405
    assert "Access-Control-Allow-Origin" not in reply.headers
    body, _ = one_span()
    reply = post(server, "/v1/traces", body, PB, headers={"Origin": APP})
    assert reply.status == 200 and "Access-Control-Allow-Origin" not in reply.headers


def test_a_preflight_from_an_allowed_origin_gets_the_cors_headers_without_a_token(with_cors):
    reply = post(
        with_cors, "/v1/traces", None, None, headers=PREFLIGHT, method="OPTIONS", authorize=False
    )
    assert reply.status == 204
    assert reply.headers["Access-Control-Allow-Origin"] == APP
    assert "POST" in reply.headers["Access-Control-Allow-Methods"]
    allowed = reply.headers["Access-Control-Allow-Headers"].lower()
    assert "content-type" in allowed and "authorization" in allowed
    body, trace = one_span()
    reply = post(with_cors, "/v1/traces", body, PB, headers={"Origin": APP})
    assert reply.status == 200 and reply.headers["Access-Control-Allow-Origin"] == APP
    wait_rows(with_cors, "trace_id = ?", [trace.hex()], 1)


def test_another_origin_gets_no_cors_headers(with_cors):
    other = {**PREFLIGHT, "Origin": "https://evil.example"}
    reply = post(with_cors, "/v1/traces", None, None, headers=other, method="OPTIONS")
    assert reply.status == 403
    assert "Access-Control-Allow-Origin" not in reply.headers
    body, _ = one_span()
    reply = post(with_cors, "/v1/traces", body, PB, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in reply.headers
    # and the token is still required for the POST itself
    assert (
        post(with_cors, "/v1/traces", body, PB, headers={"Origin": APP}, authorize=False).status
        == 401
    )
