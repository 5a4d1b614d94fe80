"""What the files of the behavioural suite (test_service_*.py) share: message
builders and the books collection."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from lodestar.vector.v1 import vector_service_pb2 as pb
from lodestar.vector.v1 import vector_service_pb2_grpc as pb_grpc
from tests.vector.conftest import CreateCollection

Stub = pb_grpc.VectorServiceStub


def num(value: int) -> pb.PointId:
    return pb.PointId(num=value)


def point(
    point_id: int | str, vector: list[float], payload: dict[str, Any] | None = None
) -> pb.Point:
    identity = pb.PointId(num=point_id) if isinstance(point_id, int) else pb.PointId(uuid=point_id)
    message = pb.Point(id=identity, vector=vector)
    if payload is not None:
        message.payload.update(payload)
    return message


def id_value(point_id: pb.PointId) -> int | str:
    return point_id.num if point_id.WhichOneof("kind") == "num" else point_id.uuid


def ids_of(items: Any) -> list[int | str]:
    """Ids of points, hits or bare PointIds."""
    return [id_value(i if isinstance(i, pb.PointId) else i.id) for i in items]


def field(key: str, **match: Any) -> pb.Condition:
    return pb.Condition(field=pb.FieldCondition(key=key, match=pb.Match(**match)))


def number_range(key: str, **bounds: float) -> pb.Condition:
    return pb.Condition(field=pb.FieldCondition(key=key, range=pb.Range(**bounds)))


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


BOOKS = [
    (
        1,
        [1.0, 0.0, 0.0, 0.0],
        {
            "genre": "sf",
            "year": 1965,
            "rating": 4.5,
            "read": True,
            "title": "Dune by Frank Herbert",
            "tags": ["classic", "desert"],
            "published": "1965-08-01T00:00:00Z",
        },
    ),
    (
        2,
        [0.9, 0.1, 0.0, 0.0],
        {
            "genre": "sf",
            "year": 1984,
            "rating": 4.0,
            "read": False,
            "title": "Neuromancer by William Gibson",
            "tags": ["cyber"],
            "published": "1984-07-01T00:00:00Z",
        },
    ),
    (
        3,
        [0.0, 1.0, 0.0, 0.0],
        {
            "genre": "fantasy",
            "year": 1954,
            "rating": 4.8,
            "read": True,
            "title": "The Lord of the Rings",
            "tags": ["classic"],
            "published": "1954-07-29T00:00:00Z",
        },
    ),
    (
        4,
        [0.0, 0.9, 0.1, 0.0],
        {
            "genre": "fantasy",
            "year": 1997,
            "rating": 3.9,
            "read": False,
            "title": "Harry Potter",
            "tags": [],
            "published": "1997-06-26T00:00:00Z",
        },
    ),
    (
        5,
        [0.0, 0.0, 1.0, 0.0],
        {
            "genre": "crime",
            "year": 1939,
            "rating": 4.1,
            "title": "The Big Sleep",
            "published": "1939-02-06T00:00:00Z",
        },
    ),
    (6, [0.0, 0.0, 0.0, 1.0], {"genre": "poetry", "year": 1855, "title": "Leaves of Grass"}),
]
SCHEMA = {
    "genre": pb.PAYLOAD_FIELD_TYPE_KEYWORD,
    "year": pb.PAYLOAD_FIELD_TYPE_INTEGER,
    "rating": pb.PAYLOAD_FIELD_TYPE_FLOAT,
    "read": pb.PAYLOAD_FIELD_TYPE_BOOL,
    "title": pb.PAYLOAD_FIELD_TYPE_TEXT,
    "published": pb.PAYLOAD_FIELD_TYPE_DATETIME,
}


async def books(stub: Stub, collection: CreateCollection, tenant: str = "") -> str:
    name = await collection(schema=SCHEMA)
    await stub.UpsertPoints(
        pb.UpsertPointsRequest(
            collection=name, points=[point(i, v, p) for i, v, p in BOOKS], tenant=tenant
        )
    )
    return name


def as_struct(values: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message
