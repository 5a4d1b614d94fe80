"""The behavioural suite over real gRPC, against every backend: k-means and density
clusters."""

from __future__ import annotations

import numpy as np

from lodestar.vector.v1 import vector_service_pb2 as pb
from tests.vector.conftest import CreateCollection, expect_invalid
from tests.vector.suite import Stub, as_struct, field, ids_of, num, point


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
                    id=num(len(points)), vector=vector.tolist(), payload=as_struct({"blob": blob})
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
