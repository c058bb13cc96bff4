"""Settings: defaults < flagscope.toml < FLAGSCOPE_* environment variables < command-line flags.

Every setting has one name used everywhere: `[section] name` in the TOML file,
`FLAGSCOPE_NAME` in the environment (lists comma-separated), `--name` (dashes) on the
command line. `describe()` renders the table printed by `flagscope serve --help-config`
and reproduced in README.md.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flagscope.collector.errors import ConfigError

MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Settings:
    # [collector]
    http_endpoint: str = "127.0.0.1:4318"
    grpc_endpoint: str = "127.0.0.1:4317"
    max_request_bytes: int = 64 * MiB
    max_inflight_bytes: int = 256 * MiB
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    max_connections: int = 1000
    # two: a request's decode is the JSON sender's wait; over 120 s one decoder gave JSON
    # 0.29 of protobuf's acked spans/s, two 0.35 (bench/RESULTS.md, OTLP/JSON over 120 s)
    json_decoders: int = 2
    cors_allowed_origins: tuple[str, ...] = ()
    max_attributes: int = 0
    max_attribute_value_bytes: int = 0
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    auth_token: str = ""
    data_dir: str = "flagscope-data"
    activity_log_s: float = 60.0
    # [lake]
    lake_dir: str = ""  # default: <data_dir>/lake
    writer_id: str = ""  # default: this host's name
    flush_interval_s: float = 2.0
    segment_bytes: int = 32 * MiB
    wal_max_backlog_bytes: int = 2048 * MiB
    max_lag_s: float = 30.0
    compact_min_files: int = 8
    compact_target_rows: int = 2_000_000
    compact_interval_s: float = 60.0
    retention_days: float = 30.0
    lake_writers: int = 0  # 0: one per core
    # [tagging]
    flag_attribute_prefixes: tuple[str, ...] = ("app.flag.",)
    user_id_attributes: tuple[str, ...] = ("feature_flag.context.id", "enduser.id", "user.id")
    test_attributes: tuple[str, ...] = (
        "test_user",
        "user.is_test",
        "app.user.is_test",
        "synthetic",
    )
    synthetic_types: tuple[str, ...] = ("test", "bot")
    test_user_patterns: tuple[str, ...] = ("qa-*", "test-*")

    @property
    def lake_path(self) -> Path:
        return Path(self.lake_dir) if self.lake_dir else Path(self.data_dir) / "lake"

    @property
    def wal_path(self) -> Path:
        return Path(self.data_dir) / "wal"

    @property
    def writer(self) -> str:
        raw = self.writer_id or socket.gethostname() or "collector"
        return "".join(c if c.isalnum() or c in "-_" else "-" for c in raw)


SECTIONS: dict[str, tuple[str, ...]] = {
    "collector": (
        "http_endpoint",
        "grpc_endpoint",
        "max_request_bytes",
        "max_inflight_bytes",
        "body_timeout_s",
        "header_timeout_s",
        "idle_timeout_s",
        "max_connections",
        "json_decoders",
        "cors_allowed_origins",
        "max_attributes",
        "max_attribute_value_bytes",
        "tls_cert_file",
        "tls_key_file",
        "tls_client_ca_file",
        "auth_token",
        "data_dir",
        "activity_log_s",
    ),
    "lake": (
        "lake_dir",
        "writer_id",
        "flush_interval_s",
        "segment_bytes",
        "wal_max_backlog_bytes",
        "max_lag_s",
        "compact_min_files",
        "compact_target_rows",
        "compact_interval_s",
        "retention_days",
        "lake_writers",
    ),
    "tagging": (
        "flag_attribute_prefixes",
        "user_id_attributes",
        "test_attributes",
        "synthetic_types",
        "test_user_patterns",
    ),
}

HELP: dict[str, str] = {
    "http_endpoint": "OTLP/HTTP listen address host:port; empty disables",
    "grpc_endpoint": "OTLP/gRPC listen address host:port; empty disables",
    "max_request_bytes": "largest request accepted, after decompression (413 / RESOURCE_EXHAUSTED)",
    "max_inflight_bytes": "request bytes held in memory at once before 503 + Retry-After",
    "body_timeout_s": "a request body must arrive within this many seconds",
    "header_timeout_s": "an HTTP request line and headers must arrive within this many seconds",
    "idle_timeout_s": "an idle kept-alive HTTP or gRPC connection is closed after this many seconds",
    "max_connections": "HTTP connections open at once; beyond it a new one gets 503 + Retry-After",
    "json_decoders": "processes decoding OTLP/JSON bodies beside the front end; 0 decodes in it",
    "cors_allowed_origins": "browser origins (https://app.example, or *) allowed to send OTLP/HTTP; none by default",
    "max_attributes": "attributes kept per span, event, link, log, resource, scope; 0: all",
    "max_attribute_value_bytes": "bytes kept of a string or bytes attribute value; 0: all",
    "tls_cert_file": "PEM certificate (chain): HTTP and gRPC then speak TLS 1.2+ only",
    "tls_key_file": "PEM private key of tls_cert_file",
    "tls_client_ca_file": "PEM CA bundle: if set, clients must present a certificate it signed",
    "auth_token": "if set, require 'Authorization: Bearer <token>' (401 / UNAUTHENTICATED)",
    "data_dir": "holds the write-ahead log (wal/) and, by default, the lake (lake/)",
    "lake_dir": "the Parquet lake; default <data_dir>/lake",
    "writer_id": "names this collector's files in a shared lake; default the host name",
    "flush_interval_s": "longest time before acknowledged data is written to the lake",
    "segment_bytes": "WAL segment size that triggers a flush to the lake",
    "wal_max_backlog_bytes": "WAL not yet in the lake before ingest answers 503",
    "activity_log_s": "every this many seconds, one log line of the spans and log records accepted and the requests refused; 0: off",
    "max_lag_s": "estimated seconds the lake may fall behind the WAL before ingest answers 503; 0: no bound",
    "compact_min_files": "small files in one hour partition before they are merged",
    "compact_target_rows": "rows per file that compaction aims for",
    "compact_interval_s": "how often compaction and retention run",
    "retention_days": "hour partitions older than this are deleted; 0 keeps everything",
    "lake_writers": "processes converting the WAL into Parquet; 0 means one per core",
    "flag_attribute_prefixes": "extra attribute prefixes whose suffix is a flag key (app.flag.<key>)",
    "user_id_attributes": "attributes holding the user id, first match wins",
    "test_attributes": "boolean attributes that mark test traffic when true",
    "synthetic_types": "user_agent.synthetic.type values that mark test traffic",
    "test_user_patterns": "user ids matching these glob patterns are test users",
}

_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any, source: str) -> Any:
    default = _FIELDS[name].default
    try:
        if isinstance(default, tuple):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError("expected a list of strings")
        if isinstance(default, int):
            if isinstance(value, (float, bool)):
                raise ValueError("expected a whole number")
            return int(value)
        if isinstance(default, float):
            return float(value)
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    except ValueError as exc:
        raise ConfigError(f"{source}: {name} = {value!r}: {exc}") from exc


def config_file(
    config_path: str | os.PathLike[str] | None, env: Mapping[str, str]
) -> tuple[Path, dict[str, Any]]:
    """The flagscope.toml in use — `config_path`, else $FLAGSCOPE_CONFIG, else
    ./flagscope.toml if present — and its parsed content ({} when there is none)."""
    path = Path(config_path) if config_path else Path(env.get("FLAGSCOPE_CONFIG", "flagscope.toml"))
    if not (config_path or "FLAGSCOPE_CONFIG" in env or path.exists()):
        return path, {}
    try:
        return path, tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found; pass --config PATH or create it") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _from_toml(path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for section, body in doc.items():
        if section not in SECTIONS:
            if section in ("report", "reports", "analysis", "guard"):
                continue  # read by the analysis side
            raise ConfigError(f"{path}: unknown section [{section}]; known: {', '.join(SECTIONS)}")
        for key, value in body.items():
            if key not in SECTIONS[section]:
                raise ConfigError(
                    f"{path}: unknown setting {key!r} in [{section}]; "
                    f"known: {', '.join(SECTIONS[section])}"
                )
            values[key] = _coerce(key, value, str(path))
    return values


def load(
    config_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from the layers. Without `config_path`, ./flagscope.toml is read if present."""
    env = os.environ if env is None else env
    path, doc = config_file(config_path, env)
    values: dict[str, Any] = _from_toml(path, doc)
    for name in _FIELDS:
        key = "FLAGSCOPE_" + name.upper()
        if key in env:
            values[name] = _coerce(name, env[key], f"environment {key}")
    for name, value in (overrides or {}).items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    for name in ("http_endpoint", "grpc_endpoint"):
        endpoint = getattr(s, name)
        if endpoint:
            split_endpoint(endpoint, name)
    if s.max_request_bytes < 1024:
        raise ConfigError("max_request_bytes must be at least 1024")
    if s.max_inflight_bytes < s.max_request_bytes:
        raise ConfigError("max_inflight_bytes must be at least max_request_bytes")
    for name in ("body_timeout_s", "header_timeout_s", "idle_timeout_s"):
        if not getattr(s, name) > 0:
            raise ConfigError(f"{name} must be more than 0 seconds")
    if bool(s.tls_cert_file) != bool(s.tls_key_file):
        raise ConfigError("tls_cert_file and tls_key_file are set together (PEM files)")
    if s.tls_client_ca_file and not s.tls_cert_file:
        raise ConfigError("tls_client_ca_file needs tls_cert_file and tls_key_file")
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(s, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"{name} = {path!r}: no such file")
    if s.activity_log_s < 0:
        raise ConfigError("activity_log_s must be ≥ 0 (0: no activity lines)")
    if s.max_lag_s < 0:
        raise ConfigError("max_lag_s must be ≥ 0 (0: no bound)")
    if s.max_attributes < 0 or s.max_attribute_value_bytes < 0:
        raise ConfigError("max_attributes and max_attribute_value_bytes must be ≥ 0 (0: no cap)")
    if s.max_connections < 1:
        raise ConfigError("max_connections must be at least 1")
    if not 0 <= s.json_decoders <= 64:
        raise ConfigError("json_decoders must be between 0 and 64 (0 decodes in the front end)")


def split_endpoint(endpoint: str, name: str = "endpoint") -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise ConfigError(
            f"{name} = {endpoint!r}: expected host:port with a port from 0 to 65535 (0: any "
            "free port), e.g. 127.0.0.1:4318"
        )
    return host.strip("[]"), int(port)


def describe() -> str:
    """Every setting with its section, environment variable and default, as Markdown."""
    rows = ["| setting | environment | default | meaning |", "|---|---|---|---|"]
    for section, names in SECTIONS.items():
        for name in names:
            default = _FIELDS[name].default
            shown = ", ".join(default) if isinstance(default, tuple) else default
            shown = "(none)" if shown == "" else shown
            rows.append(
                f"| `[{section}] {name}` | `FLAGSCOPE_{name.upper()}` | `{shown}` | {HELP[name]} |"
            )
    return "\n".join(rows)
