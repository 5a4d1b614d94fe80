"""Retrieval-augmented generation through the gateway and the real services."""

from __future__ import annotations

import httpx
import pytest

from tests.flows import corpus
from tests.flows.conftest import SMALL_CONTEXT_SIZE, create_collection, fresh, insert_texts
from tests.flows.harness import RunningGateway, sse_events

ASK = {"max_tokens": 12, "temperature": 0, "seed": 7}


def sources_of(body: dict[str, object]) -> list[str]:
    sources = body["sources"]
    assert isinstance(sources, list)
    return [s["payload"]["source"] for s in sources]


@pytest.mark.parametrize(("question", "module"), list(corpus.QUESTIONS.items()))
async def test_the_right_source_is_among_the_sources(
    client: httpx.AsyncClient, gateway: RunningGateway, docs: str, question: str, module: str
) -> None:
    reply = await client.post(
        "/api/v1/generate",
        json={"prompt": question, "context": {"collection": docs, "limit": 3}, **ASK},
        headers=gateway.auth("user"),
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert module in sources_of(body)
    assert body["text"]
    context = body["context"]
    assert context["found"] is True
    assert context["used"] == len(body["sources"]) == 3
    assert context["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert context["prompt_tokens"] + context["max_tokens"] <= context["context_size"]
    assert set(context["timing_ms"]) == {"embed", "search", "prompt"}
    first = body["sources"][0]
    assert first["citation"] == 1
    assert first["excerpt"]
    assert "text" not in first["payload"]
    assert first["score"] >= body["sources"][-1]["score"]


async def test_streaming_sends_sources_first_then_tokens(
    client: httpx.AsyncClient, gateway: RunningGateway, docs: str
) -> None:
    question, module = next(iter(corpus.QUESTIONS.items()))
    reply = await client.post(
        "/api/v1/generate",
        json={
            "prompt": question,
            "context": {"collection": docs, "limit": 2},
            "stream": True,
            **ASK,
        },
        headers=gateway.auth("user"),
    )
    assert reply.status_code == 200, reply.text
    events = sse_events(reply.text)
    names = [name for name, _ in events]
    assert names[0] == "sources"
    assert names[-1] == "done"
    assert set(names[1:-1]) == {"token"}
    assert module in sources_of(events[0][1])
    done = events[-1][1]
    assert done["context"]["used"] == 2
    assert done["context"]["prompt_tokens"] == done["usage"]["prompt_tokens"]


async def test_no_passage_above_the_threshold_says_so(
    client: httpx.AsyncClient, gateway: RunningGateway, docs: str
) -> None:
    reply = await client.post(
        "/api/v1/generate",
        json={
            "prompt": "Who won the football world cup in 1954?",
            "context": {"collection": docs, "score_threshold": 0.6},
            **ASK,
        },
        headers=gateway.auth("user"),
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["sources"] == []
    assert body["context"]["found"] is False
    assert body["context"]["retrieved"] == 0
    assert "not grounded" in body["context"]["message"]


async def test_the_filter_narrows_the_sources(
    client: httpx.AsyncClient, gateway: RunningGateway, docs: str
) -> None:
    reply = await client.post(
        "/api/v1/generate",
        json={
            "prompt": "How do I read and write comma separated value files?",
            "context": {
                "collection": docs,
                "filter": {"must": [{"key": "source", "match": {"keyword": "json"}}]},
            },
            **ASK,
        },
        headers=gateway.auth("user"),
    )
    assert reply.status_code == 200, reply.text
    assert sources_of(reply.json()) == ["json"]


async def test_retrieval_is_confined_to_the_tenant(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    name = fresh("tenanted")
    await create_collection(client, gateway.auth("admin"), name)
    await insert_texts(
        client,
        gateway.auth("user", tenant="acme"),
        name,
        [{"text": corpus.passage("heapq"), "payload": {"source": "heapq"}}],
    )
    ask = {
        "prompt": "Which module implements a priority queue with heaps?",
        "context": {"collection": name},
        **ASK,
    }
    own = await client.post(
        "/api/v1/generate", json=ask, headers=gateway.auth("user", tenant="acme")
    )
    other = await client.post(
        "/api/v1/generate", json=ask, headers=gateway.auth("user", tenant="globex")
    )
    assert own.status_code == other.status_code == 200, (own.text, other.text)
    assert sources_of(own.json()) == ["heapq"]
    assert other.json()["sources"] == []
    assert other.json()["context"]["found"] is False


async def test_passages_are_fitted_into_a_small_context(
    small_gateway: RunningGateway, docs: str
) -> None:
    async with small_gateway.client() as http:
        reply = await http.post(
            "/api/v1/generate",
            json={
                "prompt": "Which module implements a priority queue with heaps?",
                "context": {"collection": docs, "limit": 8},
                "max_tokens": 48,
                "temperature": 0,
            },
            headers=small_gateway.auth("user"),
        )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    context = body["context"]
    assert context["context_size"] == SMALL_CONTEXT_SIZE
    assert context["retrieved"] == 8
    assert 1 <= context["used"] < 8
    # Counted by the model's own tokenizer: exactly what the model was given.
    assert context["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert body["usage"]["prompt_tokens"] + 48 <= SMALL_CONTEXT_SIZE
    assert sources_of(body)[0] == "heapq"


async def test_a_prompt_that_leaves_no_room_is_refused(
    small_gateway: RunningGateway, docs: str
) -> None:
    async with small_gateway.client() as http:
        reply = await http.post(
            "/api/v1/generate",
            json={
                "prompt": "Which module implements a priority queue with heaps?",
                "context": {"collection": docs},
                "max_tokens": SMALL_CONTEXT_SIZE - 8,
            },
            headers=small_gateway.auth("user"),
        )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["details"]["reason"] == "CONTEXT_OVERFLOW"
    assert error["details"]["field_violations"][0]["field"] == "max_tokens"


async def test_retrieval_needs_search_permission(
    client: httpx.AsyncClient, gateway: RunningGateway, docs: str
) -> None:
    reply = await client.post(
        "/api/v1/generate",
        json={"prompt": "hello", "context": {"collection": docs}, **ASK},
        headers=gateway.auth(permissions=["GenerateText"]),
    )
    assert reply.status_code == 403, reply.text
    assert "SearchVectors" in reply.json()["error"]["message"]


async def test_a_missing_collection_is_404(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    reply = await client.post(
        "/api/v1/generate",
        json={"prompt": "hello", "context": {"collection": fresh("missing")}, **ASK},
        headers=gateway.auth("user"),
    )
    assert reply.status_code == 404, reply.text
    assert reply.json()["error"]["details"]["reason"] == "COLLECTION_NOT_FOUND"


async def test_a_collection_outside_the_allow_list_is_403(
    client: httpx.AsyncClient, gateway: RunningGateway, docs: str
) -> None:
    reply = await client.post(
        "/api/v1/generate",
        json={"prompt": "hello", "context": {"collection": docs}, **ASK},
        headers=gateway.auth("user", collections=["notes-*"]),
    )
    assert reply.status_code == 403, reply.text
    assert reply.json()["error"]["details"]["reason"] == "COLLECTION_NOT_ALLOWED"
