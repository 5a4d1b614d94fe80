"""Browsing a collection's points: a filtered, paginated scroll and a count
(the REST side of the ListPoints and CountPoints RPCs).

Like every point read, both are confined to the token's tenant.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path
from starlette.responses import Response

from lodestar import limits
from lodestar.auth.permissions import Permission
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.convert import vector as convert
from lodestar.services.gateway.deps import require
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.responses import respond
from lodestar.services.gateway.routes.base import api_router
from lodestar.services.gateway.schemas.points import (
    CountRequest,
    CountResponse,
    ScrollRequest,
    ScrollResponse,
)
from lodestar.vector.v1 import vector_service_pb2 as pb

router = api_router("points")

Name = Annotated[
    str,
    Path(
        min_length=1,
        max_length=limits.MAX_COLLECTION_NAME_CHARS,
        pattern=limits.COLLECTION_NAME_PATTERN,
    ),
]


@router.post("/collections/{name}/points/scroll", response_model=ScrollResponse, summary="Scroll")
async def scroll_points(
    name: Name,
    body: ScrollRequest,
    call: Annotated[Call, Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ))],
) -> Response:
    """A page of points in id order; pass ``next_page_token`` back for the next."""
    call.collection(name)
    request = pb.ListPointsRequest(
        collection=name,
        page_size=body.page_size,
        page_token=body.page_token,
        with_payload=body.with_payload,
        with_vector=body.with_vector,
        tenant=call.tenant,
    )
    if body.filter is not None:
        convert.filter_to_proto(body.filter, request.filter)
    response = await call.backends.vector.list_points(request, call.options)
    return respond(
        ScrollResponse(
            points=[
                convert.point_from_proto(
                    p, with_payload=body.with_payload, with_vector=body.with_vector
                )
                for p in response.points
            ],
            next_page_token=response.next_page_token,
        )
    )


@router.post("/collections/{name}/points/count", response_model=CountResponse, summary="Count")
async def count_points(
    name: Name,
    body: CountRequest,
    call: Annotated[Call, Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ))],
) -> Response:
    """How many points match the filter (all of them without one)."""
    call.collection(name)
    request = pb.CountPointsRequest(collection=name, tenant=call.tenant)
    if body.filter is not None:
        convert.filter_to_proto(body.filter, request.filter)
    response = await call.backends.vector.count_points(request, call.options)
    return respond(CountResponse(count=response.count))
