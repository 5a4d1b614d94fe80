"""Collections (create, list, get, update, delete) and their snapshots."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Body, Depends, Path, Query
from starlette.responses import Response, StreamingResponse

from lodestar import limits
from lodestar.auth.permissions import Permission
from lodestar.runtime.errors import InvalidArgument, NotFound
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.convert import vector as convert
from lodestar.services.gateway.deps import require
from lodestar.services.gateway.flows import semantic_cache
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.responses import no_content, respond
from lodestar.services.gateway.routes.base import api_router
from lodestar.services.gateway.schemas.vector import (
    Collection,
    CollectionList,
    CreateCollectionRequest,
    RestoreSnapshotRequest,
    Snapshot,
    SnapshotList,
    UpdateCollectionRequest,
)
from lodestar.vector.v1 import vector_service_pb2 as pb

router = api_router("collections")

Name = Annotated[
    str,
    Path(
        min_length=1,
        max_length=limits.MAX_COLLECTION_NAME_CHARS,
        pattern=limits.COLLECTION_NAME_PATTERN,
    ),
]
SnapshotName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=limits.MAX_SNAPSHOT_NAME_CHARS,
        pattern=limits.SNAPSHOT_NAME_PATTERN,
    ),
]
PageSize = Annotated[int, Query(ge=1, le=limits.MAX_PAGE_SIZE)]
PageToken = Annotated[str, Query(max_length=4096)]


@router.post("/collections", response_model=Collection, status_code=201, summary="Create")
async def create_collection(
    body: CreateCollectionRequest,
    call: Annotated[Call, Depends(require(Permission.MANAGE_COLLECTIONS, RouteClass.ADMIN))],
) -> Response:
    """A collection of a given dimension, or of the served embedding model's
    dimension when no dimension is given."""
    call.collection(body.name)
    dimension = body.dimension
    model_name = body.embedding_model or ""
    if dimension is None or body.embedding_model:
        info = await call.backends.embedding.model_info(call.options)
        if body.embedding_model and body.embedding_model != info.name:
            # No such model here (as OpenAI answers an unknown model): a name the
            # request's schema cannot rule out, known only to the embedding service.
            raise NotFound(
                f"embedding_model {body.embedding_model!r} is not served; "
                f"the embedding service serves {info.name!r}",
                field="embedding_model",
                reason="EMBEDDING_MODEL_NOT_SERVED",
            )
        if dimension is not None and dimension != info.dimension:
            raise InvalidArgument(
                f"dimension {dimension} does not match {info.name!r} ({info.dimension})",
                field="dimension",
                reason="DIMENSION_MISMATCH",
            )
        dimension = info.dimension
        model_name = info.name
    request = convert.create_collection_to_proto(
        body, dimension=dimension, embedding_model=model_name
    )
    response = await call.backends.vector.create_collection(request, call.options)
    return respond(convert.collection_from_proto(response.collection), status_code=201)


@router.get("/collections", response_model=CollectionList, summary="List")
async def list_collections(
    call: Annotated[Call, Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ))],
    page_size: PageSize = 100,
    page_token: PageToken = "",
) -> Response:
    """Collections by name; a token with a collection allow-list sees only those."""
    response = await call.backends.vector.list_collections(
        pb.ListCollectionsRequest(page_size=page_size, page_token=page_token), call.options
    )
    return respond(
        CollectionList(
            collections=[
                convert.collection_from_proto(c)
                for c in response.collections
                if call.may_use_collection(c.name)
            ],
            next_page_token=response.next_page_token,
        )
    )


@router.get("/collections/{name}", response_model=Collection, summary="Details")
async def get_collection(
    name: Name,
    call: Annotated[Call, Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ))],
) -> Response:
    """Counts, status and configuration."""
    call.collection(name)
    response = await call.backends.vector.get_collection(
        pb.GetCollectionRequest(name=name), call.options
    )
    return respond(convert.collection_from_proto(response.collection))


@router.put("/collections/{name}", response_model=Collection, summary="Update config")
async def update_collection(
    name: Name,
    body: UpdateCollectionRequest,
    call: Annotated[Call, Depends(require(Permission.MANAGE_COLLECTIONS, RouteClass.ADMIN))],
) -> Response:
    """Index settings and payload schema; unset fields are unchanged."""
    call.collection(name)
    call.whole_collection("change a collection's configuration")
    response = await call.backends.vector.update_collection(
        convert.update_collection_to_proto(name, body), call.options
    )
    return respond(convert.collection_from_proto(response.collection))


@router.delete("/collections/{name}", status_code=204, summary="Delete")
async def delete_collection(
    name: Name,
    call: Annotated[Call, Depends(require(Permission.MANAGE_COLLECTIONS, RouteClass.ADMIN))],
) -> Response:
    """The collection and all its points."""
    call.collection(name)
    call.whole_collection("delete a collection")
    await call.backends.vector.delete_collection(
        pb.DeleteCollectionRequest(name=name), call.options
    )
    await semantic_cache.invalidate_collection(call, name)
    return no_content()


@router.post(
    "/collections/{name}/snapshot",
    response_model=Snapshot,
    status_code=201,
    tags=["snapshots"],
    summary="Create a snapshot",
)
async def create_snapshot(
    name: Name,
    call: Annotated[Call, Depends(require(Permission.CREATE_SNAPSHOTS, RouteClass.ADMIN))],
) -> Response:
    """A point-in-time backup of the collection."""
    call.collection(name)
    call.whole_collection("snapshot a collection")
    response = await call.backends.vector.create_snapshot(
        pb.CreateSnapshotRequest(collection=name), call.options
    )
    return respond(convert.snapshot_from_proto(response.snapshot), status_code=201)


@router.get(
    "/collections/{name}/snapshots",
    response_model=SnapshotList,
    tags=["snapshots"],
    summary="List snapshots",
)
async def list_snapshots(
    name: Name,
    call: Annotated[Call, Depends(require(Permission.CREATE_SNAPSHOTS, RouteClass.ADMIN))],
    page_size: PageSize = 100,
    page_token: PageToken = "",
) -> Response:
    """The collection's snapshots, newest first."""
    call.collection(name)
    call.whole_collection("list a collection's snapshots")
    response = await call.backends.vector.list_snapshots(
        pb.ListSnapshotsRequest(collection=name, page_size=page_size, page_token=page_token),
        call.options,
    )
    return respond(
        SnapshotList(
            snapshots=[convert.snapshot_from_proto(s) for s in response.snapshots],
            next_page_token=response.next_page_token,
        )
    )


@router.post(
    "/collections/{name}/snapshots/{snapshot}/restore",
    response_model=Collection,
    tags=["snapshots"],
    summary="Restore a snapshot",
)
async def restore_snapshot(
    name: Name,
    snapshot: SnapshotName,
    call: Annotated[Call, Depends(require(Permission.CREATE_SNAPSHOTS, RouteClass.ADMIN))],
    body: Annotated[RestoreSnapshotRequest | None, Body()] = None,
) -> Response:
    """Into the snapshot's own collection (replacing its content) or a new one."""
    call.collection(name)
    call.whole_collection("restore a snapshot")
    target = body.target_collection if body is not None else None
    if target:
        call.collection(target)
    response = await call.backends.vector.restore_snapshot(
        pb.RestoreSnapshotRequest(
            collection=name, snapshot=snapshot, target_collection=target or ""
        ),
        call.options,
    )
    return respond(convert.collection_from_proto(response.collection))


@router.delete(
    "/collections/{name}/snapshots/{snapshot}",
    status_code=204,
    tags=["snapshots"],
    summary="Delete a snapshot",
)
async def delete_snapshot(
    name: Name,
    snapshot: SnapshotName,
    call: Annotated[Call, Depends(require(Permission.CREATE_SNAPSHOTS, RouteClass.ADMIN))],
) -> Response:
    call.collection(name)
    call.whole_collection("delete a snapshot")
    await call.backends.vector.delete_snapshot(
        pb.DeleteSnapshotRequest(collection=name, snapshot=snapshot), call.options
    )
    return no_content()


@router.get(
    "/collections/{name}/snapshots/{snapshot}",
    tags=["snapshots"],
    summary="Download a snapshot",
    response_class=Response,  # no media type of its own: the file is declared below
    responses={
        200: {
            "description": "The snapshot's file, as an attachment named after it.",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            "headers": {
                "Content-Disposition": {
                    "description": "`attachment; filename=<snapshot>`.",
                    "schema": {"type": "string"},
                }
            },
        }
    },
)
async def download_snapshot(
    name: Name,
    snapshot: SnapshotName,
    call: Annotated[Call, Depends(require(Permission.CREATE_SNAPSHOTS, RouteClass.ADMIN))],
) -> Response:
    """The file that restoring the snapshot reads: a backup to keep elsewhere. It is
    streamed as the vector service reads it; an unknown snapshot is a 404."""
    call.collection(name)
    call.whole_collection("download a snapshot")
    pieces = call.backends.vector.download_snapshot(
        pb.DownloadSnapshotRequest(collection=name, snapshot=snapshot), call.options
    )
    # The first piece comes before the status: a missing snapshot is still a 404.
    first = await anext(pieces)
    headers = {"Content-Disposition": f'attachment; filename="{snapshot}"'}
    if first.snapshot.size_bytes:
        # A transfer cut short is then seen as one by the client.
        headers["Content-Length"] = str(first.snapshot.size_bytes)
    return StreamingResponse(
        _file(first.data, pieces), media_type="application/octet-stream", headers=headers
    )


async def _file(
    first: bytes, pieces: AsyncIterator[pb.DownloadSnapshotResponse]
) -> AsyncIterator[bytes]:
    yield first
    async for piece in pieces:
        yield piece.data
