"""Unit tests of the flows' logic without services: token budgets, prompt
composition, the usage recorder and OpenAI error mapping."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.runtime.errors import InvalidArgument, Unavailable
from lodestar.services.gateway.deadline import CallOptions
from lodestar.services.gateway.flows import prompting
from lodestar.services.gateway.flows.budget import ContextOverflow, fit
from lodestar.services.gateway.flows.prompting import Example, Passage
from lodestar.services.gateway.flows.usage import Event, UsageRecorder
from lodestar.services.gateway.openai.errors import lodestar_error_body, param_of
from lodestar.services.vector.analytics import create_analytics
from lodestar.services.vector.analytics_models import UsageRecord
from lodestar.vector.v1 import analytics_service_pb2 as apb


def _passage(number: int, chars: int) -> Passage:
    return Passage(number, 1.0 - number / 100, "x" * chars, {"source": f"doc{number}"})


def _render(chosen: Sequence[Passage]) -> str:
    return "base " + " ".join(p.text for p in chosen)


class Counter:
    """One token per 4 characters, like a real tokenizer on plain text."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, text: str) -> int:
        self.calls += 1
        return len(text) // 4 + 1


async def test_everything_fits_in_one_count_round() -> None:
    count = Counter()
    pieces = [_passage(i, 40) for i in range(3)]
    fitted = await fit(pieces, _render, count, limit=100, max_tokens=10, context_size=120)
    assert fitted.pieces == pieces
    assert fitted.dropped == 0
    assert fitted.prompt_tokens == await Counter()(_render(pieces))
    assert count.calls == 1


async def test_passages_are_dropped_until_the_prompt_fits() -> None:
    count = Counter()
    pieces = [_passage(i, 200) for i in range(5)]
    limit = 120
    fitted = await fit(pieces, _render, count, limit=limit, max_tokens=8, context_size=136)
    assert fitted.prompt_tokens <= limit
    assert fitted.prompt_tokens == await Counter()(fitted.rendered)
    assert fitted.pieces == pieces[: len(fitted.pieces)]
    assert 1 <= len(fitted.pieces) < 5
    assert fitted.dropped == 5 - len(fitted.pieces)


async def test_a_passage_too_long_for_the_budget_is_cut() -> None:
    pieces = [_passage(0, 4000)]
    fitted = await fit(pieces, _render, Counter(), limit=200, max_tokens=8, context_size=216)
    assert len(fitted.pieces) == 1
    assert fitted.pieces[0].truncated
    assert 64 <= fitted.pieces[0].size < 4000
    assert fitted.prompt_tokens <= 200


async def test_a_prompt_without_room_for_max_tokens_overflows() -> None:
    with pytest.raises(ContextOverflow) as raised:
        await fit([_passage(0, 10)], _render, Counter(), limit=1, max_tokens=500, context_size=500)
    assert raised.value.field == "max_tokens"
    assert raised.value.reason == "CONTEXT_OVERFLOW"


def test_passages_and_examples_are_composed_around_the_conversation() -> None:
    passages = [
        Passage("a", 0.9, "Heaps are arrays.", {"source": "heapq"}),
        Passage("b", 0.8, "CSV files.", {}),
    ]
    examples = [Example("e", 0.7, 5, "Old question?", "Old answer.")]
    turns = prompting.compose_turns(
        [("system", "Be brief."), ("user", "New question?")],
        passages,
        examples,
        context_requested=True,
    )
    assert [role for role, _ in turns] == ["system", "user", "assistant", "user"]
    system = turns[0][1]
    assert system.startswith("Be brief.")
    assert "[1] (heapq) Heaps are arrays." in system
    assert "[2] CSV files." in system
    assert turns[1:] == [
        ("user", "Old question?"),
        ("assistant", "Old answer."),
        ("user", "New question?"),
    ]
    nothing = prompting.compose_turns([("user", "Q?")], [], [], context_requested=True)
    assert nothing[0] == ("system", prompting.NO_CONTEXT_INSTRUCTIONS)


def test_the_question_is_the_prompt_or_the_last_user_turn() -> None:
    assert prompting.question_of(ipb.GenerateTextRequest(prompt="p")) == "p"
    chat = ipb.GenerateTextRequest(
        messages=[
            ipb.ChatMessage(role=ipb.ROLE_USER, content="first"),
            ipb.ChatMessage(role=ipb.ROLE_ASSISTANT, content="reply"),
            ipb.ChatMessage(role=ipb.ROLE_USER, content="second"),
            ipb.ChatMessage(role=ipb.ROLE_ASSISTANT, content="prefill"),
        ]
    )
    assert prompting.question_of(chat) == "second"


def test_payload_excerpts_leave_the_text_out_and_cut_long_values() -> None:
    payload = {"text": "t" * 50, "title": "T" * 20, "n": 3}
    assert prompting.payload_excerpt(payload, skip="text", chars=10) == {
        "title": "T" * 10 + "…",
        "n": 3,
    }
    assert prompting.passage_text({"body": "long text", "x": "s"}, "text") == "long text"


class Sender:
    def __init__(self, failures: int = 0) -> None:
        self.batches: list[list[apb.UsageEvent]] = []
        self.failures = failures

    async def __call__(
        self, request: apb.RecordUsageRequest, options: CallOptions
    ) -> apb.RecordUsageResponse:
        if self.failures:
            self.failures -= 1
            raise Unavailable("down")
        self.batches.append(list(request.events))
        return apb.RecordUsageResponse()


def _event(n: int) -> Event:
    return ("alice", "POST /api/v1/generate", 200, n, 2 * n, 1.5, 1_700_000_000.0 + n)


async def test_the_recorder_sends_in_batches() -> None:
    sender = Sender()
    recorder = UsageRecorder(sender, interval_s=60, batch_size=2, max_pending=100)
    for n in range(5):
        recorder.record(_event(n))
    await recorder.flush()
    assert [len(b) for b in sender.batches] == [2, 2, 1]
    first = sender.batches[0][0]
    assert (first.subject, first.route, first.status_code) == (
        "alice",
        "POST /api/v1/generate",
        200,
    )
    assert first.time.seconds == 1_700_000_000


async def test_events_recorded_during_a_send_wait_for_the_next_flush() -> None:
    # Under steady traffic a flush must not chase new events with tiny batches.
    recorder: UsageRecorder

    class Busy(Sender):
        async def __call__(
            self, request: apb.RecordUsageRequest, options: CallOptions
        ) -> apb.RecordUsageResponse:
            recorder.record(_event(100 + len(self.batches)))
            return await super().__call__(request, options)

    sender = Busy()
    recorder = UsageRecorder(sender, interval_s=60, batch_size=10, max_pending=100)
    for n in range(3):
        recorder.record(_event(n))
    await recorder.flush()
    assert [[e.prompt_tokens for e in b] for b in sender.batches] == [[0, 1, 2]]
    assert recorder.pending == 1
    await recorder.flush()
    assert [e.prompt_tokens for e in sender.batches[1]] == [100]


async def test_the_recorder_sends_in_the_background_and_on_stop() -> None:
    sender = Sender()
    recorder = UsageRecorder(sender, interval_s=0.05, batch_size=100, max_pending=100)
    recorder.start()
    recorder.record(_event(1))
    for _ in range(100):
        if sender.batches:
            break
        await asyncio.sleep(0.01)
    assert len(sender.batches) == 1
    recorder.record(_event(2))
    await recorder.stop()
    assert sum(len(b) for b in sender.batches) == 2


async def test_the_recorder_keeps_events_while_the_service_is_unavailable() -> None:
    sender = Sender(failures=1)
    recorder = UsageRecorder(sender, interval_s=60, batch_size=10, max_pending=3)
    for n in range(4):
        recorder.record(_event(n))
    assert recorder.pending == 3  # the oldest was dropped
    await recorder.flush()
    assert sender.batches == []
    assert recorder.pending == 3
    await recorder.flush()
    assert [e.prompt_tokens for e in sender.batches[0]] == [1, 2, 3]
    assert recorder.pending == 0


def test_backend_fields_map_to_openai_parameters() -> None:
    assert param_of("sampling.max_tokens") == "max_tokens"
    assert param_of("texts[3]") == "input[3]"
    assert param_of("messages[0].content") == "messages[0].content"
    assert param_of("constraint.json_schema") == "response_format"
    assert param_of("constraint.tool_call") == "tool_choice"
    assert param_of("tools[2].parameters") == "tools[2].function.parameters"
    body = lodestar_error_body(
        InvalidArgument("too long", field="prompt", reason="PROMPT_TOO_LONG")
    )
    assert body == {
        "error": {
            "message": "too long",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": "context_length_exceeded",
        }
    }


def test_a_usage_sender_that_gives_up_does_not_stop_the_analytics_writer(
    tmp_path: Path,
) -> None:
    store = create_analytics(tmp_path)
    try:
        # A RecordUsage call cancelled while its events are being committed
        # cancels the future it waits on; the writer must carry on.
        abandoned = 0
        for _ in range(5):
            abandoned += store.flush_future().cancel()
        assert abandoned
        store.record_usage([UsageRecord("alice", "POST /api/v1/generate", 200, 3, 4)])
        store.flush(timeout=10)
        total = store.usage_analytics(subject="alice").total
        assert (total.request_count, total.prompt_tokens, total.completion_tokens) == (1, 3, 4)
    finally:
        store.close()
