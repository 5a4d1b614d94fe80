"""Tool calls and token log probabilities of the inference service, over real
gRPC with the real model."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import grpc
import jsonschema  # type: ignore[import-untyped]
import pytest

from lodestar.inference.v1 import inference_service_pb2 as pb
from lodestar.inference.v1 import inference_service_pb2_grpc as pb_grpc
from lodestar.runtime.errors import ErrorDetails
from tests.inference.test_service import GREEDY, chat, generate

if TYPE_CHECKING:
    Stub = pb_grpc.InferenceServiceAsyncStub

ADD_PARAMETERS = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS = [
    pb.Tool(name="add", description="Adds two integers.", parameters=json.dumps(ADD_PARAMETERS)),
    pb.Tool(name="now", description="The current time."),
]


async def test_a_tool_call_constraint_writes_one_valid_call(stub: Stub) -> None:
    for names, expected in (([], {"add", "now"}), (["add"], {"add"})):
        response = await generate(
            stub,
            messages=chat("What is 2 plus 3?"),
            tools=TOOLS,
            sampling=pb.SamplingOptions(temperature=0.0, max_tokens=48),
            constraint=pb.OutputConstraint(tool_call=pb.ToolCallConstraint(names=names)),
        )
        call = json.loads(response.text)
        assert set(call) == {"name", "arguments"}
        assert call["name"] in expected
        if call["name"] == "add":
            jsonschema.validate(call["arguments"], ADD_PARAMETERS)


async def test_plain_text_is_allowed_when_asked(stub: Stub) -> None:
    response = await generate(
        stub,
        messages=chat("Say hello."),
        tools=TOOLS,
        sampling=GREEDY,
        constraint=pb.OutputConstraint(tool_call=pb.ToolCallConstraint(allow_text=True)),
    )
    assert response.text
    if response.text.startswith("{"):
        assert json.loads(response.text)["name"] in {"add", "now"}


async def test_tool_calls_and_results_in_the_history(stub: Stub) -> None:
    messages = [
        *chat("What is 2 plus 3?"),
        pb.ChatMessage(
            role=pb.ROLE_ASSISTANT,
            tool_calls=[pb.ToolCall(id="c1", name="add", arguments='{"a": 2, "b": 3}')],
        ),
        pb.ChatMessage(role=pb.ROLE_TOOL, tool_call_id="c1", content="5"),
    ]
    counted = await stub.CountTokens(pb.CountTokensRequest(messages=messages), timeout=30)
    alone = await stub.CountTokens(pb.CountTokensRequest(messages=messages[:1]), timeout=30)
    assert counted.token_count > alone.token_count + 10
    response = await generate(stub, messages=messages, tools=TOOLS, sampling=GREEDY)
    assert response.text


async def test_logprobs_of_every_token_unary_and_streamed(stub: Stub) -> None:
    fields: dict[str, Any] = {
        "messages": chat("Name three colours."),
        "sampling": GREEDY,
        "top_logprobs": 4,
    }
    response = await generate(stub, **fields)
    entries = response.logprobs
    assert len(entries) == response.usage.completion_tokens
    assert "".join(e.token for e in entries).startswith(response.text)
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 4
        # Greedy: the token taken is the most likely one.
        assert entry.top_logprobs[0].token == entry.token
        assert math.isclose(entry.top_logprobs[0].logprob, entry.logprob, abs_tol=1e-5)
        assert entry.token_bytes.decode("utf-8", errors="replace") == entry.token
    streamed: list[pb.TokenLogprob] = []
    async for message in stub.StreamGenerateText(
        pb.StreamGenerateTextRequest(**fields), timeout=60
    ):
        streamed.extend(message.logprobs)
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    plain = await generate(stub, messages=fields["messages"], sampling=GREEDY)
    assert plain.text == response.text
    assert not plain.logprobs


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"top_logprobs": 21}, "top_logprobs", "OUT_OF_RANGE"),
        (
            {"constraint": pb.OutputConstraint(tool_call=pb.ToolCallConstraint())},
            "constraint.tool_call",
            "NO_TOOLS",
        ),
        (
            {
                "tools": TOOLS,
                "constraint": pb.OutputConstraint(
                    tool_call=pb.ToolCallConstraint(names=["subtract"])
                ),
            },
            "constraint.tool_call.names[0]",
            "UNKNOWN_TOOL",
        ),
        ({"tools": [pb.Tool(name="two words")]}, "tools[0].name", "INVALID_TOOL_NAME"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].name", "DUPLICATE_TOOL"),
        (
            {
                "messages": [
                    pb.ChatMessage(
                        role=pb.ROLE_USER,
                        content="hi",
                        tool_calls=[pb.ToolCall(id="x", name="add", arguments="{}")],
                    )
                ]
            },
            "messages[0].tool_calls",
            "INVALID_TOOL_CALLS",
        ),
    ],
)
async def test_bad_tool_and_logprob_options_name_the_field(
    stub: Stub, fields: dict[str, Any], field: str, reason: str
) -> None:
    fields = dict(fields)
    if "messages" not in fields:
        fields["messages"] = chat("Hello")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await generate(stub, **fields)
    details = ErrorDetails.from_rpc_error(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details.message
    assert details.reason == reason, details.message
    assert [f for f, _ in details.field_violations] == [field]
