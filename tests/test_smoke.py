import urllib.request

from tests.helpers import wait_for_count


def test_trace_json_example_is_stored(server, otlp_examples):
    body = (otlp_examples / "trace.json").read_bytes()
    req = urllib.request.Request(
        server.http_url + "/v1/traces", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 200
        assert resp.read() == b"{}"
    assert wait_for_count(server.lake, "select count(*) from events where signal='span'", 1) == 1
