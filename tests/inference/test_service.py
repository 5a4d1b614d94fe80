"""The inference service over real gRPC with the real model."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import grpc
import jsonschema  # type: ignore[import-untyped]
import pytest
from prometheus_client import REGISTRY

from lodestar.inference.v1 import inference_service_pb2 as pb
from lodestar.inference.v1 import inference_service_pb2_grpc as pb_grpc
from lodestar.runtime.errors import ErrorDetails
from lodestar.services.inference.engine import InferenceEngine
from tests.inference.conftest import CONTEXT_SIZE

if TYPE_CHECKING:
    # Only the type stubs have the asyncio flavour of the stub class.
    Stub = pb_grpc.InferenceServiceAsyncStub

GREEDY = pb.SamplingOptions(temperature=0.0, repeat_penalty=1.0, max_tokens=24)


def chat(text: str) -> list[pb.ChatMessage]:
    return [pb.ChatMessage(role=pb.ROLE_USER, content=text)]


async def generate(stub: Stub, **fields: Any) -> pb.GenerateTextResponse:
    response: pb.GenerateTextResponse = await stub.GenerateText(
        pb.GenerateTextRequest(**fields),
        timeout=60,
    )
    return response


async def stream_text(stub: Stub, **fields: Any) -> tuple[list[str], pb.StreamGenerateTextResponse]:
    deltas: list[str] = []
    last = pb.StreamGenerateTextResponse()
    async for message in stub.StreamGenerateText(
        pb.StreamGenerateTextRequest(**fields),
        timeout=60,
    ):
        deltas.append(message.delta)
        last = message
    return deltas, last


# -- generation -----------------------------------------------------------------------


async def test_same_seed_gives_the_same_text(stub: Stub) -> None:
    sampling = pb.SamplingOptions(temperature=1.0, top_p=0.95, max_tokens=24, seed=1234)
    first = await generate(stub, messages=chat("Tell me about the sea."), sampling=sampling)
    second = await generate(stub, messages=chat("Tell me about the sea."), sampling=sampling)
    assert first.text
    assert first.text == second.text
    assert first.usage.prompt_tokens == second.usage.prompt_tokens
    assert first.usage.completion_tokens == second.usage.completion_tokens
    # The repeated prompt came from the prompt cache, all but the token decoded for logits.
    assert second.usage.cached_prompt_tokens == second.usage.prompt_tokens - 1


async def test_same_seed_gives_the_same_text_when_batched_with_others(stub: Stub) -> None:
    sampling = pb.SamplingOptions(temperature=1.0, max_tokens=20, seed=99)
    alone = await generate(stub, messages=chat("Name three fruits."), sampling=sampling)
    together = await asyncio.gather(
        generate(stub, messages=chat("Name three fruits."), sampling=sampling),
        generate(stub, messages=chat("Describe a forest."), sampling=GREEDY),
        generate(stub, prompt="The history of Rome", sampling=GREEDY),
    )
    assert together[0].text == alone.text


async def test_usage_finish_reason_and_timing_are_reported(stub: Stub) -> None:
    sampling = pb.SamplingOptions(temperature=0.0, max_tokens=5)
    response = await generate(stub, prompt="Once upon a time", sampling=sampling)
    assert response.finish_reason == pb.FINISH_REASON_LENGTH
    assert response.usage.completion_tokens == 5
    count = await stub.CountTokens(pb.CountTokensRequest(text="Once upon a time"))
    assert response.usage.prompt_tokens == count.token_count
    assert response.usage.total_tokens == count.token_count + 5
    assert response.model == "SmolLM2-135M-Instruct.Q4_1"
    assert 0 < response.timing.time_to_first_token_ms <= response.timing.total_ms
    assert response.timing.queue_ms >= 0


async def test_the_model_ending_its_answer_is_finish_reason_stop(stub: Stub) -> None:
    sampling = pb.SamplingOptions(temperature=0.0, max_tokens=200)
    response = await generate(stub, messages=chat("Say hello."), sampling=sampling)
    assert response.finish_reason == pb.FINISH_REASON_STOP
    assert response.usage.completion_tokens < 200
    assert "<|im_end|>" not in response.text


async def test_stop_sequence_ends_the_text_without_it(stub: Stub) -> None:
    full = await generate(stub, messages=chat("Write a short story about a cat."), sampling=GREEDY)
    words = full.text.split()
    assert len(words) >= 6
    # A stop string of two words, so that it spans several tokens.
    stop = f"{words[3]} {words[4]}"
    expected = full.text[: full.text.index(stop)]
    sampling = pb.SamplingOptions()
    sampling.CopyFrom(GREEDY)
    sampling.stop.extend([stop, "never appears in the answer"])
    stopped = await generate(
        stub, messages=chat("Write a short story about a cat."), sampling=sampling
    )
    assert stopped.text == expected
    assert stop not in stopped.text
    assert stopped.finish_reason == pb.FINISH_REASON_STOP

    deltas, last = await stream_text(
        stub, messages=chat("Write a short story about a cat."), sampling=sampling
    )
    assert "".join(deltas) == expected
    assert last.finish_reason == pb.FINISH_REASON_STOP


async def test_streamed_deltas_concatenate_to_the_unary_answer(stub: Stub) -> None:
    sampling = pb.SamplingOptions(temperature=0.7, max_tokens=32, seed=5)
    unary = await generate(stub, messages=chat("Explain what a river is."), sampling=sampling)
    deltas, last = await stream_text(
        stub, messages=chat("Explain what a river is."), sampling=sampling
    )
    assert len(deltas) > 1
    assert "".join(deltas) == unary.text
    assert last.finish_reason == unary.finish_reason
    assert last.usage.prompt_tokens == unary.usage.prompt_tokens
    assert last.usage.completion_tokens == unary.usage.completion_tokens
    assert last.model == unary.model
    assert last.timing.total_ms > 0


async def test_concurrent_greedy_requests_get_exactly_what_they_get_alone(stub: Stub) -> None:
    requests: list[dict[str, Any]] = [
        {"messages": chat("Write a poem about the moon.")},
        {"messages": chat("What is a computer?")},
        {"prompt": "The quick brown fox"},
        {"messages": chat("Give me a recipe for soup. " * 6)},  # long: prompt in chunks
        {"messages": chat("List some colours.")},
    ]
    alone = [(await generate(stub, sampling=GREEDY, **r)).text for r in requests]
    together = await asyncio.gather(*(generate(stub, sampling=GREEDY, **r) for r in requests))
    assert [r.text for r in together] == alone
    assert len(set(alone)) == len(alone)


async def test_chat_prompt_uses_the_model_template(stub: Stub, engine: InferenceEngine) -> None:
    messages = [
        pb.ChatMessage(role=pb.ROLE_SYSTEM, content="You answer briefly."),
        pb.ChatMessage(role=pb.ROLE_USER, content="Hi"),
    ]
    rendered = engine.render_chat([("system", "You answer briefly."), ("user", "Hi")])
    assert rendered.endswith("<|im_start|>assistant\n")
    count = await stub.CountTokens(pb.CountTokensRequest(messages=messages))
    assert count.token_count == len(engine.tokenize(rendered))
    assert count.context_size == CONTEXT_SIZE
    response = await generate(stub, messages=messages, sampling=GREEDY)
    assert response.usage.prompt_tokens == count.token_count


async def test_json_schema_output_parses_and_fits_the_schema(stub: Stub) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "pets": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": False,
    }
    for seed in (1, 2):
        response = await generate(
            stub,
            messages=chat("Describe a person as JSON."),
            sampling=pb.SamplingOptions(max_tokens=120, seed=seed),
            constraint=pb.OutputConstraint(json_schema=json.dumps(schema)),
        )
        assert response.finish_reason == pb.FINISH_REASON_STOP, response.text
        jsonschema.validate(json.loads(response.text), schema)


async def test_json_object_and_gbnf_grammar_constrain_the_output(stub: Stub) -> None:
    response = await generate(
        stub,
        messages=chat("Give me a JSON object with a person's name and age."),
        sampling=pb.SamplingOptions(max_tokens=200, temperature=0.0),
        constraint=pb.OutputConstraint(json_object=True),
    )
    assert response.finish_reason == pb.FINISH_REASON_STOP
    assert isinstance(json.loads(response.text), dict)

    answer = await generate(
        stub,
        messages=chat("Is the sky blue?"),
        sampling=pb.SamplingOptions(max_tokens=10, seed=4),
        constraint=pb.OutputConstraint(grammar='root ::= ("yes" | "no") "."'),
    )
    assert answer.text in ("yes.", "no.")
    assert answer.finish_reason == pb.FINISH_REASON_STOP


async def test_batch_returns_results_in_order_with_per_item_errors(stub: Stub) -> None:
    first = pb.GenerateTextRequest(prompt="Hello", sampling=GREEDY)
    bad = pb.GenerateTextRequest(prompt="Hi", messages=chat("Hi"), sampling=GREEDY)
    out_of_range = pb.GenerateTextRequest(prompt="Hi", sampling=pb.SamplingOptions(temperature=5.0))
    last = pb.GenerateTextRequest(messages=chat("What is two plus two?"), sampling=GREEDY)
    reply = await stub.BatchGenerateText(
        pb.BatchGenerateTextRequest(requests=[first, bad, out_of_range, last]), timeout=60
    )
    assert [r.WhichOneof("result") for r in reply.results] == [
        "response",
        "error",
        "error",
        "response",
    ]
    assert (
        reply.results[0].response.text
        == (await generate(stub, prompt="Hello", sampling=GREEDY)).text
    )
    assert reply.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reply.results[1].error.reason == "PROMPT_AND_MESSAGES"
    assert "requests[1].prompt" in reply.results[1].error.message
    assert reply.results[2].error.reason == "OUT_OF_RANGE"
    assert "requests[2].sampling.temperature" in reply.results[2].error.message
    assert reply.results[3].response.usage.completion_tokens > 0


async def test_model_info_describes_the_model_and_limits(stub: Stub) -> None:
    reply = await stub.GetModelInfo(pb.GetModelInfoRequest())
    info = reply.model
    assert info.name == "SmolLM2-135M-Instruct.Q4_1"
    assert info.path.endswith(".gguf")
    assert info.context_size == CONTEXT_SIZE
    assert info.max_concurrent_sequences == 4
    assert info.max_queue_length == 8
    assert info.has_chat_template
    assert info.vocab_size == 49152
    assert 0 < info.default_max_tokens <= CONTEXT_SIZE


async def test_an_empty_prompt_or_message_is_answered(stub: Stub) -> None:
    """As in OpenAI's API: an empty prompt is generated from the start of a document
    (the model's start-of-text token), a blank one is text like any other, and an
    empty message is a turn that says nothing."""
    empty = await generate(stub, prompt="", sampling=GREEDY)
    assert empty.usage.prompt_tokens == 1
    assert empty.usage.completion_tokens > 0
    for fields in ({"prompt": "   "}, {"messages": [pb.ChatMessage(role=pb.ROLE_USER)]}):
        answer = await generate(stub, sampling=GREEDY, **fields)
        assert answer.usage.prompt_tokens > 0
        assert answer.usage.completion_tokens > 0


# -- bad input ------------------------------------------------------------------------

_LONG_PROMPT = "word " * (CONTEXT_SIZE + 50)


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"prompt": "hi", "messages": chat("hi")}, "prompt", "PROMPT_AND_MESSAGES"),
        ({"messages": [pb.ChatMessage(content="hi")]}, "messages[0].role", "INVALID_ROLE"),
        ({"prompt": _LONG_PROMPT}, "prompt", "PROMPT_TOO_LONG"),
        ({"messages": chat(_LONG_PROMPT)}, "messages", "PROMPT_TOO_LONG"),
        ({"sampling": pb.SamplingOptions(max_tokens=0)}, "sampling.max_tokens", "OUT_OF_RANGE"),
        (
            {"sampling": pb.SamplingOptions(max_tokens=CONTEXT_SIZE + 1)},
            "sampling.max_tokens",
            "OUT_OF_RANGE",
        ),
        ({"sampling": pb.SamplingOptions(temperature=2.5)}, "sampling.temperature", "OUT_OF_RANGE"),
        (
            {"sampling": pb.SamplingOptions(temperature=float("nan"))},
            "sampling.temperature",
            "OUT_OF_RANGE",
        ),
        ({"sampling": pb.SamplingOptions(top_p=0.0)}, "sampling.top_p", "OUT_OF_RANGE"),
        ({"sampling": pb.SamplingOptions(top_p=1.5)}, "sampling.top_p", "OUT_OF_RANGE"),
        ({"sampling": pb.SamplingOptions(top_k=-1)}, "sampling.top_k", "OUT_OF_RANGE"),
        ({"sampling": pb.SamplingOptions(top_k=5000)}, "sampling.top_k", "OUT_OF_RANGE"),
        ({"sampling": pb.SamplingOptions(min_p=1.5)}, "sampling.min_p", "OUT_OF_RANGE"),
        (
            {"sampling": pb.SamplingOptions(repeat_penalty=0.1)},
            "sampling.repeat_penalty",
            "OUT_OF_RANGE",
        ),
        ({"sampling": pb.SamplingOptions(stop=[""])}, "sampling.stop[0]", "INVALID_STOP_SEQUENCE"),
        (
            {"constraint": pb.OutputConstraint(grammar="root ::= undefined-rule")},
            "constraint.grammar",
            "INVALID_GRAMMAR",
        ),
        (
            {"constraint": pb.OutputConstraint(grammar='root ::= "unterminated')},
            "constraint.grammar",
            "INVALID_GRAMMAR",
        ),
        (
            {"constraint": pb.OutputConstraint(json_schema="{not json")},
            "constraint.json_schema",
            "INVALID_JSON_SCHEMA",
        ),
        (
            {
                "constraint": pb.OutputConstraint(
                    json_schema='{"type": "object", "$ref": "#/nowhere"}'
                )
            },
            "constraint.json_schema",
            "INVALID_JSON_SCHEMA",
        ),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    stub: Stub, fields: dict[str, Any], field: str, reason: str
) -> None:
    fields = dict(fields)
    if "prompt" not in fields and "messages" not in fields:
        fields["prompt"] = "Hello"
    for call in (generate(stub, **fields), stream_text(stub, **fields)):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        details = ErrorDetails.from_rpc_error(raised.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details.message
        assert details.reason == reason, details.message
        assert [f for f, _ in details.field_violations] == [field]
        assert field.split("[")[0].split(".")[0] in details.message


async def test_prompt_too_long_message_gives_both_token_counts(
    stub: Stub, engine: InferenceEngine
) -> None:
    tokens = len(engine.tokenize(_LONG_PROMPT))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await generate(stub, prompt=_LONG_PROMPT)
    message = raised.value.details() or ""
    assert str(tokens) in message
    assert str(CONTEXT_SIZE) in message


async def test_count_tokens_needs_exactly_one_input(stub: Stub) -> None:
    for request, reason in [
        (pb.CountTokensRequest(), "EMPTY_TEXT"),
        (pb.CountTokensRequest(text="a", messages=chat("b")), "TEXT_AND_MESSAGES"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.CountTokens(request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ErrorDetails.from_rpc_error(raised.value).reason == reason


# -- cancellation and overload (one slot, no queue) -------------------------------------

# A generation that runs all of its 400 tokens unless cancelled: the grammar admits no
# end before 2,000 characters, so the model cannot stop early.
LONG_RUN = pb.SamplingOptions(temperature=0.0, max_tokens=400)
NO_EARLY_END = pb.OutputConstraint(grammar="root ::= [0-9 ]{2000}")


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _ended(method: str) -> dict[str, float]:
    """Calls of an RPC the servers in this process have ended, by finish reason."""
    return {
        reason: _sample("lodestar_inference_requests_total", method=method, finish_reason=reason)
        for reason in ("stop", "length", "cancelled", "error")
    }


def _completion_tokens() -> float:
    return _sample("lodestar_inference_completion_tokens_total")


async def _until_ended(method: str, before: dict[str, float]) -> dict[str, float]:
    """Wait for one more call of ``method`` to end; how many ended, by reason. The limit
    only bounds a hang: the server learns of a client's cancel or deadline a little
    after the client does."""
    deadline = time.monotonic() + 120
    while (after := _ended(method)) == before:
        assert time.monotonic() < deadline, f"no {method} call ended"
        await asyncio.sleep(0.01)
    return {reason: n - before[reason] for reason, n in after.items() if n != before[reason]}


async def _first_delta_then(
    call: grpc.aio.UnaryStreamCall[Any, pb.StreamGenerateTextResponse],
) -> str:
    async for message in call:
        if message.delta:
            return message.delta
    raise AssertionError("the stream ended without text")


async def test_full_queue_is_resource_exhausted_at_once(tight_stub: Stub) -> None:
    streams = _ended("StreamGenerateText")
    call = tight_stub.StreamGenerateText(
        pb.StreamGenerateTextRequest(
            prompt="Count from one to a thousand:", sampling=LONG_RUN, constraint=NO_EARLY_END
        )
    )
    try:
        await _first_delta_then(call)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await generate(tight_stub, prompt="Hello", sampling=GREEDY)
        # Refused while the stream still held the only slot, not once it came free.
        assert _ended("StreamGenerateText") == streams
        details = ErrorDetails.from_rpc_error(raised.value)
        assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.reason == "QUEUE_FULL"
    finally:
        call.cancel()
    assert await _until_ended("StreamGenerateText", streams) == {"cancelled": 1}


async def _generate_in_the_freed_slot(tight_stub: Stub, tokens_before: float) -> None:
    """With no queue, a call that the engine still counted would be refused at once;
    the slot goes to the next request only once the cancelled sequence is dropped, its
    tokens counted, which must be well short of the 400 it was allowed."""
    response = await generate(tight_stub, prompt="Hello", sampling=GREEDY)
    assert response.usage.completion_tokens > 0
    cancelled_tokens = _completion_tokens() - tokens_before - response.usage.completion_tokens
    assert cancelled_tokens < LONG_RUN.max_tokens


async def test_cancelled_stream_frees_its_slot_for_the_next_request(tight_stub: Stub) -> None:
    streams = _ended("StreamGenerateText")
    tokens = _completion_tokens()
    call = tight_stub.StreamGenerateText(
        pb.StreamGenerateTextRequest(
            prompt="Count from one to a thousand:", sampling=LONG_RUN, constraint=NO_EARLY_END
        )
    )
    await _first_delta_then(call)
    call.cancel()
    assert await _until_ended("StreamGenerateText", streams) == {"cancelled": 1}
    await _generate_in_the_freed_slot(tight_stub, tokens)


async def test_expired_deadline_stops_the_work_and_frees_the_slot(tight_stub: Stub) -> None:
    calls = _ended("GenerateText")
    tokens = _completion_tokens()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tight_stub.GenerateText(
            pb.GenerateTextRequest(
                prompt="Count from one to a thousand:", sampling=LONG_RUN, constraint=NO_EARLY_END
            ),
            timeout=0.5,
        )
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await _until_ended("GenerateText", calls) == {"cancelled": 1}
    await _generate_in_the_freed_slot(tight_stub, tokens)
