"""google.protobuf Struct, Value and Timestamp ⇄ JSON-compatible Python values.

The one place where payloads and times cross between protobuf and JSON, for the
gateway, the services and the ingest tool alike, so that both ends of a call read
numbers and times the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from google.protobuf import struct_pb2, timestamp_pb2

# Struct keeps every number as a double; those up to 2**53 in size are integers exactly.
_MAX_SAFE_INTEGER: Final = 2**53
# The range google.protobuf.Timestamp allows: 0001-01-01 to 9999-12-31.
MIN_TIMESTAMP_SECONDS: Final = -62_135_596_800
MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799


class NonFiniteNumber(ValueError):
    """A Struct held NaN or an infinity, which JSON cannot carry; ``path`` is where
    (``a.b[2]``, relative to the Struct)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: not a finite number")
        self.path = path


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON values; integral numbers become ints (Struct has only
    doubles). Raises ``NonFiniteNumber`` naming where a NaN or infinity sits."""
    out: dict[str, Any] = {}
    for key, item in value.fields.items():
        if item.WhichOneof("kind") == "string_value":  # the common case, without a call
            out[key] = item.string_value
            continue
        try:
            out[key] = value_to_python(item)
        except NonFiniteNumber as error:
            raise NonFiniteNumber(_join(key, error.path)) from None
    return out


def value_to_python(value: struct_pb2.Value) -> Any:
    """One Value as a plain JSON value (None for null or unset)."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise NonFiniteNumber("")
        if number.is_integer() and abs(number) <= _MAX_SAFE_INTEGER:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        items = []
        for i, item in enumerate(value.list_value.values):
            try:
                items.append(value_to_python(item))
            except NonFiniteNumber as error:
                raise NonFiniteNumber(_join(f"[{i}]", error.path)) from None
        return items
    return None


def _join(head: str, tail: str) -> str:
    if not tail:
        return head
    return f"{head}{tail}" if tail.startswith("[") else f"{head}.{tail}"


def dict_to_struct(
    value: Mapping[str, Any] | None, out: struct_pb2.Struct | None = None
) -> struct_pb2.Struct:
    """``value`` written into ``out`` (a message's Struct field, in place), or into a
    new Struct; None and {} leave it empty."""
    struct = struct_pb2.Struct() if out is None else out
    if value:
        struct.update(value)
    return struct


def datetime_to_timestamp(moment: datetime, out: timestamp_pb2.Timestamp) -> None:
    """Write ``moment`` into ``out``; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    out.FromDatetime(moment)


def timestamp_to_datetime(value: timestamp_pb2.Timestamp) -> datetime:
    """A Timestamp as an aware UTC datetime (to the microsecond); ``ValueError`` when
    it is outside the range Timestamp allows."""
    if not is_valid_timestamp(value):
        raise ValueError(f"not a valid timestamp (seconds {value.seconds}, nanos {value.nanos})")
    return value.ToDatetime(tzinfo=UTC)


def is_valid_timestamp(value: timestamp_pb2.Timestamp) -> bool:
    """Whether ``value`` is within 0001-01-01 to 9999-12-31 with nanos below a second."""
    return (
        MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS
        and 0 <= value.nanos < 1_000_000_000
    )


def seconds_to_timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A Unix time in seconds as a Timestamp, to the nanosecond a float allows."""
    whole = math.floor(seconds)
    nanos = min(999_999_999, round((seconds - whole) * 1e9))
    return timestamp_pb2.Timestamp(seconds=whole, nanos=nanos)


def timestamp_to_seconds(value: timestamp_pb2.Timestamp) -> float:
    """A Timestamp as a Unix time in seconds."""
    return value.seconds + value.nanos / 1e9
