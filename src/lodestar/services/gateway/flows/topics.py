"""``GET /api/v1/analytics/topics``: what users have been asking, grouped into topics.

The questions are the query texts of recent searches (counted per day by the
analytics service) and, unless one collection is asked for, the questions of the
interactions kept by ``store_embedding`` in the conversations collection (of the
caller's tenant). The same question asked either way counts once per asking.
Distinct questions are embedded by the embedding service and grouped by
``topic_model``; each topic has a label from its most telling terms, its size
and its count per day. The sources that answers cited (kept on the
interactions) give the most retrieved points and documents.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, Query
from starlette.responses import Response

from lodestar import limits
from lodestar.auth.permissions import Permission
from lodestar.runtime.errors import LodestarError
from lodestar.runtime.protojson import datetime_to_timestamp, struct_to_dict
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.deps import flows_of, require
from lodestar.services.gateway.flows import topic_model
from lodestar.services.gateway.flows.memory import INTERACTION_KIND, is_missing_collection
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.responses import respond_json
from lodestar.services.gateway.routes.base import api_router
from lodestar.services.gateway.schemas.common import Moment, OptionalCollectionName
from lodestar.vector.v1 import analytics_service_pb2 as apb
from lodestar.vector.v1 import vector_service_pb2 as vpb

router = api_router("analytics")

# Distinct questions embedded and clustered at most, the most asked first.
MAX_QUESTIONS = 2_000
# Interactions read at most (newest pages are not preferred: the store has no order).
MAX_INTERACTIONS = 5_000
_PAGE = 1_000


def _normalised(text: str) -> str:
    """As the analytics service groups query texts: case-folded, whitespace collapsed."""
    return " ".join(text.split()).casefold()[: limits.MAX_QUERY_TEXT_CHARS]


class _Gathered:
    """Questions by normalised text (day → count), and what their answers cited."""

    def __init__(self) -> None:
        self.days: dict[str, Counter[str]] = {}
        self.searches = 0
        self.interactions = 0
        self.points: Counter[Any] = Counter()
        self.documents: Counter[str] = Counter()

    def add(self, text: str, day: str, count: int = 1) -> None:
        question = _normalised(text)
        if question:
            self.days.setdefault(question, Counter())[day] += count


async def _searches(call: Call, collection: str, start: datetime, into: _Gathered) -> None:
    request = apb.ListSearchQueriesRequest(collection=collection, page_size=limits.MAX_QUERY_DAYS)
    datetime_to_timestamp(start, request.start_time)
    response = await call.backends.analytics.search_queries(request, call.options)
    for row in response.queries:
        day = row.day.ToDatetime(tzinfo=UTC).date().isoformat()
        into.add(row.query_text, day, row.count)
        into.searches += row.count


async def _interactions(call: Call, collection: str, start: datetime, into: _Gathered) -> None:
    request = vpb.ListPointsRequest(
        collection=collection, page_size=_PAGE, with_payload=True, tenant=call.tenant
    )
    request.filter.must.add().field.CopyFrom(
        vpb.FieldCondition(key="kind", match=vpb.Match(keyword=INTERACTION_KIND))
    )
    since = request.filter.must.add().field
    since.key = "created_at"
    datetime_to_timestamp(start, since.datetime_range.gte)
    read = 0
    while read < MAX_INTERACTIONS:
        try:
            response = await call.backends.vector.list_points(request, call.options)
        except LodestarError as error:
            if is_missing_collection(error):
                return  # nothing stored yet
            raise
        for point in response.points:
            payload = struct_to_dict(point.payload)
            prompt, created = payload.get("prompt"), payload.get("created_at")
            if not isinstance(prompt, str) or not isinstance(created, str):
                continue
            into.add(prompt, created[:10])
            into.interactions += 1
            for source in payload.get("source_ids") or []:
                if isinstance(source, (int, str)):
                    into.points[source] += 1
            for document in payload.get("source_documents") or []:
                if isinstance(document, str):
                    into.documents[document] += 1
        read += len(response.points)
        if not response.next_page_token:
            return
        request.page_token = response.next_page_token


@router.get("/analytics/topics", summary="Topics and trends of recent questions")
async def question_topics(
    call: Annotated[Call, Depends(require(Permission.VIEW_ANALYTICS, RouteClass.READ))],
    runtime: Annotated[FlowsRuntime, Depends(flows_of)],
    collection: Annotated[
        OptionalCollectionName,
        Query(
            description="Only searches of this collection (stored interactions are then left out).",
        ),
    ] = "",
    since: Annotated[
        Moment | None, Query(description="Only questions at or after this time (RFC 3339).")
    ] = None,
    days: Annotated[int, Query(ge=1, le=366, description="Without since: the last days.")] = 7,
    num_topics: Annotated[
        int, Query(ge=limits.MIN_CLUSTERS, le=limits.MAX_CLUSTERS)
    ] = limits.DEFAULT_CLUSTERS,
    terms: Annotated[int, Query(ge=1, le=20, description="Terms in each label.")] = 5,
    top: Annotated[int, Query(ge=1, le=100, description="Most retrieved entries.")] = 10,
    seed: Annotated[int, Query(ge=0, le=2**32 - 1)] = 0,
) -> Response:
    """Clusters of the recent questions (k-means over their embeddings), each with a
    label from its most telling terms, its size (questions asked, repeats counted) and
    its count per day; and the points and documents most cited by stored answers."""
    start = since if since is not None else datetime.now(UTC) - timedelta(days=days)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    gathered = _Gathered()
    await _searches(call, collection, start, gathered)
    conversations = runtime.settings.conversations_collection
    if not collection and call.principal.may_use_collection(conversations):
        await _interactions(call, conversations, start, gathered)
    asked = sorted(gathered.days.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    questions = [topic_model.Question(text, dict(days)) for text, days in asked[:MAX_QUESTIONS]]
    found: list[topic_model.Topic] = []
    if questions:
        vectors = await call.backends.embedding.embed([q.text for q in questions], call.options)
        found = await asyncio.to_thread(
            topic_model.topics,
            questions,
            np.asarray(vectors, dtype=np.float32),
            num_topics=num_topics,
            terms=terms,
            seed=seed,
        )
    return respond_json(
        {
            "since": start.isoformat(),
            "questions": sum(q.count for q in questions),
            "distinct_questions": len(questions),
            "searches": gathered.searches,
            "interactions": gathered.interactions,
            "topics": [
                {
                    "label": topic.label,
                    "terms": [{"term": t, "weight": w} for t, w in topic.terms],
                    "size": topic.size,
                    "questions": topic.questions,
                    "per_day": [{"day": day, "count": n} for day, n in topic.per_day],
                }
                for topic in found
            ],
            "most_retrieved_points": [
                {"id": point, "count": n} for point, n in gathered.points.most_common(top)
            ],
            "most_retrieved_documents": [
                {"source": source, "count": n} for source, n in gathered.documents.most_common(top)
            ],
        }
    )
