"""The tagging rules of DESIGN contract 2, on attribute dicts (no server)."""

import dataclasses

import pytest

from flagscope.collector.config import Settings
from flagscope.collector.tagging import Tagger, evaluation, variant_of

TAGGER = Tagger.from_settings(Settings())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", "true"),
        ('"blue"', "blue"),
        ("plain", "plain"),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        ('{"a": 1}', '{"a":1}'),
        (None, None),
    ],
)
def test_variant_of_decodes_json_encoded_values(raw, expected):
    assert variant_of(raw) == expected


def test_evaluation_prefers_result_variant_over_value():
    attrs = {
        "feature_flag.key": "f",
        "feature_flag.result.variant": "on",
        "feature_flag.result.value": "false",
    }
    assert evaluation(attrs) == ("f", "on")


def test_evaluation_accepts_deprecated_variant_name():
    assert evaluation({"feature_flag.key": "f", "feature_flag.variant": "v2"}) == ("f", "v2")


def test_evaluation_falls_back_to_the_json_encoded_value():
    assert evaluation({"feature_flag.key": "f", "feature_flag.result.value": '"blue"'}) == (
        "f",
        "blue",
    )


def test_evaluation_needs_a_key():
    assert evaluation({"feature_flag.result.variant": "on"}) is None


def test_per_flag_attributes_and_configured_prefix():
    flags: dict[str, str] = {}
    TAGGER.attribute_flags(
        {
            "feature_flag.new-checkout": "on",
            "app.flag.dark-mode": True,
            "feature_flag.provider.name": "x",
            "feature_flag.context.id": "u1",
            "feature_flag.result.reason": "static",
            "http.route": "/",
        },
        flags,
    )
    assert flags == {"new-checkout": "on", "dark-mode": "true"}


def test_names_remembered_as_plain_never_hide_a_flag():
    """The names known to name no flag are a cache: a span whose names are all known
    skips the prefix checks, one with a new name is read in full, and a full cache
    starts over (the names are the sender's)."""
    tagger = Tagger.from_settings(Settings())
    plain = {"http.route": "/", "feature_flag.provider.name": "x"}
    for _ in range(2):  # cold, then every name known
        flags: dict[str, str] = {}
        tagger.attribute_flags(plain, flags)
        assert flags == {}
    for _ in range(2):  # a flag's name is read every time, never remembered as plain
        flags = {}
        tagger.attribute_flags({**plain, "app.flag.dark-mode": "on", "app.flag.": "x"}, flags)
        assert flags == {"dark-mode": "on"}
    many = {f"attr.{i}": i for i in range(5000)}
    tagger.attribute_flags(many, {})
    flags = {}
    tagger.attribute_flags({**many, "feature_flag.new-checkout": "on"}, flags)
    assert flags == {"new-checkout": "on"}
    assert len(tagger._plain_names) <= 4096


def test_user_id_follows_configured_precedence():
    assert TAGGER.user_id({"user.id": "b", "enduser.id": "a"}) == "a"
    assert TAGGER.user_id({"user.id": "b"}, {"feature_flag.context.id": "c"}) == "c"
    assert TAGGER.user_id({}) is None
    assert TAGGER.user_id({"enduser.id": 42}) == "42"


@pytest.mark.parametrize(
    ("attrs", "resource", "user", "reason"),
    [
        ({"user_agent.synthetic.type": "bot"}, {}, None, "user_agent.synthetic.type=bot"),
        ({"user_agent.synthetic.type": "human"}, {}, None, None),
        ({"test_user": True}, {}, None, "test_user=true"),
        ({"app.user.is_test": "true"}, {}, None, "app.user.is_test=true"),
        ({"test_user": False}, {}, None, None),
        ({}, {"synthetic": True}, None, "resource synthetic=true"),
        ({}, {}, "qa-anna", "user_id matches qa-*"),
        ({}, {}, "test-7", "user_id matches test-*"),
        ({}, {}, "contest-7", None),
    ],
)
def test_test_traffic_markers_name_the_rule(attrs, resource, user, reason):
    assert TAGGER.test_reason(attrs, TAGGER.resource_marker(resource), user) == reason


def test_markers_are_configurable():
    tagger = Tagger.from_settings(
        dataclasses.replace(
            Settings(),
            test_attributes=("is_canary",),
            test_user_patterns=("staff-*",),
        )
    )
    assert tagger.test_reason({"is_canary": True}, None, None) == "is_canary=true"
    assert tagger.test_reason({"test_user": True}, None, "qa-1") is None
    assert tagger.test_reason({}, None, "staff-9") == "user_id matches staff-*"
