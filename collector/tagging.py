"""What a span or log record says about flags, test traffic and the user (DESIGN contract 2).

Pure functions over attribute dicts (already converted from OTLP AnyValues), so the rules
are testable on their own and shared by spans and logs.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from flagscope.collector.config import Settings

FLAG_EVENT_NAMES = frozenset({"feature_flag.evaluation", "feature_flag"})
FLAG_PREFIX = "feature_flag."
# Semantic-convention names under feature_flag.* that are not flag keys.
_RESERVED = frozenset(
    {
        "key",
        "variant",
        "value",
        "reason",
        "provider_name",
        "provider",
        "context",
        "set",
        "version",
        "result",
        "evaluation",
        "error",
        "spec",
    }
)
_TRUE = frozenset({"true", "1", "yes"})
# Attribute names are few and repeat from span to span; those known to name no flag are
# remembered (up to this many: the names are the sender's to choose), so most spans skip
# the per-name prefix checks.
_PLAIN_NAMES_LIMIT = 4096


def variant_of(value: Any) -> str | None:
    """A flag value as a variant name; the OpenFeature Python hook JSON-encodes values."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            decoded = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
        if isinstance(decoded, str):
            return decoded
        value = decoded
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return orjson.dumps(value).decode()


def evaluation(attrs: Mapping[str, Any]) -> tuple[str, str] | None:
    """(key, variant) from `feature_flag.key` with its variant, old or new names."""
    key = attrs.get("feature_flag.key")
    if not isinstance(key, str) or not key:
        return None
    variant = attrs.get("feature_flag.result.variant")
    if variant is None:
        variant = attrs.get("feature_flag.variant")
    if variant is None:
        variant = attrs.get("feature_flag.result.value")
        if variant is None:
            variant = attrs.get("feature_flag.value")
        variant = variant_of(variant)
    elif not isinstance(variant, str):
        variant = variant_of(variant)
    if variant is None:
        return None
    return key, variant


@dataclass(frozen=True)
class Tagger:
    """The configured rules; `from_settings` compiles them once."""

    prefixes: tuple[str, ...]
    user_id_attributes: tuple[str, ...]
    test_attributes: tuple[str, ...]
    synthetic_types: frozenset[str]
    test_user_regex: re.Pattern[str] | None
    test_user_patterns: tuple[str, ...]
    marker_keys: frozenset[str]
    user_id_names: frozenset[str] = field(init=False, compare=False, repr=False)
    # names seen to name no flag (`_flag_key`): a cache, not configuration
    _plain_names: set[str] = field(default_factory=set, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_id_names", frozenset(self.user_id_attributes))

    @classmethod
    def from_settings(cls, settings: Settings) -> Tagger:
        patterns = settings.test_user_patterns
        regex = (
            re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
            if patterns
            else None
        )
        return cls(
            prefixes=(FLAG_PREFIX, *settings.flag_attribute_prefixes),
            user_id_attributes=settings.user_id_attributes,
            test_attributes=settings.test_attributes,
            synthetic_types=frozenset(settings.synthetic_types),
            test_user_regex=regex,
            test_user_patterns=patterns,
            marker_keys=frozenset(("user_agent.synthetic.type", *settings.test_attributes)),
        )

    def attribute_flags(self, attrs: Mapping[str, Any], flags: dict[str, str]) -> None:
        """Flags carried as attributes: key+variant pairs and per-flag `<prefix><key>` names."""
        found = evaluation(attrs)
        if found:
            flags[found[0]] = found[1]
        plain = self._plain_names
        if plain.issuperset(attrs):  # the usual span: no name it has names a flag
            return
        for name, value in attrs.items():
            if name in plain:
                continue
            key = self._flag_key(name)
            if key is None:
                if len(plain) >= _PLAIN_NAMES_LIMIT:
                    plain.clear()
                plain.add(name)
                continue
            variant = value if isinstance(value, str) else variant_of(value)
            if variant is not None:
                flags[key] = variant

    def _flag_key(self, name: str) -> str | None:
        """The flag an attribute `name` carries the variant of (`<prefix><key>`), if any:
        the first configured prefix it starts with decides."""
        for prefix in self.prefixes:
            if name.startswith(prefix):
                key = name[len(prefix) :]
                if prefix == FLAG_PREFIX and key.split(".", 1)[0] in _RESERVED:
                    return None
                return key or None
        return None

    def user_id(self, *sources: Mapping[str, Any]) -> str | None:
        names = self.user_id_names
        for attrs in sources:
            if not names.isdisjoint(attrs):  # (in C: a span without any, a downstream one)
                break
        else:
            return None
        for name in self.user_id_attributes:
            for attrs in sources:
                value = attrs.get(name)
                if value is not None and value != "":
                    return value if isinstance(value, str) else str(value)
        return None

    def marker(self, attrs: Mapping[str, Any], where: str = "") -> str | None:
        """The test-traffic attribute rule `attrs` match, or None."""
        if self.marker_keys.isdisjoint(attrs):  # the common case, checked cheaply
            return None
        synthetic = attrs.get("user_agent.synthetic.type")
        if isinstance(synthetic, str) and synthetic in self.synthetic_types:
            return f"{where}user_agent.synthetic.type={synthetic}"
        for name in self.test_attributes:
            value = attrs.get(name)
            if value is True or (isinstance(value, str) and value.lower() in _TRUE):
                return f"{where}{name}=true"
        return None

    def resource_marker(self, resource: Mapping[str, Any]) -> str | None:
        return self.marker(resource, "resource ")

    def test_reason(
        self, attrs: Mapping[str, Any], resource_reason: str | None, user_id: str | None
    ) -> str | None:
        """Which rule marks this as test traffic, or None. `resource_reason` is
        `resource_marker()` of the item's resource, computed once per resource."""
        reason = self.marker(attrs) or resource_reason
        if reason is not None or user_id is None or self.test_user_regex is None:
            return reason
        if self.test_user_regex.match(user_id):
            pattern = next(p for p in self.test_user_patterns if fnmatch.fnmatchcase(user_id, p))
            return f"user_id matches {pattern}"
        return None
