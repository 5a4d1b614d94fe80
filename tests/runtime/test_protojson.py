"""Struct and Timestamp ⇄ JSON values, as every service and the gateway read them."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from lodestar.runtime import protojson

PAYLOAD = {
    "s": "x",
    "i": 3,
    "f": 2.5,
    "big": 2.0**60,
    "edge": 2**53,
    "b": False,
    "n": None,
    "deep": {"list": [1, {"k": 1.5}, "y", [], {}]},
}


def test_struct_round_trip_keeps_integers_as_integers() -> None:
    struct = protojson.dict_to_struct(PAYLOAD)
    back = protojson.struct_to_dict(struct)
    assert back == PAYLOAD
    assert isinstance(back["i"], int)
    assert isinstance(back["edge"], int)
    assert isinstance(back["big"], float)
    assert isinstance(back["deep"]["list"][0], int)


def test_dict_to_struct_writes_into_a_message_field_in_place() -> None:
    value = struct_pb2.Value()
    protojson.dict_to_struct({"a": 1}, value.struct_value)
    assert protojson.value_to_python(value) == {"a": 1}
    assert protojson.dict_to_struct(None) == struct_pb2.Struct()
    assert protojson.value_to_python(struct_pb2.Value()) is None


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"a": math.nan}, "a"),
        ({"a": {"b": [1, {"c": math.inf}]}}, "a.b[1].c"),
        ({"a": [[1, -math.inf]]}, "a[0][1]"),
    ],
)
def test_a_non_finite_number_is_refused_with_its_path(
    payload: dict[str, object], path: str
) -> None:
    struct = struct_pb2.Struct()
    struct.update(payload)
    with pytest.raises(protojson.NonFiniteNumber) as error:
        protojson.struct_to_dict(struct)
    assert error.value.path == path


def test_timestamps_to_and_from_datetimes() -> None:
    stamp = timestamp_pb2.Timestamp()
    moment = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=timezone(timedelta(hours=2)))
    protojson.datetime_to_timestamp(moment, stamp)
    assert protojson.timestamp_to_datetime(stamp) == moment
    assert protojson.timestamp_to_datetime(stamp).tzinfo is UTC
    naive = timestamp_pb2.Timestamp()
    protojson.datetime_to_timestamp(datetime(2025, 3, 4, 3, 6, 7, 891011), naive)
    assert naive == stamp  # naive datetimes are UTC
    for bad in (
        timestamp_pb2.Timestamp(seconds=protojson.MAX_TIMESTAMP_SECONDS + 1),
        timestamp_pb2.Timestamp(seconds=protojson.MIN_TIMESTAMP_SECONDS - 1),
        timestamp_pb2.Timestamp(seconds=0, nanos=1_000_000_000),
    ):
        assert not protojson.is_valid_timestamp(bad)
        with pytest.raises(ValueError, match="not a valid timestamp"):
            protojson.timestamp_to_datetime(bad)


def test_timestamps_to_and_from_unix_seconds() -> None:
    stamp = protojson.seconds_to_timestamp(1_700_000_000.25)
    assert (stamp.seconds, stamp.nanos) == (1_700_000_000, 250_000_000)
    assert protojson.timestamp_to_seconds(stamp) == 1_700_000_000.25
    before = protojson.seconds_to_timestamp(-1.5)
    assert (before.seconds, before.nanos) == (-2, 500_000_000)
    # A fraction that rounds up to a whole second stays within the second.
    assert protojson.seconds_to_timestamp(1.9999999999).nanos == 999_999_999
