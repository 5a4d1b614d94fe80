"""The semantic cache on the real stack: hits, misses, paraphrases, opt-out,
tenants, invalidation by a cited point's deletion and by bad feedback, and
the OpenAI-compatible routes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.flows.conftest import Stack, create_collection, fresh, insert_texts, replica
from tests.flows.harness import RunningGateway, sse_events

ASK = {"max_tokens": 8, "temperature": 0}
HEADER = "X-Lodestar-Cache"


@pytest.fixture(scope="module")
async def cached(stack: Stack) -> AsyncIterator[RunningGateway]:
    """A gateway with the cache on, in a collection of its own."""
    async with replica(
        stack,
        semantic_cache=True,
        cache_min_similarity=0.85,
        cache_collection=fresh("cache"),
    ) as running:
        yield running


@pytest.fixture
async def http(cached: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with cached.client() as client:
        yield client


async def _ask(
    http: httpx.AsyncClient, headers: dict[str, str], prompt: str, **extra: Any
) -> httpx.Response:
    messages = [{"role": "user", "content": prompt}]
    reply = await http.post(
        "/api/v1/generate", json={"messages": messages, **ASK, **extra}, headers=headers
    )
    assert reply.status_code == 200, reply.text
    # An empty answer is never cached: every question here has one.
    assert extra.get("stream") or reply.json()["text"], reply.text
    return reply


def _hit(reply: httpx.Response) -> bool:
    return reply.headers.get(HEADER, "").startswith("hit")


async def test_a_repeated_question_is_answered_from_the_cache(
    http: httpx.AsyncClient, cached: RunningGateway
) -> None:
    user = cached.auth("user")
    question = f"Name a colour of the sky ({fresh('q')})."
    first = await _ask(http, user, question)
    assert first.headers[HEADER] == "miss"
    assert first.json()["usage"]["completion_tokens"] > 0
    assert first.json()["cache"]["hit"] is False

    second = await _ask(http, user, question)
    assert second.headers[HEADER] == "hit; similarity=1.000"
    body = second.json()
    assert body["text"] == first.json()["text"]
    assert body["usage"]["completion_tokens"] == 0
    assert body["cache"] == {"hit": True, "id": first.json()["cache"]["id"], "similarity": 1.0}

    # Other options, another answer: not served from this entry.
    longer = await _ask(http, user, question, max_tokens=9)
    assert longer.headers[HEADER] == "miss"


async def test_a_paraphrase_hits_and_another_question_misses(
    http: httpx.AsyncClient, cached: RunningGateway
) -> None:
    user = cached.auth("user", sub="para")
    first = await _ask(http, user, "What is the capital city of France?")
    assert first.headers[HEADER] == "miss"
    paraphrase = await _ask(http, user, "What's the capital of France?")
    assert _hit(paraphrase), paraphrase.headers
    similarity = float(paraphrase.headers[HEADER].split("similarity=")[1])
    assert 0.85 <= similarity < 1.0
    assert paraphrase.json()["text"] == first.json()["text"]
    other = await _ask(http, user, "How many legs does a spider have?")
    assert other.headers[HEADER] == "miss"


async def test_a_request_can_opt_out(http: httpx.AsyncClient, cached: RunningGateway) -> None:
    user = cached.auth("user")
    question = f"Say hello ({fresh('q')})."
    await _ask(http, user, question)
    skipped = await _ask(http, user, question, cache=False)
    assert skipped.headers[HEADER] == "bypass"
    assert skipped.json()["usage"]["completion_tokens"] > 0


async def test_a_conversation_is_cached_only_when_single_turn(
    http: httpx.AsyncClient, cached: RunningGateway
) -> None:
    user = cached.auth("user")
    messages = [
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a fruit."},
    ]
    reply = await http.post("/api/v1/generate", json={"messages": messages, **ASK}, headers=user)
    assert reply.headers[HEADER] == "bypass"
    single = [{"role": "system", "content": "Be brief."}, messages[-1]]
    for expected in ("miss", "hit; similarity=1.000"):
        reply = await http.post("/api/v1/generate", json={"messages": single, **ASK}, headers=user)
        assert reply.headers[HEADER] == expected


async def test_tenants_never_share_entries(http: httpx.AsyncClient, cached: RunningGateway) -> None:
    question = f"Name a planet ({fresh('q')})."
    acme = cached.auth("user", sub="a1", tenant="acme")
    assert (await _ask(http, acme, question)).headers[HEADER] == "miss"
    assert _hit(await _ask(http, cached.auth("user", sub="a2", tenant="acme"), question))
    globex = cached.auth("user", sub="g1", tenant="globex")
    assert (await _ask(http, globex, question)).headers[HEADER] == "miss"
    assert (await _ask(http, cached.auth("user", sub="n1"), question)).headers[HEADER] == "miss"


async def test_a_streamed_hit_sends_the_cached_text(
    http: httpx.AsyncClient, cached: RunningGateway
) -> None:
    user = cached.auth("user")
    question = f"Name an animal ({fresh('q')})."
    first = await _ask(http, user, question)
    reply = await _ask(http, user, question, stream=True)
    assert _hit(reply)
    events = sse_events(reply.text)
    tokens = "".join(data["delta"] for name, data in events if name == "token")
    assert tokens == first.json()["text"]
    done = next(data for name, data in events if name == "done")
    assert done["usage"]["completion_tokens"] == 0
    assert done["cache"]["hit"] is True


async def test_deleting_a_cited_point_drops_the_answer(
    http: httpx.AsyncClient, cached: RunningGateway
) -> None:
    admin = cached.auth("admin")
    collection = fresh("cited")
    await create_collection(http, admin, collection)
    ids = await insert_texts(
        http,
        admin,
        collection,
        [
            {"text": "The Lodestar gateway listens on port 8080.", "payload": {"source": "a"}},
            {"text": "Bananas are yellow when ripe.", "payload": {"source": "b"}},
        ],
    )
    ask = {"context": {"collection": collection, "limit": 1}}
    question = "Which port does the Lodestar gateway listen on?"
    first = await _ask(http, admin, question, **ask)
    cited = [source["id"] for source in first.json()["sources"]]
    assert cited == [ids[0]]
    second = await _ask(http, admin, question, **ask)
    assert _hit(second)
    assert [s["id"] for s in second.json()["sources"]] == cited

    # A token that may not use the collection is refused, not served from the cache.
    confined = cached.auth("admin", sub="confined", collections=["elsewhere-*"])
    refused = await http.post(
        "/api/v1/generate",
        json={"messages": [{"role": "user", "content": question}], **ASK, **ask},
        headers=confined,
    )
    assert refused.status_code == 403, refused.text

    # Changing an uncited point keeps the entry; deleting the cited one drops it.
    other = await http.delete(
        f"/api/v1/vectors/{ids[1]}", params={"collection": collection}, headers=admin
    )
    assert other.status_code == 200, other.text
    assert _hit(await _ask(http, admin, question, **ask))
    deleted = await http.delete(
        f"/api/v1/vectors/{ids[0]}", params={"collection": collection}, headers=admin
    )
    assert deleted.status_code == 200, deleted.text
    assert (await _ask(http, admin, question, **ask)).headers[HEADER] == "miss"


async def test_replacing_or_deleting_a_cited_document_drops_the_answer(
    http: httpx.AsyncClient, cached: RunningGateway
) -> None:
    admin = cached.auth("admin")
    collection = fresh("cited_docs")
    await create_collection(http, admin, collection)
    documents = f"/api/v1/collections/{collection}/documents"
    text = "The Lodestar gateway listens on port 8080."
    put = await http.post(documents, json={"text": text, "id": "ports"}, headers=admin)
    assert put.status_code == 201, put.text
    ask = {"context": {"collection": collection, "limit": 1}}
    question = "Which port does the Lodestar gateway listen on?"
    first = await _ask(http, admin, question, **ask)
    assert [s["document_id"] for s in first.json()["sources"]] == ["ports"]
    assert _hit(await _ask(http, admin, question, **ask))

    # A new version of the cited document makes the answer stale.
    text = "The Lodestar gateway listens on port 9090."
    put = await http.post(documents, json={"text": text, "id": "ports"}, headers=admin)
    assert put.status_code == 201, put.text
    assert (await _ask(http, admin, question, **ask)).headers[HEADER] == "miss"
    assert _hit(await _ask(http, admin, question, **ask))

    # So does its deletion.
    deleted = await http.delete(f"{documents}/ports", headers=admin)
    assert deleted.status_code == 200, deleted.text
    assert (await _ask(http, admin, question, **ask)).headers[HEADER] == "miss"


async def test_updating_cited_points_drops_the_answer(
    http: httpx.AsyncClient, cached: RunningGateway
) -> None:
    admin = cached.auth("admin")
    collection = fresh("updated")
    await create_collection(http, admin, collection)
    ids = await insert_texts(
        http, admin, collection, [{"text": "The office opens at nine.", "payload": {"source": "a"}}]
    )
    ask = {"context": {"collection": collection, "limit": 1}}
    question = "When does the office open?"
    await _ask(http, admin, question, **ask)
    assert _hit(await _ask(http, admin, question, **ask))
    updated = await http.put(
        f"/api/v1/vectors/{ids[0]}",
        params={"collection": collection},
        json={"payload": {"source": "b"}},
        headers=admin,
    )
    assert updated.status_code == 200, updated.text
    assert (await _ask(http, admin, question, **ask)).headers[HEADER] == "miss"
    assert _hit(await _ask(http, admin, question, **ask))
    # A batch selecting points by filter may touch any of them: every answer
    # citing the collection goes.
    batch = await http.post(
        "/api/v1/vectors/batch",
        json={
            "collection": collection,
            "operations": [
                {
                    "set_payload": {
                        "filter": {"must": [{"key": "source", "match": {"keyword": "b"}}]},
                        "payload": {"checked": True},
                    }
                }
            ],
        },
        headers=admin,
    )
    assert batch.status_code == 200, batch.text
    assert (await _ask(http, admin, question, **ask)).headers[HEADER] == "miss"


async def test_a_badly_scored_answer_is_never_served_again(
    http: httpx.AsyncClient, cached: RunningGateway
) -> None:
    user = cached.auth("user", sub="critic")
    question = f"Name a month ({fresh('q')})."
    store = {"store_embedding": True, "collection": fresh("talks")}
    first = await _ask(http, user, question, **store)
    assert first.headers[HEADER] == "miss"
    hit = await _ask(http, user, question, **store)
    assert _hit(hit)
    scored = await http.post(
        "/api/v1/feedback",
        json={
            "interaction_id": hit.json()["stored"]["id"],
            "score": 1,
            "collection": store["collection"],
        },
        headers=user,
    )
    assert scored.status_code == 200, scored.text
    again = await _ask(http, user, question, **store)
    assert again.headers[HEADER] == "miss"
    # The same (deterministic) answer is made again, and not cached again.
    assert again.json()["text"] == first.json()["text"]
    assert again.json()["cache"]["id"] is None
    assert (await _ask(http, user, question)).headers[HEADER] == "miss"


async def test_openai_routes_use_the_cache(http: httpx.AsyncClient, cached: RunningGateway) -> None:
    user = cached.auth("user")
    models = await http.get("/v1/models", headers=user)
    model = models.json()["data"][0]["id"]
    chat = {
        "model": model,
        "messages": [{"role": "user", "content": f"Name a tree ({fresh('q')})."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    first = await http.post("/v1/chat/completions", json=chat, headers=user)
    assert first.status_code == 200, first.text
    assert first.headers[HEADER] == "miss"
    second = await http.post("/v1/chat/completions", json=chat, headers=user)
    assert second.headers[HEADER] == "hit; similarity=1.000"
    text = first.json()["choices"][0]["message"]["content"]
    assert second.json()["choices"][0]["message"]["content"] == text
    assert second.json()["usage"]["completion_tokens"] == 0

    streamed = await http.post("/v1/chat/completions", json={**chat, "stream": True}, headers=user)
    assert streamed.headers[HEADER].startswith("hit")
    lines = streamed.text.strip().splitlines()
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert lines[-1] == "data: [DONE]"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == text

    opted_out = await http.post("/v1/chat/completions", json={**chat, "cache": False}, headers=user)
    assert opted_out.headers[HEADER] == "bypass"

    completion = {"model": model, "prompt": f"Once upon a time ({fresh('q')})", "max_tokens": 6}
    completion["temperature"] = 0
    assert (await http.post("/v1/completions", json=completion, headers=user)).headers[
        HEADER
    ] == "miss"
    assert (
        (await http.post("/v1/completions", json=completion, headers=user))
        .headers[HEADER]
        .startswith("hit")
    )


async def test_the_cache_is_off_by_default(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    reply = await client.post(
        "/api/v1/generate", json={"prompt": "Say hi.", **ASK}, headers=gateway.auth("user")
    )
    assert reply.status_code == 200
    assert HEADER not in reply.headers
    assert "cache" not in reply.json()
