"""The behavioural suite: every VectorService RPC over real gRPC, against both backends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2

from lodestar.vector.v1 import analytics_service_pb2 as apb
from lodestar.vector.v1 import vector_service_pb2 as pb
from lodestar.vector.v1 import vector_service_pb2_grpc as pb_grpc
from tests.vector.conftest import (
    MAX_BATCH_POINTS,
    CreateCollection,
    Running,
    expect_invalid,
    rpc_error,
)

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


# --- collections --------------------------------------------------------------------------


async def test_collection_lifecycle(stub: Stub, name: Callable[[], str]) -> None:
    collection_name = name()
    config = pb.CollectionConfig(
        dimension=8,
        distance=pb.DISTANCE_DOT,
        payload_schema={"lang": pb.PAYLOAD_FIELD_TYPE_KEYWORD},
        hnsw=pb.HnswConfig(m=8, ef_construct=64, ef_search=32),
        quantization=pb.QuantizationConfig(scalar=pb.ScalarQuantization(quantile=0.95)),
        embedding_model="all-MiniLM-L6-v2",
    )
    created = await stub.CreateCollection(
        pb.CreateCollectionRequest(name=collection_name, config=config)
    )
    assert created.collection.name == collection_name
    assert created.collection.config == config
    assert created.collection.points_count == 0
    assert created.collection.create_time.seconds > 0

    got = (await stub.GetCollection(pb.GetCollectionRequest(name=collection_name))).collection
    assert got.config == config
    assert got.status in (pb.COLLECTION_STATUS_READY, pb.COLLECTION_STATUS_OPTIMIZING)

    # "year" is not in the schema yet, so any match on it is valid.
    by_year = pb.CountPointsRequest(
        collection=collection_name, filter=pb.Filter(must=[field("year", keyword="1954")])
    )
    assert (await stub.CountPoints(by_year)).count == 0
    updated = await stub.UpdateCollection(
        pb.UpdateCollectionRequest(
            name=collection_name,
            hnsw=pb.HnswConfig(ef_search=64),
            add_payload_fields={"year": pb.PAYLOAD_FIELD_TYPE_INTEGER},
            remove_payload_fields=["lang"],
        )
    )
    assert dict(updated.collection.config.payload_schema) == {"year": pb.PAYLOAD_FIELD_TYPE_INTEGER}
    # Requests are validated against the new configuration at once.
    await expect_invalid(
        stub.CountPoints(by_year), "filter.must[0].field.match.keyword", "FILTER_TYPE_MISMATCH"
    )
    assert updated.collection.config.hnsw.ef_search == 64
    assert updated.collection.config.hnsw.m == 8
    got = (await stub.GetCollection(pb.GetCollectionRequest(name=collection_name))).collection
    assert got.config == updated.collection.config

    code, details = await rpc_error(
        stub.CreateCollection(pb.CreateCollectionRequest(name=collection_name, config=config))
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS, details

    await stub.DeleteCollection(pb.DeleteCollectionRequest(name=collection_name))
    code, _ = await rpc_error(stub.GetCollection(pb.GetCollectionRequest(name=collection_name)))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await rpc_error(
        stub.DeleteCollection(pb.DeleteCollectionRequest(name=collection_name))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    # The name is free again.
    await stub.CreateCollection(pb.CreateCollectionRequest(name=collection_name, config=config))
    await stub.DeleteCollection(pb.DeleteCollectionRequest(name=collection_name))


async def test_list_collections_pages_through_every_name(
    stub: Stub, collection: CreateCollection
) -> None:
    mine = sorted([await collection() for _ in range(5)])
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListCollections(pb.ListCollectionsRequest(page_size=2, page_token=token))
        assert len(page.collections) <= 2
        seen.extend(c.name for c in page.collections)
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(seen)
    assert set(mine) <= set(seen)
    await expect_invalid(
        stub.ListCollections(pb.ListCollectionsRequest(page_token="garbage")), "page_token"
    )
    await expect_invalid(
        stub.ListCollections(pb.ListCollectionsRequest(page_size=1001)), "page_size"
    )


@pytest.mark.parametrize(
    "bad", ["", "../etc", "a/b", ".hidden", "-x", "x" * 65, "a b", "ü", "a\\b", "name\x00"]
)
async def test_collection_names_are_restricted(stub: Stub, bad: str) -> None:
    config = pb.CollectionConfig(dimension=4)
    await expect_invalid(
        stub.CreateCollection(pb.CreateCollectionRequest(name=bad, config=config)), "name"
    )
    await expect_invalid(
        stub.SearchPoints(pb.SearchPointsRequest(collection=bad, vector=[1, 0, 0, 0])), "collection"
    )


async def test_collection_config_is_validated(stub: Stub, name: Callable[[], str]) -> None:
    async def create(config: pb.CollectionConfig) -> object:
        return await stub.CreateCollection(pb.CreateCollectionRequest(name=name(), config=config))

    await expect_invalid(stub.CreateCollection(pb.CreateCollectionRequest(name=name())), "config")
    await expect_invalid(create(pb.CollectionConfig(dimension=0)), "config.dimension")
    await expect_invalid(create(pb.CollectionConfig(dimension=70_000)), "config.dimension")
    await expect_invalid(
        create(
            pb.CollectionConfig(
                dimension=4, payload_schema={"bad key": pb.PAYLOAD_FIELD_TYPE_KEYWORD}
            )
        ),
        "config.payload_schema['bad key']",
    )
    await expect_invalid(
        create(
            pb.CollectionConfig(
                dimension=4, payload_schema={"k": pb.PAYLOAD_FIELD_TYPE_UNSPECIFIED}
            )
        ),
        "config.payload_schema['k']",
    )
    await expect_invalid(
        create(pb.CollectionConfig(dimension=4, hnsw=pb.HnswConfig(m=1000))), "config.hnsw.m"
    )
    await expect_invalid(
        create(
            pb.CollectionConfig(
                dimension=4,
                quantization=pb.QuantizationConfig(scalar=pb.ScalarQuantization(quantile=0.1)),
            )
        ),
        "config.quantization.scalar.quantile",
    )


# --- points ------------------------------------------------------------------------------


async def test_upsert_and_get_points(stub: Stub, collection: CreateCollection) -> None:
    name = await collection()
    chosen = str(uuid.uuid4())
    payload = {"text": "hi", "n": 3, "f": 2.5, "ok": True, "nested": {"a": [1, "x", None]}}
    response = await stub.UpsertPoints(
        pb.UpsertPointsRequest(
            collection=name,
            points=[
                point(7, [1, 0, 0, 0], payload),
                point(chosen.upper(), [0, 1, 0, 0]),
                pb.Point(vector=[0, 0, 1, 0]),
            ],
        )
    )
    ids = ids_of(response.ids)
    assert ids[0] == 7
    assert ids[1] == chosen  # canonical (lower-case) UUID text
    generated = ids[2]
    assert isinstance(generated, str)
    assert uuid.UUID(generated)

    got = await stub.GetPoints(
        pb.GetPointsRequest(
            collection=name,
            ids=[pb.PointId(uuid=generated), num(999), num(7), pb.PointId(uuid=chosen)],
            with_payload=True,
            with_vector=True,
        )
    )
    assert ids_of(got.points) == [generated, 7, chosen]
    seven = got.points[1]
    assert dict(seven.payload)["text"] == "hi"
    from google.protobuf.json_format import MessageToDict

    assert MessageToDict(seven.payload) == payload
    assert list(seven.vector) == pytest.approx([1, 0, 0, 0])
    bare = await stub.GetPoints(pb.GetPointsRequest(collection=name, ids=[num(7)]))
    assert not bare.points[0].vector
    assert not bare.points[0].payload.fields

    # Upserting again replaces the point.
    await stub.UpsertPoints(
        pb.UpsertPointsRequest(collection=name, points=[point(7, [0, 0, 0, 1], {"v": 2})])
    )
    again = await stub.GetPoints(
        pb.GetPointsRequest(collection=name, ids=[num(7)], with_payload=True, with_vector=True)
    )
    assert MessageToDict(again.points[0].payload) == {"v": 2}
    assert list(again.points[0].vector) == pytest.approx([0, 0, 0, 1])
    count = await stub.CountPoints(pb.CountPointsRequest(collection=name))
    assert count.count == 3


async def test_bad_points_are_rejected_naming_the_field(
    stub: Stub, collection: CreateCollection
) -> None:
    name = await collection()

    def upsert(*points: pb.Point) -> Any:
        return stub.UpsertPoints(pb.UpsertPointsRequest(collection=name, points=list(points)))

    await expect_invalid(
        upsert(point(1, [1, 0, 0, 0]), point(2, [1, 0, 0])),
        "points[1].vector",
        "DIMENSION_MISMATCH",
    )
    await expect_invalid(
        upsert(point(1, [1, float("nan"), 0, 0])), "points[0].vector", "NON_FINITE_VECTOR"
    )
    await expect_invalid(
        upsert(point(1, [float("inf"), 0, 0, 0])), "points[0].vector", "NON_FINITE_VECTOR"
    )
    await expect_invalid(
        upsert(point("not-a-uuid", [1, 0, 0, 0])), "points[0].id.uuid", "INVALID_ID"
    )
    await expect_invalid(upsert(point(1, [1, 0, 0, 0], {"x": float("nan")})), "points[0].payload.x")
    await expect_invalid(upsert(), "points", "EMPTY_BATCH")
    too_many = [point(i, [1, 0, 0, 0]) for i in range(MAX_BATCH_POINTS + 1)]
    await expect_invalid(upsert(*too_many), "points", "BATCH_TOO_LARGE")
    # Nothing of the rejected requests was written.
    assert (await stub.CountPoints(pb.CountPointsRequest(collection=name))).count == 0
    code, details = await rpc_error(
        stub.UpsertPoints(
            pb.UpsertPointsRequest(collection="missing-collection", points=[point(1, [1, 0, 0, 0])])
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "COLLECTION_NOT_FOUND"


async def test_update_points(stub: Stub, collection: CreateCollection) -> None:
    name = await books(stub, collection)
    response = await stub.UpdatePoints(
        pb.UpdatePointsRequest(
            collection=name,
            updates=[
                pb.PointUpdate(id=num(1), vector=[0, 0, 0, 1]),
                pb.PointUpdate(id=num(2), payload=_struct({"year": 2000})),
                pb.PointUpdate(id=num(3), payload=_struct({"only": 1}), replace_payload=True),
            ],
        )
    )
    assert response.updated_count == 3
    got = await stub.GetPoints(
        pb.GetPointsRequest(
            collection=name, ids=[num(1), num(2), num(3)], with_payload=True, with_vector=True
        )
    )
    one, two, three = got.points
    assert list(one.vector) == pytest.approx([0, 0, 0, 1])
    assert one.payload["genre"] == "sf"
    assert two.payload["year"] == 2000
    assert two.payload["genre"] == "sf"
    assert dict(three.payload) == {"only": 1}

    code, details = await rpc_error(
        stub.UpdatePoints(
            pb.UpdatePointsRequest(
                collection=name,
                updates=[
                    pb.PointUpdate(id=num(1), vector=[1, 0, 0, 0]),
                    pb.PointUpdate(id=num(404), vector=[1, 0, 0, 0]),
                ],
            )
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert details.field_violations[0][0] == "updates[1].id"
    # Nothing was applied.
    still = await stub.GetPoints(
        pb.GetPointsRequest(collection=name, ids=[num(1)], with_vector=True)
    )
    assert list(still.points[0].vector) == pytest.approx([0, 0, 0, 1])
    await expect_invalid(
        stub.UpdatePoints(
            pb.UpdatePointsRequest(collection=name, updates=[pb.PointUpdate(id=num(1))])
        ),
        "updates[0]",
    )


def _struct(values: dict[str, Any]) -> Any:
    from google.protobuf import struct_pb2

    message = struct_pb2.Struct()
    message.update(values)
    return message


async def test_payload_operations_and_deletes(stub: Stub, collection: CreateCollection) -> None:
    name = await books(stub, collection)
    sf = pb.Filter(must=[field("genre", keyword="sf")])
    await stub.SetPayload(
        pb.SetPayloadRequest(
            collection=name, selector=pb.PointsSelector(filter=sf), payload=_struct({"shelf": "A"})
        )
    )
    await stub.SetPayload(
        pb.SetPayloadRequest(
            collection=name,
            selector=pb.PointsSelector(ids=[num(5)]),
            payload=_struct({"shelf": "B"}),
            overwrite=True,
        )
    )
    got = await stub.GetPoints(
        pb.GetPointsRequest(
            collection=name, ids=[num(1), num(2), num(3), num(5)], with_payload=True
        )
    )
    assert [dict(p.payload).get("shelf") for p in got.points] == [
        "A",
        "A",
        None,
        "B",
    ]
    assert dict(got.points[3].payload) == {"shelf": "B"}
    assert got.points[0].payload["genre"] == "sf"

    await stub.DeletePayloadKeys(
        pb.DeletePayloadKeysRequest(
            collection=name,
            selector=pb.PointsSelector(ids=[num(1)], filter=sf),
            keys=["shelf", "tags"],
        )
    )
    got = await stub.GetPoints(
        pb.GetPointsRequest(collection=name, ids=[num(1), num(2)], with_payload=True)
    )
    assert "shelf" not in got.points[0].payload
    assert "tags" not in got.points[0].payload
    assert got.points[1].payload["shelf"] == "A"

    deleted = await stub.DeletePoints(
        pb.DeletePointsRequest(collection=name, selector=pb.PointsSelector(ids=[num(6), num(404)]))
    )
    assert deleted.deleted_count == 1
    deleted = await stub.DeletePoints(
        pb.DeletePointsRequest(
            collection=name,
            selector=pb.PointsSelector(filter=pb.Filter(must=[field("genre", keyword="fantasy")])),
        )
    )
    assert deleted.deleted_count == 2
    assert (await stub.CountPoints(pb.CountPointsRequest(collection=name))).count == 3

    await expect_invalid(stub.DeletePoints(pb.DeletePointsRequest(collection=name)), "selector")
    await expect_invalid(
        stub.DeletePoints(pb.DeletePointsRequest(collection=name, selector=pb.PointsSelector())),
        "selector",
        "EMPTY_SELECTOR",
    )
    await expect_invalid(
        stub.DeletePayloadKeys(
            pb.DeletePayloadKeysRequest(
                collection=name, selector=pb.PointsSelector(ids=[num(1)]), keys=["ok", "no way"]
            )
        ),
        "keys[1]",
    )


async def test_batch_update_applies_in_order_and_validates_first(
    stub: Stub, collection: CreateCollection
) -> None:
    name = await collection(schema={"k": pb.PAYLOAD_FIELD_TYPE_KEYWORD})
    operations = [
        pb.PointsOperation(
            upsert=pb.UpsertOperation(
                points=[point(1, [1, 0, 0, 0], {"k": "a"}), point(2, [0, 1, 0, 0], {"k": "b"})]
            )
        ),
        pb.PointsOperation(
            set_payload=pb.SetPayloadOperation(
                selector=pb.PointsSelector(filter=pb.Filter(must=[field("k", keyword="a")])),
                payload=_struct({"seen": True}),
            )
        ),
        pb.PointsOperation(delete=pb.DeleteOperation(selector=pb.PointsSelector(ids=[num(2)]))),
        pb.PointsOperation(
            delete_payload_keys=pb.DeletePayloadKeysOperation(
                selector=pb.PointsSelector(ids=[num(1)]), keys=["k"]
            )
        ),
    ]
    response = await stub.BatchUpdatePoints(
        pb.BatchUpdatePointsRequest(collection=name, operations=operations)
    )
    assert [r.affected_count for r in response.results] == [2, 1, 1, 1]
    assert ids_of(response.results[0].ids) == [1, 2]
    got = await stub.GetPoints(
        pb.GetPointsRequest(collection=name, ids=[num(1), num(2)], with_payload=True)
    )
    assert ids_of(got.points) == [1]
    assert dict(got.points[0].payload) == {"seen": True}

    bad = [
        pb.PointsOperation(delete=pb.DeleteOperation(selector=pb.PointsSelector(ids=[num(1)]))),
        pb.PointsOperation(upsert=pb.UpsertOperation(points=[point(3, [1, 0])])),
    ]
    await expect_invalid(
        stub.BatchUpdatePoints(pb.BatchUpdatePointsRequest(collection=name, operations=bad)),
        "operations[1].upsert.points[0].vector",
    )
    assert (await stub.CountPoints(pb.CountPointsRequest(collection=name))).count == 1
    await expect_invalid(
        stub.BatchUpdatePoints(
            pb.BatchUpdatePointsRequest(collection=name, operations=[pb.PointsOperation()])
        ),
        "operations[0]",
    )


async def test_list_points_pages_in_id_order(stub: Stub, collection: CreateCollection) -> None:
    name = await collection()
    uuids = sorted(str(uuid.uuid4()) for _ in range(3))
    points = [point(i, [1, i, 0, 0], {"i": i}) for i in range(1, 24)] + [
        point(u, [0, 1, 0, 0]) for u in uuids
    ]
    await stub.UpsertPoints(pb.UpsertPointsRequest(collection=name, points=points))
    seen: list[int | str] = []
    token = ""
    while True:
        page = await stub.ListPoints(
            pb.ListPointsRequest(collection=name, page_size=5, page_token=token, with_payload=True)
        )
        seen.extend(ids_of(page.points))
        token = page.next_page_token
        if not token:
            break
    assert seen == list(range(1, 24)) + uuids
    odd = await stub.ListPoints(
        pb.ListPointsRequest(
            collection=name, filter=pb.Filter(must=[number_range("i", gte=20)]), page_size=100
        )
    )
    assert ids_of(odd.points) == [20, 21, 22, 23]
    await expect_invalid(
        stub.ListPoints(pb.ListPointsRequest(collection=name, page_token="bm90IGEgdG9rZW4=")),
        "page_token",
    )
    await expect_invalid(
        stub.ListPoints(pb.ListPointsRequest(collection=name, page_size=-1)), "page_size"
    )


# --- search ------------------------------------------------------------------------------


async def test_search_matches_exact_nearest_neighbours(
    stub: Stub, collection: CreateCollection
) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    for distance, measure in (
        (pb.DISTANCE_COSINE, "cosine"),
        (pb.DISTANCE_EUCLID, "euclid"),
        (pb.DISTANCE_DOT, "dot"),
        (pb.DISTANCE_MANHATTAN, "manhattan"),
    ):
        name = await collection(dimension=16, distance=distance)
        await stub.UpsertPoints(
            pb.UpsertPointsRequest(
                collection=name, points=[point(i, v.tolist()) for i, v in enumerate(vectors)]
            )
        )
        query = rng.normal(size=16).astype(np.float32)
        response = await stub.SearchPoints(
            pb.SearchPointsRequest(collection=name, vector=query.tolist(), limit=10)
        )
        if measure == "cosine":
            normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            order = np.argsort(-(normed @ (query / np.linalg.norm(query))))
        elif measure == "dot":
            order = np.argsort(-(vectors @ query))
        elif measure == "euclid":
            order = np.argsort(np.linalg.norm(vectors - query, axis=1))
        else:
            order = np.argsort(np.abs(vectors - query).sum(axis=1))
        assert ids_of(response.points) == order[:10].tolist(), measure
        scores = [p.score for p in response.points]
        assert scores == sorted(scores, reverse=measure in ("cosine", "dot")), measure
        # Offsets page through the same ranking.
        second = await stub.SearchPoints(
            pb.SearchPointsRequest(collection=name, vector=query.tolist(), limit=5, offset=5)
        )
        assert ids_of(second.points) == order[5:10].tolist(), measure
        assert response.time_ms > 0


async def test_search_options(stub: Stub, collection: CreateCollection) -> None:
    name = await books(stub, collection)
    response = await stub.SearchPoints(
        pb.SearchPointsRequest(
            collection=name,
            vector=[1, 0, 0, 0],
            limit=3,
            score_threshold=0.5,
            with_payload=True,
            with_vector=True,
        )
    )
    assert ids_of(response.points) == [1, 2]
    assert response.points[0].payload["genre"] == "sf"
    assert list(response.points[0].vector) == pytest.approx([1, 0, 0, 0])
    exact = await stub.SearchPoints(
        pb.SearchPointsRequest(
            collection=name,
            vector=[1, 0, 0, 0],
            limit=2,
            params=pb.SearchParams(exact=True, hnsw_ef=64),
        )
    )
    assert ids_of(exact.points) == [1, 2]
    assert not exact.points[0].payload.fields
    assert not exact.points[0].vector


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ({"must": [field("genre", keyword="sf")]}, [1, 2]),
        ({"must": [field("year", integer=1954)]}, [3]),
        ({"must": [field("read", boolean=True)]}, [1, 3]),
        ({"must": [field("read", boolean=False)]}, [2, 4]),
        ({"must": [field("title", text="lord rings")]}, [3]),
        ({"must": [field("genre", any_keywords=pb.Keywords(values=["crime", "poetry"]))]}, [5, 6]),
        (
            {
                "must": [
                    field("genre", except_keywords=pb.Keywords(values=["sf", "fantasy", "crime"]))
                ]
            },
            [6],
        ),
        ({"must": [field("year", any_integers=pb.Integers(values=[1939, 1855]))]}, [5, 6]),
        ({"must": [field("tags", keyword="classic")]}, [1, 3]),
        ({"must": [number_range("year", gte=1950, lt=1990)]}, [1, 2, 3]),
        ({"must": [number_range("rating", gt=4.4)]}, [1, 3]),
        ({"must": [pb.Condition(is_empty=pb.IsEmptyCondition(key="tags"))]}, [4, 5, 6]),
        ({"must": [pb.Condition(has_id=pb.HasIdCondition(ids=[num(2), num(5), num(99)]))]}, [2, 5]),
        ({"must_not": [field("genre", keyword="sf")]}, [3, 4, 5, 6]),
        ({"should": [field("genre", keyword="crime"), field("year", integer=1855)]}, [5, 6]),
        (
            {
                "must": [
                    pb.Condition(
                        filter=pb.Filter(
                            should=[field("genre", keyword="sf"), field("genre", keyword="fantasy")]
                        )
                    ),
                    number_range("rating", gte=4.0),
                ],
                "must_not": [pb.Condition(has_id=pb.HasIdCondition(ids=[num(3)]))],
            },
            [1, 2],
        ),
    ],
)
async def test_filters(
    stub: Stub, collection: CreateCollection, conditions: dict[str, Any], expected: list[int]
) -> None:
    name = await books(stub, collection)
    query_filter = pb.Filter(**conditions)
    listed = await stub.ListPoints(pb.ListPointsRequest(collection=name, filter=query_filter))
    assert sorted(ids_of(listed.points)) == expected
    counted = await stub.CountPoints(pb.CountPointsRequest(collection=name, filter=query_filter))
    assert counted.count == len(expected)
    searched = await stub.SearchPoints(
        pb.SearchPointsRequest(collection=name, vector=[1, 1, 1, 1], limit=10, filter=query_filter)
    )
    assert sorted(ids_of(searched.points)) == expected


async def test_datetime_range_filter(stub: Stub, collection: CreateCollection) -> None:
    name = await books(stub, collection)
    window = pb.DatetimeRange(
        gte=stamp(datetime(1950, 1, 1, tzinfo=UTC)), lt=stamp(datetime(1985, 1, 1, tzinfo=UTC))
    )
    query_filter = pb.Filter(
        must=[pb.Condition(field=pb.FieldCondition(key="published", datetime_range=window))]
    )
    listed = await stub.ListPoints(pb.ListPointsRequest(collection=name, filter=query_filter))
    assert sorted(ids_of(listed.points)) == [1, 2, 3]


@pytest.mark.parametrize(
    ("query_filter", "field_path", "reason"),
    [
        (
            pb.Filter(must=[field("bad key", keyword="x")]),
            "filter.must[0].field.key",
            "INVALID_KEY",
        ),
        (pb.Filter(must=[field("", keyword="x")]), "filter.must[0].field.key", "INVALID_KEY"),
        (
            pb.Filter(must=[field("year", keyword="1954")]),
            "filter.must[0].field.match.keyword",
            "FILTER_TYPE_MISMATCH",
        ),
        (
            pb.Filter(must=[field("genre", integer=3)]),
            "filter.must[0].field.match.integer",
            "FILTER_TYPE_MISMATCH",
        ),
        (
            pb.Filter(should=[number_range("genre", gte=1)]),
            "filter.should[0].field.range",
            "FILTER_TYPE_MISMATCH",
        ),
        (
            pb.Filter(
                must=[
                    pb.Condition(
                        field=pb.FieldCondition(
                            key="year",
                            datetime_range=pb.DatetimeRange(gte=stamp(datetime(2000, 1, 1))),
                        )
                    )
                ]
            ),
            "filter.must[0].field.datetime_range",
            "FILTER_TYPE_MISMATCH",
        ),
        (pb.Filter(must=[pb.Condition()]), "filter.must[0]", "EMPTY_CONDITION"),
        (
            pb.Filter(must=[pb.Condition(field=pb.FieldCondition(key="year"))]),
            "filter.must[0].field",
            "EMPTY_CONDITION",
        ),
        (pb.Filter(must=[number_range("year")]), "filter.must[0].field.range", "EMPTY_CONDITION"),
        (
            pb.Filter(must=[number_range("year", gte=float("nan"))]),
            "filter.must[0].field.range.gte",
            "NON_FINITE_BOUND",
        ),
        (
            pb.Filter(must=[field("genre", any_keywords=pb.Keywords())]),
            "filter.must[0].field.match.any_keywords",
            "EMPTY_CONDITION",
        ),
        (
            pb.Filter(
                must_not=[pb.Condition(has_id=pb.HasIdCondition(ids=[pb.PointId(uuid="nope")]))]
            ),
            "filter.must_not[0].has_id.ids[0].uuid",
            "INVALID_ID",
        ),
        (
            pb.Filter(must=[pb.Condition(is_empty=pb.IsEmptyCondition(key="a..b"))]),
            "filter.must[0].is_empty.key",
            "INVALID_KEY",
        ),
    ],
)
async def test_bad_filters_are_rejected(
    stub: Stub, collection: CreateCollection, query_filter: pb.Filter, field_path: str, reason: str
) -> None:
    name = await books(stub, collection)
    await expect_invalid(
        stub.CountPoints(pb.CountPointsRequest(collection=name, filter=query_filter)),
        field_path,
        reason,
    )
    await expect_invalid(
        stub.SearchPoints(
            pb.SearchPointsRequest(collection=name, vector=[1, 0, 0, 0], filter=query_filter)
        ),
        field_path,
        reason,
    )


async def test_search_arguments_are_validated(stub: Stub, collection: CreateCollection) -> None:
    name = await collection()

    def search(**fields: Any) -> Any:
        return stub.SearchPoints(pb.SearchPointsRequest(collection=name, **fields))

    await expect_invalid(search(), "vector", "MISSING_VECTOR")
    await expect_invalid(search(vector=[1, 0, 0]), "vector", "DIMENSION_MISMATCH")
    await expect_invalid(search(vector=[1, 0, 0, float("nan")]), "vector", "NON_FINITE_VECTOR")
    await expect_invalid(search(vector=[1, 0, 0, 0], limit=1001), "limit", "OUT_OF_RANGE")
    await expect_invalid(search(vector=[1, 0, 0, 0], offset=10_001), "offset", "OUT_OF_RANGE")
    await expect_invalid(
        search(vector=[1, 0, 0, 0], score_threshold=float("inf")), "score_threshold"
    )
    await expect_invalid(
        search(vector=[1, 0, 0, 0], params=pb.SearchParams(hnsw_ef=0)), "params.hnsw_ef"
    )
    empty = await search(vector=[1, 0, 0, 0])
    assert list(empty.points) == []


async def test_batch_search_keeps_order_across_collections(
    stub: Stub, collection: CreateCollection
) -> None:
    first = await books(stub, collection)
    second = await collection(dimension=2)
    await stub.UpsertPoints(
        pb.UpsertPointsRequest(collection=second, points=[point(10, [1, 0]), point(11, [0, 1])])
    )
    response = await stub.BatchSearchPoints(
        pb.BatchSearchPointsRequest(
            searches=[
                pb.SearchPointsRequest(collection=first, vector=[0, 1, 0, 0], limit=1),
                pb.SearchPointsRequest(collection=second, vector=[0, 1], limit=1),
                pb.SearchPointsRequest(collection=first, vector=[0, 0, 1, 0], limit=1),
            ]
        )
    )
    assert [ids_of(r.points) for r in response.results] == [[3], [11], [5]]
    await expect_invalid(
        stub.BatchSearchPoints(
            pb.BatchSearchPointsRequest(
                searches=[
                    pb.SearchPointsRequest(collection=first, vector=[0, 1, 0, 0]),
                    pb.SearchPointsRequest(collection=second, vector=[1, 0, 0]),
                ]
            )
        ),
        "searches[1].vector",
    )
    await expect_invalid(stub.BatchSearchPoints(pb.BatchSearchPointsRequest()), "searches")
    too_many = [pb.SearchPointsRequest(collection=first, vector=[1, 0, 0, 0])] * 21
    await expect_invalid(
        stub.BatchSearchPoints(pb.BatchSearchPointsRequest(searches=too_many)),
        "searches",
        "BATCH_TOO_LARGE",
    )


async def test_recommend(stub: Stub, collection: CreateCollection) -> None:
    name = await books(stub, collection)
    by_id = await stub.RecommendPoints(
        pb.RecommendPointsRequest(
            collection=name, positive=[pb.RecommendExample(id=num(1))], limit=3
        )
    )
    assert ids_of(by_id.points)[0] == 2
    assert 1 not in ids_of(by_id.points)  # examples are never recommended

    best = await stub.RecommendPoints(
        pb.RecommendPointsRequest(
            collection=name,
            positive=[
                pb.RecommendExample(id=num(1)),
                pb.RecommendExample(vector=pb.Vector(values=[0, 1, 0, 0])),
            ],
            negative=[pb.RecommendExample(id=num(4))],
            strategy=pb.RECOMMEND_STRATEGY_BEST_SCORE,
            limit=2,
            with_payload=True,
        )
    )
    assert set(ids_of(best.points)) == {2, 3}
    assert best.points[0].payload.fields

    filtered = await stub.RecommendPoints(
        pb.RecommendPointsRequest(
            collection=name,
            positive=[pb.RecommendExample(id=num(1))],
            filter=pb.Filter(must=[field("genre", keyword="fantasy")]),
            limit=5,
        )
    )
    assert sorted(ids_of(filtered.points)) == [3, 4]

    code, details = await rpc_error(
        stub.RecommendPoints(
            pb.RecommendPointsRequest(collection=name, positive=[pb.RecommendExample(id=num(404))])
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert details.field_violations[0][0] == "positive[0].id"
    await expect_invalid(
        stub.RecommendPoints(pb.RecommendPointsRequest(collection=name)), "positive"
    )
    await expect_invalid(
        stub.RecommendPoints(
            pb.RecommendPointsRequest(
                collection=name, positive=[pb.RecommendExample(vector=pb.Vector(values=[1, 2]))]
            )
        ),
        "positive[0].vector",
    )
    await expect_invalid(
        stub.RecommendPoints(
            pb.RecommendPointsRequest(collection=name, positive=[pb.RecommendExample()])
        ),
        "positive[0]",
    )


# --- tenants -----------------------------------------------------------------------------


async def test_tenants_only_see_their_own_points(stub: Stub, collection: CreateCollection) -> None:
    name = await collection(schema={"genre": pb.PAYLOAD_FIELD_TYPE_KEYWORD})
    await stub.UpsertPoints(
        pb.UpsertPointsRequest(
            collection=name,
            tenant="acme",
            points=[
                point(1, [1, 0, 0, 0], {"genre": "sf", "tenant": "evil"}),
                point(2, [0, 1, 0, 0]),
            ],
        )
    )
    await stub.UpsertPoints(
        pb.UpsertPointsRequest(
            collection=name, tenant="globex", points=[point(3, [1, 0, 0, 0], {"genre": "sf"})]
        )
    )
    await stub.UpsertPoints(
        pb.UpsertPointsRequest(collection=name, points=[point(4, [1, 0, 0, 0])])
    )

    stored = await stub.GetPoints(
        pb.GetPointsRequest(collection=name, ids=[num(1)], with_payload=True)
    )
    assert stored.points[0].payload["tenant"] == "acme"  # stamped, whatever the client sent

    async def visible(tenant: str) -> dict[str, list[int | str]]:
        get = await stub.GetPoints(
            pb.GetPointsRequest(collection=name, ids=[num(i) for i in range(1, 5)], tenant=tenant)
        )
        search = await stub.SearchPoints(
            pb.SearchPointsRequest(collection=name, vector=[1, 0, 0, 0], limit=10, tenant=tenant)
        )
        listed = await stub.ListPoints(pb.ListPointsRequest(collection=name, tenant=tenant))
        count = await stub.CountPoints(pb.CountPointsRequest(collection=name, tenant=tenant))
        return {
            "get": ids_of(get.points),
            "search": sorted(ids_of(search.points)),
            "list": ids_of(listed.points),
            "count": [count.count],
        }

    assert await visible("acme") == {"get": [1, 2], "search": [1, 2], "list": [1, 2], "count": [2]}
    assert await visible("globex") == {"get": [3], "search": [3], "list": [3], "count": [1]}
    assert (await visible(""))["count"] == [4]

    recommended = await stub.RecommendPoints(
        pb.RecommendPointsRequest(
            collection=name,
            tenant="globex",
            positive=[pb.RecommendExample(vector=pb.Vector(values=[1, 0, 0, 0]))],
            limit=10,
        )
    )
    assert ids_of(recommended.points) == [3]
    code, _ = await rpc_error(
        stub.RecommendPoints(
            pb.RecommendPointsRequest(
                collection=name, tenant="globex", positive=[pb.RecommendExample(id=num(1))]
            )
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND

    # Writes stay inside the tenant.
    code, details = await rpc_error(
        stub.UpsertPoints(
            pb.UpsertPointsRequest(
                collection=name, tenant="globex", points=[point(1, [0, 0, 1, 0])]
            )
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    code, _ = await rpc_error(
        stub.UpdatePoints(
            pb.UpdatePointsRequest(
                collection=name,
                tenant="globex",
                updates=[pb.PointUpdate(id=num(1), vector=[0, 0, 1, 0])],
            )
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    deleted = await stub.DeletePoints(
        pb.DeletePointsRequest(
            collection=name,
            tenant="globex",
            selector=pb.PointsSelector(ids=[num(1), num(2), num(3)]),
        )
    )
    assert deleted.deleted_count == 1
    await stub.SetPayload(
        pb.SetPayloadRequest(
            collection=name,
            tenant="acme",
            selector=pb.PointsSelector(
                filter=pb.Filter(must_not=[pb.Condition(has_id=pb.HasIdCondition(ids=[num(999)]))])
            ),
            payload=_struct({"seen": 1, "tenant": "globex"}),
        )
    )
    everything = await stub.ListPoints(pb.ListPointsRequest(collection=name, with_payload=True))
    payloads = {ids_of([p])[0]: dict(p.payload) for p in everything.points}
    assert payloads[1]["seen"] == 1
    assert payloads[1]["tenant"] == "acme"
    assert "seen" not in payloads[4]
    await stub.SetPayload(
        pb.SetPayloadRequest(
            collection=name,
            tenant="acme",
            selector=pb.PointsSelector(ids=[num(2)]),
            payload=_struct({"x": 1}),
            overwrite=True,
        )
    )
    two = await stub.GetPoints(
        pb.GetPointsRequest(collection=name, ids=[num(2)], with_payload=True)
    )
    assert dict(two.points[0].payload) == {"x": 1, "tenant": "acme"}
    await expect_invalid(
        stub.DeletePayloadKeys(
            pb.DeletePayloadKeysRequest(
                collection=name,
                tenant="acme",
                selector=pb.PointsSelector(ids=[num(1)]),
                keys=["tenant"],
            )
        ),
        "keys",
        "TENANT_KEY_PROTECTED",
    )
    await expect_invalid(
        stub.CountPoints(pb.CountPointsRequest(collection=name, tenant=" padded ")), "tenant"
    )


# --- clustering --------------------------------------------------------------------------


async def _blobs(stub: Stub, collection: CreateCollection) -> str:
    rng = np.random.default_rng(3)
    centres = np.eye(8, dtype=np.float32)[:3] * 10
    name = await collection(
        dimension=8, distance=pb.DISTANCE_EUCLID, schema={"blob": pb.PAYLOAD_FIELD_TYPE_INTEGER}
    )
    points = []
    for blob, size in enumerate((60, 40, 20)):
        for _ in range(size):
            vector = centres[blob] + rng.normal(scale=0.3, size=8)
            points.append(
                pb.Point(
                    id=num(len(points)), vector=vector.tolist(), payload=_struct({"blob": blob})
                )
            )
    await stub.UpsertPoints(pb.UpsertPointsRequest(collection=name, points=points))
    return name


async def test_kmeans_clusters(stub: Stub, collection: CreateCollection) -> None:
    name = await _blobs(stub, collection)
    response = await stub.ClusterPoints(
        pb.ClusterPointsRequest(
            collection=name,
            num_clusters=3,
            seed=1,
            with_member_ids=True,
            with_payload=True,
            representatives=2,
        )
    )
    assert response.total_points == 120
    assert response.sampled_points == 120
    assert response.noise_points == 0
    assert [c.size for c in response.clusters] == [60, 40, 20]
    for cluster in response.clusters:
        members = ids_of(cluster.member_ids)
        assert len(members) == cluster.size
        expected_blob = {60: 0, 40: 1, 20: 2}[cluster.size]
        assert len(cluster.representatives) == 2
        for hit in cluster.representatives:
            assert hit.payload["blob"] == expected_blob
            assert ids_of([hit])[0] in members
        assert len(cluster.centroid) == 8
    assert sorted(i for c in response.clusters for i in ids_of(c.member_ids)) == list(range(120))

    filtered = await stub.ClusterPoints(
        pb.ClusterPointsRequest(
            collection=name, num_clusters=2, filter=pb.Filter(must_not=[field("blob", integer=0)])
        )
    )
    assert filtered.total_points == 60
    assert sorted(c.size for c in filtered.clusters) == [20, 40]

    sampled = await stub.ClusterPoints(
        pb.ClusterPointsRequest(collection=name, num_clusters=3, sample_size=30)
    )
    assert sampled.total_points == 120
    assert sampled.sampled_points == 30
    assert sum(c.size for c in sampled.clusters) == 30

    await expect_invalid(
        stub.ClusterPoints(pb.ClusterPointsRequest(collection=name, num_clusters=1)), "num_clusters"
    )
    await expect_invalid(
        stub.ClusterPoints(pb.ClusterPointsRequest(collection=name, sample_size=10**9)),
        "sample_size",
    )


async def test_density_clusters_find_blobs_and_noise(
    stub: Stub, collection: CreateCollection
) -> None:
    name = await _blobs(stub, collection)
    await stub.UpsertPoints(
        pb.UpsertPointsRequest(
            collection=name, points=[point(1000, [50.0] * 8), point(1001, [-50.0] * 8)]
        )
    )
    response = await stub.ClusterPoints(
        pb.ClusterPointsRequest(
            collection=name,
            algorithm=pb.CLUSTER_ALGORITHM_DENSITY,
            density_min_samples=4,
            with_member_ids=True,
        )
    )
    # Three pure clusters (blob ids are 0-59, 60-99 and 100-119); the far points are noise,
    # as are a few stragglers at the edge of a blob.
    blob_of = [0] * 60 + [1] * 40 + [2] * 20
    assert len(response.clusters) == 3
    for cluster, size in zip(response.clusters, (60, 40, 20), strict=True):
        members = ids_of(cluster.member_ids)
        assert all(isinstance(i, int) and i < 120 for i in members)
        assert len({blob_of[int(i)] for i in members}) == 1
        assert cluster.size >= 0.9 * size
    clustered = sum(c.size for c in response.clusters)
    assert response.noise_points == 122 - clustered
    assert 2 <= response.noise_points <= 8
    explicit = await stub.ClusterPoints(
        pb.ClusterPointsRequest(
            collection=name, algorithm=pb.CLUSTER_ALGORITHM_DENSITY, density_eps=5.0
        )
    )
    assert [c.size for c in explicit.clusters] == [60, 40, 20]
    assert explicit.noise_points == 2
    await expect_invalid(
        stub.ClusterPoints(
            pb.ClusterPointsRequest(
                collection=name, algorithm=pb.CLUSTER_ALGORITHM_DENSITY, density_eps=-1
            )
        ),
        "density_eps",
    )


# --- snapshots ---------------------------------------------------------------------------


async def test_snapshots_create_list_restore_delete(
    stub: Stub, collection: CreateCollection, name: Callable[[], str]
) -> None:
    source = await books(stub, collection)
    first = (await stub.CreateSnapshot(pb.CreateSnapshotRequest(collection=source))).snapshot
    assert first.collection == source
    assert first.size_bytes > 0
    assert first.name
    await stub.DeletePoints(
        pb.DeletePointsRequest(collection=source, selector=pb.PointsSelector(ids=[num(1), num(2)]))
    )
    await asyncio.sleep(0.01)
    second = (await stub.CreateSnapshot(pb.CreateSnapshotRequest(collection=source))).snapshot
    listed = await stub.ListSnapshots(pb.ListSnapshotsRequest(collection=source))
    assert [s.name for s in listed.snapshots] == [second.name, first.name]  # newest first

    copy = name()
    restored = await stub.RestoreSnapshot(
        pb.RestoreSnapshotRequest(collection=source, snapshot=first.name, target_collection=copy)
    )
    assert restored.collection.name == copy
    assert restored.collection.points_count == 6
    assert dict(restored.collection.config.payload_schema) == SCHEMA
    got = await stub.GetPoints(
        pb.GetPointsRequest(collection=copy, ids=[num(1)], with_payload=True, with_vector=True)
    )
    assert got.points[0].payload["title"] == "Dune by Frank Herbert"
    assert list(got.points[0].vector) == pytest.approx([1, 0, 0, 0])
    hits = await stub.SearchPoints(
        pb.SearchPointsRequest(
            collection=copy,
            vector=[0, 1, 0, 0],
            limit=1,
            filter=pb.Filter(must=[field("genre", keyword="fantasy")]),
        )
    )
    assert ids_of(hits.points) == [3]

    # Restoring into the collection itself replaces its content.
    await stub.UpsertPoints(
        pb.UpsertPointsRequest(collection=source, points=[point(77, [1, 1, 1, 1])])
    )
    back = await stub.RestoreSnapshot(
        pb.RestoreSnapshotRequest(collection=source, snapshot=first.name)
    )
    assert back.collection.points_count == 6
    everything = await stub.ListPoints(pb.ListPointsRequest(collection=source))
    assert ids_of(everything.points) == [1, 2, 3, 4, 5, 6]

    code, _ = await rpc_error(
        stub.RestoreSnapshot(
            pb.RestoreSnapshotRequest(
                collection=source, snapshot=first.name, target_collection=copy
            )
        )
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    await stub.DeleteSnapshot(pb.DeleteSnapshotRequest(collection=source, snapshot=first.name))
    listed = await stub.ListSnapshots(pb.ListSnapshotsRequest(collection=source))
    assert [s.name for s in listed.snapshots] == [second.name]
    code, _ = await rpc_error(
        stub.DeleteSnapshot(pb.DeleteSnapshotRequest(collection=source, snapshot=first.name))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await rpc_error(
        stub.RestoreSnapshot(pb.RestoreSnapshotRequest(collection=source, snapshot=first.name))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    for bad in ("../../etc/passwd", "a/b.snapshot", ".hidden", ""):
        await expect_invalid(
            stub.DeleteSnapshot(pb.DeleteSnapshotRequest(collection=source, snapshot=bad)),
            "snapshot",
        )
    await expect_invalid(
        stub.RestoreSnapshot(
            pb.RestoreSnapshotRequest(
                collection=source, snapshot=second.name, target_collection="../x"
            )
        ),
        "target_collection",
    )
    code, _ = await rpc_error(
        stub.CreateSnapshot(pb.CreateSnapshotRequest(collection="no-such-collection"))
    )
    assert code == grpc.StatusCode.NOT_FOUND


# --- analytics -------------------------------------------------------------------------------


async def test_searches_are_recorded_for_analytics(
    running: Running, collection: CreateCollection
) -> None:
    name = await books(running.stub, collection)
    for _ in range(3):
        await running.stub.SearchPoints(
            pb.SearchPointsRequest(collection=name, vector=[1, 0, 0, 0], query_text="space opera")
        )
    await running.stub.SearchPoints(
        pb.SearchPointsRequest(
            collection=name,
            vector=[1, 0, 0, 0],
            query_text="none",
            filter=pb.Filter(must=[field("genre", keyword="nothing")]),
        )
    )
    await running.stub.RecommendPoints(
        pb.RecommendPointsRequest(collection=name, positive=[pb.RecommendExample(id=num(1))])
    )
    stats = await running.analytics.GetSearchAnalytics(
        apb.GetSearchAnalyticsRequest(collection=name)
    )
    assert stats.total.search_count == 5
    assert stats.total.zero_result_rate == pytest.approx(0.2)
    assert stats.popular_queries[0].query_text == "space opera"
    assert stats.popular_queries[0].count == 3
    sizes = await running.analytics.GetVectorAnalytics(
        apb.GetVectorAnalyticsRequest(collection=name)
    )
    assert sizes.collections[0].points_count == 6
