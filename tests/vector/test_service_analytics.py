"""The behavioural suite over real gRPC, against every backend: searches are recorded
for analytics."""

from __future__ import annotations

import pytest

from lodestar.vector.v1 import analytics_service_pb2 as apb
from lodestar.vector.v1 import vector_service_pb2 as pb
from tests.vector.conftest import CreateCollection, Running
from tests.vector.suite import books, field, num


async def test_searches_are_recorded_for_analytics(
    running: Running, collection: CreateCollection
) -> None:
    name = await books(running.stub, collection)
    for _ in range(3):
        await running.stub.SearchPoints(
            pb.SearchPointsRequest(collection=name, vector=[1, 0, 0, 0], query_text="space opera")
        )
    await running.stub.SearchPoints(
        pb.SearchPointsRequest(
            collection=name,
            vector=[1, 0, 0, 0],
            query_text="none",
            filter=pb.Filter(must=[field("genre", keyword="nothing")]),
        )
    )
    await running.stub.RecommendPoints(
        pb.RecommendPointsRequest(collection=name, positive=[pb.RecommendExample(id=num(1))])
    )
    stats = await running.analytics.GetSearchAnalytics(
        apb.GetSearchAnalyticsRequest(collection=name)
    )
    assert stats.total.search_count == 5
    assert stats.total.zero_result_rate == pytest.approx(0.2)
    assert stats.popular_queries[0].query_text == "space opera"
    assert stats.popular_queries[0].count == 3
    sizes = await running.analytics.GetVectorAnalytics(
        apb.GetVectorAnalyticsRequest(collection=name)
    )
    assert sizes.collections[0].points_count == 6
