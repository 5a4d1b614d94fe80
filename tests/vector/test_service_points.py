"""The behavioural suite over real gRPC, against every backend: points: write, read,
update, page through and delete."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from lodestar.vector.v1 import vector_service_pb2 as pb
from tests.vector.conftest import MAX_BATCH_POINTS, CreateCollection, expect_invalid, rpc_error
from tests.vector.suite import Stub, as_struct, books, field, ids_of, num, number_range, point


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
                pb.PointUpdate(id=num(2), payload=as_struct({"year": 2000})),
                pb.PointUpdate(id=num(3), payload=as_struct({"only": 1}), replace_payload=True),
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


async def test_payload_operations_and_deletes(stub: Stub, collection: CreateCollection) -> None:
    name = await books(stub, collection)
    sf = pb.Filter(must=[field("genre", keyword="sf")])
    await stub.SetPayload(
        pb.SetPayloadRequest(
            collection=name,
            selector=pb.PointsSelector(filter=sf),
            payload=as_struct({"shelf": "A"}),
        )
    )
    await stub.SetPayload(
        pb.SetPayloadRequest(
            collection=name,
            selector=pb.PointsSelector(ids=[num(5)]),
            payload=as_struct({"shelf": "B"}),
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
                payload=as_struct({"seen": True}),
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
