"""The dynamic batcher's logic, with a plain function in place of the model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lodestar.runtime.errors import ResourceExhausted, Unavailable
from lodestar.services.embedding.batcher import DynamicBatcher


class Recorder:
    """A batch function that records its batches and can be held at a gate."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        self.started.set()
        self.gate.wait(timeout=10)
        if "bad" in items:
            raise ValueError("cannot embed 'bad'")
        return [item.upper() for item in items]

    def hold(self) -> None:
        self.started.clear()
        self.gate.clear()

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, 10)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def batcher(recorder: Recorder) -> AsyncIterator[DynamicBatcher[str, str]]:
    batcher: DynamicBatcher[str, str] = DynamicBatcher(recorder, max_batch_size=4)
    yield batcher
    recorder.gate.set()
    await batcher.close()


async def test_results_come_back_in_order(batcher: DynamicBatcher[str, str]) -> None:
    assert await batcher.submit(["a", "b", "c"]) == ["A", "B", "C"]


async def test_callers_waiting_during_a_batch_share_the_next_one(
    batcher: DynamicBatcher[str, str], recorder: Recorder
) -> None:
    recorder.hold()
    first = asyncio.create_task(batcher.submit(["first"]))
    await recorder.wait_started()
    waiting = [asyncio.create_task(batcher.submit([f"t{i}"])) for i in range(3)]
    await asyncio.sleep(0.01)
    assert batcher.queued == 3
    recorder.gate.set()

    assert await first == ["FIRST"]
    assert [await task for task in waiting] == [["T0"], ["T1"], ["T2"]]
    assert recorder.batches == [["first"], ["t0", "t1", "t2"]]
    assert batcher.queued == 0


async def test_a_large_request_is_split_and_small_ones_fill_the_gaps(
    batcher: DynamicBatcher[str, str], recorder: Recorder
) -> None:
    recorder.hold()
    blocker = asyncio.create_task(batcher.submit(["x"]))
    await recorder.wait_started()
    big = asyncio.create_task(batcher.submit([f"b{i}" for i in range(6)]))
    small = asyncio.create_task(batcher.submit(["s0", "s1"]))
    await asyncio.sleep(0.01)
    recorder.gate.set()

    assert await big == [f"B{i}" for i in range(6)]
    assert await small == ["S0", "S1"]
    await blocker
    # Arrival order is kept and no batch exceeds max_batch_size.
    assert recorder.batches == [["x"], ["b0", "b1", "b2", "b3"], ["b4", "b5", "s0", "s1"]]


async def test_an_error_reaches_every_caller_of_that_batch_only(
    batcher: DynamicBatcher[str, str], recorder: Recorder
) -> None:
    recorder.hold()
    blocker = asyncio.create_task(batcher.submit(["x"]))
    await recorder.wait_started()
    bad = asyncio.create_task(batcher.submit(["ok", "bad"]))
    neighbour = asyncio.create_task(batcher.submit(["fine"]))
    await asyncio.sleep(0.01)
    recorder.gate.set()
    await blocker

    for task in (bad, neighbour):
        with pytest.raises(ValueError, match="cannot embed 'bad'"):
            await task
    # The batcher keeps serving after a failed batch.
    assert await batcher.submit(["after"]) == ["AFTER"]


async def test_a_cancelled_caller_is_dropped_from_the_queue(
    batcher: DynamicBatcher[str, str], recorder: Recorder
) -> None:
    recorder.hold()
    blocker = asyncio.create_task(batcher.submit(["x"]))
    await recorder.wait_started()
    gone = asyncio.create_task(batcher.submit(["gone1", "gone2"]))
    stays = asyncio.create_task(batcher.submit(["stays"]))
    await asyncio.sleep(0.01)
    assert batcher.queued == 3
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert batcher.queued == 1
    recorder.gate.set()

    assert await stays == ["STAYS"]
    await blocker
    assert recorder.batches == [["x"], ["stays"]]


async def test_the_batch_function_must_return_one_result_per_item() -> None:
    batcher: DynamicBatcher[str, str] = DynamicBatcher(lambda items: items[:1], max_batch_size=8)
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        await batcher.submit(["a", "b"])
    await batcher.close()


async def test_a_lone_caller_does_not_wait_for_company(recorder: Recorder) -> None:
    # Allowed to linger for an hour: answers that come at all did not wait for company
    # (the timeout only turns a lingering batcher into a failure instead of a hang).
    batcher: DynamicBatcher[str, str] = DynamicBatcher(recorder, max_batch_size=8, max_wait_s=3600)
    async with asyncio.timeout(60):
        assert await batcher.submit(["alone"]) == ["ALONE"]
        assert await batcher.submit(["again"]) == ["AGAIN"]
    assert recorder.batches == [["alone"], ["again"]]
    await batcher.close()


async def test_under_concurrency_a_partial_batch_lingers_for_more(recorder: Recorder) -> None:
    batcher: DynamicBatcher[str, str] = DynamicBatcher(recorder, max_batch_size=8, max_wait_s=0.5)
    # Two callers in one batch signal concurrent traffic.
    recorder.hold()
    blocker = asyncio.create_task(batcher.submit(["x"]))
    await recorder.wait_started()
    pair = [asyncio.create_task(batcher.submit([t])) for t in ("p", "q")]
    await asyncio.sleep(0.01)
    recorder.gate.set()
    await asyncio.gather(blocker, *pair)

    early = asyncio.create_task(batcher.submit(["early"]))
    await asyncio.sleep(0.05)
    late = asyncio.create_task(batcher.submit(["late"]))
    assert await early == ["EARLY"]
    assert await late == ["LATE"]
    assert recorder.batches[-1] == ["early", "late"]
    await batcher.close()


async def test_close_finishes_queued_work_then_refuses_new_items(
    batcher: DynamicBatcher[str, str], recorder: Recorder
) -> None:
    recorder.hold()
    running = asyncio.create_task(batcher.submit(["running"]))
    await recorder.wait_started()
    queued = asyncio.create_task(batcher.submit(["queued"]))
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.01)
    recorder.gate.set()
    await closing

    assert await running == ["RUNNING"]
    assert await queued == ["QUEUED"]
    with pytest.raises(Unavailable, match="shutting down"):
        await batcher.submit(["new"])


async def test_a_full_queue_turns_callers_away_at_once(recorder: Recorder) -> None:
    batcher: DynamicBatcher[str, str] = DynamicBatcher(recorder, max_batch_size=2, max_queued=3)
    recorder.hold()
    running = asyncio.create_task(batcher.submit(["running"]))
    await recorder.wait_started()
    queued = asyncio.create_task(batcher.submit(["a", "b"]))
    await asyncio.sleep(0.01)
    with pytest.raises(ResourceExhausted, match="already waiting") as caught:
        await batcher.submit(["c", "d"])
    assert caught.value.reason == "QUEUE_FULL"
    assert caught.value.retry_after_s is not None
    recorder.gate.set()
    assert await running == ["RUNNING"]
    assert await queued == ["A", "B"]
    # An empty queue takes even a request larger than the limit.
    assert await batcher.submit(["e", "f", "g", "h"]) == ["E", "F", "G", "H"]
    await batcher.close()


async def test_each_batch_joins_its_first_callers_trace_and_links_the_rest(
    recorder: Recorder,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    batcher: DynamicBatcher[str, str] = DynamicBatcher(recorder, max_batch_size=8, tracer=tracer)

    async def call(name: str, items: list[str]) -> trace.SpanContext:
        with tracer.start_as_current_span(name) as span:
            await batcher.submit(items)
            return span.get_span_context()

    first = await call("first", ["a"])
    recorder.hold()
    blocker = asyncio.create_task(call("blocker", ["x"]))
    await recorder.wait_started()
    pair = [asyncio.create_task(call(name, [name])) for name in ("p", "q")]
    await asyncio.sleep(0.01)
    recorder.gate.set()
    blocked = await blocker
    p, q = [await task for task in pair]
    await batcher.close()

    batches = [s for s in exporter.get_finished_spans() if s.name == "embedding.batch"]
    parents = [s.parent.span_id if s.parent else None for s in batches]
    # A later batch is not parented to the call that started the dispatcher.
    assert parents == [first.span_id, blocked.span_id, p.span_id]
    assert [s.context.trace_id for s in batches] == [first.trace_id, blocked.trace_id, p.trace_id]
    merged = batches[2]
    assert {link.context.span_id for link in merged.links} == {p.span_id, q.span_id}
    assert dict(merged.attributes or {})["embedding.callers"] == 2
