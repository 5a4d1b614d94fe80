"""Tool calls and log probabilities of the OpenAI API, without a model: the
streamed tool-call deltas, the call parser and the tool-call grammar."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pydantic
import pytest

from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.runtime.errors import InvalidArgument
from lodestar.services.gateway.openai.logprobs import CompletionLogprobs
from lodestar.services.gateway.openai.schemas import ChatCompletionRequest, CompletionRequest
from lodestar.services.gateway.openai.tools import ToolCallDeltas, check_chat, parse_call
from lodestar.services.inference.tools import ToolSpec, call_grammar, parse_tool, with_tools

CALL = '{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]} } '


def _assemble(deltas: list[dict[str, Any]]) -> tuple[str, str, str]:
    """What a client assembling the deltas ends with: content, name, arguments."""
    content = name = arguments = ""
    for delta in deltas:
        content += delta.get("content", "")
        for call in delta.get("tool_calls", ()):
            assert call["index"] == 0
            name += call["function"].get("name", "")
            arguments += call["function"]["arguments"]
    return content, name, arguments


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(CALL)])
def test_a_call_streams_as_name_then_arguments(size: int) -> None:
    stream = ToolCallDeltas()
    deltas: list[dict[str, Any]] = []
    for start in range(0, len(CALL), size):
        deltas += stream.push(CALL[start : start + size])
    deltas += stream.finish()
    assert stream.called
    opening = deltas[0]["tool_calls"][0]
    assert opening["id"] == stream.call_id
    assert opening["function"] == {"name": "get_weather", "arguments": ""}
    content, name, arguments = _assemble(deltas)
    assert (content, name) == ("", "get_weather")
    assert json.loads(arguments) == {"city": "Paris", "days": [1, 2]}
    assert parse_call(CALL) == ("get_weather", arguments.rstrip())


def test_text_streams_as_content() -> None:
    stream = ToolCallDeltas()
    deltas = stream.push("It is ") + stream.push("sunny {really}.") + stream.finish()
    assert _assemble(deltas) == ("It is sunny {really}.", "", "")
    assert not stream.called
    assert parse_call("It is sunny.") is None


def test_a_call_cut_short_before_its_name_is_text() -> None:
    stream = ToolCallDeltas()
    deltas = stream.push('{"na') + stream.finish()
    assert _assemble(deltas) == ('{"na', "", "")
    assert not stream.called
    assert parse_call('{"name": "f", "arguments": {"a": ') is None


def test_completion_logprobs_offsets_run_across_chunks() -> None:
    shape = CompletionLogprobs()
    first = shape.of([ipb.TokenLogprob(token="Hel", logprob=-0.5)])
    second = shape.of(
        [
            ipb.TokenLogprob(
                token="lo", logprob=-0.25, top_logprobs=[ipb.TopLogprob(token="lo", logprob=-0.25)]
            ),
            ipb.TokenLogprob(token="!", logprob=-1.0),
        ]
    )
    assert first["text_offset"] == [0]
    assert second["text_offset"] == [3, 5]
    assert second["top_logprobs"] == [{"lo": -0.25}, {}]


def test_tools_are_described_to_a_template_without_tool_support() -> None:
    tool = parse_tool(0, "add", "Adds.", '{"type": "object"}')
    messages, template_tools = with_tools(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
        [tool],
        template_renders_tools=False,
    )
    assert template_tools is None
    assert messages[0]["content"].startswith("Be brief.\n\nYou can call")
    assert '"name": "add"' in messages[0]["content"]
    _, rendered = with_tools([], [tool], template_renders_tools=True)
    assert rendered == [
        {
            "type": "function",
            "function": {"name": "add", "parameters": {"type": "object"}, "description": "Adds."},
        }
    ]


def test_the_call_grammar_and_its_refusals() -> None:
    tools = [ToolSpec("add", "", {"type": "object", "properties": {"a": {"type": "integer"}}})]
    field = "constraint.tool_call"
    required = call_grammar(tools, [], allow_text=False, field=field)
    assert re.search(r"^root ::= ", required, re.MULTILINE)
    optional = call_grammar(tools, ["add"], allow_text=True, field=field)
    assert "root ::= tool-call | plain-text" in optional
    assert "tool-call ::=" in optional
    with pytest.raises(InvalidArgument) as unknown:
        call_grammar(tools, ["sub"], allow_text=False, field=field)
    assert unknown.value.field == "constraint.tool_call.names[0]"
    with pytest.raises(InvalidArgument) as none:
        call_grammar([], [], allow_text=False, field=field)
    assert none.value.reason == "NO_TOOLS"
    with pytest.raises(InvalidArgument) as bad:
        parse_tool(3, "no spaces allowed", "", "")
    assert bad.value.field == "tools[3].name"


_TOOLS = [{"type": "function", "function": {"name": "f"}}]
_CALL = {"name": "f", "arguments": "{}"}
_CHAT_CASES: list[dict[str, Any]] = [
    {},
    {"top_logprobs": 2},
    {"top_logprobs": 2, "logprobs": True},
    {"top_logprobs": 2, "logprobs": False},
    {"tool_choice": "auto"},
    {"tool_choice": "none"},
    {"tool_choice": "auto", "tools": _TOOLS},
    {"tools": [], "tool_choice": "required"},
    {"tools": _TOOLS, "response_format": {"type": "json_object"}},
    {"tools": _TOOLS, "tool_choice": "none", "response_format": {"type": "json_object"}},
    {"tools": _TOOLS, "response_format": {"type": "text"}},
    {"messages": [{"role": "tool"}]},
    {"messages": [{"role": "tool", "tool_call_id": "c1", "content": "42"}]},
    {"messages": [{"role": "user", "tool_calls": [{"id": "c", "function": _CALL}]}]},
    {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": _CALL}]}]},
    {"messages": [{"role": "user", "content": ""}]},
    {"messages": [{"role": "user", "content": []}]},
]


def _accepted(body: dict[str, Any]) -> bool:
    try:
        check_chat(ChatCompletionRequest.model_validate(body))
    except (pydantic.ValidationError, InvalidArgument):
        return False
    return True


@pytest.mark.parametrize("fields", _CHAT_CASES)
def test_the_chat_schema_states_what_the_route_refuses(fields: dict[str, Any]) -> None:
    """The OpenAPI schema of a chat request and the route agree on whether it is valid."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    schema = jsonschema.Draft202012Validator(ChatCompletionRequest.model_json_schema())
    assert schema.is_valid(body) == _accepted(body)


@pytest.mark.parametrize(
    "fields", [{}, {"best_of": 1}, {"best_of": 2}, {"best_of": 2, "n": 2}, {"best_of": 3, "n": 2}]
)
def test_the_completion_schema_states_best_of_is_n(fields: dict[str, Any]) -> None:
    body = {"model": "m", "prompt": "p", **fields}
    request = CompletionRequest.model_validate(body)
    schema = jsonschema.Draft202012Validator(CompletionRequest.model_json_schema())
    assert schema.is_valid(body) == (request.best_of in (None, request.choices))
