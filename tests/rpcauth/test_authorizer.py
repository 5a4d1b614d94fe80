"""The authorization layer alone, on the inference service's streaming RPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from lodestar.auth.rpc import RpcAuthorizer
from lodestar.auth.settings import TokenSettings
from lodestar.auth.tokens import TokenVerifier, mint_token
from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.runtime.errors import PermissionDenied, Unauthenticated

STREAM = "/lodestar.inference.v1.InferenceService/StreamGenerateText"
SETTINGS = TokenSettings()


class _Context:
    def __init__(self, token: str | None) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


async def _tokens(request: Any, context: Any) -> AsyncIterator[str]:
    for word in ("a", "b"):
        yield word


async def _run(authorizer: RpcAuthorizer, token: str | None) -> list[str]:
    behaviour = authorizer.wrap(_tokens, STREAM, True, "server_stream")
    return [item async for item in behaviour(ipb.StreamGenerateTextRequest(), _Context(token))]


async def test_a_stream_is_checked_before_its_first_message() -> None:
    required = RpcAuthorizer(TokenVerifier(SETTINGS), required=True)
    with pytest.raises(Unauthenticated):
        await _run(required, None)
    viewer = mint_token(SETTINGS, "v", ["viewer"], 60)
    with pytest.raises(PermissionDenied) as denied:
        await _run(required, viewer)
    assert denied.value.metadata == {"permission": "GenerateText"}
    assert await _run(required, mint_token(SETTINGS, "u", ["user"], 60)) == ["a", "b"]


async def test_without_tokens_required_an_anonymous_call_passes() -> None:
    optional = RpcAuthorizer(TokenVerifier(SETTINGS), required=False)
    assert await _run(optional, None) == ["a", "b"]
    with pytest.raises(PermissionDenied):
        await _run(optional, mint_token(SETTINGS, "v", ["viewer"], 60))


async def test_open_services_are_not_wrapped() -> None:
    authorizer = RpcAuthorizer(TokenVerifier(SETTINGS), required=True)
    assert (
        authorizer.wrap(_tokens, "/grpc.health.v1.Health/Watch", True, "server_stream") is _tokens
    )
