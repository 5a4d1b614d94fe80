"""Analytics obey a token's collection allow-list at their source: every figure of an
allow-listed token (totals, percentiles, popular queries, timeline, query listings,
growth totals) counts only the collections it may use, while an unrestricted token
sees them all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from lodestar.vector.v1 import analytics_service_pb2 as apb
from lodestar.vector.v1 import vector_service_pb2 as pb
from tests.rpcauth.conftest import SecuredVector, rpc_error
from tests.vector.suite import point

NewCollection = Callable[[str], Awaitable[str]]


async def _searched(
    secured: SecuredVector, new_collection: NewCollection, prefix: str
) -> tuple[str, str, str]:
    """Two collections named ``prefix-N`` searched three times in all, and a private
    one searched twice with a text no token allow-listed to ``prefix-*`` may read.
    Only one test uses a prefix, so that such a token's figures are exactly these."""
    admin = secured.as_(secured.token("admin"))
    first = await new_collection(prefix)
    second = await new_collection(prefix)
    private = await new_collection("hidden")
    for name in (first, second, private):
        await admin.UpsertPoints(
            pb.UpsertPointsRequest(collection=name, points=[point(1, [1, 0, 0, 0])])
        )
    searches = [(first, "shared question"), (first, "shared question"), (second, "own")]
    searches += [(private, "confidential merger")] * 2
    for name, text in searches:
        await admin.SearchPoints(
            pb.SearchPointsRequest(collection=name, vector=[1, 0, 0, 0], query_text=text)
        )
    return first, second, private


async def test_an_allow_list_scopes_every_analytics_figure(
    secured: SecuredVector, new_collection: NewCollection
) -> None:
    first, second, private = await _searched(secured, new_collection, "scoped")
    scoped = secured.analytics_as(secured.token("operator", collections=["scoped-*"]))
    everyone = secured.analytics_as(secured.token("operator"))
    request = apb.GetSearchAnalyticsRequest(top_queries=100, bucket_width_seconds=3600)

    mine = await scoped.GetSearchAnalytics(request)
    assert sorted(s.collection for s in mine.collections) == sorted([first, second])
    assert mine.total.search_count == 3
    assert sum(b.search_count for b in mine.timeline) == 3
    assert {q.query_text: q.count for q in mine.popular_queries} == {
        "shared question": 2,
        "own": 1,
    }
    listed = await scoped.ListSearchQueries(apb.ListSearchQueriesRequest())
    assert {q.query_text for q in listed.queries} == {"shared question", "own"}

    every = await everyone.GetSearchAnalytics(request)
    assert private in {s.collection for s in every.collections}
    assert every.total.search_count >= 5
    assert sum(b.search_count for b in every.timeline) == every.total.search_count
    assert "confidential merger" in {q.query_text for q in every.popular_queries}
    all_listed = await everyone.ListSearchQueries(apb.ListSearchQueriesRequest())
    assert "confidential merger" in {q.query_text for q in all_listed.queries}

    sizes = await scoped.GetVectorAnalytics(apb.GetVectorAnalyticsRequest())
    assert sorted(c.collection for c in sizes.collections) == sorted([first, second])
    assert sizes.total_points == sum(c.points_count for c in sizes.collections) == 2
    all_sizes = await everyone.GetVectorAnalytics(apb.GetVectorAnalyticsRequest())
    assert private in {c.collection for c in all_sizes.collections}
    assert all_sizes.total_points > sizes.total_points


async def test_an_allow_listed_request_may_narrow_but_not_widen(
    secured: SecuredVector, new_collection: NewCollection
) -> None:
    first, _, private = await _searched(secured, new_collection, "narrowed")
    scoped = secured.analytics_as(secured.token("operator", collections=["narrowed-*"]))

    narrowed = await scoped.GetSearchAnalytics(apb.GetSearchAnalyticsRequest(collections=[first]))
    assert [s.collection for s in narrowed.collections] == [first]
    assert narrowed.total.search_count == 2
    named = await scoped.ListSearchQueries(apb.ListSearchQueriesRequest(collection=first))
    assert {q.query_text for q in named.queries} == {"shared question"}
    own_pattern = await scoped.GetSearchAnalytics(
        apb.GetSearchAnalyticsRequest(collections=["narrowed-*"])
    )
    assert own_pattern.total.search_count == 3

    for call in (
        scoped.GetSearchAnalytics(apb.GetSearchAnalyticsRequest(collection=private)),
        scoped.GetSearchAnalytics(apb.GetSearchAnalyticsRequest(collections=[first, private])),
        scoped.GetSearchAnalytics(apb.GetSearchAnalyticsRequest(collections=["*"])),
        scoped.ListSearchQueries(apb.ListSearchQueriesRequest(collection=private)),
        scoped.ListSearchQueries(apb.ListSearchQueriesRequest(collections=["hidden-*"])),
        scoped.GetVectorAnalytics(apb.GetVectorAnalyticsRequest(collection=private)),
        scoped.GetVectorAnalytics(apb.GetVectorAnalyticsRequest(collections=[private])),
    ):
        error = await rpc_error(call)
        assert error.code == grpc.StatusCode.PERMISSION_DENIED
        assert error.reason == "COLLECTION_NOT_ALLOWED"
        assert error.metadata["collection"] in (private, "*", "hidden-*")


@pytest.mark.parametrize(
    "call",
    [
        lambda stub: stub.GetSearchAnalytics(apb.GetSearchAnalyticsRequest()),
        lambda stub: stub.GetVectorAnalytics(apb.GetVectorAnalyticsRequest()),
        lambda stub: stub.ListSearchQueries(apb.ListSearchQueriesRequest()),
    ],
)
async def test_a_token_that_may_use_no_collection_sees_no_analytics(
    secured: SecuredVector, call: Callable[[object], Awaitable[object]]
) -> None:
    nothing = secured.analytics_as(secured.token("operator", collections=[]))
    error = await rpc_error(call(nothing))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.reason == "COLLECTION_NOT_ALLOWED"
