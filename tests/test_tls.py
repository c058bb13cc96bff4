"""OTLP-RECEIVER item 49: with TLS configured, both front ends speak TLS 1.2+ only, plaintext
fails, and with a client CA a client without a certificate from it is refused.

The certificates are made here (a CA, the collector's certificate for 127.0.0.1, a client
certificate), with `cryptography`.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import socket
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.helpers import RunningCollector, make_settings
from tests.otlp_requests import PB, one_span, wait_rows

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _certificate(name: str, key, issuer_name, issuer_key, ca: bool, ip: str | None = None):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        san = [x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write(path: Path, cert, key) -> tuple[Path, Path]:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("flagscope test CA", ca_key, None, None, ca=True)
    files = {}
    files["ca"], _ = _write(root / "ca", ca, ca_key)
    for name, ip in (("server", "127.0.0.1"), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(name, key, ca.subject, ca_key, ca=False, ip=ip)
        files[f"{name}_cert"], files[f"{name}_key"] = _write(root / name, cert, key)
    return files


@pytest.fixture
def collector(tmp_path, pki, request):
    mutual = getattr(request, "param", False)
    settings = make_settings(
        tmp_path,
        tls_cert_file=str(pki["server_cert"]),
        tls_key_file=str(pki["server_key"]),
        tls_client_ca_file=str(pki["ca"]) if mutual else "",
    )
    running = RunningCollector(settings).start()
    yield running
    running.stop()


def _client_context(pki, certificate: bool = False, maximum=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if maximum is not None:
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer TLS 1.1 at all
    if certificate:
        context.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
    return context


def _https_post(srv, context: ssl.SSLContext, body: bytes) -> int:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", srv.collector.http_port, context=context, timeout=10
    )
    try:
        conn.request("POST", "/v1/traces", body, {"Content-Type": PB})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_https_is_served_and_plaintext_is_not(collector, pki):
    body, trace = one_span()
    assert _https_post(collector, _client_context(pki), body) == 200
    wait_rows(collector, "trace_id = ?", [trace.hex()], 1)
    plain = http.client.HTTPConnection("127.0.0.1", collector.collector.http_port, timeout=5)
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        plain.request("POST", "/v1/traces", body, {"Content-Type": PB})
        plain.getresponse().read()
    plain.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused_and_1_2_accepted(collector, pki):
    body, _ = one_span()
    with pytest.raises(ssl.SSLError):
        _https_post(collector, _client_context(pki, maximum=ssl.TLSVersion.TLSv1_1), body)
    assert _https_post(collector, _client_context(pki, maximum=ssl.TLSVersion.TLSv1_2), body) == 200


@pytest.mark.parametrize("collector", [True], indirect=True, ids=["mutual"])
def test_with_a_client_ca_a_client_without_a_certificate_is_refused(collector, pki):
    body, trace = one_span()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _https_post(collector, _client_context(pki), body)
    assert _https_post(collector, _client_context(pki, certificate=True), body) == 200
    wait_rows(collector, "trace_id = ?", [trace.hex()], 1)


def test_grpc_speaks_tls_too(collector, pki):
    body, trace = one_span()
    credentials = grpc.ssl_channel_credentials(pki["ca"].read_bytes())
    with grpc.secure_channel(collector.grpc_target, credentials) as channel:
        export = channel.unary_unary(
            EXPORT, response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString
        )
        export(body, timeout=10)
    wait_rows(collector, "trace_id = ?", [trace.hex()], 1)
    with grpc.insecure_channel(collector.grpc_target) as channel, pytest.raises(grpc.RpcError):
        channel.unary_unary(EXPORT)(body, timeout=3)


def test_a_port_with_tls_does_not_answer_a_plain_tcp_probe_with_http(collector):
    with socket.create_connection(("127.0.0.1", collector.collector.http_port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        try:
            answer = s.recv(100)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert not answer.startswith(b"HTTP/")
