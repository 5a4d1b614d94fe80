"""Generation: JSON and Server-Sent Events, cancellation on disconnect, batch,
and the pipeline's extension points."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

import httpx
import jsonschema  # type: ignore[import-untyped]
import pydantic
import pytest

from lodestar.auth.permissions import Permission
from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.services.gateway.pipeline import Generation
from lodestar.services.gateway.schemas.inference import GenerateRequest
from tests.gateway.fakes import FakeBackends
from tests.gateway.harness import RunningGateway, gateway_settings, run_gateway, sse_events

GENERATE = "/api/v1/generate"


async def test_unary_generation(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "max_tokens": 16,
        "temperature": 0,
        "top_p": 0.9,
        "top_k": 40,
        "repeat_penalty": 1.1,
        "stop": ["\n\n"],
        "seed": 7,
        "response_format": {"type": "json_schema", "json_schema": {"type": "object"}},
    }
    response = await client.post(GENERATE, json=body, headers=gateway.auth("user"))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["text"] == "Hello from the fake model"
    assert answer["finish_reason"] == "stop"
    assert answer["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "total_tokens": 8,
        "cached_prompt_tokens": 0,
    }
    assert answer["model"] == "fake-llm"
    request = fakes.inference.recorder.last("GenerateText")
    assert [m.role for m in request.messages] == [ipb.ROLE_SYSTEM, ipb.ROLE_USER]
    sampling = request.sampling
    assert (sampling.max_tokens, sampling.top_k, sampling.seed) == (16, 40, 7)
    assert sampling.HasField("temperature")
    assert sampling.temperature == 0
    assert list(sampling.stop) == ["\n\n"]
    assert json.loads(request.constraint.json_schema) == {"type": "object"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"prompt": "a", "messages": [{"role": "user", "content": "b"}]},
        {"prompt": "a", "temperature": 3},
        {"prompt": "a", "response_format": {"type": "json_schema"}},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"prompt": "a", "collection": "c"},
    ],
)
async def test_invalid_generation_requests(
    gateway: RunningGateway, client: httpx.AsyncClient, body: dict[str, object]
) -> None:
    response = await client.post(GENERATE, json=body, headers=gateway.auth("user"))
    assert response.status_code == 422, response.text


async def test_streaming_generation(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    response = await client.post(
        GENERATE, json={"prompt": "Count", "stream": True}, headers=gateway.auth("user")
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    tokens = [json.loads(data)["delta"] for name, data in events if name == "token"]
    assert tokens == [f"tok{i} " for i in range(5)]
    name, data = events[-1]
    assert name == "done"
    done = json.loads(data)
    assert done["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] == 5
    assert fakes.inference.recorder.last("StreamGenerateText").prompt == "Count"


async def test_stream_failure_before_first_token_is_an_http_error(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    from lodestar.runtime.errors import InvalidArgument

    fakes.inference.recorder.fail_next.append(
        InvalidArgument(
            "prompt is longer than the context", field="prompt", reason="PROMPT_TOO_LONG"
        )
    )
    response = await client.post(
        GENERATE, json={"prompt": "x", "stream": True}, headers=gateway.auth("user")
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"]["reason"] == "PROMPT_TOO_LONG"


async def test_client_disconnect_cancels_the_generation(
    gateway: RunningGateway, fakes: FakeBackends
) -> None:
    inference = fakes.inference
    inference.stream_tokens = 10_000
    inference.stream_delay_s = 0.02
    inference.stream_started.clear()
    inference.stream_cancelled.clear()
    async with (
        gateway.client() as http,
        http.stream(
            "POST", GENERATE, json={"prompt": "long", "stream": True}, headers=gateway.auth("user")
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        assert (await anext(lines)).startswith("event: token")
    # The connection is closed; the gRPC stream must be cancelled promptly.
    await asyncio.wait_for(inference.stream_cancelled.wait(), timeout=5)


async def test_options_without_a_stage_are_refused(
    gateway: RunningGateway, client: httpx.AsyncClient
) -> None:
    for body, option in (
        ({"prompt": "q", "context": {"collection": "docs"}}, "context"),
        ({"prompt": "q", "store_embedding": True}, "store_embedding"),
        ({"prompt": "q", "use_feedback": True}, "use_feedback"),
        ({"prompt": "q", "memory": True}, "memory"),
        (
            {"messages": [{"role": "user", "content": "q"}], "conversation_id": "c1"},
            "conversation_id",
        ),
    ):
        response = await client.post(GENERATE, json=body, headers=gateway.auth("admin"))
        assert response.status_code == 501, response.text
        error = response.json()["error"]
        assert error["code"] == "UNIMPLEMENTED"
        assert error["details"]["field_violations"][0]["field"] == option


class _EchoContextStage:
    """Pretends to retrieve: adds a source and a system message, and tags the answer."""

    option = "context"

    def permissions(self, body: GenerateRequest) -> Iterable[Permission]:
        return (Permission.SEARCH_VECTORS,)

    async def before(self, generation: Generation) -> None:
        generation.sources = [{"id": 1, "score": 0.9}]
        generation.request.messages.add(role=ipb.ROLE_SYSTEM, content="Context: lodestar")

    async def after(self, generation: Generation) -> None:
        generation.extra["answer_chars"] = len(generation.text)


async def test_stages_extend_generation(fakes: FakeBackends) -> None:
    settings = gateway_settings(
        fakes.address("embedding"), fakes.address("vector"), fakes.address("inference")
    )
    body = {"messages": [{"role": "user", "content": "What?"}], "context": {"collection": "docs"}}
    async with (
        run_gateway(settings) as gw,
        gw.client() as http,
    ):
        gw.app.state.gateway.pipeline.add(_EchoContextStage())
        unary = await http.post(GENERATE, json=body, headers=gw.auth("user"))
        assert unary.status_code == 200, unary.text
        assert unary.json()["sources"] == [{"id": 1, "score": 0.9}]
        assert unary.json()["answer_chars"] == len("Hello from the fake model")
        sent = fakes.inference.recorder.last("GenerateText")
        assert sent.messages[-1].content == "Context: lodestar"
        streamed = await http.post(GENERATE, json={**body, "stream": True}, headers=gw.auth("user"))
        events = sse_events(streamed.text)
        assert events[0] == (
            "sources",
            json.dumps({"sources": [{"id": 1, "score": 0.9}]}, separators=(",", ":")),
        )
        assert json.loads(events[-1][1])["answer_chars"] == len(
            "".join(f"tok{i} " for i in range(5))
        )
        # The stage's extra permission is enforced (a custom role without SearchVectors).
        denied = await http.post(
            GENERATE, json=body, headers=gw.auth(sub="svc", permissions=["GenerateText"])
        )
        assert denied.status_code == 403
        assert denied.json()["error"]["details"]["metadata"]["permission"] == "SearchVectors"


async def test_batch_generation_keeps_order_and_item_errors(
    gateway: RunningGateway, client: httpx.AsyncClient
) -> None:
    body = {"requests": [{"prompt": "a"}, {"prompt": "bad"}, {"prompt": "c", "max_tokens": 3}]}
    response = await client.post("/api/v1/generate/batch", json=body, headers=gateway.auth("user"))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["response"]["text"] == "Hello from the fake model"
    assert results[1]["error"] == {
        "code": "INVALID_ARGUMENT",
        "message": "prompt may not be 'bad'",
        "reason": "BAD_PROMPT",
        "status": 400,
    }
    assert "response" in results[2]
    batch_items = await client.post(
        "/api/v1/generate/batch",
        json={"requests": [{"prompt": "a", "stream": True}]},
        headers=gateway.auth("user"),
    )
    assert batch_items.status_code == 422


_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "hi"},
        {"prompt": "hi", "messages": _MESSAGES},
        {"prompt": "hi", "conversation_id": "c1"},
        {"messages": _MESSAGES, "conversation_id": "c1"},
        {"prompt": "hi", "collection": "kb"},
        {"prompt": "hi", "collection": "kb", "store_embedding": True},
    ],
)
def test_the_generate_schema_states_which_fields_go_together(body: dict[str, object]) -> None:
    """The OpenAPI schema and the model agree on whether a request is valid."""
    try:
        GenerateRequest.model_validate(body)
        accepted = True
    except pydantic.ValidationError:
        accepted = False
    schema = jsonschema.Draft202012Validator(GenerateRequest.model_json_schema())
    assert schema.is_valid(body) == accepted
