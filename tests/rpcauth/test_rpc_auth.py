"""Tokens, permissions, tenants and allow-lists on a real vector service that
requires tokens: the REST rules and attacks, replayed at the gRPC layer."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lodestar.auth.rpc import OPEN_SERVICES, RPC_RULES
from lodestar.embedding.v1 import embedding_service_pb2 as epb
from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.vector.v1 import analytics_service_pb2 as apb
from lodestar.vector.v1 import vector_service_pb2 as pb
from lodestar.vector.v1 import vector_service_pb2_grpc as pb_grpc
from tests.rpcauth.conftest import SecuredVector, rpc_error
from tests.vector.suite import as_struct, ids_of, num, point

NewCollection = Callable[[str], Awaitable[str]]


def test_every_rpc_of_every_service_has_a_rule() -> None:
    methods = {
        f"/{service.full_name}/{method.name}"
        for module in (epb, ipb, pb, apb)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert set(RPC_RULES) == methods
    assert not {m.lstrip("/").partition("/")[0] for m in methods} & OPEN_SERVICES


async def test_a_call_without_a_token_is_unauthenticated(secured: SecuredVector) -> None:
    anonymous = secured.as_(None)
    for call in (
        anonymous.ListCollections(pb.ListCollectionsRequest()),
        anonymous.SearchPoints(pb.SearchPointsRequest(collection="any", vector=[1, 0, 0, 0])),
        secured.analytics_as(None).GetUsageAnalytics(apb.GetUsageAnalyticsRequest()),
    ):
        error = await rpc_error(call)
        assert error.code == grpc.StatusCode.UNAUTHENTICATED
        assert error.reason == "MISSING_TOKEN"


async def test_health_stays_open_for_probes(secured: SecuredVector) -> None:
    reply = await health_pb2_grpc.HealthStub(secured.channel).Check(
        health_pb2.HealthCheckRequest(service="lodestar.vector.v1.VectorService")
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "mallory",
        "roles": ["admin"],
        "iss": "lodestar",
        "aud": "lodestar-api",
        "nbf": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _attacks(secured: SecuredVector) -> dict[str, tuple[str, str | None]]:
    """The token attacks of the gateway's tests: name → (token, reason expected)."""
    key = secured.settings.jwt_signing_key.get_secret_value()
    now = int(time.time())
    genuine = secured.token("viewer", sub="mallory")
    header, body, signature = genuine.split(".")
    none_header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    admin_body = _b64(json.dumps(_claims()).encode())
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    return {
        "alg none": (f"{none_header}.{admin_body}.", "TOKEN_ALGORITHM_REFUSED"),
        "alg none, no signature part": (f"{none_header}.{admin_body}", None),
        "flipped signature": (f"{header}.{body}.{flipped}", "INVALID_TOKEN"),
        "escalated claims, old signature": (f"{header}.{admin_body}.{signature}", "INVALID_TOKEN"),
        "another key": (jwt.encode(_claims(), "not-the-key-" * 4, "HS256"), "INVALID_TOKEN"),
        "expired": (
            jwt.encode(_claims(exp=now - 120, nbf=now - 600), key, "HS256"),
            "TOKEN_EXPIRED",
        ),
        "not yet valid": (jwt.encode(_claims(nbf=now + 300), key, "HS256"), "TOKEN_NOT_YET_VALID"),
        "wrong issuer": (jwt.encode(_claims(iss="evil"), key, "HS256"), "INVALID_TOKEN"),
        "wrong audience": (jwt.encode(_claims(aud="other"), key, "HS256"), "INVALID_TOKEN"),
        "no exp": (jwt.encode(_claims(exp=None), key, "HS256"), "INVALID_TOKEN"),
        "garbage": ("not.a.token", "INVALID_TOKEN"),
    }


async def test_forged_expired_and_misaddressed_tokens_are_refused(
    secured: SecuredVector, new_collection: NewCollection
) -> None:
    name = await new_collection("attacked")
    for attack, (token, reason) in _attacks(secured).items():
        error = await rpc_error(
            secured.as_(token).DeleteCollection(pb.DeleteCollectionRequest(name=name))
        )
        assert error.code == grpc.StatusCode.UNAUTHENTICATED, attack
        if reason is not None:
            assert error.reason == reason, (attack, error.message)
    # Still there: no attack got through.
    admin = secured.as_(secured.token("admin"))
    assert (await admin.GetCollection(pb.GetCollectionRequest(name=name))).collection.name == name


async def test_authorization_metadata_must_be_a_bearer_token(secured: SecuredVector) -> None:
    call = pb_grpc.VectorServiceStub(secured.channel).ListCollections(
        pb.ListCollectionsRequest(), metadata=(("authorization", "Basic YWRtaW46YWRtaW4="),)
    )
    error = await rpc_error(call)
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "MALFORMED_AUTHORIZATION"


async def test_a_viewer_can_read_but_not_write(
    secured: SecuredVector, new_collection: NewCollection
) -> None:
    name = await new_collection("viewed")
    admin = secured.as_(secured.token("admin"))
    await admin.UpsertPoints(
        pb.UpsertPointsRequest(collection=name, points=[point(1, [1, 0, 0, 0])])
    )
    viewer = secured.as_(secured.token("viewer"))
    found = await viewer.SearchPoints(pb.SearchPointsRequest(collection=name, vector=[1, 0, 0, 0]))
    assert ids_of(found.points) == [1]
    selector = pb.PointsSelector(ids=[num(1)])
    refused = {
        "InsertVectors": viewer.UpsertPoints(
            pb.UpsertPointsRequest(collection=name, points=[point(2, [0, 1, 0, 0])])
        ),
        "DeleteVectors": viewer.DeletePoints(
            pb.DeletePointsRequest(collection=name, selector=selector)
        ),
        "UpdateVectors": viewer.SetPayload(
            pb.SetPayloadRequest(collection=name, selector=selector, payload=as_struct({"x": 1}))
        ),
        "ManageCollections": viewer.DeleteCollection(pb.DeleteCollectionRequest(name=name)),
        "CreateSnapshots": viewer.CreateSnapshot(pb.CreateSnapshotRequest(collection=name)),
    }
    for permission, call in refused.items():
        error = await rpc_error(call)
        assert error.code == grpc.StatusCode.PERMISSION_DENIED, permission
        assert error.reason == "MISSING_PERMISSION"
        assert error.metadata["permission"] == permission
        assert permission in error.message
    # A batch needs the permission of each operation it holds.
    user = secured.as_(secured.token("user"))
    batch = pb.BatchUpdatePointsRequest(
        collection=name,
        operations=[
            pb.PointsOperation(upsert=pb.UpsertOperation(points=[point(3, [0, 0, 1, 0])])),
            pb.PointsOperation(delete=pb.DeleteOperation(selector=selector)),
        ],
    )
    error = await rpc_error(user.BatchUpdatePoints(batch))
    assert error.metadata["permission"] == "DeleteVectors"
    listed = await admin.ListPoints(pb.ListPointsRequest(collection=name))
    assert ids_of(listed.points) == [1]


async def _drain(stream: AsyncIterable[Any]) -> list[Any]:
    return [message async for message in stream]


async def test_a_snapshot_download_needs_the_snapshot_permission(
    secured: SecuredVector, new_collection: NewCollection
) -> None:
    name = await new_collection("saved")
    admin = secured.as_(secured.token("admin"))
    await admin.UpsertPoints(
        pb.UpsertPointsRequest(collection=name, points=[point(1, [1, 0, 0, 0])])
    )
    snapshot = (await admin.CreateSnapshot(pb.CreateSnapshotRequest(collection=name))).snapshot
    request = pb.DownloadSnapshotRequest(collection=name, snapshot=snapshot.name)
    pieces = await _drain(admin.DownloadSnapshot(request))
    assert sum(len(p.data) for p in pieces) == snapshot.size_bytes
    error = await rpc_error(_drain(secured.as_(secured.token("viewer")).DownloadSnapshot(request)))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.reason == "MISSING_PERMISSION"
    assert error.metadata["permission"] == "CreateSnapshots"
    error = await rpc_error(_drain(secured.as_(secured.token("user")).DownloadSnapshot(request)))
    assert error.metadata["permission"] == "CreateSnapshots"


async def test_a_tenant_token_cannot_reach_another_tenants_points(
    secured: SecuredVector, new_collection: NewCollection
) -> None:
    name = await new_collection("shared")
    globex = secured.as_(secured.token("editor", tenant="globex"))
    await globex.UpsertPoints(
        pb.UpsertPointsRequest(
            collection=name, points=[point(1, [1, 0, 0, 0], {"secret": "globex"})]
        )
    )
    acme_token = secured.token("editor", sub="wile", tenant="acme")
    acme = secured.as_(acme_token)
    await acme.UpsertPoints(
        pb.UpsertPointsRequest(collection=name, points=[point(2, [0.9, 0.1, 0, 0])])
    )
    theirs = pb.PointsSelector(ids=[num(1)])
    vector = [1.0, 0.0, 0.0, 0.0]
    everything = pb.PointsSelector(filter=pb.Filter())

    def requests(tenant: str) -> dict[str, tuple[str, Any]]:
        """One request per vector RPC that takes a tenant, aimed at globex's point."""
        return {
            "UpsertPoints": (
                "UpsertPoints",
                pb.UpsertPointsRequest(collection=name, tenant=tenant, points=[point(1, vector)]),
            ),
            "GetPoints": (
                "GetPoints",
                pb.GetPointsRequest(
                    collection=name, tenant=tenant, ids=[num(1)], with_payload=True
                ),
            ),
            "UpdatePoints": (
                "UpdatePoints",
                pb.UpdatePointsRequest(
                    collection=name,
                    tenant=tenant,
                    updates=[pb.PointUpdate(id=num(1), vector=[0, 0, 0, 1])],
                ),
            ),
            "SetPayload": (
                "SetPayload",
                pb.SetPayloadRequest(
                    collection=name,
                    tenant=tenant,
                    selector=theirs,
                    payload=as_struct({"secret": "stolen"}),
                ),
            ),
            "DeletePayloadKeys": (
                "DeletePayloadKeys",
                pb.DeletePayloadKeysRequest(
                    collection=name, tenant=tenant, selector=theirs, keys=["secret"]
                ),
            ),
            "DeletePoints": (
                "DeletePoints",
                pb.DeletePointsRequest(collection=name, tenant=tenant, selector=everything),
            ),
            "BatchUpdatePoints": (
                "BatchUpdatePoints",
                pb.BatchUpdatePointsRequest(
                    collection=name,
                    tenant=tenant,
                    operations=[pb.PointsOperation(delete=pb.DeleteOperation(selector=theirs))],
                ),
            ),
            "ListPoints": (
                "ListPoints",
                pb.ListPointsRequest(collection=name, tenant=tenant, with_payload=True),
            ),
            "CountPoints": ("CountPoints", pb.CountPointsRequest(collection=name, tenant=tenant)),
            "SearchPoints": (
                "SearchPoints",
                pb.SearchPointsRequest(
                    collection=name, tenant=tenant, vector=vector, with_payload=True
                ),
            ),
            "BatchSearchPoints": (
                "BatchSearchPoints",
                pb.BatchSearchPointsRequest(
                    searches=[pb.SearchPointsRequest(collection=name, tenant=tenant, vector=vector)]
                ),
            ),
            "RecommendPoints": (
                "RecommendPoints",
                pb.RecommendPointsRequest(
                    collection=name, tenant=tenant, positive=[pb.RecommendExample(id=num(1))]
                ),
            ),
            "ClusterPoints": (
                "ClusterPoints",
                pb.ClusterPointsRequest(
                    collection=name, tenant=tenant, num_clusters=2, with_member_ids=True
                ),
            ),
        }

    tenant_rpcs = {
        m.name
        for m in pb.DESCRIPTOR.services_by_name["VectorService"].methods
        if "tenant" in m.input_type.fields_by_name
        or m.name == "BatchSearchPoints"  # each search has its own
    }
    assert set(requests("")) == tenant_rpcs

    # Naming the other tenant is refused outright, on every RPC.
    for method, request in requests("globex").values():
        error = await rpc_error(getattr(acme, method)(request))
        assert error.code == grpc.StatusCode.PERMISSION_DENIED, method
        assert error.reason == "TENANT_NOT_ALLOWED", method

    # By id, with the tenant left out or its own: globex's point is out of reach.
    for tenant in ("", "acme"):
        calls = requests(tenant)
        outcomes: dict[str, Any] = {}
        for method, request in calls.values():
            try:
                outcomes[method] = await getattr(acme, method)(request)
            except grpc.aio.AioRpcError as error:
                outcomes[method] = error.code()
        assert outcomes["UpsertPoints"] == grpc.StatusCode.PERMISSION_DENIED
        assert list(outcomes["GetPoints"].points) == []
        assert outcomes["UpdatePoints"] == grpc.StatusCode.NOT_FOUND
        assert outcomes["RecommendPoints"] == grpc.StatusCode.NOT_FOUND
        assert ids_of(outcomes["ListPoints"].points) == [2]
        assert outcomes["CountPoints"].count == 1
        assert ids_of(outcomes["SearchPoints"].points) == [2]
        assert ids_of(outcomes["BatchSearchPoints"].results[0].points) == [2]
        assert outcomes["ClusterPoints"].total_points == 1
        # The deletes of this round removed acme's own point (DeletePoints selects
        # everything): put it back for the next round.
        await acme.UpsertPoints(
            pb.UpsertPointsRequest(collection=name, points=[point(2, [0.9, 0.1, 0, 0])])
        )

    # Whole-collection actions would touch globex's points.
    acme = secured.as_(secured.token("operator", sub="wile", tenant="acme"))
    for call in (
        acme.DeleteCollection(pb.DeleteCollectionRequest(name=name)),
        acme.UpdateCollection(pb.UpdateCollectionRequest(name=name)),
    ):
        error = await rpc_error(call)
        assert error.code == grpc.StatusCode.PERMISSION_DENIED
        assert error.reason == "TENANT_SCOPED_TOKEN"

    # Globex's point is as it was.
    admin = secured.as_(secured.token("admin"))
    kept = await admin.GetPoints(
        pb.GetPointsRequest(collection=name, ids=[num(1)], with_payload=True, with_vector=True)
    )
    assert len(kept.points) == 1
    assert dict(kept.points[0].payload) == {"secret": "globex", "tenant": "globex"}
    assert list(kept.points[0].vector) == pytest.approx([1, 0, 0, 0])


async def test_a_token_without_a_tenant_may_narrow_to_one(
    secured: SecuredVector, new_collection: NewCollection
) -> None:
    name = await new_collection("narrowed")
    admin = secured.as_(secured.token("admin"))
    await admin.UpsertPoints(
        pb.UpsertPointsRequest(collection=name, tenant="globex", points=[point(1, [1, 0, 0, 0])])
    )
    await admin.UpsertPoints(
        pb.UpsertPointsRequest(collection=name, points=[point(2, [1, 0, 0, 0])])
    )
    narrowed = await admin.ListPoints(pb.ListPointsRequest(collection=name, tenant="globex"))
    assert ids_of(narrowed.points) == [1]
    assert ids_of((await admin.ListPoints(pb.ListPointsRequest(collection=name))).points) == [1, 2]


async def test_an_allow_list_binds_every_rpc_naming_a_collection(
    secured: SecuredVector, new_collection: NewCollection
) -> None:
    mine = await new_collection("docs")
    other = await new_collection("private")
    token = secured.token("operator", collections=["docs-*"])
    scoped = secured.as_(token)
    listed = await scoped.ListCollections(pb.ListCollectionsRequest(page_size=1000))
    names = {c.name for c in listed.collections}
    assert mine in names
    assert other not in names
    assert all(n.startswith("docs-") for n in names)
    assert (await scoped.GetCollection(pb.GetCollectionRequest(name=mine))).collection.name == mine
    vector = [1.0, 0.0, 0.0, 0.0]
    for call in (
        scoped.GetCollection(pb.GetCollectionRequest(name=other)),
        scoped.SearchPoints(pb.SearchPointsRequest(collection=other, vector=vector)),
        scoped.BatchSearchPoints(
            pb.BatchSearchPointsRequest(
                searches=[
                    pb.SearchPointsRequest(collection=mine, vector=vector),
                    pb.SearchPointsRequest(collection=other, vector=vector),
                ]
            )
        ),
        scoped.UpsertPoints(pb.UpsertPointsRequest(collection=other, points=[point(1, vector)])),
        scoped.DeleteCollection(pb.DeleteCollectionRequest(name=other)),
        scoped.CreateCollection(
            pb.CreateCollectionRequest(name="private-x", config=pb.CollectionConfig(dimension=4))
        ),
        scoped.RestoreSnapshot(
            pb.RestoreSnapshotRequest(collection=mine, snapshot="s", target_collection=other)
        ),
        _drain(scoped.DownloadSnapshot(pb.DownloadSnapshotRequest(collection=other, snapshot="s"))),
        secured.analytics_as(token).GetSearchAnalytics(
            apb.GetSearchAnalyticsRequest(collection=other)
        ),
    ):
        error = await rpc_error(call)
        assert error.code == grpc.StatusCode.PERMISSION_DENIED
        assert error.reason == "COLLECTION_NOT_ALLOWED"
        assert error.metadata["collection"] in (other, "private-x")


async def test_usage_records_are_the_gateways_to_write(secured: SecuredVector) -> None:
    request = apb.RecordUsageRequest(
        events=[apb.UsageEvent(subject="someone", route="/x", status_code=200)]
    )
    error = await rpc_error(secured.analytics_as(secured.token("operator")).RecordUsage(request))
    assert error.metadata["permission"] == "AdministerSystem"
    gateway = secured.token(sub="lodestar-gateway", permissions=["AdministerSystem"])
    await secured.analytics_as(gateway).RecordUsage(request)


@pytest.mark.parametrize(
    ("method", "request_of"),
    [
        ("DeleteCollection", lambda n: pb.DeleteCollectionRequest(name=n)),
        ("UpdateCollection", lambda n: pb.UpdateCollectionRequest(name=n)),
        ("CreateSnapshot", lambda n: pb.CreateSnapshotRequest(collection=n)),
        ("ListSnapshots", lambda n: pb.ListSnapshotsRequest(collection=n)),
        ("RestoreSnapshot", lambda n: pb.RestoreSnapshotRequest(collection=n, snapshot="s")),
        ("DeleteSnapshot", lambda n: pb.DeleteSnapshotRequest(collection=n, snapshot="s")),
        ("DownloadSnapshot", lambda n: pb.DownloadSnapshotRequest(collection=n, snapshot="s")),
    ],
)
async def test_tenant_tokens_cannot_act_on_whole_collections(
    secured: SecuredVector,
    new_collection: NewCollection,
    method: str,
    request_of: Callable[[str], Any],
) -> None:
    name = await new_collection("whole")
    tenant_admin = secured.as_(secured.token("admin", tenant="acme"))
    call = getattr(tenant_admin, method)(request_of(name))
    error = await rpc_error(_drain(call) if method == "DownloadSnapshot" else call)
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.reason == "TENANT_SCOPED_TOKEN"


async def test_a_tenant_cannot_claim_another_tenant_in_a_payload(
    secured: SecuredVector, new_collection: NewCollection
) -> None:
    name = await new_collection("stamped")
    acme = secured.as_(secured.token("editor", tenant="acme"))
    await acme.UpsertPoints(
        pb.UpsertPointsRequest(
            collection=name, points=[point(7, [1, 0, 0, 0], {"tenant": "globex"})]
        )
    )
    globex = secured.as_(secured.token("editor", tenant="globex"))
    seen = await globex.ListPoints(pb.ListPointsRequest(collection=name))
    assert list(seen.points) == []
    mine = await acme.GetPoints(
        pb.GetPointsRequest(collection=name, ids=[num(7)], with_payload=True)
    )
    assert dict(mine.points[0].payload)["tenant"] == "acme"
    # Nor can it filter its way to them.
    filtered = await acme.CountPoints(
        pb.CountPointsRequest(
            collection=name,
            filter=pb.Filter(
                should=[
                    pb.Condition(
                        field=pb.FieldCondition(key="tenant", match=pb.Match(keyword="globex"))
                    )
                ]
            ),
        )
    )
    assert filtered.count == 0
