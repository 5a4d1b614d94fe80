"""The behavioural suite over real gRPC, against every backend: a tenant sees and
changes only its own points."""

from __future__ import annotations

import grpc

from lodestar.vector.v1 import vector_service_pb2 as pb
from tests.vector.conftest import CreateCollection, expect_invalid, rpc_error
from tests.vector.suite import Stub, as_struct, ids_of, num, point


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
            payload=as_struct({"seen": 1, "tenant": "globex"}),
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
            payload=as_struct({"x": 1}),
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
