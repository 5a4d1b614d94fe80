"""JSON values ⇄ google.protobuf.Struct, and timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

_EXACT_INT = 2**53


def value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        # Struct keeps every number as a double; give integers back as integers.
        if number.is_integer() and -_EXACT_INT < number < _EXACT_INT:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [value_to_python(item) for item in value.list_value.values]
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {key: value_to_python(item) for key, item in struct.fields.items()}


def dict_to_struct(
    payload: dict[str, Any], out: struct_pb2.Struct | None = None
) -> struct_pb2.Struct:
    struct = struct_pb2.Struct() if out is None else out
    struct.update(payload)
    return struct


def timestamp_to_datetime(stamp: timestamp_pb2.Timestamp) -> datetime | None:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=UTC)


def datetime_to_timestamp(moment: datetime, out: timestamp_pb2.Timestamp) -> None:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    out.FromDatetime(moment)
