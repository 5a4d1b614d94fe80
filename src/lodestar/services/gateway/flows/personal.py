"""Personal memory: what the gateway remembers about one subject, and the
function-level API to remember, recall and forget it.

Everything lives in the conversations collection (``FlowsSettings.
conversations_collection``), confined to the caller's tenant by the vector
service and to the caller's subject by the filters built here:

- an *interaction* (``kind: interaction``) per remembered exchange, with the
  subject, the prompt and the answer, and, for a conversation turn, its
  ``conversation_id`` and ``turn``;
- one *profile* point per subject (``kind: profile``), whose vector is the mean
  of the subject's interaction vectors; it is kept up to date as interactions
  are remembered and rebuilt from what is left when some are forgotten, so a
  forgotten vector leaves no trace in it.

An interaction is the subject's alone unless an operator shares it
(``shared: true``): ``visible_to`` and ``private_exclusion`` are the filter
clauses that the feedback examples and retrieval apply.

Routes (``flows.personal_routes``), the generation stages
(``flows.conversations``) and any other caller (an MCP tool) use ``remember``,
``recall``, ``forget`` and ``forget_all``; they take a ``Call``, which carries
who asks.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from lodestar import limits
from lodestar.runtime.errors import LodestarError, NotFound
from lodestar.runtime.protojson import dict_to_struct, struct_to_dict
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.convert import vector as convert
from lodestar.services.gateway.flows.memory import (
    INTERACTION_KIND,
    is_missing_collection,
    upsert_creating,
)
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.vector.v1 import vector_service_pb2 as vpb

PROFILE_KIND: Final = "profile"
TENANT_KEY: Final = "tenant"
# The embedding service refuses longer texts by default; the model reads far less.
_EMBED_MAX_CHARS: Final = 8000
_PAGE: Final = 256
# Most interactions read to rebuild a profile or list conversations.
MAX_SCANNED: Final = 10_000
_PROFILE_NAMESPACE: Final = uuid.UUID("8a3c2f57-4d0e-4bde-9a3c-0d7f1b2e6c41")


@dataclass(frozen=True, slots=True)
class MemoryItem:
    """One remembered interaction."""

    id: int | str
    prompt: str
    answer: str
    created_at: str
    conversation_id: str | None = None
    turn: int | None = None
    shared: bool = False
    similarity: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "prompt": self.prompt,
            "answer": self.answer,
            "created_at": self.created_at,
            "conversation_id": self.conversation_id,
            "turn": self.turn,
            "shared": self.shared,
        }
        if self.similarity is not None:
            out["similarity"] = self.similarity
        return out


def collection_of(runtime: FlowsRuntime) -> str:
    """The conversations collection. Reserved (``FlowsRuntime.
    reserved_collections``): no raw route may name it, short of
    AdministerSystem, and the token's collection allow-list does not apply to
    it, since it is read and written here only through the caller's own
    subject."""
    return runtime.settings.conversations_collection


# --- filters --------------------------------------------------------------------------


def keyword(key: str, value: str) -> vpb.Condition:
    return vpb.Condition(field=vpb.FieldCondition(key=key, match=vpb.Match(keyword=value)))


def _shared() -> vpb.Condition:
    return vpb.Condition(field=vpb.FieldCondition(key="shared", match=vpb.Match(boolean=True)))


def mine(call: Call) -> vpb.Condition:
    """Points of the caller's subject. A token without a tenant reads every
    tenant's points, so it also needs the point to have none: the same subject
    name in a tenant is someone else."""
    owned = vpb.Filter(must=[keyword("subject", call.principal.subject)])
    if not call.tenant:
        owned.must.add().is_empty.key = TENANT_KEY
    return vpb.Condition(filter=owned)


def owned_interactions(call: Call, *extra: vpb.Condition) -> vpb.Filter:
    return vpb.Filter(must=[keyword("kind", INTERACTION_KIND), mine(call), *extra])


def visible_to(call: Call) -> vpb.Condition:
    """An interaction the caller may be shown: their own, or one shared by an operator."""
    return vpb.Condition(filter=vpb.Filter(should=[mine(call), _shared()]))


def private_exclusion(call: Call) -> vpb.Condition:
    """For ``must_not``: other subjects' interactions and profiles that were not
    shared, wherever they are stored."""
    kinds = vpb.Match(any_keywords=vpb.Keywords(values=[INTERACTION_KIND, PROFILE_KIND]))
    return vpb.Condition(
        filter=vpb.Filter(
            must=[vpb.Condition(field=vpb.FieldCondition(key="kind", match=kinds))],
            must_not=[mine(call), _shared()],
        )
    )


# --- reading --------------------------------------------------------------------------


def item_of(point: vpb.Point | vpb.ScoredPoint) -> MemoryItem:
    payload = struct_to_dict(point.payload)
    turn = payload.get("turn")
    conversation = payload.get("conversation_id")
    return MemoryItem(
        id=convert.point_id_from_proto(point.id),
        prompt=str(payload.get("prompt", "")),
        answer=str(payload.get("answer", "")),
        created_at=str(payload.get("created_at", "")),
        conversation_id=conversation if isinstance(conversation, str) and conversation else None,
        turn=int(turn) if isinstance(turn, int | float) else None,
        shared=payload.get("shared") is True,
        similarity=point.score if isinstance(point, vpb.ScoredPoint) else None,
    )


async def scan(
    call: Call, collection: str, flt: vpb.Filter, *, with_vector: bool = False
) -> AsyncIterator[vpb.Point]:
    """Every point of ``collection`` matching ``flt`` in the caller's tenant (at
    most ``MAX_SCANNED``); nothing if the collection does not exist yet."""
    token = ""
    seen = 0
    while seen < MAX_SCANNED:
        request = vpb.ListPointsRequest(
            collection=collection,
            filter=flt,
            page_size=_PAGE,
            page_token=token,
            with_payload=True,
            with_vector=with_vector,
            tenant=call.tenant,
        )
        try:
            response = await call.backends.vector.list_points(request, call.options.as_gateway())
        except LodestarError as error:
            if is_missing_collection(error):
                return
            raise
        for point in response.points:
            yield point
        seen += len(response.points)
        token = response.next_page_token
        if not token:
            return


async def list_memory(
    call: Call, runtime: FlowsRuntime, *, page_size: int = 100, page_token: str = ""
) -> tuple[list[MemoryItem], str]:
    """One page of the caller's remembered interactions, and the next page's token."""
    collection = collection_of(runtime)
    request = vpb.ListPointsRequest(
        collection=collection,
        filter=owned_interactions(call),
        page_size=page_size,
        page_token=page_token,
        with_payload=True,
        tenant=call.tenant,
    )
    try:
        response = await call.backends.vector.list_points(request, call.options.as_gateway())
    except LodestarError as error:
        if is_missing_collection(error):
            return [], ""
        raise
    return [item_of(p) for p in response.points], response.next_page_token


async def recall(
    call: Call,
    runtime: FlowsRuntime,
    vector: Sequence[float],
    *,
    limit: int | None = None,
    exclude_conversation: str | None = None,
) -> list[MemoryItem]:
    """The caller's own interactions most similar to ``vector`` (a query's
    embedding), above ``memory_min_similarity``, best first."""
    settings = runtime.settings
    request = vpb.SearchPointsRequest(
        collection=collection_of(runtime),
        vector=vector,
        limit=limit or settings.memory_items,
        score_threshold=settings.memory_min_similarity,
        with_payload=True,
        filter=owned_interactions(call),
        tenant=call.tenant,
    )
    if exclude_conversation is not None:
        request.filter.must_not.append(keyword("conversation_id", exclude_conversation))
    try:
        response = await call.backends.vector.search_points(request, call.options.as_gateway())
    except LodestarError as error:
        if is_missing_collection(error):
            return []
        raise
    return [item_of(p) for p in response.points]


async def recall_text(
    call: Call, runtime: FlowsRuntime, query: str, *, limit: int | None = None
) -> list[MemoryItem]:
    """``recall`` for a text query."""
    vector = (await call.backends.embedding.embed([query[:_EMBED_MAX_CHARS]], call.options))[0]
    return await recall(call, runtime, vector, limit=limit)


# --- remembering ----------------------------------------------------------------------


async def remember(
    call: Call,
    runtime: FlowsRuntime,
    prompt: str,
    answer: str,
    *,
    conversation_id: str | None = None,
    turn: int | None = None,
    extra: dict[str, Any] | None = None,
) -> MemoryItem:
    """Store an exchange as the caller's interaction and fold it into their profile."""
    collection = collection_of(runtime)
    text = f"{prompt}\n{answer}"
    vector = (await call.backends.embedding.embed([text[:_EMBED_MAX_CHARS]], call.options))[0]
    created_at = datetime.now(UTC).isoformat()
    payload: dict[str, Any] = {
        **(extra or {}),
        "kind": INTERACTION_KIND,
        "subject": call.principal.subject,
        "prompt": prompt,
        "answer": answer,
        "created_at": created_at,
        "shared": False,
    }
    if conversation_id is not None:
        payload["conversation_id"] = conversation_id
        payload["turn"] = turn or 1
    text_key = call.settings.store_text_key
    if text_key:
        payload[text_key] = text
    point_id = convert.new_point_id()
    point = vpb.Point(id=point_id, vector=vector)
    dict_to_struct(payload, point.payload)
    await upsert_creating(
        call, vpb.UpsertPointsRequest(collection=collection, points=[point], tenant=call.tenant)
    )
    await fold_into_profile(call, runtime, vector)
    return MemoryItem(
        id=convert.point_id_from_proto(point_id),
        prompt=prompt,
        answer=answer,
        created_at=created_at,
        conversation_id=conversation_id,
        turn=payload.get("turn"),
    )


async def tag_stored(
    call: Call, runtime: FlowsRuntime, point_id: int | str, payload: dict[str, Any]
) -> None:
    """Add ``payload`` to an interaction stored by ``store_embedding`` in the
    conversations collection and fold its vector into the caller's profile."""
    collection = collection_of(runtime)
    proto_id = convert.point_id_to_proto(
        point_id if isinstance(point_id, int) else uuid.UUID(point_id)
    )
    found = await call.backends.vector.get_points(
        vpb.GetPointsRequest(
            collection=collection, ids=[proto_id], with_vector=True, tenant=call.tenant
        ),
        call.options.as_gateway(),
    )
    if payload:
        update = vpb.PointUpdate(id=proto_id)
        dict_to_struct({**payload, "shared": False}, update.payload)
        await call.backends.vector.update_points(
            vpb.UpdatePointsRequest(collection=collection, updates=[update], tenant=call.tenant),
            call.options.as_gateway(),
        )
    if found.points:
        await fold_into_profile(call, runtime, list(found.points[0].vector))


# --- the profile ----------------------------------------------------------------------


def profile_id(call: Call) -> vpb.PointId:
    """One profile per subject and tenant, at an id derived from both, so that
    updating it replaces it."""
    key = f"{call.tenant}\x00{call.principal.subject}"
    return vpb.PointId(uuid=str(uuid.uuid5(_PROFILE_NAMESPACE, key)))


@dataclass(frozen=True, slots=True)
class Profile:
    vector: list[float]
    count: int
    updated_at: str


async def profile(call: Call, runtime: FlowsRuntime) -> Profile | None:
    """The caller's profile, if anything about them is remembered."""
    request = vpb.GetPointsRequest(
        collection=collection_of(runtime),
        ids=[profile_id(call)],
        with_payload=True,
        with_vector=True,
        tenant=call.tenant,
    )
    try:
        found = await call.backends.vector.get_points(request, call.options.as_gateway())
    except LodestarError as error:
        if is_missing_collection(error):
            return None
        raise
    if not found.points:
        return None
    payload = struct_to_dict(found.points[0].payload)
    if payload.get("kind") != PROFILE_KIND or payload.get("subject") != call.principal.subject:
        return None
    return Profile(
        list(found.points[0].vector),
        int(payload.get("count", 0)),
        str(payload.get("updated_at", "")),
    )


async def _save_profile(
    call: Call, runtime: FlowsRuntime, vector: Sequence[float], count: int
) -> None:
    point = vpb.Point(id=profile_id(call), vector=vector)
    payload = {
        "kind": PROFILE_KIND,
        "subject": call.principal.subject,
        "count": count,
        "updated_at": datetime.now(UTC).isoformat(),
    }
    dict_to_struct(payload, point.payload)
    await upsert_creating(
        call,
        vpb.UpsertPointsRequest(
            collection=collection_of(runtime), points=[point], tenant=call.tenant
        ),
    )


async def fold_into_profile(call: Call, runtime: FlowsRuntime, vector: Sequence[float]) -> None:
    """The running mean of the subject's interaction vectors, one more included."""
    current = await profile(call, runtime)
    if current is None or len(current.vector) != len(vector) or current.count <= 0:
        await _save_profile(call, runtime, vector, 1)
        return
    n = current.count
    mean = [(old * n + new) / (n + 1) for old, new in zip(current.vector, vector, strict=True)]
    await _save_profile(call, runtime, mean, n + 1)


async def rebuild_profile(call: Call, runtime: FlowsRuntime) -> None:
    """The profile anew from the interactions left (none: no profile)."""
    collection = collection_of(runtime)
    total: list[float] | None = None
    count = 0
    async for point in scan(call, collection, owned_interactions(call), with_vector=True):
        vector = list(point.vector)
        if total is None:
            total = vector
        elif len(vector) == len(total):
            total = [a + b for a, b in zip(total, vector, strict=True)]
        else:
            continue
        count += 1
    if total is None:
        await _delete(
            call, collection, vpb.PointsSelector(ids=[profile_id(call)], filter=_own_profile(call))
        )
        return
    await _save_profile(call, runtime, [value / count for value in total], count)


def _own_profile(call: Call) -> vpb.Filter:
    return vpb.Filter(must=[keyword("kind", PROFILE_KIND), mine(call)])


# --- forgetting -----------------------------------------------------------------------


async def _delete(call: Call, collection: str, selector: vpb.PointsSelector) -> int:
    try:
        response = await call.backends.vector.delete_points(
            vpb.DeletePointsRequest(collection=collection, selector=selector, tenant=call.tenant),
            call.options.as_gateway(),
        )
    except LodestarError as error:
        if is_missing_collection(error):
            return 0
        raise
    return int(response.deleted_count)


def memory_not_found(item_id: int | str) -> NotFound:
    return NotFound(
        f"nothing with id {item_id} is remembered about you",
        reason="MEMORY_NOT_FOUND",
        metadata={"id": str(item_id)},
    )


async def forget(call: Call, runtime: FlowsRuntime, item_id: vpb.PointId) -> None:
    """Forget one of the caller's interactions (NotFound if it is not theirs):
    the point goes, and the profile is rebuilt without it."""
    collection = collection_of(runtime)
    selector = vpb.PointsSelector(ids=[item_id], filter=owned_interactions(call))
    if await _delete(call, collection, selector) == 0:
        raise memory_not_found(convert.point_id_from_proto(item_id))
    await rebuild_profile(call, runtime)


async def forget_conversation(call: Call, runtime: FlowsRuntime, conversation_id: str) -> int:
    """Forget every turn of one of the caller's conversations; how many went."""
    collection = collection_of(runtime)
    flt = owned_interactions(call, keyword("conversation_id", conversation_id))
    deleted = await _delete(call, collection, vpb.PointsSelector(filter=flt))
    if deleted:
        await rebuild_profile(call, runtime)
    return deleted


async def _collections(call: Call) -> AsyncIterator[str]:
    token = ""
    while True:
        response = await call.backends.vector.list_collections(
            vpb.ListCollectionsRequest(page_size=limits.MAX_PAGE_SIZE, page_token=token),
            call.options.as_gateway(),
        )
        for collection in response.collections:
            if call.principal.may_use_collection(collection.name):
                yield collection.name
        token = response.next_page_token
        if not token:
            return


async def forget_all(call: Call, runtime: FlowsRuntime) -> int:
    """Forget everything remembered about the caller: their interactions in
    every collection their token may use (stored generations included) and
    their profile. How many interactions went."""
    home = collection_of(runtime)
    deleted = await _delete(call, home, vpb.PointsSelector(filter=owned_interactions(call)))
    async for name in _collections(call):
        if name != home:
            selector = vpb.PointsSelector(filter=owned_interactions(call))
            deleted += await _delete(call, name, selector)
    await _delete(call, home, vpb.PointsSelector(filter=_own_profile(call)))
    return deleted


# --- personalised ranking -------------------------------------------------------------


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


async def personalized_search(
    call: Call, runtime: FlowsRuntime, request: vpb.SearchPointsRequest
) -> tuple[vpb.SearchPointsResponse, bool]:
    """``request``'s hits re-ranked for the caller: each score blended with the
    hit's similarity to their profile (``personalize_weight``), from a wider
    set of candidates. Without a profile (or with vectors of another
    dimension) the plain search, and False."""
    found = await profile(call, runtime)
    if found is None or len(found.vector) != len(request.vector):
        return await call.backends.vector.search_points(request, call.options), False
    wanted_vector = request.with_vector
    offset, limit = request.offset, request.limit
    wider = vpb.SearchPointsRequest()
    wider.CopyFrom(request)
    wider.offset = 0
    wider.limit = min(limits.MAX_LIMIT, max(4 * (offset + limit), 20))
    wider.with_vector = True
    response = await call.backends.vector.search_points(wider, call.options)
    weight = runtime.settings.personalize_weight
    blended = sorted(
        (
            ((1 - weight) * point.score + weight * _cosine(point.vector, found.vector), point)
            for point in response.points
        ),
        key=lambda pair: pair[0],
        reverse=True,
    )
    out = vpb.SearchPointsResponse(time_ms=response.time_ms)
    for score, point in blended[offset : offset + limit]:
        hit = out.points.add()
        hit.CopyFrom(point)
        hit.score = score
        if not wanted_vector:
            hit.ClearField("vector")
    return out, True
