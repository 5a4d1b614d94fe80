"""Tool calling on ``/v1/chat/completions``: the request's tools and history as
the inference service's, and the generated call back as OpenAI ``tool_calls``.

The inference service constrains the output to ``{"name": ..., "arguments":
{...}}`` (or, for ``tool_choice: auto``, to that or plain text not starting with
``{``), so the first character tells a call from text, and the call's fixed
opening tells its name before the arguments are generated: a stream can send
the name at once and the arguments as they come.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.runtime.errors import InvalidArgument
from lodestar.services.gateway.openai.schemas import (
    ChatCompletionRequest,
    ChatMessageIn,
    NamedToolChoice,
)

_ROLES = {
    "system": ipb.ROLE_SYSTEM,
    "developer": ipb.ROLE_SYSTEM,
    "user": ipb.ROLE_USER,
    "assistant": ipb.ROLE_ASSISTANT,
    "tool": ipb.ROLE_TOOL,
}
_CALL_HEAD = re.compile(r'\{\s*"name"\s*:\s*"([A-Za-z0-9_-]+)"\s*,\s*"arguments"\s*:\s*')


def check_chat(body: ChatCompletionRequest) -> None:
    """Rules spanning several parameters; InvalidArgument naming the one to change."""
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidArgument(
            "top_logprobs needs logprobs: true", field="top_logprobs", reason="INVALID_VALUE"
        )
    names = [tool.function.name for tool in body.tools or ()]
    if len(set(names)) < len(names):
        raise InvalidArgument(
            "tools has two functions with the same name", field="tools", reason="INVALID_VALUE"
        )
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidArgument(
            f"tool_choice names {choice.function.name!r}, which is not one of the tools",
            field="tool_choice",
            reason="INVALID_VALUE",
        )
    if choice not in (None, "none") and not names:
        raise InvalidArgument(
            "tool_choice needs tools; the request has none",
            field="tool_choice",
            reason="INVALID_VALUE",
        )
    response_format = body.response_format
    if body.calls_tools and response_format is not None and response_format.type != "text":
        raise InvalidArgument(
            "response_format cannot be combined with tool calls; send tool_choice: none "
            "or leave response_format out",
            field="response_format",
            reason="UNSUPPORTED_VALUE",
        )


def history(messages: list[ChatMessageIn]) -> list[ipb.ChatMessage]:
    """The conversation, tool calls and tool results included, as the service's messages."""
    return [
        ipb.ChatMessage(
            role=_ROLES[message.role],
            content=message.text,
            tool_calls=[
                ipb.ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
                for call in message.tool_calls or ()
            ],
            tool_call_id=message.tool_call_id or "",
        )
        for message in messages
    ]


def add_tools(request: ipb.GenerateTextRequest, body: ChatCompletionRequest) -> None:
    """Tools and the tool-call constraint for a request that may call tools."""
    if not body.calls_tools:
        return
    for tool in body.tools or ():
        function = tool.function
        request.tools.append(
            ipb.Tool(
                name=function.name,
                description=function.description or "",
                parameters=json.dumps(function.parameters) if function.parameters else "",
            )
        )
    constraint = request.constraint.tool_call
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        constraint.names.append(choice.function.name)
    constraint.allow_text = choice in (None, "auto")


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_call(text: str) -> tuple[str, str] | None:
    """The (name, arguments) of a complete call, or None when ``text`` is not one."""
    head = _CALL_HEAD.match(text)
    rest = text.rstrip()
    if head is None or not rest.endswith("}"):
        return None
    arguments = rest[head.end() : -1].rstrip()
    try:
        json.loads(arguments)
    except json.JSONDecodeError:
        return None
    return head.group(1), arguments


def tool_message(name: str, arguments: str, call_id: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        ],
    }


class ToolCallDeltas:
    """One choice's streamed text as chat deltas: content, or a tool call whose
    name comes first and arguments in pieces (the closing brace of the call,
    and the whitespace before it, are held back until the end)."""

    def __init__(self) -> None:
        self._buffer = ""
        self._call: bool | None = None
        self._name: str | None = None
        self._sent = 0
        self.call_id = new_call_id()

    @property
    def called(self) -> bool:
        return self._name is not None

    def push(self, text: str) -> list[dict[str, Any]]:
        self._buffer += text
        if self._call is None:
            if not self._buffer:
                return []
            self._call = self._buffer.startswith("{")
        if not self._call:
            return self._content()
        out: list[dict[str, Any]] = []
        if self._name is None:
            head = _CALL_HEAD.match(self._buffer)
            # Wait for the arguments' first character: the whitespace before it
            # may still be arriving, and belongs to no part of the call.
            if head is None or head.end() == len(self._buffer):
                return []
            self._name = head.group(1)
            self._sent = head.end()
            out.append(self._call_delta({"name": self._name, "arguments": ""}, opening=True))
        end = len(self._buffer.rstrip()) - 1
        if end > self._sent:
            out.append(self._call_delta({"arguments": self._buffer[self._sent : end]}))
            self._sent = end
        return out

    def finish(self) -> list[dict[str, Any]]:
        if not self._call:
            return self._content()
        if self._name is None:
            # Cut short before the call's name: what there is goes out as text.
            self._call = False
            return self._content()
        rest = self._buffer.rstrip()
        end = len(rest) - 1 if rest.endswith("}") else len(rest)
        if end > self._sent:
            piece = self._buffer[self._sent : end]
            self._sent = end
            return [self._call_delta({"arguments": piece})]
        return []

    def _content(self) -> list[dict[str, Any]]:
        if len(self._buffer) <= self._sent:
            return []
        piece = self._buffer[self._sent :]
        self._sent = len(self._buffer)
        return [{"content": piece}]

    def _call_delta(self, function: dict[str, str], *, opening: bool = False) -> dict[str, Any]:
        call: dict[str, Any] = {"index": 0, "function": function}
        if opening:
            call.update(id=self.call_id, type="function")
        return {"tool_calls": [call]}
