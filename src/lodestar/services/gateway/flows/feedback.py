"""Learning from feedback.

``POST /api/v1/feedback`` scores an interaction stored by ``store_embedding``
(1 = bad … 5 = good); the score is kept on the interaction's point. A later
generation with ``use_feedback: true`` looks for well-scored interactions
similar to its question, among the caller's own and those an operator shared
(``flows.personal``), and shows them to the model as earlier exchanges; its
response lists the ones used under ``feedback``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends
from pydantic import Field
from starlette.responses import Response

from lodestar.auth.permissions import Permission
from lodestar.runtime.errors import InvalidArgument, LodestarError, NotFound
from lodestar.runtime.protojson import dict_to_struct, struct_to_dict
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.convert import vector as convert
from lodestar.services.gateway.deps import flows_of, require
from lodestar.services.gateway.flows import experiments, semantic_cache
from lodestar.services.gateway.flows.augment import augmentation, question_vector
from lodestar.services.gateway.flows.memory import (
    INTERACTION_KIND,
    conversations,
    is_missing_collection,
)
from lodestar.services.gateway.flows.personal import visible_to
from lodestar.services.gateway.flows.prompting import Example
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.pipeline import Generation
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.responses import respond_json
from lodestar.services.gateway.routes.base import api_router
from lodestar.services.gateway.schemas.common import (
    MAX_POINT_NUM,
    POINT_ID_PATTERN,
    CollectionName,
    RequestModel,
    UInt64,
)
from lodestar.services.gateway.schemas.inference import GenerateRequest
from lodestar.vector.v1 import vector_service_pb2 as vpb

MIN_SCORE = 1.0
MAX_SCORE = 5.0

router = api_router("feedback")


class FeedbackRequest(RequestModel):
    """A score for an interaction stored with ``store_embedding``."""

    # A string is checked by the route (400 naming the field); the schema states
    # what it takes.
    interaction_id: UInt64 | str = Field(
        description="The id returned in the generation's `stored.id`.",
        json_schema_extra={
            "anyOf": [
                {"type": "integer", "minimum": 0, "exclusiveMaximum": MAX_POINT_NUM + 1},
                {"type": "string", "pattern": POINT_ID_PATTERN},
            ]
        },
    )
    # The range is checked by the route (400 naming the field), not by the model.
    score: float = Field(
        description="1 (bad) to 5 (good).",
        json_schema_extra={"minimum": MIN_SCORE, "maximum": MAX_SCORE},
    )
    comment: str | None = Field(None, max_length=2000)
    collection: CollectionName | None = Field(
        None, description="Where the interaction is stored (default: conversations)."
    )


def _interaction_id(value: int | str) -> vpb.PointId:
    if isinstance(value, int):
        if 0 <= value < 2**64:
            return vpb.PointId(num=value)
    else:
        text = value.strip()
        if text.isdigit() and int(text) < 2**64:
            return vpb.PointId(num=int(text))
        try:
            return vpb.PointId(uuid=str(UUID(text)))
        except ValueError:
            pass
    raise InvalidArgument(
        f"interaction_id {value!r} is neither an unsigned integer nor a UUID",
        field="interaction_id",
        reason="BAD_INTERACTION_ID",
    )


def _not_found(value: int | str, collection: str) -> NotFound:
    return NotFound(
        f"no interaction {value} in collection {collection!r}",
        field="interaction_id",
        reason="INTERACTION_NOT_FOUND",
        metadata={"collection": collection, "interaction_id": str(value)},
    )


def _may_score(call: Call, interaction: dict[str, Any]) -> bool:
    """A subject scores their own interactions (one recorded without a subject
    has no owner to protect); ManageCollections scores anyone's. Someone else's
    is answered as unknown, so an id reveals nothing."""
    owner = interaction.get("subject")
    return (
        owner is None
        or owner == call.principal.subject
        or call.principal.has(Permission.MANAGE_COLLECTIONS)
    )


@router.post("/feedback", summary="Score an earlier interaction")
async def feedback(
    body: FeedbackRequest,
    call: Annotated[Call, Depends(require(Permission.GENERATE_TEXT, RouteClass.WRITE))],
    runtime: Annotated[FlowsRuntime, Depends(flows_of)],
) -> Response:
    """Keeps the score (and comment) on the interaction; a later score replaces
    it. Well-scored interactions steer generations that set ``use_feedback``.
    Unknown interaction, or another subject's: 404; score outside 1-5: 400."""
    if not MIN_SCORE <= body.score <= MAX_SCORE:
        raise InvalidArgument(
            f"score must be between {MIN_SCORE:g} and {MAX_SCORE:g}; got {body.score:g}",
            field="score",
            reason="SCORE_OUT_OF_RANGE",
        )
    point_id = _interaction_id(body.interaction_id)
    collection = call.flow_collection(body.collection or runtime.settings.conversations_collection)
    try:
        found = await call.backends.vector.get_points(
            vpb.GetPointsRequest(
                collection=collection, ids=[point_id], with_payload=True, tenant=call.tenant
            ),
            call.flow_options(collection),
        )
    except LodestarError as error:
        if is_missing_collection(error):
            raise _not_found(body.interaction_id, collection) from None
        raise
    interaction = struct_to_dict(found.points[0].payload) if found.points else {}
    if interaction.get("kind") != INTERACTION_KIND or not _may_score(call, interaction):
        raise _not_found(body.interaction_id, collection)
    scored: dict[str, Any] = {
        "feedback_score": body.score,
        "feedback_comment": body.comment or "",
        "feedback_subject": call.principal.subject,
        "feedback_at": datetime.now(UTC).isoformat(),
    }
    update = vpb.PointUpdate(id=point_id)
    dict_to_struct(scored, update.payload)
    # On the gateway's authority: scoring an interaction (GenerateText) is not
    # updating points (UpdateVectors); the caller's tenant still binds it.
    await call.backends.vector.update_points(
        vpb.UpdatePointsRequest(collection=collection, updates=[update], tenant=call.tenant),
        call.options.as_gateway(),
    )
    # The score counts for the interaction's experiment variant, and a bad one
    # drops the cached answer it came from.
    await experiments.on_feedback(call, runtime, interaction, body.score)
    await semantic_cache.on_feedback(call, runtime, interaction, body.score)
    return respond_json(
        {
            "interaction_id": convert.point_id_from_proto(point_id),
            "collection": collection,
            "score": body.score,
            "comment": body.comment,
        }
    )


class FeedbackStage:
    """``use_feedback``: similar, well-scored interactions become examples."""

    option = "use_feedback"

    def __init__(self, runtime: FlowsRuntime) -> None:
        self._runtime = runtime

    def permissions(self, body: GenerateRequest) -> Iterable[Permission]:
        return (Permission.SEARCH_VECTORS,)

    async def before(self, generation: Generation) -> None:
        call = generation.call
        settings = self._runtime.settings
        collection = call.flow_collection(conversations(generation.body, self._runtime))
        augmented = augmentation(generation)
        augmented.feedback_collection = collection
        vector = await question_vector(call, augmented, self._runtime)
        request = vpb.SearchPointsRequest(
            collection=collection,
            vector=vector,
            limit=settings.feedback_examples,
            score_threshold=settings.feedback_min_similarity,
            with_payload=True,
            tenant=call.tenant,
        )
        request.filter.must.add().field.CopyFrom(
            vpb.FieldCondition(key="kind", match=vpb.Match(keyword=INTERACTION_KIND))
        )
        request.filter.must.add().field.CopyFrom(
            vpb.FieldCondition(
                key="feedback_score", range=vpb.Range(gte=settings.feedback_min_score)
            )
        )
        # The caller's own interactions, or ones an operator shared.
        request.filter.must.append(visible_to(call))
        try:
            response = await call.backends.vector.search_points(
                request, call.flow_options(request.collection)
            )
        except LodestarError as error:
            if is_missing_collection(error):
                return  # nothing stored yet, so nothing scored
            raise
        for point in response.points:
            payload = struct_to_dict(point.payload)
            prompt, answer = payload.get("prompt"), payload.get("answer")
            if isinstance(prompt, str) and isinstance(answer, str) and prompt and answer:
                augmented.examples.append(
                    Example(
                        id=convert.point_id_from_proto(point.id),
                        similarity=point.score,
                        feedback_score=float(payload.get("feedback_score", 0)),
                        prompt=prompt,
                        answer=answer,
                    )
                )

    async def after(self, generation: Generation) -> None:
        return None
