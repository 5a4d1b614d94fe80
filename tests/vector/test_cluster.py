"""Unit tests of clustering (k-means and density) on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from lodestar.services.vector.cluster import cluster_points, estimate_eps
from lodestar.services.vector.models import Distance


def _blobs(
    sizes: tuple[int, ...], dimension: int = 6, seed: int = 0
) -> tuple[list[int], np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = []
    for blob, size in enumerate(sizes):
        centre = np.zeros(dimension)
        centre[blob] = 5.0
        rows.append(centre + rng.normal(scale=0.2, size=(size, dimension)))
    vectors = np.vstack(rows).astype(np.float32)
    return list(range(len(vectors))), vectors


@pytest.mark.parametrize("distance", list(Distance))
def test_kmeans_recovers_blobs(distance: Distance) -> None:
    ids, vectors = _blobs((50, 30, 10))
    result = cluster_points(
        ids, vectors, distance=distance, num_clusters=3, representatives=4, seed=0
    )
    assert [len(g.member_ids) for g in result.groups] == [50, 30, 10]
    bounds = {50: range(0, 50), 30: range(50, 80), 10: range(80, 90)}
    for group in result.groups:
        assert set(group.member_ids) == set(bounds[len(group.member_ids)])
        assert len(group.representatives) == 4
        scores = [s for _, s in group.representatives]
        assert scores == sorted(scores, reverse=distance.higher_is_closer)
        assert {i for i, _ in group.representatives} <= set(group.member_ids)
    assert result.noise == 0


def test_cosine_clusters_by_direction_not_length() -> None:
    rng = np.random.default_rng(1)
    east = np.array([1.0, 0.0]) * rng.uniform(0.1, 100, size=(20, 1))
    north = np.array([0.0, 1.0]) * rng.uniform(0.1, 100, size=(20, 1))
    vectors = np.vstack([east, north]).astype(np.float32)
    result = cluster_points(
        list(range(40)), vectors, distance=Distance.COSINE, num_clusters=2, seed=0
    )
    assert sorted(sorted(g.member_ids)[0] for g in result.groups) == [0, 20]
    assert all(len(g.member_ids) == 20 for g in result.groups)
    assert all(
        s == pytest.approx(1.0, abs=1e-5) for g in result.groups for _, s in g.representatives
    )


def test_more_clusters_than_points_and_empty_input() -> None:
    result = cluster_points(
        [1, 2], np.eye(2, dtype=np.float32), distance=Distance.EUCLID, num_clusters=8
    )
    assert sum(len(g.member_ids) for g in result.groups) == 2
    assert (
        cluster_points([], np.zeros((0, 3), dtype=np.float32), distance=Distance.DOT).groups == []
    )


def test_density_marks_outliers_as_noise() -> None:
    _ids, vectors = _blobs((40, 40))
    outliers = np.full((3, vectors.shape[1]), 40.0, dtype=np.float32) * np.array(
        [[1], [-1], [2]], dtype=np.float32
    )
    data = np.vstack([vectors, outliers])
    result = cluster_points(
        list(range(len(data))), data, distance=Distance.EUCLID, density=True, eps=1.5, min_samples=4
    )
    assert [len(g.member_ids) for g in result.groups] == [40, 40]
    assert result.noise == 3
    estimated = estimate_eps(vectors, 5, "euclidean", seed=0)
    assert 0 < estimated < 5.0  # within a blob's scale, far below the gap between blobs
