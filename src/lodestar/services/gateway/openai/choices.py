"""OpenAI choice objects: chat messages and deltas (text or a tool call, with
log probabilities when asked for) and text completion pieces."""

from __future__ import annotations

from typing import Any

from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.services.gateway.openai.logprobs import CompletionLogprobs, chat_logprobs
from lodestar.services.gateway.openai.tools import (
    ToolCallDeltas,
    new_call_id,
    parse_call,
    tool_message,
)


def finish_reason(value: int, *, called: bool = False) -> str:
    if value == ipb.FINISH_REASON_LENGTH:
        return "length"
    return "tool_calls" if called else "stop"


def chat_choice(
    index: int, response: ipb.GenerateTextResponse, *, tools: bool, logprobs: bool
) -> dict[str, Any]:
    """One choice of a chat completion; a call written by the model becomes ``tool_calls``."""
    call = parse_call(response.text) if tools else None
    if call is not None:
        message = tool_message(call[0], call[1], new_call_id())
    else:
        message = {"role": "assistant", "content": response.text, "refusal": None}
    return {
        "index": index,
        "message": message,
        "logprobs": chat_logprobs(response.logprobs) if logprobs else None,
        "finish_reason": finish_reason(response.finish_reason, called=call is not None),
    }


class ChatChoice:
    """One choice of a streamed chat completion (a ``ChoiceRenderer``)."""

    def __init__(self, index: int, *, tools: bool, logprobs: bool) -> None:
        self._index = index
        self._tools = ToolCallDeltas() if tools else None
        self._logprobs = logprobs

    def _choice(
        self,
        delta: dict[str, Any],
        logprobs: dict[str, Any] | None = None,
        finish: str | None = None,
    ) -> dict[str, Any]:
        return {"index": self._index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    def opening(self) -> dict[str, Any]:
        # With tools the answer may be a call, which has no content.
        delta: dict[str, Any] = {"role": "assistant"}
        if self._tools is None:
            delta["content"] = ""
        return self._choice(delta)

    def delta(self, message: ipb.StreamGenerateTextResponse) -> list[dict[str, Any]]:
        if self._tools is not None:
            parts = self._tools.push(message.delta)
        else:
            parts = [{"content": message.delta}] if message.delta else []
        logprobs = None
        if self._logprobs and message.logprobs:
            logprobs = chat_logprobs(message.logprobs)
            if not parts:
                parts = [{}]
        return [self._choice(part, logprobs if i == 0 else None) for i, part in enumerate(parts)]

    def finish(self, finish_value: int) -> list[dict[str, Any]]:
        parts = self._tools.finish() if self._tools is not None else []
        called = self._tools is not None and self._tools.called
        out = [self._choice(part) for part in parts]
        out.append(self._choice({}, finish=finish_reason(finish_value, called=called)))
        return out


def text_choice(
    index: int, response: ipb.GenerateTextResponse, *, logprobs: bool
) -> dict[str, Any]:
    return {
        "text": response.text,
        "index": index,
        "logprobs": CompletionLogprobs().of(response.logprobs) if logprobs else None,
        "finish_reason": finish_reason(response.finish_reason),
    }


class TextChoice:
    """One choice of a streamed text completion (a ``ChoiceRenderer``)."""

    def __init__(self, index: int, *, logprobs: bool) -> None:
        self._index = index
        self._logprobs = CompletionLogprobs() if logprobs else None

    def opening(self) -> None:
        return None

    def delta(self, message: ipb.StreamGenerateTextResponse) -> list[dict[str, Any]]:
        logprobs = None
        if self._logprobs is not None and message.logprobs:
            logprobs = self._logprobs.of(message.logprobs)
        if not message.delta and logprobs is None:
            return []
        return [
            {
                "text": message.delta,
                "index": self._index,
                "logprobs": logprobs,
                "finish_reason": None,
            }
        ]

    def finish(self, finish_value: int) -> list[dict[str, Any]]:
        return [
            {
                "text": "",
                "index": self._index,
                "logprobs": None,
                "finish_reason": finish_reason(finish_value),
            }
        ]
