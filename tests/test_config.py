"""Settings layers: defaults < flagscope.toml < FLAGSCOPE_* environment < command line."""

import pytest

from flagscope.collector import config
from flagscope.collector.errors import ConfigError


def test_defaults_bind_loopback_only(tmp_path, monkeypatch):
    """OTLP-RECEIVER item 50: 127.0.0.1:4317 and 127.0.0.1:4318, nothing wider."""
    monkeypatch.chdir(tmp_path)
    settings = config.load(env={})
    assert settings.http_endpoint == "127.0.0.1:4318"
    assert settings.grpc_endpoint == "127.0.0.1:4317"
    assert settings.max_request_bytes == 64 * 1024 * 1024


def test_precedence_file_then_environment_then_flags(tmp_path):
    path = tmp_path / "flagscope.toml"
    path.write_text(
        '[collector]\nhttp_endpoint = "127.0.0.1:1"\ngrpc_endpoint = "127.0.0.1:2"\n'
        'data_dir = "from-file"\n[tagging]\ntest_user_patterns = ["x-*"]\n'
    )
    env = {"FLAGSCOPE_GRPC_ENDPOINT": "127.0.0.1:3", "FLAGSCOPE_DATA_DIR": "from-env"}
    settings = config.load(path, env=env, overrides={"data_dir": "from-flag"})
    assert settings.http_endpoint == "127.0.0.1:1"
    assert settings.grpc_endpoint == "127.0.0.1:3"
    assert settings.data_dir == "from-flag"
    assert settings.test_user_patterns == ("x-*",)


def test_environment_lists_are_comma_separated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = config.load(env={"FLAGSCOPE_TEST_USER_PATTERNS": "qa-*, bot-*"})
    assert settings.test_user_patterns == ("qa-*", "bot-*")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[collector]\nhttp_endpoit = 'x'\n", "unknown setting 'http_endpoit'"),
        ("[colector]\n", "unknown section [colector]"),
        ("[collector]\nmax_request_bytes = 'big'\n", "max_request_bytes"),
        ("[collector]\nhttp_endpoint = 'localhost'\n", "expected host:port"),
        ("not toml ===", "not valid TOML"),
    ],
)
def test_mistakes_name_the_fix(tmp_path, text, fragment):
    path = tmp_path / "flagscope.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        config.load(path, env={})


def test_missing_explicit_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml", env={})


def test_describe_lists_every_setting_with_its_variable():
    table = config.describe()
    for names in config.SECTIONS.values():
        for name in names:
            assert f"FLAGSCOPE_{name.upper()}" in table
