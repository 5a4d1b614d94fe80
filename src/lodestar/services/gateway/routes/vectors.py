"""Points: insert, get, update, delete, batch, search, recommend, cluster.

Every request carries the token's tenant (if any) to the vector service, which
stamps it on writes and confines reads, updates and deletes to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Path, Query
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import Response

from lodestar import limits
from lodestar.auth.permissions import Permission
from lodestar.runtime.errors import InvalidArgument, NotFound
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.context import gateway_of
from lodestar.services.gateway.convert import vector as convert
from lodestar.services.gateway.deps import require
from lodestar.services.gateway.flows import semantic_cache
from lodestar.services.gateway.flows.personal import personalized_search
from lodestar.services.gateway.pipeline import NotEnabled
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.responses import respond, respond_json
from lodestar.services.gateway.routes.base import api_router
from lodestar.services.gateway.schemas.common import POINT_ID_PATTERN, parse_point_id
from lodestar.services.gateway.schemas.vector import (
    BatchRequest,
    BatchResponse,
    BatchSearchRequest,
    BatchSearchResponse,
    ClusterRequest,
    ClusterResponse,
    DeletePointResponse,
    InsertRequest,
    InsertResponse,
    PersonalizedSearchRequest,
    Point,
    RecommendRequest,
    SearchResponse,
    UpdatePointRequest,
    UpdatePointResponse,
)
from lodestar.vector.v1 import vector_service_pb2 as pb

# The busiest routes first: routes are matched in order.
router = api_router("vectors")


class _PointIdConvertor(Convertor[str]):
    """Matches only point ids, so that ``/vectors/batch`` is never taken for a
    point: an unsupported method there is a 405, not a refused id."""

    regex = POINT_ID_PATTERN[1:-1]

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("point_id", _PointIdConvertor())

PointIdPath = Annotated[
    str,
    Path(
        alias="id",
        description="An unsigned 64-bit integer or a UUID.",
        max_length=64,
        pattern=POINT_ID_PATTERN,
    ),
]
CollectionQuery = Annotated[
    str,
    Query(
        min_length=1,
        max_length=limits.MAX_COLLECTION_NAME_CHARS,
        pattern=limits.COLLECTION_NAME_PATTERN,
    ),
]


async def embed(call: Call, texts: Sequence[str]) -> list[list[float]]:
    """Vectors of ``texts`` from the embedding service (none for no texts)."""
    if not texts:
        return []
    return await call.backends.embedding.embed(texts, call.options)


def _point_id(text: str) -> int | UUID:
    try:
        return parse_point_id(text)
    except ValueError:
        raise InvalidArgument(
            f"point id {text!r} is neither an unsigned integer nor a UUID",
            field="id",
            reason="BAD_POINT_ID",
        ) from None


@router.post("/vectors/search", response_model=SearchResponse, summary="Similarity search")
async def search_vectors(
    body: PersonalizedSearchRequest,
    call: Annotated[Call, Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ))],
) -> Response:
    """Nearest neighbours of a vector or a text, with filter and threshold;
    ``personalize`` re-ranks them for the caller (``flows.personal``)."""
    call.collection(body.collection)
    vector = body.vector if body.vector is not None else (await embed(call, [body.text or ""]))[0]
    request = convert.search_to_proto(body, vector, tenant=call.tenant)
    if body.personalize:
        flows = gateway_of(call.request).flows
        if flows is None:
            raise NotEnabled("personalize")
        response, personalized = await personalized_search(call, flows, request)
    else:
        response = await call.backends.vector.search_points(request, call.options)
    hits = convert.hits_from_proto(
        response, with_payload=body.with_payload, with_vector=body.with_vector
    )
    if body.personalize:
        hits["personalized"] = personalized
    return respond_json(hits)


@router.get("/vectors/{id:point_id}", response_model=Point, summary="Get a point")
async def get_vector(
    point_id: PointIdPath,
    collection: CollectionQuery,
    call: Annotated[Call, Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ))],
    with_payload: bool = True,
    with_vector: bool = False,
) -> Response:
    call.collection(collection)
    request = pb.GetPointsRequest(
        collection=collection,
        ids=[convert.point_id_to_proto(_point_id(point_id))],
        with_payload=with_payload,
        with_vector=with_vector,
        tenant=call.tenant,
    )
    response = await call.backends.vector.get_points(request, call.options)
    if not response.points:
        raise NotFound(
            f"no point {point_id} in collection {collection!r}",
            reason="POINT_NOT_FOUND",
            metadata={"collection": collection, "id": point_id},
        )
    return respond(
        convert.point_from_proto(
            response.points[0], with_payload=with_payload, with_vector=with_vector
        )
    )


@router.post("/vectors/insert", response_model=InsertResponse, summary="Upsert points")
async def insert_vectors(
    body: InsertRequest,
    call: Annotated[Call, Depends(require(Permission.INSERT_VECTORS, RouteClass.WRITE))],
) -> Response:
    """Insert or replace points given vectors or texts (texts are embedded)."""
    call.collection(body.collection)
    texts = convert.texts_of(body.points)
    vectors = await embed(call, texts)
    request = convert.upsert_to_proto(
        body, vectors, tenant=call.tenant, text_key=call.settings.store_text_key
    )
    response = await call.backends.vector.upsert_points(request, call.options)
    await semantic_cache.invalidate_sources(
        call, body.collection, [p.id for p in body.points if p.id is not None]
    )
    return respond(
        InsertResponse(
            ids=[convert.point_id_from_proto(i) for i in response.ids], embedded=len(texts)
        )
    )


@router.post("/vectors/batch", response_model=BatchResponse, summary="Batch point operations")
async def batch_vectors(
    body: BatchRequest,
    call: Annotated[
        Call,
        Depends(
            require(
                (Permission.INSERT_VECTORS, Permission.UPDATE_VECTORS, Permission.DELETE_VECTORS),
                RouteClass.WRITE,
            )
        ),
    ],
) -> Response:
    """Upserts (InsertVectors), deletes (DeleteVectors) and payload changes
    (UpdateVectors), applied in order after all are validated."""
    for operation in body.operations:
        if operation.upsert is not None:
            call.require(Permission.INSERT_VECTORS)
        elif operation.delete is not None:
            call.require(Permission.DELETE_VECTORS)
        else:
            call.require(Permission.UPDATE_VECTORS)
    call.collection(body.collection)
    vectors = await embed(call, convert.batch_texts(body))
    request = convert.batch_to_proto(
        body, vectors, tenant=call.tenant, text_key=call.settings.store_text_key
    )
    response = await call.backends.vector.batch_update_points(request, call.options)
    await semantic_cache.invalidate_batch(call, body.collection, body.operations)
    return respond(convert.batch_from_proto(response))


@router.post("/vectors/search/batch", response_model=BatchSearchResponse, summary="Many searches")
async def batch_search_vectors(
    body: BatchSearchRequest,
    call: Annotated[Call, Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ))],
) -> Response:
    """Several searches in one call; texts are embedded together."""
    for search in body.searches:
        call.collection(search.collection)
    texts = [s.text for s in body.searches if s.text is not None]
    embedded = iter(await embed(call, texts))
    request = pb.BatchSearchPointsRequest(
        searches=[
            convert.search_to_proto(
                s, s.vector if s.vector is not None else next(embedded), tenant=call.tenant
            )
            for s in body.searches
        ]
    )
    response = await call.backends.vector.batch_search_points(request, call.options)
    return respond_json(
        {
            "results": [
                convert.hits_from_proto(
                    result, with_payload=search.with_payload, with_vector=search.with_vector
                )
                for search, result in zip(body.searches, response.results, strict=True)
            ]
        }
    )


@router.post("/vectors/recommend", response_model=SearchResponse, summary="Recommend")
async def recommend_vectors(
    body: RecommendRequest,
    call: Annotated[Call, Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ))],
) -> Response:
    """Points like the positive examples and unlike the negative ones; examples
    are point ids, vectors or texts."""
    call.collection(body.collection)
    embedded = await embed(call, convert.example_texts(body))
    request = convert.recommend_to_proto(body, embedded, tenant=call.tenant)
    response = await call.backends.vector.recommend_points(request, call.options)
    return respond_json(
        convert.hits_from_proto(
            response, with_payload=body.with_payload, with_vector=body.with_vector
        )
    )


@router.post("/vectors/cluster", response_model=ClusterResponse, summary="Cluster")
async def cluster_vectors(
    body: ClusterRequest,
    call: Annotated[Call, Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ))],
) -> Response:
    """k-means or density clusters of a collection or a filtered subset."""
    call.collection(body.collection)
    request = convert.cluster_to_proto(body, tenant=call.tenant)
    response = await call.backends.vector.cluster_points(request, call.options)
    return respond(convert.cluster_from_proto(response, with_payload=body.with_payload))


@router.put("/vectors/{id:point_id}", response_model=UpdatePointResponse, summary="Update a point")
async def update_vector(
    point_id: PointIdPath,
    collection: CollectionQuery,
    body: UpdatePointRequest,
    call: Annotated[Call, Depends(require(Permission.UPDATE_VECTORS, RouteClass.WRITE))],
) -> Response:
    """New vector (or text, embedded) and/or payload (merged unless replace_payload)."""
    call.collection(collection)
    parsed = _point_id(point_id)
    vector = body.vector
    if body.text is not None:
        vector = (await embed(call, [body.text]))[0]
    request = convert.update_point_to_proto(collection, parsed, body, vector, tenant=call.tenant)
    response = await call.backends.vector.update_points(request, call.options)
    await semantic_cache.invalidate_sources(call, collection, [str(parsed)])
    return respond(
        UpdatePointResponse(
            id=parsed if isinstance(parsed, int) else str(parsed),
            updated=response.updated_count > 0,
        )
    )


@router.delete(
    "/vectors/{id:point_id}", response_model=DeletePointResponse, summary="Delete a point"
)
async def delete_vector(
    point_id: PointIdPath,
    collection: CollectionQuery,
    call: Annotated[Call, Depends(require(Permission.DELETE_VECTORS, RouteClass.WRITE))],
) -> Response:
    call.collection(collection)
    parsed = _point_id(point_id)
    request = pb.DeletePointsRequest(
        collection=collection,
        selector=pb.PointsSelector(ids=[convert.point_id_to_proto(parsed)]),
        tenant=call.tenant,
    )
    response = await call.backends.vector.delete_points(request, call.options)
    await semantic_cache.invalidate_sources(call, collection, [str(parsed)])
    if response.deleted_count == 0:
        raise NotFound(
            f"no point {point_id} in collection {collection!r}",
            reason="POINT_NOT_FOUND",
            metadata={"collection": collection, "id": point_id},
        )
    return respond(
        DeletePointResponse(id=parsed if isinstance(parsed, int) else str(parsed), deleted=True)
    )
