"""Clustering of sampled points: k-means or density (DBSCAN), with representatives.

Pure computation over numpy arrays (scikit-learn), run off the event loop by
the caller. For cosine collections vectors are L2-normalised first, so that
Euclidean k-means groups by angle (spherical k-means) and centroids compare by
cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from lodestar.services.vector.models import Distance, PointId

DEFAULT_MIN_SAMPLES: Final = 5
# Points used to estimate a density radius when none is given.
_EPS_ESTIMATE_SAMPLE: Final = 2_000

Array = NDArray[np.float32]


@dataclass(frozen=True)
class ClusterGroup:
    centroid: list[float]
    member_ids: list[PointId]
    # (id, similarity to the centroid), nearest first.
    representatives: list[tuple[PointId, float]]


@dataclass(frozen=True)
class Clustering:
    groups: list[ClusterGroup]  # largest first
    noise: int


def _normalised(vectors: Array) -> Array:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    result: Array = (vectors / norms).astype(np.float32)
    return result


def _scores(vectors: Array, centroid: Array, distance: Distance) -> NDArray[np.float64]:
    """Each vector's score against the centroid, in the collection's measure."""
    if distance is Distance.COSINE:
        unit = centroid / (np.linalg.norm(centroid) or 1.0)
        return (vectors @ unit).astype(np.float64)
    if distance is Distance.DOT:
        return (vectors @ centroid).astype(np.float64)
    if distance is Distance.EUCLID:
        euclid: NDArray[np.float64] = np.linalg.norm(vectors - centroid, axis=1).astype(np.float64)
        return euclid
    manhattan: NDArray[np.float64] = np.abs(vectors - centroid).sum(axis=1).astype(np.float64)
    return manhattan


def cluster_points(
    ids: Sequence[PointId],
    vectors: Array,
    *,
    distance: Distance,
    density: bool = False,
    num_clusters: int = 8,
    representatives: int = 3,
    seed: int | None = None,
    eps: float | None = None,
    min_samples: int | None = None,
) -> Clustering:
    """Cluster ``vectors`` (one row per id) and describe each cluster."""
    if len(ids) == 0:
        return Clustering([], 0)
    data = _normalised(vectors) if distance is Distance.COSINE else vectors.astype(np.float32)
    if density:
        labels = _density_labels(data, distance, eps, min_samples or DEFAULT_MIN_SAMPLES, seed)
    else:
        from sklearn.cluster import KMeans  # imported on first use: it takes seconds

        # No more clusters than distinct points (duplicates would leave some empty).
        k = max(1, min(num_clusters, len(np.unique(data, axis=0))))
        model = KMeans(n_clusters=k, n_init="auto", random_state=seed)
        labels = model.fit_predict(data)
    groups: list[ClusterGroup] = []
    for label in sorted(set(labels.tolist()) - {-1}):
        members = np.flatnonzero(labels == label)
        centroid = data[members].mean(axis=0)
        scores = _scores(data[members], centroid, distance)
        order = np.argsort(-scores if distance.higher_is_closer else scores, kind="stable")
        nearest = members[order[:representatives]]
        groups.append(
            ClusterGroup(
                centroid=centroid.astype(np.float32).tolist(),
                member_ids=[ids[i] for i in members.tolist()],
                representatives=[
                    (ids[i], float(s))
                    for i, s in zip(
                        nearest.tolist(), scores[order[:representatives]].tolist(), strict=True
                    )
                ],
            )
        )
    groups.sort(key=lambda g: len(g.member_ids), reverse=True)
    return Clustering(groups, int((labels == -1).sum()))


def _density_labels(
    data: Array, distance: Distance, eps: float | None, min_samples: int, seed: int | None
) -> NDArray[np.int64]:
    from sklearn.cluster import DBSCAN

    metric = "manhattan" if distance is Distance.MANHATTAN else "euclidean"
    if eps is None:
        eps = estimate_eps(data, min_samples, metric, seed)
    labels: NDArray[np.int64] = DBSCAN(eps=eps, min_samples=min_samples, metric=metric).fit_predict(
        data
    )
    return labels


def estimate_eps(data: Array, min_samples: int, metric: str, seed: int | None) -> float:
    """The 90th percentile of the distance from a point to its ``min_samples``-th
    neighbour: most points of dense regions become cores, far outliers stay noise."""
    if len(data) <= min_samples:
        # Too few points for a density estimate: one radius that spans them all.
        spread = float(np.abs(data - data.mean(axis=0)).sum(axis=1).max()) if len(data) else 0.0
        return 2 * spread + 1.0
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(seed)
    probe = data[rng.choice(len(data), size=min(len(data), _EPS_ESTIMATE_SAMPLE), replace=False)]
    neighbours = NearestNeighbors(n_neighbors=min_samples + 1, metric=metric).fit(data)
    distances, _ = neighbours.kneighbors(probe)
    eps = float(np.percentile(distances[:, -1], 90))
    return eps if eps > 0 else 1e-6
