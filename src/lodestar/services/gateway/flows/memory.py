"""Generate and remember: the ``store_embedding`` option of /api/v1/generate.

When the answer is complete (for a stream: when it ends, before the final
event), the question and the answer are embedded together and stored as one
point of the conversations collection (created on first use with the
embedding model's dimension), with who asked, the session, the model, when,
and the token counts. The response's ``stored`` field names the point; it is
the ``interaction_id`` that feedback refers to.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import grpc

from lodestar.auth.permissions import Permission
from lodestar.runtime.errors import LodestarError
from lodestar.runtime.protojson import dict_to_struct
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.convert import vector as convert
from lodestar.services.gateway.flows.augment import augmentation_of
from lodestar.services.gateway.flows.prompting import question_of
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.pipeline import Generation
from lodestar.services.gateway.schemas.inference import GenerateRequest
from lodestar.vector.v1 import vector_service_pb2 as vpb

INTERACTION_KIND = "interaction"
# Indexed payload fields of a conversations collection made by the gateway.
INTERACTION_SCHEMA = {
    "kind": vpb.PAYLOAD_FIELD_TYPE_KEYWORD,
    "subject": vpb.PAYLOAD_FIELD_TYPE_KEYWORD,
    "session_id": vpb.PAYLOAD_FIELD_TYPE_KEYWORD,
    "created_at": vpb.PAYLOAD_FIELD_TYPE_DATETIME,
    "feedback_score": vpb.PAYLOAD_FIELD_TYPE_FLOAT,
    "conversation_id": vpb.PAYLOAD_FIELD_TYPE_KEYWORD,
    "shared": vpb.PAYLOAD_FIELD_TYPE_BOOL,
}
# The embedding service refuses longer texts by default; the model reads far less.
_EMBED_MAX_CHARS = 8000


def conversations(body: GenerateRequest, runtime: FlowsRuntime) -> str:
    return body.collection or runtime.settings.conversations_collection


def is_missing_collection(error: LodestarError) -> bool:
    return error.code is grpc.StatusCode.NOT_FOUND and error.reason == "COLLECTION_NOT_FOUND"


async def ensure_collection(call: Call, name: str) -> None:
    """Create ``name`` for interactions unless it exists."""
    model = await call.backends.embedding.model_info(call.options)
    request = vpb.CreateCollectionRequest(
        name=name,
        config=vpb.CollectionConfig(
            dimension=model.dimension,
            distance=vpb.DISTANCE_COSINE,
            payload_schema=INTERACTION_SCHEMA,
            embedding_model=model.name,
        ),
    )
    try:
        # Made on the gateway's authority: the caller may store (InsertVectors) but
        # need not manage collections.
        await call.backends.vector.create_collection(request, call.options.as_gateway())
    except LodestarError as error:
        if error.code is not grpc.StatusCode.ALREADY_EXISTS:
            raise


async def upsert_creating(call: Call, request: vpb.UpsertPointsRequest) -> None:
    """Upsert, creating the collection first if it does not exist yet."""
    options = call.flow_options(request.collection)
    try:
        await call.backends.vector.upsert_points(request, options)
    except LodestarError as error:
        if not is_missing_collection(error):
            raise
        await ensure_collection(call, request.collection)
        await call.backends.vector.upsert_points(request, options)


class StoreStage:
    option = "store_embedding"

    def __init__(self, runtime: FlowsRuntime) -> None:
        self._runtime = runtime

    def permissions(self, body: GenerateRequest) -> Iterable[Permission]:
        return (Permission.INSERT_VECTORS,)

    async def before(self, generation: Generation) -> None:
        # Refuse a collection outside the token's allow-list before generating.
        generation.call.flow_collection(conversations(generation.body, self._runtime))

    async def after(self, generation: Generation) -> None:
        call = generation.call
        body = generation.body
        name = conversations(body, self._runtime)
        augmented = augmentation_of(generation)
        question = augmented.question if augmented is not None else question_of(generation.request)
        text = f"{question}\n{generation.text}"
        vector = (await call.backends.embedding.embed([text[:_EMBED_MAX_CHARS]], call.options))[0]
        usage = generation.usage
        payload: dict[str, Any] = {
            "kind": INTERACTION_KIND,
            "prompt": question,
            "answer": generation.text,
            "subject": call.principal.subject,
            "session_id": body.session_id or "",
            "model": generation.model,
            "created_at": datetime.now(UTC).isoformat(),
            "finish_reason": generation.finish_reason,
            "prompt_tokens": usage.prompt_tokens if usage is not None else 0,
            "completion_tokens": usage.completion_tokens if usage is not None else 0,
        }
        text_key = call.settings.store_text_key
        if text_key:
            payload[text_key] = text
        if generation.sources:
            payload["source_ids"] = [source["id"] for source in generation.sources]
            # The documents cited (an ingested chunk's "source"), for the topics' most retrieved.
            documents = {s.get("payload", {}).get("source") for s in generation.sources}
            if cited := sorted(d for d in documents if isinstance(d, str)):
                payload["source_documents"] = cited
        payload.update(generation.record)
        point_id = convert.new_point_id()
        point = vpb.Point(id=point_id, vector=vector)
        dict_to_struct(payload, point.payload)
        await upsert_creating(
            call, vpb.UpsertPointsRequest(collection=name, points=[point], tenant=call.tenant)
        )
        generation.extra["stored"] = {
            "collection": name,
            "id": convert.point_id_from_proto(point_id),
        }
