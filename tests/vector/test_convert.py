"""Unit tests of protobuf ⇄ model conversion and request validation (no server)."""

from __future__ import annotations

import array
import math
import pickle
import uuid
from datetime import UTC, datetime

import numpy
import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from lodestar import limits
from lodestar.runtime.errors import InvalidArgument
from lodestar.services.vector import convert, filter_convert
from lodestar.services.vector import models as m
from lodestar.services.vector.filters import to_edge_filter
from lodestar.vector.v1 import vector_service_pb2 as pb


def _field_of(error: pytest.ExceptionInfo[InvalidArgument]) -> str | None:
    return error.value.field


def test_collection_config_round_trip() -> None:
    proto = pb.CollectionConfig(
        dimension=384,
        distance=pb.DISTANCE_EUCLID,
        payload_schema={
            "lang": pb.PAYLOAD_FIELD_TYPE_KEYWORD,
            "at": pb.PAYLOAD_FIELD_TYPE_DATETIME,
        },
        hnsw=pb.HnswConfig(m=32, ef_search=128),
        quantization=pb.QuantizationConfig(binary=pb.BinaryQuantization(always_ram=True)),
        embedding_model="minilm",
    )
    model = convert.collection_config(proto)
    assert model == m.CollectionConfig(
        dimension=384,
        distance=m.Distance.EUCLID,
        payload_schema={"at": m.FieldType.DATETIME, "lang": m.FieldType.KEYWORD},
        hnsw=m.HnswOptions(m=32, ef_search=128),
        quantization=m.BinaryQuantization(always_ram=True),
        embedding_model="minilm",
    )
    assert convert.collection_config_to_pb(model) == proto
    assert m.config_from_dict(m.config_to_dict(model)) == model
    assert convert.collection_config(pb.CollectionConfig(dimension=3)).distance is m.Distance.COSINE


def test_tenant_field_must_stay_a_keyword() -> None:
    with pytest.raises(InvalidArgument) as error:
        convert.collection_config(
            pb.CollectionConfig(
                dimension=3, payload_schema={"tenant": pb.PAYLOAD_FIELD_TYPE_INTEGER}
            )
        )
    assert _field_of(error) == "config.payload_schema['tenant']"


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("docs", True),
        ("Docs_2024.v1-final", True),
        ("9lives", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("..", False),
        ("../secrets", False),
        ("a/b", False),
        ("-flag", False),
        ("_private", False),
        ("sp ace", False),
        ("naïve", False),
    ],
)
def test_collection_names(name: str, valid: bool) -> None:
    if valid:
        assert convert.collection_name(name) == name
    else:
        with pytest.raises(InvalidArgument) as error:
            convert.collection_name(name, "target")
        assert _field_of(error) == "target"


@pytest.mark.parametrize("key", ["a", "a.b", "a[].b", "a[0]", "with-dash_and_9"])
def test_valid_payload_keys(key: str) -> None:
    assert convert.payload_key(key, "k") == key


@pytest.mark.parametrize("key", ["", "a b", "a..b", ".a", "a.", "a[x]", "a/b", "k" * 257])
def test_invalid_payload_keys(key: str) -> None:
    with pytest.raises(InvalidArgument):
        convert.payload_key(key, "k")


def test_an_array_index_in_a_key_is_one_the_engine_can_hold() -> None:
    """The engine's index is 64 bits: a key whose index has more digits than every
    such number has is refused naming the field, never passed on to fail there."""
    longest = f"a[{'9' * limits.MAX_INDEX_DIGITS}].b"
    assert convert.payload_key(longest, "k") == longest
    to_edge_filter(m.Filter(must=(m.FieldCondition(longest, match=m.MatchValue("x")),)))
    with pytest.raises(InvalidArgument) as error:
        convert.payload_key("a[18446744073709551616]", "filter.must[0].key")
    assert _field_of(error) == "filter.must[0].key"
    assert f"at most {limits.MAX_INDEX_DIGITS} digits" in str(error.value)


def test_point_ids() -> None:
    text = str(uuid.uuid4())
    assert convert.point_id(pb.PointId(num=5), "id") == 5
    assert convert.point_id(pb.PointId(uuid=text.upper()), "id") == text
    assert convert.point_id(pb.PointId(uuid="{" + text + "}"), "id") == text
    with pytest.raises(InvalidArgument) as error:
        convert.point_id(pb.PointId(uuid="12"), "ids[3]")
    assert _field_of(error) == "ids[3].uuid"
    with pytest.raises(InvalidArgument) as error:
        convert.point_id(pb.PointId(), "ids[0]")
    assert _field_of(error) == "ids[0]"
    assert convert.point_id_to_pb(text) == pb.PointId(uuid=text)
    assert convert.point_id_to_pb(9) == pb.PointId(num=9)


def test_vectors_are_checked_row_by_row() -> None:
    converted = convert.vectors([[1, 2], [3, 4]], 2, "points[{}].vector")
    assert [list(v) for v in converted] == [[1.0, 2.0], [3.0, 4.0]]
    assert list(convert.vector([0.5, 2], 2, "vector")) == [0.5, 2.0]
    with pytest.raises(InvalidArgument) as error:
        convert.vectors([[1, 2], [3]], 2, "points[{}].vector")
    assert _field_of(error) == "points[1].vector"
    assert error.value.reason == "DIMENSION_MISMATCH"
    with pytest.raises(InvalidArgument) as error:
        convert.vectors([[1, 2], [3, 4], [math.inf, 0]], 2, "points[{}].vector")
    assert _field_of(error) == "points[2].vector"
    assert error.value.reason == "NON_FINITE_VECTOR"
    with pytest.raises(InvalidArgument):
        convert.vector([math.nan, 1], 2, "vector")


def test_a_query_vector_is_float32_values_that_cross_to_the_engine_as_one_buffer() -> None:
    values = [i / 7 for i in range(384)]
    vector = convert.vector(values, 384, "vector")
    assert isinstance(vector, array.array)
    assert vector.typecode == "f"
    assert list(vector) == [float(numpy.float32(v)) for v in values]
    # As a list, each of the 384 values would pickle as its own 9-byte float.
    assert len(pickle.dumps(m.SearchQuery(vector=vector), pickle.HIGHEST_PROTOCOL)) < 384 * 4 + 200


def test_payload_numbers_and_nesting() -> None:
    struct = struct_pb2.Struct()
    struct.update(
        {
            "i": 3,
            "f": 2.5,
            "big": 2.0**60,
            "s": "x",
            "b": False,
            "n": None,
            "deep": {"list": [1, {"k": 1.5}]},
        }
    )
    payload = convert.payload(struct, "payload")
    assert payload == {
        "i": 3,
        "f": 2.5,
        "big": 2.0**60,
        "s": "x",
        "b": False,
        "n": None,
        "deep": {"list": [1, {"k": 1.5}]},
    }
    assert isinstance(payload["i"], int)
    assert isinstance(payload["big"], float)
    bad = struct_pb2.Struct()
    bad.update({"deep": {"list": [1, {"k": math.inf}]}})
    with pytest.raises(InvalidArgument) as error:
        convert.payload(bad, "points[2].payload")
    assert _field_of(error) == "points[2].payload.deep.list[1].k"


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def test_filter_conversion() -> None:
    schema = {"year": m.FieldType.INTEGER, "lang": m.FieldType.KEYWORD, "at": m.FieldType.DATETIME}
    moment = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    proto = pb.Filter(
        must=[
            pb.Condition(field=pb.FieldCondition(key="lang", match=pb.Match(keyword="en"))),
            pb.Condition(field=pb.FieldCondition(key="year", range=pb.Range(gte=2000, lt=2010))),
            pb.Condition(
                field=pb.FieldCondition(
                    key="at", datetime_range=pb.DatetimeRange(gt=_stamp(moment))
                )
            ),
        ],
        should=[
            pb.Condition(
                field=pb.FieldCondition(
                    key="tags", match=pb.Match(any_keywords=pb.Keywords(values=["a", "b"]))
                )
            ),
            pb.Condition(
                filter=pb.Filter(must=[pb.Condition(is_empty=pb.IsEmptyCondition(key="x.y"))])
            ),
        ],
        must_not=[
            pb.Condition(has_id=pb.HasIdCondition(ids=[pb.PointId(num=1)])),
            pb.Condition(
                field=pb.FieldCondition(
                    key="year", match=pb.Match(except_integers=pb.Integers(values=[1999]))
                )
            ),
        ],
    )
    assert filter_convert.filter_(proto, schema) == m.Filter(
        must=(
            m.FieldCondition("lang", match=m.MatchValue("en")),
            m.FieldCondition("year", range=m.NumberRange(gte=2000, lt=2010)),
            m.FieldCondition("at", range=m.DatetimeRange(gt=moment)),
        ),
        should=(
            m.FieldCondition("tags", match=m.MatchAny(("a", "b"))),
            m.Filter(must=(m.IsEmpty("x.y"),)),
        ),
        must_not=(m.HasId((1,)), m.FieldCondition("year", match=m.MatchExcept((1999,)))),
    )
    assert filter_convert.filter_(pb.Filter(), schema) is None


def test_filter_type_checks_use_the_schema_and_the_tenant_key() -> None:
    schema = {"year": m.FieldType.INTEGER}
    keyword_on_tenant = pb.Filter(
        must=[pb.Condition(field=pb.FieldCondition(key="tenant", range=pb.Range(gt=1)))]
    )
    with pytest.raises(InvalidArgument) as error:
        filter_convert.filter_(keyword_on_tenant, schema)
    assert error.value.reason == "FILTER_TYPE_MISMATCH"
    # Undeclared keys accept any test.
    free = pb.Filter(
        must=[pb.Condition(field=pb.FieldCondition(key="other", range=pb.Range(gt=1)))]
    )
    assert filter_convert.filter_(free, schema) is not None


def test_filters_are_bounded() -> None:
    deep = pb.Filter()
    current = deep
    for _ in range(limits.MAX_FILTER_DEPTH + 2):
        current = current.must.add().filter
    with pytest.raises(InvalidArgument) as error:
        filter_convert.filter_(deep, {})
    assert error.value.reason == "FILTER_TOO_DEEP"
    wide = pb.Filter(
        must=[pb.Condition(is_empty=pb.IsEmptyCondition(key="a"))]
        * (limits.MAX_FILTER_CONDITIONS + 1)
    )
    with pytest.raises(InvalidArgument) as error:
        filter_convert.filter_(wide, {})
    assert error.value.reason == "FILTER_TOO_LARGE"


def test_page_tokens() -> None:
    token = convert.encode_page_token({"k": "points", "c": "docs", **convert.point_id_state(42)})
    state = convert.decode_page_token(token, "points")
    assert convert.point_id_from_state(state) == 42
    assert convert.decode_page_token("", "points") == {}
    for bad in ("!!", "e30=", token + "x"):
        with pytest.raises(InvalidArgument):
            convert.decode_page_token(bad, "points")
    with pytest.raises(InvalidArgument):
        convert.decode_page_token(token, "collections")  # issued for another listing


def test_limits() -> None:
    assert convert.limit(0) == limits.DEFAULT_LIMIT
    assert convert.limit(1000) == 1000
    with pytest.raises(InvalidArgument):
        convert.limit(1001)
    assert convert.page_size(0) == limits.DEFAULT_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        convert.page_size(-5)
    with pytest.raises(InvalidArgument):
        convert.offset(10_001)
