"""The behavioural suite over real gRPC, against every backend: collections: create,
list, configure and drop."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from lodestar.vector.v1 import vector_service_pb2 as pb
from tests.vector.conftest import CreateCollection, expect_invalid, rpc_error
from tests.vector.suite import Stub, field


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
