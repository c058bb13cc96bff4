"""Optional attribute caps (OTLP-RECEIVER item 53), applied on the ack path.

With `max_attributes` and/or `max_attribute_value_bytes` set, a resource, scope, span,
span event, span link or log record keeps at most that many attributes (the rest are
dropped and counted in its `dropped_attributes_count`, as the OpenTelemetry SDKs' own
limits do), and a string or bytes value — also inside arrays and key-value lists — keeps
at most that many bytes (UTF-8 cut on a character boundary). Nothing is refused: the
answer is 200 with a `partial_success` warning that says what was cut. Off by default.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import Message

from flagscope.collector.otlp import METRICS, TRACES, Signal, data_points


@dataclass(frozen=True)
class AttributeCaps:
    max_attributes: int = 0  # 0: no cap
    max_value_bytes: int = 0

    @property
    def on(self) -> bool:
        return bool(self.max_attributes or self.max_value_bytes)

    def describe(self) -> str:
        return (
            f"max_attributes = {self.max_attributes or 'none'}, "
            f"max_attribute_value_bytes = {self.max_value_bytes or 'none'}"
        )


NO_CAPS = AttributeCaps()


@dataclass
class Cut:
    """What applying the caps to one request changed."""

    attributes_dropped: int = 0
    values_cut: int = 0

    def __bool__(self) -> bool:
        return bool(self.attributes_dropped or self.values_cut)

    def message(self, caps: AttributeCaps) -> str:
        return (
            f"attribute caps applied ({caps.describe()}): {self.attributes_dropped} "
            f"attributes dropped, {self.values_cut} values cut"
        )


def apply(request: Message, signal: Signal, caps: AttributeCaps) -> Cut:
    """Cap every attribute holder of an export request in place (for metrics: resource,
    scope and each data point)."""
    cut = Cut()
    for resource in getattr(request, signal.resources):
        _cap(resource.resource, caps, cut)
        for scope in getattr(resource, signal.scopes):
            _cap(scope.scope, caps, cut)
            for item in getattr(scope, signal.items):
                if signal is METRICS:
                    for point in data_points(item):
                        _cap(point, caps, cut)
                    continue
                _cap(item, caps, cut)
                if signal is TRACES:
                    for part in (*item.events, *item.links):
                        _cap(part, caps, cut)
    return cut


def _cap(holder: Message, caps: AttributeCaps, cut: Cut) -> None:
    attributes = holder.attributes
    if caps.max_attributes and len(attributes) > caps.max_attributes:
        dropped = len(attributes) - caps.max_attributes
        del attributes[caps.max_attributes :]
        # a uint32 on the wire: a count already near its top stays at the top (a metric's
        # data point has no such count; the cut is reported to the client all the same)
        if "dropped_attributes_count" in holder.DESCRIPTOR.fields_by_name:
            holder.dropped_attributes_count = min(
                0xFFFF_FFFF, holder.dropped_attributes_count + dropped
            )
        cut.attributes_dropped += dropped
    if caps.max_value_bytes:
        _cut_values((kv.value for kv in attributes), caps.max_value_bytes, cut)


def _cut_values(values: Iterable[Message], limit: int, cut: Cut) -> None:
    for value in values:
        kind = value.WhichOneof("value")
        if kind == "string_value" and len(value.string_value) * 4 > limit:
            data = value.string_value.encode()
            if len(data) > limit:
                value.string_value = data[:limit].decode("utf-8", "ignore")
                cut.values_cut += 1
        elif kind == "bytes_value" and len(value.bytes_value) > limit:
            value.bytes_value = value.bytes_value[:limit]
            cut.values_cut += 1
        elif kind == "array_value":
            _cut_values(value.array_value.values, limit, cut)
        elif kind == "kvlist_value":
            _cut_values((kv.value for kv in value.kvlist_value.values), limit, cut)
