"""AnalyticsService over a real in-process gRPC server with a real SQLite store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2

from lodestar.runtime.errors import ErrorDetails
from lodestar.runtime.server import GrpcServer
from lodestar.runtime.settings import ServerSettings
from lodestar.services.vector.analytics import (
    AnalyticsServicer,
    AnalyticsStore,
    analytics_registration,
    create_analytics,
    sample_sizes_periodically,
)
from lodestar.vector.v1 import analytics_service_pb2 as pb
from lodestar.vector.v1 import analytics_service_pb2_grpc as pb_grpc


@dataclass
class _LiveSizes:
    """Stands in for the vector engine's collection sizes."""

    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    async def __call__(self) -> dict[str, tuple[int, int]]:
        return dict(self.sizes)


@dataclass
class _Running:
    store: AnalyticsStore
    sizes: _LiveSizes
    stub: pb_grpc.AnalyticsServiceAsyncStub
    server: GrpcServer
    channel: grpc.aio.Channel


async def _start(data_dir: Path, sizes: _LiveSizes) -> _Running:
    store = create_analytics(data_dir)
    servicer = AnalyticsServicer(store, sizes)
    server = GrpcServer(
        ServerSettings(port=0, shutdown_grace_s=1),
        [analytics_registration(servicer)],
    )
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub: pb_grpc.AnalyticsServiceAsyncStub = pb_grpc.AnalyticsServiceStub(channel)  # type: ignore[assignment]
    return _Running(store, sizes, stub, server, channel)


async def _stop(running: _Running) -> None:
    await running.channel.close()
    await running.server.stop(0)
    running.store.close()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[_Running]:
    started = await _start(tmp_path, _LiveSizes({"docs": (3, 300)}))
    yield started
    await _stop(started)


async def _invalid(call: object, field_name: str) -> ErrorDetails:
    assert asyncio.iscoroutine(call) or hasattr(call, "__await__")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    details = ErrorDetails.from_rpc_error(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert [f for f, _ in details.field_violations] == [field_name]
    return details


def _ts(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


async def test_search_analytics_reports_recorded_searches(running: _Running) -> None:
    for latency in range(1, 21):
        running.store.record_search("docs", float(latency), latency % 4, f"query {latency % 3}")
    running.store.record_search("notes", 50.0, 0, "query 0")

    reply = await running.stub.GetSearchAnalytics(pb.GetSearchAnalyticsRequest())

    assert reply.total.collection == ""
    assert reply.total.search_count == 21
    assert [s.collection for s in reply.collections] == ["docs", "notes"]
    docs = reply.collections[0]
    assert (docs.latency_p50_ms, docs.latency_p95_ms, docs.latency_p99_ms) == (10.0, 19.0, 20.0)
    assert docs.zero_result_rate == pytest.approx(5 / 20)
    assert [(q.query_text, q.count) for q in reply.popular_queries] == [
        ("query 0", 7),
        ("query 1", 7),
        ("query 2", 7),
    ]

    top_one = await running.stub.GetSearchAnalytics(
        pb.GetSearchAnalyticsRequest(collection="notes", top_queries=1)
    )
    assert top_one.total.search_count == 1
    assert top_one.total.zero_result_rate == 1.0
    assert [q.query_text for q in top_one.popular_queries] == ["query 0"]

    future = await running.stub.GetSearchAnalytics(
        pb.GetSearchAnalyticsRequest(start_time=_ts(4_000_000_000))
    )
    assert future.total.search_count == 0


async def test_vector_analytics_joins_live_sizes_with_samples(running: _Running) -> None:
    running.store.record_sizes({"docs": (1, 100), "gone": (9, 900)})
    running.store.record_sizes({"docs": (2, 200), "gone": (9, 900)})
    running.sizes.sizes = {"docs": (3, 300), "new": (0, 4096)}

    reply = await running.stub.GetVectorAnalytics(pb.GetVectorAnalyticsRequest())

    assert [c.collection for c in reply.collections] == ["docs", "new"]
    docs = reply.collections[0]
    assert (docs.points_count, docs.disk_bytes) == (3, 300)
    assert [s.points_count for s in docs.samples] == [1, 2]
    assert all(s.time.seconds > 1_600_000_000 for s in docs.samples)
    assert (reply.total_points, reply.total_disk_bytes) == (3, 4396)

    one = await running.stub.GetVectorAnalytics(pb.GetVectorAnalyticsRequest(collection="new"))
    assert [c.collection for c in one.collections] == ["new"]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.stub.GetVectorAnalytics(pb.GetVectorAnalyticsRequest(collection="gone"))
    details = ErrorDetails.from_rpc_error(caught.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.field_violations[0][0] == "collection"


async def test_periodic_sampling_records_growth(running: _Running) -> None:
    task = asyncio.create_task(
        sample_sizes_periodically(running.store, running.sizes, interval_s=0.01)
    )
    try:
        await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    reply = await running.stub.GetVectorAnalytics(pb.GetVectorAnalyticsRequest(collection="docs"))
    assert len(reply.collections[0].samples) >= 2


async def test_recorded_usage_is_summarised(running: _Running) -> None:
    route = "POST /api/v1/generate"
    hours_ago = int(time.time()) - 2 * 3600
    await running.stub.RecordUsage(
        pb.RecordUsageRequest(
            events=[
                pb.UsageEvent(
                    subject="alice",
                    route=route,
                    status_code=200,
                    prompt_tokens=11,
                    completion_tokens=22,
                    latency_ms=30.5,
                ),
                pb.UsageEvent(subject="alice", route=route, status_code=503),
                pb.UsageEvent(subject="bob", route="GET /api/v1/health", status_code=200),
                pb.UsageEvent(subject="bob", route=route, status_code=200, time=_ts(hours_ago)),
            ]
        )
    )
    await running.stub.RecordUsage(pb.RecordUsageRequest())  # nothing to store is fine

    reply = await running.stub.GetUsageAnalytics(pb.GetUsageAnalyticsRequest())
    assert [(u.subject, u.route) for u in reply.usage] == [
        ("alice", route),
        ("bob", "GET /api/v1/health"),
        ("bob", route),
    ]
    alice = reply.usage[0]
    assert (alice.request_count, alice.error_count) == (2, 1)
    assert (alice.prompt_tokens, alice.completion_tokens) == (11, 22)
    assert (reply.total.request_count, reply.total.error_count) == (4, 1)

    recent_bob = await running.stub.GetUsageAnalytics(
        pb.GetUsageAnalyticsRequest(subject="bob", start_time=_ts(hours_ago + 60))
    )
    assert [(u.subject, u.route) for u in recent_bob.usage] == [("bob", "GET /api/v1/health")]
    assert recent_bob.total.subject == "bob"
    assert recent_bob.total.request_count == 1


async def test_figures_survive_a_restart(tmp_path: Path) -> None:
    first = await _start(tmp_path, _LiveSizes({"docs": (1, 1)}))
    first.store.record_search("docs", 8.0, 2, "persist me")
    await first.stub.RecordUsage(
        pb.RecordUsageRequest(events=[pb.UsageEvent(subject="a", route="GET /x", status_code=200)])
    )
    await _stop(first)

    second = await _start(tmp_path, _LiveSizes({"docs": (1, 1)}))
    try:
        search = await second.stub.GetSearchAnalytics(pb.GetSearchAnalyticsRequest())
        assert search.total.search_count == 1
        assert search.popular_queries[0].query_text == "persist me"
        usage = await second.stub.GetUsageAnalytics(pb.GetUsageAnalyticsRequest())
        assert usage.total.request_count == 1
    finally:
        await _stop(second)


@pytest.mark.parametrize("top_queries", [-1, 101])
async def test_top_queries_out_of_range_is_invalid(running: _Running, top_queries: int) -> None:
    details = await _invalid(
        running.stub.GetSearchAnalytics(pb.GetSearchAnalyticsRequest(top_queries=top_queries)),
        "top_queries",
    )
    assert "100" in details.message


async def test_search_analytics_answers_a_timeline_with_a_bucket_width(
    running: _Running,
) -> None:
    for latency in (4.0, 8.0, 12.0):
        running.store.record_search("docs", latency, 0 if latency == 4.0 else 1, "")
    now = time.time()

    reply = await running.stub.GetSearchAnalytics(
        pb.GetSearchAnalyticsRequest(bucket_width_seconds=3600)
    )
    assert len(reply.timeline) in (1, 2)  # 2 when the hour turned since the searches
    bucket = reply.timeline[0]
    assert bucket.start_time.seconds % 3600 == 0
    assert bucket.start_time.seconds <= now < bucket.start_time.seconds + 3600
    assert bucket.search_count == 3
    assert (bucket.latency_p50_ms, bucket.latency_p95_ms, bucket.latency_p99_ms) == (
        8.0,
        12.0,
        12.0,
    )
    assert bucket.zero_result_rate == pytest.approx(1 / 3)
    plain = await running.stub.GetSearchAnalytics(pb.GetSearchAnalyticsRequest())
    assert list(plain.timeline) == []
    hour = await running.stub.GetSearchAnalytics(
        pb.GetSearchAnalyticsRequest(start_time=_ts(int(now) - 3600), bucket_width_seconds=60)
    )
    assert 61 <= len(hour.timeline) <= 62
    assert sum(b.search_count for b in hour.timeline) == 3
    assert [b.start_time.seconds for b in hour.timeline] == sorted(
        b.start_time.seconds for b in hour.timeline
    )


@pytest.mark.parametrize("width", [-1, 366 * 86_400 + 1])
async def test_bucket_width_out_of_range_is_invalid(running: _Running, width: int) -> None:
    details = await _invalid(
        running.stub.GetSearchAnalytics(pb.GetSearchAnalyticsRequest(bucket_width_seconds=width)),
        "bucket_width_seconds",
    )
    assert details.reason == "OUT_OF_RANGE"


async def test_too_many_buckets_are_invalid(running: _Running) -> None:
    details = await _invalid(
        running.stub.GetSearchAnalytics(
            pb.GetSearchAnalyticsRequest(
                start_time=_ts(int(time.time()) - 86_400), bucket_width_seconds=60
            )
        ),
        "bucket_width_seconds",
    )
    assert details.reason == "TOO_MANY_BUCKETS"
    assert "500" in details.message


async def test_bad_start_time_and_names_are_invalid(running: _Running) -> None:
    await _invalid(
        running.stub.GetSearchAnalytics(pb.GetSearchAnalyticsRequest(start_time=_ts(0, nanos=-1))),
        "start_time",
    )
    await _invalid(
        running.stub.GetUsageAnalytics(pb.GetUsageAnalyticsRequest(start_time=_ts(10**12))),
        "start_time",
    )
    await _invalid(
        running.stub.GetVectorAnalytics(pb.GetVectorAnalyticsRequest(collection="c" * 256)),
        "collection",
    )
    await _invalid(
        running.stub.GetSearchAnalytics(pb.GetSearchAnalyticsRequest(collection="c" * 256)),
        "collection",
    )


@pytest.mark.parametrize(
    ("event", "field_name"),
    [
        (pb.UsageEvent(subject="a", route="", status_code=200), "events[1].route"),
        (pb.UsageEvent(subject="a", route="GET /x", status_code=0), "events[1].status_code"),
        (pb.UsageEvent(subject="a", route="GET /x", status_code=600), "events[1].status_code"),
        (
            pb.UsageEvent(subject="a", route="GET /x", status_code=200, prompt_tokens=-1),
            "events[1].prompt_tokens",
        ),
        (
            pb.UsageEvent(subject="a", route="GET /x", status_code=200, completion_tokens=-5),
            "events[1].completion_tokens",
        ),
        (
            pb.UsageEvent(subject="a", route="GET /x", status_code=200, latency_ms=float("nan")),
            "events[1].latency_ms",
        ),
        (
            pb.UsageEvent(subject="a", route="GET /x", status_code=200, time=_ts(0, 10**9)),
            "events[1].time",
        ),
        (pb.UsageEvent(subject="s" * 513, route="GET /x", status_code=200), "events[1].subject"),
    ],
)
async def test_bad_usage_event_is_invalid_and_nothing_is_stored(
    running: _Running, event: pb.UsageEvent, field_name: str
) -> None:
    good = pb.UsageEvent(subject="a", route="GET /x", status_code=200)
    await _invalid(
        running.stub.RecordUsage(pb.RecordUsageRequest(events=[good, event])), field_name
    )
    reply = await running.stub.GetUsageAnalytics(pb.GetUsageAnalyticsRequest())
    assert reply.total.request_count == 0


async def test_too_many_usage_events_is_invalid(running: _Running) -> None:
    event = pb.UsageEvent(subject="a", route="GET /x", status_code=200)
    details = await _invalid(
        running.stub.RecordUsage(pb.RecordUsageRequest(events=[event] * 10_001)), "events"
    )
    assert details.reason == "TOO_MANY_EVENTS"


async def test_search_queries_are_counted_per_day(running: _Running) -> None:
    for text in ("how to reset a password", "how to reset a password", "invoice totals"):
        running.store.record_search("docs", 4.0, 1, text)
    running.store.record_search("notes", 4.0, 1, "invoice totals")
    reply = await running.stub.ListSearchQueries(pb.ListSearchQueriesRequest(collection="docs"))
    assert [(q.query_text, q.count) for q in reply.queries] == [
        ("how to reset a password", 2),
        ("invoice totals", 1),
    ]
    day = reply.queries[0].day.ToSeconds()
    assert day % 86_400 == 0
    assert time.time() - 86_400 < day <= time.time()
    everywhere = await running.stub.ListSearchQueries(pb.ListSearchQueriesRequest(page_size=1))
    assert [(q.query_text, q.count) for q in everywhere.queries] == [("how to reset a password", 2)]
    await _invalid(
        running.stub.ListSearchQueries(pb.ListSearchQueriesRequest(page_size=10_001)), "page_size"
    )


async def test_a_collections_restriction_applies_to_every_figure(running: _Running) -> None:
    running.store.record_search("docs", 5.0, 1, "open question")
    running.store.record_search("secret", 500.0, 0, "merger plans")
    running.sizes.sizes = {"docs": (3, 300), "secret": (70, 7000)}
    only_docs = ["do*"]

    search = await running.stub.GetSearchAnalytics(
        pb.GetSearchAnalyticsRequest(collections=only_docs, bucket_width_seconds=60)
    )
    assert [s.collection for s in search.collections] == ["docs"]
    assert (search.total.search_count, search.total.latency_p99_ms) == (1, 5.0)
    assert [q.query_text for q in search.popular_queries] == ["open question"]
    assert sum(b.search_count for b in search.timeline) == 1

    queries = await running.stub.ListSearchQueries(
        pb.ListSearchQueriesRequest(collections=only_docs)
    )
    assert [q.query_text for q in queries.queries] == ["open question"]

    sizes = await running.stub.GetVectorAnalytics(
        pb.GetVectorAnalyticsRequest(collections=only_docs)
    )
    assert [c.collection for c in sizes.collections] == ["docs"]
    assert (sizes.total_points, sizes.total_disk_bytes) == (3, 300)


async def test_a_collections_restriction_is_bounded(running: _Running) -> None:
    too_long = await _invalid(
        running.stub.GetSearchAnalytics(pb.GetSearchAnalyticsRequest(collections=["x" * 256])),
        "collections[0]",
    )
    assert too_long.reason == "NAME_TOO_LONG"
    too_many = await _invalid(
        running.stub.ListSearchQueries(
            pb.ListSearchQueriesRequest(collections=[f"c{i}" for i in range(1001)])
        ),
        "collections",
    )
    assert too_many.reason == "TOO_MANY_COLLECTIONS"
