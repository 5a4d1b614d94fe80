"""The semantic cache: answer a question that means the same as one already
answered, without generating.

Entries are points of one collection of the vector service
(``cache_collection``): the question's embedding, the answer, and a key that
hashes everything else the answer depends on (route, model, options, the
earlier turns, the experiment variant, the tenant; the seed only when sampling
is random; the subject when personal memory shaped the answer). A lookup is
one filtered nearest-neighbour search: the key must match, the similarity
reach ``cache_min_similarity``, the entry be unexpired and not banned. Entries
are written with the caller's tenant and a scope field of their own, so that
tenants never share them, and every replica of the gateway sees the same ones.

An entry records the points (and documents) it cited; ``invalidate_sources``
drops the entries citing a point that is updated or deleted. Feedback at or
below ``cache_drop_score`` on an interaction made from an entry bans it: it is
never served again, and the same answer is not stored again for that key.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from prometheus_client import Counter, Histogram
from starlette.requests import Request

from lodestar.auth.permissions import Permission
from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.runtime.errors import LodestarError
from lodestar.runtime.protojson import dict_to_struct, struct_to_dict
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.context import gateway_of
from lodestar.services.gateway.convert import vector as convert
from lodestar.services.gateway.flows import experiments, prompting
from lodestar.services.gateway.flows.augment import (
    QUESTION_MAX_CHARS,
    augmentation,
    question_vector,
)
from lodestar.services.gateway.flows.experiments import Assignment
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.metrics import Children
from lodestar.services.gateway.pipeline import Generation
from lodestar.services.gateway.schemas.inference import GenerateRequest
from lodestar.vector.v1 import vector_service_pb2 as vpb

CACHE_HEADER: Final = "X-Lodestar-Cache"
_STATE_KEY = "lodestar_cache"
_SCHEMA = {
    "key": vpb.PAYLOAD_FIELD_TYPE_KEYWORD,
    "scope": vpb.PAYLOAD_FIELD_TYPE_KEYWORD,
    "sources": vpb.PAYLOAD_FIELD_TYPE_KEYWORD,
    "source_collections": vpb.PAYLOAD_FIELD_TYPE_KEYWORD,
    "answer_hash": vpb.PAYLOAD_FIELD_TYPE_KEYWORD,
    "banned": vpb.PAYLOAD_FIELD_TYPE_BOOL,
    "expires_at": vpb.PAYLOAD_FIELD_TYPE_FLOAT,
}
# How often a gateway drops expired entries (expired ones are never served).
_PRUNE_INTERVAL_S = 60.0
# Candidates read per lookup: the best one may cite a collection the caller may not use.
_CANDIDATES = 4
# Request fields that do not change the answer, or are keyed apart.
_NOT_KEYED = frozenset({"prompt", "messages", "stream", "cache", "store_embedding", "session_id"})
_STORED_FINISH = (ipb.FINISH_REASON_STOP, ipb.FINISH_REASON_LENGTH)

REQUESTS = Counter(
    "lodestar_gateway_semantic_cache_requests_total",
    "Generation requests by what the semantic cache did: hit, miss, or bypass (opted "
    "out, or not cacheable).",
    ["result"],
)
EVICTIONS = Counter(
    "lodestar_gateway_semantic_cache_evictions_total",
    "Semantic cache entries dropped, by reason: source (a cited point changed), "
    "feedback (scored badly), expired.",
    ["reason"],
)
HIT_SIMILARITY = Histogram(
    "lodestar_gateway_semantic_cache_hit_similarity",
    "Similarity between a question answered from the cache and the cached question.",
    buckets=(0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 1.0),
)
_REQUESTS_BY = Children(REQUESTS)
_EVICTIONS_BY = Children(EVICTIONS)


@dataclass
class Lookup:
    """What the cache found for one request, kept on the request."""

    key: str
    question: str
    vector: list[float]
    started: float
    hit_id: str | None = None
    similarity: float = 0.0
    sources: list[dict[str, Any]] | None = None
    answer: ipb.GenerateTextResponse | None = None
    stored_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def header(self) -> str:
        if self.hit_id is None:
            return "miss"
        return f"hit; similarity={self.similarity:.3f}"


def _state(request: Request) -> Lookup | str | None:
    found: Lookup | str | None = getattr(request.state, _STATE_KEY, None)
    return found


def response_headers(request: Request) -> dict[str, str]:
    """The cache's and the experiment's headers for the response to ``request``."""
    headers: dict[str, str] = {}
    state = _state(request)
    if isinstance(state, Lookup):
        headers[CACHE_HEADER] = state.header
    elif state is not None:
        headers[CACHE_HEADER] = state
    assignment = experiments.assignment_of(request)
    if assignment is not None:
        headers[experiments.EXPERIMENT_HEADER] = assignment.header
    return headers


def bypass(call: Call) -> None:
    setattr(call.request.state, _STATE_KEY, "bypass")
    _REQUESTS_BY("bypass").inc()


def _scope(call: Call) -> str:
    return f"tenant:{call.tenant}"


def source_key(collection: str, point_id: int | str) -> str:
    return f"{collection}/{point_id}"


def document_key(collection: str, document_id: str) -> str:
    return f"{collection}/document:{document_id}"


def request_key(
    call: Call,
    *,
    route: str,
    model: str,
    options: dict[str, Any],
    turns: Sequence[tuple[str, str]],
    assignment: Assignment | None,
    personal: bool,
) -> str:
    """The hash of everything but the question that an answer depends on."""
    keyed = {
        "route": route,
        "model": model,
        "options": options,
        "turns": list(turns),
        "variant": assignment.key if assignment is not None else None,
        "tenant": call.tenant,
        "subject": call.principal.subject if personal else None,
    }
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


def cacheable_turns(
    turns: Sequence[tuple[str, str]], multi_turn: bool
) -> list[tuple[str, str]] | None:
    """The turns before the question (the key's part), or None when the
    conversation has more than one question and multi-turn caching is off."""
    if not turns or turns[-1][0] != "user":
        return None
    earlier = list(turns[:-1])
    if not multi_turn and any(role != "system" for role, _ in earlier):
        return None
    return earlier


def _random_seed_only(options: dict[str, Any]) -> dict[str, Any]:
    """The seed keys an answer only when sampling is random."""
    if options.get("temperature") == 0:
        options.pop("seed", None)
    return options


async def _search(
    call: Call, runtime: FlowsRuntime, key: str, vector: list[float]
) -> tuple[str, float, dict[str, Any]] | None:
    settings = runtime.settings
    request = vpb.SearchPointsRequest(
        collection=settings.cache_collection,
        vector=vector,
        limit=_CANDIDATES,
        score_threshold=settings.cache_min_similarity,
        with_payload=True,
        tenant=call.tenant,
    )
    must = request.filter.must
    must.add().field.CopyFrom(vpb.FieldCondition(key="key", match=vpb.Match(keyword=key)))
    must.add().field.CopyFrom(
        vpb.FieldCondition(key="scope", match=vpb.Match(keyword=_scope(call)))
    )
    must.add().field.CopyFrom(vpb.FieldCondition(key="expires_at", range=vpb.Range(gt=time.time())))
    request.filter.must_not.add().field.CopyFrom(
        vpb.FieldCondition(key="banned", match=vpb.Match(boolean=True))
    )
    try:
        response = await call.backends.vector.search_points(request, call.options.as_gateway())
    except LodestarError as error:
        if _missing_collection(error):
            return None
        raise
    for point in response.points:
        payload = struct_to_dict(point.payload)
        collections = payload.get("source_collections") or []
        if all(call.principal.may_use_collection(str(name)) for name in collections):
            return str(convert.point_id_from_proto(point.id)), point.score, payload
    return None


async def lookup(
    call: Call, runtime: FlowsRuntime, key: str, question: str, vector: list[float]
) -> Lookup:
    """The cached answer to ``question`` under ``key``, if one is close enough."""
    state = Lookup(key, question, vector, time.perf_counter())
    setattr(call.request.state, _STATE_KEY, state)
    found = await _search(call, runtime, key, vector)
    if found is None:
        _REQUESTS_BY("miss").inc()
        return state
    entry_id, similarity, payload = found
    state.hit_id, state.similarity = entry_id, similarity
    sources = payload.get("sources_json")
    state.sources = json.loads(sources) if isinstance(sources, str) and sources else None
    answer = ipb.GenerateTextResponse(
        text=str(payload.get("answer", "")),
        finish_reason=int(payload.get("finish_reason", ipb.FINISH_REASON_STOP)),  # type: ignore[arg-type]
        usage=ipb.Usage(),
        model=str(payload.get("model", "")),
    )
    answer.timing.total_ms = (time.perf_counter() - state.started) * 1000
    state.answer = answer
    state.extra = {"hit": True, "id": entry_id, "similarity": round(similarity, 4)}
    _REQUESTS_BY("hit").inc()
    HIT_SIMILARITY.observe(similarity)
    return state


def _missing_collection(error: LodestarError) -> bool:
    return error.code is grpc.StatusCode.NOT_FOUND and error.reason == "COLLECTION_NOT_FOUND"


async def _ensure_collection(call: Call, runtime: FlowsRuntime) -> None:
    model = await call.backends.embedding.model_info(call.options)
    config = vpb.CollectionConfig(
        dimension=model.dimension,
        distance=vpb.DISTANCE_COSINE,
        payload_schema=_SCHEMA,
        embedding_model=model.name,
    )
    try:
        await call.backends.vector.create_collection(
            vpb.CreateCollectionRequest(name=runtime.settings.cache_collection, config=config),
            call.options.as_gateway(),
        )
    except LodestarError as error:
        if error.code is not grpc.StatusCode.ALREADY_EXISTS:
            raise


def _answer_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def _banned(call: Call, runtime: FlowsRuntime, key: str, answer_hash: str) -> bool:
    request = vpb.CountPointsRequest(
        collection=runtime.settings.cache_collection, tenant=call.tenant
    )
    for name, value in (("key", key), ("answer_hash", answer_hash), ("scope", _scope(call))):
        request.filter.must.add().field.CopyFrom(
            vpb.FieldCondition(key=name, match=vpb.Match(keyword=value))
        )
    request.filter.must.add().field.CopyFrom(
        vpb.FieldCondition(key="banned", match=vpb.Match(boolean=True))
    )
    response = await call.backends.vector.count_points(request, call.options.as_gateway())
    return response.count > 0


async def store(
    call: Call,
    runtime: FlowsRuntime,
    state: Lookup,
    *,
    text: str,
    finish_reason: int,
    model: str,
    sources: list[dict[str, Any]] | None,
    cited: Iterable[tuple[str, int | str]],
    documents: Iterable[tuple[str, str]] = (),
) -> str | None:
    """Keep a fresh answer for ``state``'s key; its id, or None when the
    answer is not one to keep (cut short, empty, or banned for this key)."""
    if finish_reason not in _STORED_FINISH or not text.strip():
        return None
    answer_hash = _answer_hash(text)
    cited = list(cited)
    keys = [source_key(c, p) for c, p in cited] + [document_key(c, d) for c, d in documents]
    now = time.time()
    payload: dict[str, Any] = {
        "kind": "cache_entry",
        "key": state.key,
        "scope": _scope(call),
        "question": state.question,
        "answer": text,
        "answer_hash": answer_hash,
        "finish_reason": int(finish_reason),
        "model": model,
        "sources": keys,
        "source_collections": sorted({c for c, _ in cited} | {c for c, _ in documents}),
        "sources_json": json.dumps(sources) if sources is not None else "",
        "banned": False,
        "created_at": now,
        "expires_at": now + runtime.settings.cache_ttl_s,
    }
    point_id = str(uuid.uuid4())
    point = vpb.Point(id=vpb.PointId(uuid=point_id), vector=state.vector)
    dict_to_struct(payload, point.payload)
    request = vpb.UpsertPointsRequest(
        collection=runtime.settings.cache_collection, points=[point], tenant=call.tenant
    )
    try:
        if await _banned(call, runtime, state.key, answer_hash):
            return None
        await call.backends.vector.upsert_points(request, call.options.as_gateway())
    except LodestarError as error:
        if not _missing_collection(error):
            raise
        await _ensure_collection(call, runtime)
        await call.backends.vector.upsert_points(request, call.options.as_gateway())
    state.stored_id = point_id
    await _prune(call, runtime)
    return point_id


async def _prune(call: Call, runtime: FlowsRuntime) -> None:
    """Drop expired entries, at most once a minute per gateway; banned ones
    stay, so that their answers are not stored again."""
    now = time.time()
    if now - runtime.cache_pruned_at < _PRUNE_INTERVAL_S:
        return
    runtime.cache_pruned_at = now
    selector = vpb.PointsSelector()
    selector.filter.must.add().field.CopyFrom(
        vpb.FieldCondition(key="expires_at", range=vpb.Range(lte=now))
    )
    selector.filter.must_not.add().field.CopyFrom(
        vpb.FieldCondition(key="banned", match=vpb.Match(boolean=True))
    )
    response = await call.backends.vector.delete_points(
        vpb.DeletePointsRequest(collection=runtime.settings.cache_collection, selector=selector),
        call.options.as_gateway(),
    )
    if response.deleted_count:
        _EVICTIONS_BY("expired").inc(response.deleted_count)


async def _delete_citing(
    call: Call, runtime: FlowsRuntime, keys: list[str], field: str = "sources"
) -> int:
    selector = vpb.PointsSelector()
    selector.filter.must.add().field.CopyFrom(
        vpb.FieldCondition(key=field, match=vpb.Match(any_keywords=vpb.Keywords(values=keys)))
    )
    # Every tenant's entries: a point's change must reach whoever cited it.
    request = vpb.DeletePointsRequest(
        collection=runtime.settings.cache_collection, selector=selector
    )
    try:
        response = await call.backends.vector.delete_points(request, call.options.as_gateway())
    except LodestarError as error:
        if _missing_collection(error):
            return 0
        raise
    if response.deleted_count:
        _EVICTIONS_BY("source").inc(response.deleted_count)
    return response.deleted_count


def _runtime_of(call: Call) -> FlowsRuntime | None:
    """The flows of a gateway whose cache is on: with it off, writes pay no
    extra call (entries left from when it was on still expire by their TTL)."""
    runtime = gateway_of(call.request).flows
    if runtime is None or not runtime.settings.semantic_cache:
        return None
    return runtime


async def invalidate_sources(call: Call, collection: str, point_ids: Iterable[object]) -> int:
    """Drop the cached answers that cite any of ``point_ids`` of
    ``collection``: call it when those points are updated or deleted. The
    number of entries dropped (0 on a gateway without the flows)."""
    runtime = _runtime_of(call)
    keys = [source_key(collection, str(p)) for p in point_ids]
    if runtime is None or not keys:
        return 0
    return await _delete_citing(call, runtime, keys)


async def invalidate_documents(call: Call, collection: str, document_ids: Iterable[str]) -> int:
    """Like ``invalidate_sources``, for the documents whose chunks were cited."""
    runtime = _runtime_of(call)
    keys = [document_key(collection, d) for d in document_ids]
    if runtime is None or not keys:
        return 0
    return await _delete_citing(call, runtime, keys)


async def invalidate_collection(call: Call, collection: str) -> int:
    """Drop every cached answer citing any point of ``collection``: for
    changes whose points are not known one by one (by filter, or the whole
    collection's deletion)."""
    runtime = _runtime_of(call)
    if runtime is None:
        return 0
    return await _delete_citing(call, runtime, [collection], "source_collections")


async def invalidate_batch(call: Call, collection: str, operations: Iterable[Any]) -> int:
    """Drop the cached answers a batch of point operations (``/vectors/batch``)
    may have made stale: those citing its points, or, when an operation
    selects points by filter, any point of the collection."""
    ids: list[object] = []
    for operation in operations:
        if operation.upsert is not None:
            ids.extend(p.id for p in operation.upsert.points if p.id is not None)
            continue
        selector = operation.delete or operation.set_payload or operation.delete_payload_keys
        if selector is None:
            continue
        if selector.filter is not None:
            return await invalidate_collection(call, collection)
        ids.extend(selector.ids or ())
    return await invalidate_sources(call, collection, ids)


async def on_feedback(
    call: Call, runtime: FlowsRuntime, interaction: dict[str, Any], score: float
) -> None:
    """Ban the cache entry an interaction was answered from (or stored as)
    when it is scored at or below ``cache_drop_score``."""
    entry = interaction.get("cache_entry")
    if not isinstance(entry, str) or score > runtime.settings.cache_drop_score:
        return
    update = vpb.PointUpdate(id=vpb.PointId(uuid=entry))
    dict_to_struct({"banned": True}, update.payload)
    try:
        response = await call.backends.vector.update_points(
            vpb.UpdatePointsRequest(
                collection=runtime.settings.cache_collection, updates=[update], tenant=call.tenant
            ),
            call.options.as_gateway(),
        )
    except LodestarError as error:
        if _missing_collection(error) or error.code is grpc.StatusCode.NOT_FOUND:
            return
        raise
    if response.updated_count:
        _EVICTIONS_BY("feedback").inc()


def _generate_options(body: GenerateRequest) -> dict[str, Any]:
    options = body.model_dump(mode="json", exclude=set(_NOT_KEYED), exclude_none=True)
    if not body.use_feedback:
        options.pop("collection", None)
    return _random_seed_only(options)


def _is_personal(body: GenerateRequest) -> bool:
    return bool(getattr(body, "memory", False))


class CacheStage:
    """Runs after the experiment stage and before retrieval: a hit answers the
    request (the later stages' ``before`` are skipped); a miss is stored once
    answered."""

    option = "cache"

    def __init__(self, runtime: FlowsRuntime) -> None:
        self._runtime = runtime

    def permissions(self, body: GenerateRequest) -> Iterable[Permission]:
        return ()

    async def before(self, generation: Generation) -> None:
        settings = self._runtime.settings
        body, call = generation.body, generation.call
        if not settings.semantic_cache:
            return
        multi_turn = settings.cache_multi_turn
        earlier = cacheable_turns(prompting.turns_of(generation.request), multi_turn)
        server_history = getattr(body, "conversation_id", None) is not None
        question = prompting.question_of(generation.request).strip()
        if not body.cache or earlier is None or (server_history and not multi_turn) or not question:
            bypass(call)
            return
        # A hit skips the later stages' checks: refuse the collections the
        # request names that the token may not use, as they would.
        if body.context is not None:
            call.collection(body.context.collection)
        if body.store_embedding or body.use_feedback:
            call.flow_collection(body.collection or settings.conversations_collection)
        if body.context is not None or body.use_feedback:
            vector = await question_vector(call, augmentation(generation), self._runtime)
        else:
            embedded = await call.backends.embedding.embed(
                [question[:QUESTION_MAX_CHARS]], call.options
            )
            vector = embedded[0]
        model = (await self._runtime.inference_info(call)).name
        key = request_key(
            call,
            route="generate",
            model=model,
            options=_generate_options(body),
            turns=earlier,
            assignment=experiments.assignment_of(call.request),
            personal=_is_personal(body),
        )
        state = await lookup(call, self._runtime, key, question, vector)
        if state.answer is None:
            return
        generation.answered = state.answer
        if body.context is not None:
            generation.sources = state.sources or []
        generation.extra["cache"] = state.extra
        generation.record["cache_entry"] = state.hit_id

    async def after(self, generation: Generation) -> None:
        state = _state(generation.call.request)
        if not isinstance(state, Lookup) or state.hit_id is not None:
            return
        cited: list[tuple[str, int | str]] = []
        documents: list[tuple[str, str]] = []
        context = generation.body.context
        for source in generation.sources or ():
            if context is not None:
                cited.append((context.collection, source["id"]))
                document = (source.get("payload") or {}).get("document_id")
                if isinstance(document, str):
                    documents.append((context.collection, document))
        feedback = generation.extra.get("feedback")
        if isinstance(feedback, dict):
            for example in feedback.get("examples", ()):
                cited.append((str(feedback["collection"]), example["id"]))
        entry = await store(
            generation.call,
            self._runtime,
            state,
            text=generation.text,
            finish_reason=_finish_code(generation.finish_reason),
            model=generation.model,
            sources=generation.sources,
            cited=cited,
            documents=documents,
        )
        generation.extra["cache"] = {"hit": False, "id": entry}
        if entry is not None:
            generation.record["cache_entry"] = entry


_FINISH_CODES = {"stop": ipb.FINISH_REASON_STOP, "length": ipb.FINISH_REASON_LENGTH}


def _finish_code(reason: str) -> int:
    return _FINISH_CODES.get(reason, ipb.FINISH_REASON_UNSPECIFIED)
