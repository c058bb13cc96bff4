"""OpenFeature flagd flag definitions (the JSON that flagd and the OpenFeature flagd
providers read, https://flagd.dev/reference/flag-definitions/): a flag's intended split,
the rollback that gives everyone the baseline variant, and the next stage of a ramp.

The rollback rewrites only the guarded flag's object in the file — its `defaultVariant`
becomes the baseline and its `targeting` is dropped (flagd serves `defaultVariant` when a
flag has no targeting) — and leaves every other byte of the file as it was, so other
flags, `$evaluators`, metadata and the file's own formatting are untouched. The new file
is written beside the old one and renamed over it (atomic: a provider polling the file
sees the old or the new, never half), keeping its permissions. Advancing a ramp
(`set_share`) rewrites only the weights of the flag's `fractional` rule: flagd buckets a
user by a hash into [0, total weight), so raising the treatment's weight keeps everyone
who had it and moves only new users over.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flagscope.analysis.errors import AnalysisError
from flagscope.collector.lake import durable

_DECODER = json.JSONDecoder()
_SPACE = " \t\r\n"


@dataclass(frozen=True)
class FlagDefinition:
    key: str
    state: str
    variants: tuple[str, ...]
    default_variant: str | None
    targeting: Any


@dataclass(frozen=True)
class Rollback:
    """What a rollback changed: the flag's object before and after, as JSON text."""

    path: Path
    flag: str
    before: str
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def read_flags(path: Path) -> dict[str, FlagDefinition]:
    """Every flag of a flagd definition file, or an AnalysisError naming the problem."""
    document = _load(path)
    return {key: _definition(path, key, value) for key, value in _flags(path, document).items()}


def expected_split(definition: FlagDefinition) -> dict[str, float] | None:
    """The variants' shares when the flag's targeting is one `fractional` rule over the
    whole population (`{"fractional": [[variant, weight], …]}`, optionally with a bucketing
    expression first); None when the share cannot be read off the definition (no
    targeting, rules that pick some users first, several fractional rules)."""
    rule = definition.targeting
    if not (isinstance(rule, dict) and list(rule) == ["fractional"]):
        return None
    buckets = [b for b in rule["fractional"] if isinstance(b, list)]
    weights: dict[str, float] = {}
    for bucket in buckets:
        if len(bucket) == 1 and isinstance(bucket[0], str):
            bucket = [bucket[0], 1]  # flagd: a bucket without a weight weighs 1
        if len(bucket) != 2 or not isinstance(bucket[0], str):
            return None
        name, weight = bucket
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            return None
        weights[name] = weights.get(name, 0.0) + float(weight)
    total = sum(weights.values())
    if total <= 0:
        return None
    return {name: weight / total for name, weight in weights.items()}


def roll_back(path: Path, flag: str, baseline: str, dry_run: bool = False) -> Rollback:
    """Rewrite `flag` in the file so that everyone gets `baseline` (see the module doc).
    With `dry_run` nothing is written; the returned Rollback says what would change."""
    text = _read(path)
    document = _parse(path, text)
    flags = _flags(path, document)
    if flag not in flags:
        raise AnalysisError(f"{path}: no flag {flag!r} (it has {_names(flags)})")
    definition = _definition(path, flag, flags[flag])
    if baseline not in definition.variants:
        raise AnalysisError(
            f"{path}: flag {flag!r} has no variant {baseline!r} to roll back to "
            f"(its variants: {', '.join(definition.variants)})"
        )
    start, end = _value_span(text, ("flags", flag))
    old = text[start:end]
    updated = dict(flags[flag])
    updated["defaultVariant"] = baseline
    updated.pop("targeting", None)
    new = json.dumps(updated, ensure_ascii=False, separators=(", ", ": "))
    result = Rollback(path, flag, old, new)
    if dry_run or not result.changed:
        return result
    rewritten = text[:start] + new + text[end:]
    _check(path, rewritten, flag, baseline)
    _replace(path, rewritten)
    return result


def flag_text(path: Path, flag: str) -> str | None:
    """The flag's object as it stands in the file (None: no such flag), to tell whether a
    rollback still holds or someone has rolled the flag out again."""
    text = _read(path)
    if flag not in _flags(path, _parse(path, text)):
        return None
    start, end = _value_span(text, ("flags", flag))
    return text[start:end]


def set_share(
    path: Path, flag: str, variant: str, baseline: str, percent: float, dry_run: bool = False
) -> Rollback:
    """Give `variant` `percent` % of users and `baseline` the rest, in the weights of the
    flag's lone fractional rule (the form `expected_split` reads); other buckets must be
    absent. Returns what changed (the flag's object before and after)."""
    text = _read(path)
    flags = _flags(path, _parse(path, text))
    if flag not in flags:
        raise AnalysisError(f"{path}: no flag {flag!r} (it has {_names(flags)})")
    definition = _definition(path, flag, flags[flag])
    split = expected_split(definition)
    if split is None or set(split) - {variant, baseline}:
        raise AnalysisError(
            f"{path}: flag {flag!r} has no fractional rule between {variant!r} and "
            f"{baseline!r} alone to advance, e.g. "
            '"targeting": {"fractional": [["on", 5], ["off", 95]]}'
        )
    scale = 10 ** _decimals(percent)  # flagd weights are integers
    weights = {variant: round(percent * scale), baseline: round((100 - percent) * scale)}
    rule = definition.targeting["fractional"]
    buckets = [b for b in rule if isinstance(b, list)]
    order = [b[0] for b in buckets] + [v for v in (variant, baseline) if v not in split]
    updated = dict(flags[flag])
    updated["targeting"] = {
        "fractional": [b for b in rule if not isinstance(b, list)]
        + [[name, weights[name]] for name in order]
    }
    start, end = _value_span(text, ("flags", flag))
    old, new = text[start:end], json.dumps(updated, ensure_ascii=False, separators=(", ", ": "))
    change = Rollback(path, flag, old, new)
    if dry_run or not change.changed:
        return change
    rewritten = text[:start] + new + text[end:]
    shares = expected_split(_definition(path, flag, _flags(path, _parse(path, rewritten))[flag]))
    if shares is None or abs(shares.get(variant, 0.0) * 100 - percent) > 1e-9:
        raise AnalysisError(f"{path}: the new split of {flag!r} did not take; file left as it was")
    _replace(path, rewritten)
    return change


def _decimals(percent: float) -> int:
    for places in range(4):
        if abs(percent * 10**places - round(percent * 10**places)) < 1e-9:
            return places
    return 4


def _replace(path: Path, text: str) -> None:
    mode = os.stat(path).st_mode & 0o7777

    def write(handle: Any) -> None:
        os.fchmod(handle.fileno(), mode)
        handle.write(text.encode())

    durable.write_atomically(path, write)


# -- reading -------------------------------------------------------------------------------
def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AnalysisError(
            f"flagd definitions {path} not found: pass the file the provider reads"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AnalysisError(f"cannot read flagd definitions {path}: {exc}") from None


def _parse(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnalysisError(f"{path} is not JSON ({exc}); flagd definitions are JSON") from None


def _load(path: Path) -> Any:
    return _parse(path, _read(path))


def _flags(path: Path, document: Any) -> dict[str, Any]:
    flags = document.get("flags") if isinstance(document, dict) else None
    if not isinstance(flags, dict):
        raise AnalysisError(f'{path}: no "flags" object — not a flagd flag definition file')
    return flags


def _definition(path: Path, key: str, value: Any) -> FlagDefinition:
    variants = value.get("variants") if isinstance(value, dict) else None
    if not isinstance(variants, dict) or not variants:
        raise AnalysisError(f'{path}: flag {key!r} has no "variants" object')
    default = value.get("defaultVariant")
    return FlagDefinition(
        key,
        str(value.get("state", "ENABLED")),
        tuple(str(v) for v in variants),
        default if isinstance(default, str) else None,
        value.get("targeting"),
    )


def _names(flags: dict[str, Any]) -> str:
    return ", ".join(repr(k) for k in sorted(flags)) or "none"


def _check(path: Path, text: str, flag: str, baseline: str) -> None:
    """The rewritten file must parse and serve `baseline` for `flag`: never publish less."""
    flags = _flags(path, _parse(path, text))
    definition = _definition(path, flag, flags[flag])
    if definition.default_variant != baseline or definition.targeting is not None:
        raise AnalysisError(f"{path}: the rewrite of {flag!r} did not take; file left as it was")


# -- where a value sits in the text ----------------------------------------------------------
def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in _SPACE:
        index += 1
    return index


def _value_span(text: str, keys: Sequence[str]) -> tuple[int, int]:
    """[start, end) of the value at the object path `keys` in the JSON `text` (the last
    occurrence of a duplicated key, as json.loads keeps it)."""
    start = _skip_space(text, 0)
    for key in keys:
        start = _member(text, start, key)
    _, end = _DECODER.raw_decode(text, start)
    return start, end


def _member(text: str, start: int, key: str) -> int:
    """Where the value of `key` starts in the object at `start`."""
    if text[start] != "{":
        raise ValueError(f"no object at offset {start}")
    index, found = _skip_space(text, start + 1), -1
    while text[index] != "}":
        name, index = _DECODER.raw_decode(text, index)
        index = _skip_space(text, index)
        index = _skip_space(text, index + 1)  # past ':'
        if name == key:
            found = index
        _, index = _DECODER.raw_decode(text, index)
        index = _skip_space(text, index)
        if text[index] == ",":
            index = _skip_space(text, index + 1)
    if found < 0:
        raise KeyError(key)
    return found
