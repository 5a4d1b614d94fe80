"""A ``collections`` restriction (a token's allow-list) applies before any figure is
computed: totals, percentiles, popular queries, timelines, query listings and growth
totals count only the matching collections."""

from __future__ import annotations

import pytest

from lodestar.services.vector.analytics_store import AnalyticsStore

from .conftest import Clock

_START = 1_700_000_400.0  # a multiple of 60


@pytest.fixture
def recorded(store: AnalyticsStore, clock: Clock) -> AnalyticsStore:
    """docs-a: 10 ms and 20 ms; docs-b: 30 ms (no hit); secret: 1000 ms twice, a minute
    later, with its own query text."""
    clock.now = _START + 1
    store.record_search("docs-a", 10.0, 2, "how to reset")
    store.record_search("docs-a", 20.0, 4, "how to reset")
    store.record_search("docs-b", 30.0, 0, "invoice")
    clock.now = _START + 61
    store.record_search("secret", 1000.0, 1, "merger plans")
    store.record_search("secret", 1000.0, 1, "merger plans")
    clock.now = _START + 70
    return store


def test_search_figures_count_only_matching_collections(recorded: AnalyticsStore) -> None:
    everything = recorded.search_analytics(bucket_width_s=60)
    assert everything.total.search_count == 5
    assert everything.total.latency_p99_ms == 1000.0
    assert "merger plans" in [q.query_text for q in everything.popular_queries]
    assert [b.search_count for b in everything.timeline] == [3, 2]

    docs = recorded.search_analytics(bucket_width_s=60, collections=("docs-*",))

    assert [s.collection for s in docs.collections] == ["docs-a", "docs-b"]
    assert docs.total.search_count == 3
    assert (docs.total.latency_p50_ms, docs.total.latency_p99_ms) == (20.0, 30.0)
    assert docs.total.zero_result_rate == pytest.approx(1 / 3)
    assert docs.total.mean_result_count == pytest.approx(2.0)
    assert [(q.query_text, q.count) for q in docs.popular_queries] == [
        ("how to reset", 2),
        ("invoice", 1),
    ]
    # The timeline starts at the first matching search and counts no other.
    assert [(b.start, b.search_count) for b in docs.timeline] == [(_START, 3), (_START + 60, 0)]
    assert docs.timeline[0].latency_p99_ms == 30.0


def test_names_and_patterns_combine_and_a_named_collection_narrows(
    recorded: AnalyticsStore,
) -> None:
    both = recorded.search_analytics(collections=("docs-b", "sec[r]et"))
    assert [s.collection for s in both.collections] == ["docs-b", "secret"]
    assert both.total.search_count == 3

    named = recorded.search_analytics(collection="docs-a", collections=("docs-*",))
    assert named.total.search_count == 2
    # A named collection outside the restriction is not reported.
    outside = recorded.search_analytics(collection="secret", collections=("docs-*",))
    assert outside.total.search_count == 0
    assert outside.popular_queries == ()

    nothing = recorded.search_analytics(bucket_width_s=60, collections=("none-*",))
    assert nothing.collections == ()
    assert nothing.total.search_count == 0
    assert nothing.popular_queries == ()
    assert nothing.timeline == ()


def test_query_days_count_only_matching_collections(recorded: AnalyticsStore) -> None:
    assert {r.query_text for r in recorded.query_days(limit=10)} == {
        "how to reset",
        "invoice",
        "merger plans",
    }
    rows = recorded.query_days(limit=10, collections=("docs-*",))
    assert [(r.query_text, r.count) for r in rows] == [("how to reset", 2), ("invoice", 1)]
    assert recorded.query_days(limit=10, collections=("secret",))[0].count == 2


def test_many_names_are_one_restriction(store: AnalyticsStore) -> None:
    names = [f"c-{i}" for i in range(40_000)]  # more than SQLite takes as parameters
    store.record_search("c-39999", 1.0, 1, "")
    store.record_search("other", 1.0, 1, "")
    assert store.search_analytics(collections=names).total.search_count == 1


def test_growth_totals_count_only_matching_collections(store: AnalyticsStore) -> None:
    store.record_sizes({"docs-a": (10, 100), "docs-b": (20, 200), "secret": (500, 5000)})

    stored = store.vector_analytics(collections=("docs-*",))
    assert [g.collection for g in stored.collections] == ["docs-a", "docs-b"]
    assert (stored.total_points, stored.total_disk_bytes) == (30, 300)

    live = store.vector_analytics(
        current={"docs-a": (11, 110), "secret": (600, 6000)}, collections=("docs-*",)
    )
    assert [g.collection for g in live.collections] == ["docs-a"]
    assert (live.total_points, live.total_disk_bytes) == (11, 110)
    assert store.vector_analytics().total_points == 530
