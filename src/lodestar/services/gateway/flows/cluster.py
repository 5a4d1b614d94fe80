"""Clustering a chosen subset of a collection: given points (by id), or the
neighbourhood of some texts (the points nearest each text, embedded by the
embedding service), grouped by the vector service's ClusterPoints.

Whole collections (or filtered subsets) are clustered by
``POST /api/v1/vectors/cluster``; recommendations by ids or texts by
``POST /api/v1/vectors/recommend``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from pydantic import ConfigDict, Field, StrictBool, model_validator
from starlette.responses import Response

from lodestar import limits
from lodestar.auth.permissions import Permission
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.convert import vector as convert
from lodestar.services.gateway.deps import require
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.responses import respond_json
from lodestar.services.gateway.routes.base import api_router
from lodestar.services.gateway.schemas.common import (
    CollectionName,
    Float32,
    NonEmptyText,
    PointIdIn,
    RequestModel,
    UInt64,
    exactly_one_of,
)
from lodestar.services.gateway.schemas.vector import ClusterAlgorithm, ClusterRequest, Filter
from lodestar.vector.v1 import vector_service_pb2 as vpb

router = api_router("vectors")


class ClusterSubsetRequest(RequestModel):
    """Cluster the points with these ids, or the points nearest these texts."""

    model_config = ConfigDict(json_schema_extra=exactly_one_of("ids", "texts"))

    collection: CollectionName
    ids: Annotated[list[PointIdIn], Field(min_length=2, max_length=limits.MAX_IDS)] | None = None
    texts: (
        Annotated[list[NonEmptyText], Field(min_length=1, max_length=limits.DEFAULT_BATCH_SEARCHES)]
        | None
    ) = None
    neighbours: int = Field(
        50, ge=1, le=limits.MAX_LIMIT, description="With texts: points taken nearest each text."
    )
    score_threshold: Float32 | None = Field(
        None, description="With texts: only neighbours scoring better than this."
    )
    filter: Filter | None = None
    algorithm: ClusterAlgorithm = ClusterAlgorithm.KMEANS
    num_clusters: int = Field(
        limits.DEFAULT_CLUSTERS, ge=limits.MIN_CLUSTERS, le=limits.MAX_CLUSTERS
    )
    representatives: int = Field(
        limits.DEFAULT_REPRESENTATIVES, ge=0, le=limits.MAX_REPRESENTATIVES
    )
    with_member_ids: StrictBool = True
    with_payload: StrictBool = True
    seed: UInt64 | None = None

    @model_validator(mode="after")
    def _ids_or_texts(self) -> ClusterSubsetRequest:
        if (self.ids is None) == (self.texts is None):
            raise ValueError("give exactly one of ids or texts")
        return self


async def _neighbourhood(call: Call, body: ClusterSubsetRequest) -> list[vpb.PointId]:
    """Ids of the points nearest each text, each once, in order of discovery."""
    assert body.texts is not None
    vectors = await call.backends.embedding.embed(body.texts, call.options)
    request = vpb.BatchSearchPointsRequest()
    for text, vector in zip(body.texts, vectors, strict=True):
        search = request.searches.add(
            collection=body.collection,
            vector=vector,
            limit=body.neighbours,
            query_text=text[: limits.MAX_QUERY_TEXT_CHARS],
            tenant=call.tenant,
        )
        if body.filter is not None:
            convert.filter_to_proto(body.filter, search.filter)
        if body.score_threshold is not None:
            search.score_threshold = body.score_threshold
    response = await call.backends.vector.batch_search_points(request, call.options)
    seen: dict[tuple[str, int | str], vpb.PointId] = {}
    for result in response.results:
        for point in result.points:
            kind = point.id.WhichOneof("kind") or ""
            seen.setdefault((kind, convert.point_id_from_proto(point.id)), point.id)
    return list(seen.values())


@router.post("/vectors/cluster/subset", summary="Cluster points given by ids or texts")
async def cluster_subset(
    body: ClusterSubsetRequest,
    call: Annotated[Call, Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ))],
) -> Response:
    """k-means or density clusters of the given points, or of the points
    nearest the given texts (``neighbours`` per text). The response is that of
    /vectors/cluster plus ``selected``, the number of points clustered."""
    call.collection(body.collection)
    if body.ids is not None:
        ids = [convert.point_id_to_proto(i) for i in body.ids]
    else:
        ids = await _neighbourhood(call, body)
    if not ids:
        return respond_json(
            {
                "clusters": [],
                "total_points": 0,
                "sampled_points": 0,
                "noise_points": 0,
                "selected": 0,
            }
        )
    whole = ClusterRequest(
        collection=body.collection,
        filter=body.filter,
        algorithm=body.algorithm,
        num_clusters=body.num_clusters,
        sample_size=max(1, len(ids)),
        representatives=body.representatives,
        with_member_ids=body.with_member_ids,
        with_payload=body.with_payload,
        seed=body.seed,
    )
    request = convert.cluster_to_proto(whole, tenant=call.tenant)
    request.filter.must.add().has_id.ids.extend(ids)
    response = await call.backends.vector.cluster_points(request, call.options)
    out = convert.cluster_from_proto(response, with_payload=body.with_payload).model_dump(
        exclude_none=True
    )
    out["selected"] = len(ids)
    return respond_json(out)
