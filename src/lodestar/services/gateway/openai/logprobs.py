"""Token log probabilities in OpenAI's two shapes: chat's ``logprobs.content``
list, and the legacy completions object of parallel lists."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lodestar.inference.v1 import inference_service_pb2 as ipb


def _bytes(value: bytes) -> list[int]:
    return list(value)


def chat_logprobs(entries: Sequence[ipb.TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": entry.token,
                "logprob": entry.logprob,
                "bytes": _bytes(entry.token_bytes),
                "top_logprobs": [
                    {"token": top.token, "logprob": top.logprob, "bytes": _bytes(top.token_bytes)}
                    for top in entry.top_logprobs
                ],
            }
            for entry in entries
        ],
        "refusal": None,
    }


class CompletionLogprobs:
    """The legacy shape, built up over a stream: ``text_offset`` counts the
    characters of the tokens before each one, across chunks."""

    def __init__(self) -> None:
        self._offset = 0

    def of(self, entries: Sequence[ipb.TokenLogprob]) -> dict[str, Any]:
        offsets: list[int] = []
        for entry in entries:
            offsets.append(self._offset)
            self._offset += len(entry.token)
        return {
            "tokens": [entry.token for entry in entries],
            "token_logprobs": [entry.logprob for entry in entries],
            "top_logprobs": [
                {top.token: top.logprob for top in entry.top_logprobs} for entry in entries
            ],
            "text_offset": offsets,
        }
