"""Retrieval-augmented generation: the ``context`` option of /api/v1/generate.

The question (the prompt, or the last user turn) is embedded and searched in
the named collection, confined to the caller's tenant like every vector read
and recorded in search analytics under the question's text. Passages above the
score threshold go to the compose stage, which fits them into the prompt and
returns them as ``sources``; with none, the answer says it is not grounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from lodestar import limits
from lodestar.auth.permissions import Permission
from lodestar.runtime.protojson import struct_to_dict
from lodestar.services.gateway.convert import vector as convert
from lodestar.services.gateway.flows.augment import augmentation, question_vector
from lodestar.services.gateway.flows.personal import private_exclusion
from lodestar.services.gateway.flows.prompting import Passage, passage_text
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.pipeline import Generation
from lodestar.services.gateway.schemas.inference import GenerateRequest
from lodestar.vector.v1 import vector_service_pb2 as vpb


class ContextStage:
    option = "context"

    def __init__(self, runtime: FlowsRuntime) -> None:
        self._runtime = runtime

    def permissions(self, body: GenerateRequest) -> Iterable[Permission]:
        return (Permission.SEARCH_VECTORS,)

    async def before(self, generation: Generation) -> None:
        options = generation.body.context
        assert options is not None
        call = generation.call
        call.collection(options.collection)
        augmented = augmentation(generation)
        augmented.context = options
        vector = await question_vector(call, augmented, self._runtime)
        request = vpb.SearchPointsRequest(
            collection=options.collection,
            vector=vector,
            limit=options.limit,
            with_payload=True,
            query_text=augmented.question[: limits.MAX_QUERY_TEXT_CHARS],
            tenant=call.tenant,
        )
        if options.filter is not None:
            convert.filter_to_proto(options.filter, request.filter)
        # Never another subject's private interactions as sources.
        request.filter.must_not.append(private_exclusion(call))
        if options.score_threshold is not None:
            request.score_threshold = options.score_threshold
        start = time.perf_counter()
        response = await call.backends.vector.search_points(request, call.options)
        augmented.timing_ms["search"] = round((time.perf_counter() - start) * 1000, 3)
        text_key = call.settings.store_text_key
        augmented.retrieved = len(response.points)
        for point in response.points:
            payload = struct_to_dict(point.payload)
            text = passage_text(payload, text_key)
            if text.strip():
                augmented.passages.append(
                    Passage(convert.point_id_from_proto(point.id), point.score, text, payload)
                )

    async def after(self, generation: Generation) -> None:
        return None
