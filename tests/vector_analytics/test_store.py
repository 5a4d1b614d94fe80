"""The analytics store: aggregation, persistence, retention and the non-blocking write path."""

from __future__ import annotations

import math
import random
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from lodestar import limits
from lodestar.runtime.errors import InvalidArgument
from lodestar.services.vector.analytics import create_analytics
from lodestar.services.vector.analytics_db import DATABASE_FILE, normalize_query
from lodestar.services.vector.analytics_models import UsageRecord
from lodestar.services.vector.analytics_store import AnalyticsStore

from .conftest import Clock


def _rank(values: list[float], p: int) -> float:
    """Nearest-rank percentile written independently of the store: ceil(p/100 * n)."""
    ordered = sorted(values)
    return ordered[math.ceil(p / 100 * len(ordered)) - 1]


def test_percentiles_are_nearest_rank_per_collection_and_in_total(store: AnalyticsStore) -> None:
    a = [float(v) for v in range(1, 101)]
    b = [float(v) * 10 for v in range(1, 11)]
    mixed = [("a", v) for v in a] + [("b", v) for v in b]
    random.Random(7).shuffle(mixed)
    for collection, latency in mixed:
        store.record_search(collection, latency, 3, "")

    result = store.search_analytics()

    by_name = {s.collection: s for s in result.collections}
    assert set(by_name) == {"a", "b"}
    assert (by_name["a"].latency_p50_ms, by_name["a"].latency_p95_ms) == (50.0, 95.0)
    assert by_name["a"].latency_p99_ms == 99.0
    assert (by_name["b"].latency_p50_ms, by_name["b"].latency_p95_ms) == (50.0, 100.0)
    assert by_name["b"].latency_p99_ms == 100.0
    everything = a + b
    assert result.total.collection == ""
    assert result.total.search_count == 110
    assert result.total.latency_p50_ms == _rank(everything, 50)
    assert result.total.latency_p95_ms == _rank(everything, 95)
    assert result.total.latency_p99_ms == _rank(everything, 99)


def test_single_search_is_every_percentile(store: AnalyticsStore) -> None:
    store.record_search("solo", 12.5, 1, "")
    stats = store.search_analytics().total
    assert (stats.latency_p50_ms, stats.latency_p95_ms, stats.latency_p99_ms) == (12.5,) * 3


def test_empty_store_reports_zeros(store: AnalyticsStore) -> None:
    result = store.search_analytics()
    assert result.collections == ()
    assert result.popular_queries == ()
    assert result.total.search_count == 0
    assert result.total.latency_p99_ms == 0.0
    assert result.total.zero_result_rate == 0.0


def test_zero_result_rate_and_mean_result_count(store: AnalyticsStore) -> None:
    for count in (0, 0, 0, 5, 10, 10, 0, 3):
        store.record_search("docs", 1.0, count, "")
    store.record_search("other", 1.0, 4, "")

    result = store.search_analytics()

    docs = next(s for s in result.collections if s.collection == "docs")
    assert docs.search_count == 8
    assert docs.zero_result_rate == pytest.approx(4 / 8)
    assert docs.mean_result_count == pytest.approx(28 / 8)
    assert result.total.zero_result_rate == pytest.approx(4 / 9)
    assert result.total.mean_result_count == pytest.approx(32 / 9)


def test_popular_queries_group_normalised_text_most_frequent_first(store: AnalyticsStore) -> None:
    for text in [
        "What is RAG?",
        "  what is   rag? ",
        "WHAT IS RAG?",
        "qdrant",
        "Qdrant",
        "rare",
        "",
    ]:
        store.record_search("docs", 1.0, 1, text)

    popular = store.search_analytics(top_queries=2).popular_queries

    assert [(q.query_text, q.count) for q in popular] == [("what is rag?", 3), ("qdrant", 2)]
    everything = store.search_analytics(top_queries=10).popular_queries
    assert [q.query_text for q in everything] == ["what is rag?", "qdrant", "rare"]


def test_malformed_records_are_skipped_without_losing_the_batch(store: AnalyticsStore) -> None:
    before = _dropped()
    store.record_search("docs", float("nan"), 1, "")
    store.record_search("docs", 5.0, -3, "")  # a negative count is stored as zero
    store.record_search("docs", 1.0, 2, "")
    store.record_sizes({"docs": (1, 1), "bad": ("many", 1)})  # type: ignore[dict-item]
    result = store.search_analytics()
    assert result.total.search_count == 2
    assert result.total.zero_result_rate == pytest.approx(0.5)
    assert [g.collection for g in store.vector_analytics().collections] == ["docs"]
    assert _dropped() - before == 2


def test_normalize_query_collapses_space_and_case_and_truncates() -> None:
    assert normalize_query("  Hello\t\nWORLD  ") == "hello world"
    assert len(normalize_query("x" * 10_000)) == 256


def test_query_text_is_not_kept_when_disabled(tmp_path: Path) -> None:
    store = AnalyticsStore(tmp_path / "a.sqlite3", store_query_text=False)
    try:
        store.record_search("docs", 1.0, 1, "private question")
        result = store.search_analytics()
        assert result.total.search_count == 1
        assert result.popular_queries == ()
    finally:
        store.close()


def test_search_filters_by_collection_and_start_time(store: AnalyticsStore, clock: Clock) -> None:
    store.record_search("docs", 100.0, 0, "old")
    clock.advance(3600)
    cut = clock.now
    store.record_search("docs", 2.0, 1, "new")
    store.record_search("notes", 4.0, 1, "new")

    recent = store.search_analytics(start_time=cut)
    assert recent.total.search_count == 2
    assert recent.total.latency_p99_ms == 4.0
    assert [(q.query_text, q.count) for q in recent.popular_queries] == [("new", 2)]

    docs = store.search_analytics(collection="docs")
    assert [s.collection for s in docs.collections] == ["docs"]
    assert docs.total.collection == "docs"
    assert docs.total.search_count == 2
    assert docs.total.zero_result_rate == pytest.approx(0.5)

    assert store.search_analytics(collection="docs", start_time=cut).total.search_count == 1
    assert store.search_analytics(collection="missing").total.search_count == 0


def test_usage_is_aggregated_per_subject_and_route(store: AnalyticsStore, clock: Clock) -> None:
    gen = "POST /api/v1/generate"
    search = "POST /api/v1/vectors/search"
    store.record_usage(
        [
            UsageRecord("alice", gen, 200, prompt_tokens=10, completion_tokens=20),
            UsageRecord("alice", gen, 429),
            UsageRecord("alice", gen, 200, prompt_tokens=5, completion_tokens=7),
            UsageRecord("alice", search, 400),
            UsageRecord("bob", gen, 500, prompt_tokens=3),
            UsageRecord("bob", search, 200),
        ]
    )

    result = store.usage_analytics()

    rows = {(u.subject, u.route): u for u in result.usage}
    assert list(rows) == [("alice", gen), ("alice", search), ("bob", gen), ("bob", search)]
    alice_gen = rows[("alice", gen)]
    assert (alice_gen.request_count, alice_gen.error_count) == (3, 1)
    assert (alice_gen.prompt_tokens, alice_gen.completion_tokens) == (15, 27)
    assert rows[("alice", search)].error_count == 1
    assert rows[("bob", gen)].error_count == 1
    assert rows[("bob", search)].error_count == 0
    total = result.total
    assert (total.subject, total.route) == ("", "")
    assert (total.request_count, total.error_count) == (6, 3)
    assert (total.prompt_tokens, total.completion_tokens) == (18, 27)

    bob = store.usage_analytics(subject="bob")
    assert {u.subject for u in bob.usage} == {"bob"}
    assert bob.total.subject == "bob"
    assert bob.total.request_count == 2


def test_usage_keeps_the_reported_event_time(store: AnalyticsStore, clock: Clock) -> None:
    store.record_usage(
        [
            UsageRecord("alice", "GET /x", 200, time=clock.now - 7200),
            UsageRecord("alice", "GET /x", 200),  # stamped now
        ]
    )
    assert store.usage_analytics(start_time=clock.now - 60).total.request_count == 1
    assert store.usage_analytics(start_time=clock.now - 10_000).total.request_count == 2


def test_usage_reported_outside_retention_is_not_kept(store: AnalyticsStore, clock: Clock) -> None:
    store.record_usage([UsageRecord("alice", "GET /x", 200, time=clock.now - 31 * 86_400)])
    assert store.usage_analytics().total.request_count == 0


def test_vector_samples_current_sizes_and_start_time(store: AnalyticsStore, clock: Clock) -> None:
    for step in range(5):
        store.record_sizes({"docs": (100 * step, 1000 * step), "notes": (step, step)})
        clock.advance(60)

    stored = store.vector_analytics()
    docs = next(g for g in stored.collections if g.collection == "docs")
    assert [s.points_count for s in docs.samples] == [0, 100, 200, 300, 400]
    assert [s.time for s in docs.samples] == sorted(s.time for s in docs.samples)
    # Without live sizes the latest sample is the current size.
    assert (docs.points_count, docs.disk_bytes) == (400, 4000)
    assert stored.total_points == 404

    since = clock.now - 2 * 60 - 1
    live = store.vector_analytics(start_time=since, current={"docs": (450, 5000), "fresh": (1, 10)})
    assert [g.collection for g in live.collections] == ["docs", "fresh"]
    docs = live.collections[0]
    assert (docs.points_count, docs.disk_bytes) == (450, 5000)
    assert [s.points_count for s in docs.samples] == [300, 400]
    assert live.collections[1].samples == ()
    assert (live.total_points, live.total_disk_bytes) == (451, 5010)

    only = store.vector_analytics(collection="notes")
    assert [g.collection for g in only.collections] == ["notes"]


def test_vector_samples_are_thinned_to_max_samples(tmp_path: Path, clock: Clock) -> None:
    store = AnalyticsStore(tmp_path / "a.sqlite3", clock=clock, max_samples=10)
    try:
        for step in range(100):
            store.record_sizes({"docs": (step, step)})
            clock.advance(1)
        samples = store.vector_analytics().collections[0].samples
        assert 2 <= len(samples) <= 10
        points = [s.points_count for s in samples]
        assert points == sorted(points)
        # The newest sample always survives thinning.
        assert points[-1] == 99
    finally:
        store.close()


def test_records_survive_close_and_reopen(tmp_path: Path) -> None:
    store = create_analytics(tmp_path)
    store.record_search("docs", 5.0, 2, "kept query")
    store.record_sizes({"docs": (7, 70)})
    store.record_usage([UsageRecord("alice", "GET /x", 200, prompt_tokens=4)])
    store.close()
    store.close()  # idempotent
    assert (tmp_path / DATABASE_FILE).exists()

    reopened = create_analytics(tmp_path)
    try:
        search = reopened.search_analytics()
        assert search.total.search_count == 1
        assert search.popular_queries[0].query_text == "kept query"
        assert reopened.vector_analytics().collections[0].points_count == 7
        assert reopened.usage_analytics().total.prompt_tokens == 4
    finally:
        reopened.close()


def test_database_uses_wal_mode(tmp_path: Path) -> None:
    store = create_analytics(tmp_path)
    store.close()
    conn = sqlite3.connect(tmp_path / DATABASE_FILE)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_retention_caps_rows_keeping_the_newest(tmp_path: Path, clock: Clock) -> None:
    store = AnalyticsStore(tmp_path / "a.sqlite3", clock=clock, max_rows=20)
    try:
        for i in range(50):
            store.record_search("docs", float(i), 1, "")
        store.record_usage([UsageRecord("s", "GET /x", 200) for _ in range(30)])
        store.prune()
        counts = store.row_counts()
        assert counts["searches"] == 20
        assert counts["usage"] == 20
        # The 20 newest latencies 30..49 remain.
        assert store.search_analytics().total.latency_p50_ms == 39.0
    finally:
        store.close()


def test_retention_drops_rows_older_than_the_window(tmp_path: Path, clock: Clock) -> None:
    store = AnalyticsStore(tmp_path / "a.sqlite3", clock=clock, retention_days=1)
    try:
        store.record_search("docs", 1.0, 1, "")
        store.record_sizes({"docs": (1, 1)})
        store.record_usage([UsageRecord("s", "GET /x", 200)])
        clock.advance(86_400 + 1)
        store.record_search("docs", 2.0, 1, "")
        store.prune()
        assert store.row_counts() == {"searches": 1, "sizes": 0, "usage": 0}
        assert store.search_analytics().total.latency_p50_ms == 2.0
    finally:
        store.close()


def _dropped() -> float:
    return REGISTRY.get_sample_value("lodestar_vector_analytics_records_dropped_total") or 0.0


def test_recording_never_waits_for_a_locked_database(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    store = AnalyticsStore(path, max_pending=5)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the writer now waits on the lock
        before = _dropped()
        # This thread holds the lock until the records are made: a recording that wrote
        # to the database would wait for the COMMIT below, or give up and drop its record.
        for i in range(50):
            store.record_search("docs", float(i), 1, "q")
        dropped = _dropped() - before
        # Only a bounded backlog is kept (the writer may have taken a few first), and
        # at least max_pending records wait in memory for the lock.
        assert 30 <= dropped <= 45
        blocker.execute("COMMIT")
        assert store.search_analytics().total.search_count == 50 - dropped
    finally:
        blocker.close()
        store.close()


def test_records_after_close_are_dropped_not_raised(tmp_path: Path) -> None:
    store = create_analytics(tmp_path)
    store.close()
    before = _dropped()
    store.record_search("docs", 1.0, 1, "late")
    store.record_sizes({"docs": (1, 1)})
    store.record_usage([UsageRecord("s", "GET /x", 200)])
    assert _dropped() - before == 3
    store.flush()  # returns at once on a closed store


def test_invalid_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention_days"):
        AnalyticsStore(tmp_path / "a.sqlite3", retention_days=0)
    with pytest.raises(ValueError, match="max_rows"):
        AnalyticsStore(tmp_path / "a.sqlite3", max_rows=0)


def test_query_days_count_each_text_per_utc_day_largest_first(
    store: AnalyticsStore, clock: Clock
) -> None:
    clock.now = 1_700_006_400.0  # 2023-11-15 00:00 UTC
    for _ in range(3):
        store.record_search("docs", 5.0, 1, "Reset  my password")
    store.record_search("notes", 5.0, 1, "reset my password")
    store.record_search("docs", 5.0, 1, "")  # no text: not a question
    clock.advance(86_400 + 60)
    store.record_search("docs", 5.0, 1, "invoice totals")
    store.record_search("docs", 5.0, 1, "reset my password")
    rows = store.query_days(limit=10)
    day = 1_700_006_400.0
    assert [(r.query_text, r.day, r.count) for r in rows] == [
        ("reset my password", day, 4),
        ("invoice totals", day + 86_400, 1),
        ("reset my password", day + 86_400, 1),
    ]
    assert [r.count for r in store.query_days(collection="docs", limit=10)] == [3, 1, 1]
    assert len(store.query_days(start_time=day + 86_400, limit=10)) == 2
    assert len(store.query_days(limit=1)) == 1


def test_timeline_counts_each_bucket_with_its_own_percentiles(
    store: AnalyticsStore, clock: Clock
) -> None:
    start = 1_700_000_400.0  # a multiple of 60: the first bucket starts here
    clock.now = start + 1
    for latency in range(1, 11):  # 3 of the 10 find nothing
        store.record_search("docs", float(latency), 0 if latency <= 3 else 2, "")
    clock.now = start + 125  # the third bucket; the second stays empty
    store.record_search("docs", 100.0, 1, "")
    store.record_search("docs", 200.0, 1, "")
    store.record_search("other", 7.0, 0, "")
    clock.now = start + 130

    timeline = store.search_analytics(bucket_width_s=60).timeline
    assert [b.start for b in timeline] == [start, start + 60, start + 120]
    assert [b.search_count for b in timeline] == [10, 0, 3]
    first, empty, third = timeline
    assert (first.latency_p50_ms, first.latency_p95_ms, first.latency_p99_ms) == (5.0, 10.0, 10.0)
    assert first.zero_result_rate == pytest.approx(0.3)
    assert (empty.latency_p50_ms, empty.latency_p99_ms, empty.zero_result_rate) == (0.0, 0.0, 0.0)
    assert (third.latency_p50_ms, third.latency_p95_ms, third.latency_p99_ms) == (
        100.0,
        200.0,
        200.0,
    )
    assert third.zero_result_rate == pytest.approx(1 / 3)

    docs = store.search_analytics(collection="docs", bucket_width_s=60).timeline
    assert [b.search_count for b in docs] == [10, 0, 2]
    assert docs[2].latency_p50_ms == 100.0
    assert docs[2].zero_result_rate == 0.0
    # From a start time: its bucket first, and only searches from that time on.
    later = store.search_analytics(start_time=start + 90, bucket_width_s=60).timeline
    assert [(b.start, b.search_count) for b in later] == [(start + 60, 0), (start + 120, 3)]
    wide = store.search_analytics(bucket_width_s=3600).timeline
    assert [(b.start, b.search_count) for b in wide] == [(1_699_999_200.0, 13)]
    # Without a width, no timeline.
    assert store.search_analytics().timeline == ()


def test_timeline_is_bounded_in_buckets(store: AnalyticsStore, clock: Clock) -> None:
    clock.now = 1_700_000_400.0
    store.record_search("docs", 1.0, 1, "")
    clock.advance(10 * 60)
    store.record_search("docs", 2.0, 1, "")
    # Without a start time, the newest buckets up to now, however old the oldest search.
    newest = store.search_analytics(bucket_width_s=1).timeline
    assert len(newest) == limits.MAX_TIMELINE_BUCKETS
    assert newest[-1].start == clock.now
    assert sum(b.search_count for b in newest) == 1
    # With one, too many buckets is refused, naming the field.
    with pytest.raises(InvalidArgument) as refused:
        store.search_analytics(start_time=clock.now - 600, bucket_width_s=1)
    assert refused.value.field == "bucket_width_seconds"
    assert refused.value.reason == "TOO_MANY_BUCKETS"
    assert len(store.search_analytics(start_time=clock.now - 600, bucket_width_s=2).timeline) == 301
