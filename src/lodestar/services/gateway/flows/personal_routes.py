"""The caller's own conversations and memory, and sharing an interaction.

``/api/v1/conversations`` and ``/api/v1/memory`` only ever show or delete the
caller's own interactions (their subject, in their tenant): another subject's
conversation is as absent as one that never existed (404). Sharing
(``/api/v1/interactions/{id}/share``) needs ManageCollections: it lets every
subject of the tenant see the interaction as a ``use_feedback`` example.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict
from typing import Annotated

from fastapi import Depends, Path, Query
from starlette.responses import Response

from lodestar import limits
from lodestar.auth.permissions import Permission
from lodestar.runtime.errors import InvalidArgument, LodestarError, NotFound
from lodestar.runtime.protojson import dict_to_struct, struct_to_dict
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.convert import vector as convert
from lodestar.services.gateway.deps import flows_of, require
from lodestar.services.gateway.flows import personal
from lodestar.services.gateway.flows.conversations import (
    conversation_turns,
    list_conversations_of,
)
from lodestar.services.gateway.flows.memory import INTERACTION_KIND, is_missing_collection
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.responses import respond_json
from lodestar.services.gateway.routes.base import api_router
from lodestar.services.gateway.schemas.common import POINT_ID_PATTERN, parse_point_id
from lodestar.vector.v1 import vector_service_pb2 as vpb

router = api_router("memory")

PageSize = Annotated[int, Query(ge=1, le=limits.MAX_PAGE_SIZE)]
PageToken = Annotated[str, Query(max_length=4096)]
ConversationId = Annotated[
    str,
    Path(alias="conversation_id", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$"),
]
ItemId = Annotated[
    str,
    Path(
        alias="id", description="Unsigned integer or UUID.", max_length=64, pattern=POINT_ID_PATTERN
    ),
]

Reader = Annotated[Call, Depends(require(Permission.GENERATE_TEXT, RouteClass.READ))]
Writer = Annotated[Call, Depends(require(Permission.GENERATE_TEXT, RouteClass.WRITE))]
Flows = Annotated[FlowsRuntime, Depends(flows_of)]


def _item_id(text: str, field: str = "id") -> vpb.PointId:
    try:
        return convert.point_id_to_proto(parse_point_id(text))
    except ValueError:
        raise InvalidArgument(
            f"id {text!r} is neither an unsigned integer nor a UUID",
            field=field,
            reason="BAD_POINT_ID",
        ) from None


def _offset(token: str) -> int:
    if not token:
        return 0
    try:
        value = int(base64.urlsafe_b64decode(token.encode()).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        value = -1
    if value < 0:
        raise InvalidArgument(
            "page_token is not one this API returned", field="page_token", reason="BAD_PAGE_TOKEN"
        )
    return value


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode()


def _conversation_not_found(conversation_id: str) -> NotFound:
    return NotFound(
        f"you have no conversation {conversation_id!r}",
        reason="CONVERSATION_NOT_FOUND",
        metadata={"conversation_id": conversation_id},
    )


@router.get("/conversations", summary="Your conversations")
async def list_conversations(
    call: Reader, runtime: Flows, page_size: PageSize = 50, page_token: PageToken = ""
) -> Response:
    """The caller's conversations, most recently active first, each with its
    number of turns, when it started and was last active, and its first prompt."""
    offset = _offset(page_token)
    summaries = await list_conversations_of(call, runtime)
    page = [asdict(summary) for summary in summaries[offset : offset + page_size]]
    more = offset + page_size < len(summaries)
    return respond_json(
        {"conversations": page, "next_page_token": _token(offset + page_size) if more else ""}
    )


@router.get("/conversations/{conversation_id}", summary="The turns of one of your conversations")
async def get_conversation(
    conversation_id: ConversationId, call: Reader, runtime: Flows
) -> Response:
    turns = await conversation_turns(call, runtime, conversation_id)
    if not turns:
        raise _conversation_not_found(conversation_id)
    return respond_json(
        {
            "id": conversation_id,
            "turns": [
                {
                    "id": t.id,
                    "turn": t.turn,
                    "prompt": t.prompt,
                    "answer": t.answer,
                    "created_at": t.created_at,
                }
                for t in turns
            ],
        }
    )


@router.delete("/conversations/{conversation_id}", summary="Delete one of your conversations")
async def delete_conversation(
    conversation_id: ConversationId, call: Writer, runtime: Flows
) -> Response:
    """Every turn goes, from the conversation and from memory, and the
    caller's profile is rebuilt without them."""
    deleted = await personal.forget_conversation(call, runtime, conversation_id)
    if not deleted:
        raise _conversation_not_found(conversation_id)
    return respond_json({"id": conversation_id, "deleted": deleted})


@router.get("/memory", summary="What is remembered about you")
async def list_memory(
    call: Reader, runtime: Flows, page_size: PageSize = 100, page_token: PageToken = ""
) -> Response:
    """The caller's remembered interactions (conversation turns, ``memory:
    true`` exchanges and stored generations) and their profile's summary."""
    items, token = await personal.list_memory(
        call, runtime, page_size=page_size, page_token=page_token
    )
    found = await personal.profile(call, runtime)
    profile = (
        None if found is None else {"interactions": found.count, "updated_at": found.updated_at}
    )
    return respond_json(
        {"items": [i.as_dict() for i in items], "profile": profile, "next_page_token": token}
    )


@router.delete("/memory/{id}", summary="Forget one thing remembered about you")
async def forget_item(item_id: ItemId, call: Writer, runtime: Flows) -> Response:
    point_id = _item_id(item_id)
    await personal.forget(call, runtime, point_id)
    return respond_json({"id": convert.point_id_from_proto(point_id), "deleted": 1})


@router.delete("/memory", summary="Forget everything remembered about you")
async def forget_everything(call: Writer, runtime: Flows) -> Response:
    """From every collection the caller's token may use, and the profile."""
    return respond_json({"deleted": await personal.forget_all(call, runtime)})


async def _set_shared(
    call: Call, runtime: FlowsRuntime, text: str, collection: str | None, shared: bool
) -> Response:
    point_id = _item_id(text)
    name = call.flow_collection(collection or runtime.settings.conversations_collection)
    try:
        found = await call.backends.vector.get_points(
            vpb.GetPointsRequest(
                collection=name, ids=[point_id], with_payload=True, tenant=call.tenant
            ),
            call.flow_options(name),
        )
    except LodestarError as error:
        if not is_missing_collection(error):
            raise
        found = vpb.GetPointsResponse()
    if not found.points or struct_to_dict(found.points[0].payload).get("kind") != INTERACTION_KIND:
        raise NotFound(
            f"no interaction {text} in collection {name!r}",
            reason="INTERACTION_NOT_FOUND",
            metadata={"collection": name, "interaction_id": text},
        )
    update = vpb.PointUpdate(id=point_id)
    dict_to_struct(
        {"shared": shared, "shared_by": call.principal.subject if shared else ""}, update.payload
    )
    await call.backends.vector.update_points(
        vpb.UpdatePointsRequest(collection=name, updates=[update], tenant=call.tenant),
        call.flow_options(name),
    )
    return respond_json(
        {"id": convert.point_id_from_proto(point_id), "collection": name, "shared": shared}
    )


CollectionParam = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=limits.MAX_COLLECTION_NAME_CHARS,
        pattern=limits.COLLECTION_NAME_PATTERN,
    ),
]
Operator = Annotated[Call, Depends(require(Permission.MANAGE_COLLECTIONS, RouteClass.WRITE))]


@router.post("/interactions/{id}/share", summary="Share an interaction with the tenant")
async def share_interaction(
    item_id: ItemId, call: Operator, runtime: Flows, collection: CollectionParam = None
) -> Response:
    """An operator promotes an interaction: every subject of its tenant may then
    be shown it as a ``use_feedback`` example (it stays its author's in memory
    and conversations)."""
    return await _set_shared(call, runtime, item_id, collection, True)


@router.delete("/interactions/{id}/share", summary="Make a shared interaction private again")
async def unshare_interaction(
    item_id: ItemId, call: Operator, runtime: Flows, collection: CollectionParam = None
) -> Response:
    return await _set_shared(call, runtime, item_id, collection, False)
