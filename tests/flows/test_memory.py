"""Generate and remember (store_embedding), and learning from feedback."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest

from tests.flows.conftest import fresh
from tests.flows.harness import RunningGateway, sse_events

ASK = {"max_tokens": 12, "temperature": 0, "seed": 3}


async def test_a_stored_generation_is_found_by_search(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    collection = fresh("memory")
    missing = await client.get(f"/api/v1/collections/{collection}", headers=gateway.auth("admin"))
    assert missing.status_code == 404
    prompt = "Name three colours of the rainbow."
    reply = await client.post(
        "/api/v1/generate",
        json={
            "prompt": prompt,
            "store_embedding": True,
            "collection": collection,
            "session_id": "s-1",
            **ASK,
        },
        headers=gateway.auth("user", sub="bob"),
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    stored = body["stored"]
    assert stored["collection"] == collection

    # Created on first use, with the embedding model's dimension.
    made = await client.get(f"/api/v1/collections/{collection}", headers=gateway.auth("admin"))
    assert made.status_code == 200, made.text
    assert made.json()["config"]["dimension"] == 384

    found = await client.post(
        "/api/v1/vectors/search",
        json={"collection": collection, "text": prompt, "limit": 1},
        headers=gateway.auth("user"),
    )
    assert found.status_code == 200, found.text
    hit = found.json()["points"][0]
    assert hit["id"] == stored["id"]
    payload = hit["payload"]
    assert payload["kind"] == "interaction"
    assert payload["prompt"] == prompt
    assert payload["answer"] == body["text"]
    assert payload["subject"] == "bob"
    assert payload["session_id"] == "s-1"
    assert payload["model"] == body["model"]
    assert payload["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert payload["completion_tokens"] == body["usage"]["completion_tokens"]
    assert datetime.fromisoformat(payload["created_at"]).tzinfo is not None


async def test_a_streamed_generation_is_stored_when_it_ends(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    collection = fresh("memory")
    reply = await client.post(
        "/api/v1/generate",
        json={
            "messages": [{"role": "user", "content": "Say hello to the moon."}],
            "store_embedding": True,
            "collection": collection,
            "stream": True,
            **ASK,
        },
        headers=gateway.auth("user"),
    )
    assert reply.status_code == 200, reply.text
    events = sse_events(reply.text)
    assert events[-1][0] == "done"
    stored = events[-1][1]["stored"]
    text = "".join(data["delta"] for name, data in events if name == "token")
    point = await client.get(
        f"/api/v1/vectors/{stored['id']}",
        params={"collection": collection},
        headers=gateway.auth("user"),
    )
    assert point.status_code == 200, point.text
    assert point.json()["payload"]["answer"] == text
    assert point.json()["payload"]["prompt"] == "Say hello to the moon."


async def test_storing_needs_insert_permission(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    reply = await client.post(
        "/api/v1/generate",
        json={"prompt": "hi", "store_embedding": True, **ASK},
        headers=gateway.auth(permissions=["GenerateText"]),
    )
    assert reply.status_code == 403, reply.text
    assert "InsertVectors" in reply.json()["error"]["message"]


async def _generate(
    http: httpx.AsyncClient,
    gateway: RunningGateway,
    prompt: str,
    collection: str,
    **options: object,
) -> dict[str, object]:
    reply = await http.post(
        "/api/v1/generate",
        json={
            "messages": [{"role": "user", "content": prompt}],
            "collection": collection,
            **ASK,
            **options,
        },
        headers=gateway.auth("user"),
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, object] = reply.json()
    return body


async def _score(
    http: httpx.AsyncClient,
    gateway: RunningGateway,
    collection: str,
    interaction: object,
    score: float,
) -> httpx.Response:
    return await http.post(
        "/api/v1/feedback",
        json={"interaction_id": interaction, "score": score, "collection": collection},
        headers=gateway.auth("user"),
    )


def _examples(body: dict[str, object]) -> list[object]:
    feedback = body["feedback"]
    assert isinstance(feedback, dict)
    return [example["id"] for example in feedback["examples"]]


async def test_feedback_changes_what_a_later_generation_uses(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    collection = fresh("feedback")
    first = await _generate(
        client, gateway, "How do I reverse a list in Python?", collection, store_embedding=True
    )
    interaction = first["stored"]["id"]  # type: ignore[index]
    later = "What is the way to reverse a Python list?"

    unscored = await _generate(client, gateway, later, collection, use_feedback=True)
    assert _examples(unscored) == []

    scored = await _score(client, gateway, collection, interaction, 5)
    assert scored.status_code == 200, scored.text
    assert scored.json()["score"] == 5
    steered = await _generate(client, gateway, later, collection, use_feedback=True)
    assert _examples(steered) == [interaction]
    used = steered["feedback"]["examples"][0]  # type: ignore[index]
    assert used["score"] == 5
    assert used["similarity"] >= 0.3
    # The example is shown to the model: the prompt grew by its question and answer.
    steered_usage = steered["usage"]["prompt_tokens"]  # type: ignore[index]
    assert steered_usage > unscored["usage"]["prompt_tokens"]  # type: ignore[index]

    # A bad score takes it out again.
    rescored = await _score(client, gateway, collection, interaction, 1)
    assert rescored.status_code == 200, rescored.text
    again = await _generate(client, gateway, later, collection, use_feedback=True)
    assert _examples(again) == []


async def test_feedback_on_an_unknown_interaction_is_404(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    collection = fresh("feedback")
    stored = await _generate(client, gateway, "Count to three.", collection, store_embedding=True)
    assert stored["stored"]
    unknown = await _score(client, gateway, collection, "5d0d4a8e-0b3c-4a55-9d7e-2a4b6c8d0e1f", 4)
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["details"]["reason"] == "INTERACTION_NOT_FOUND"
    nowhere = await _score(client, gateway, fresh("never"), 12, 4)
    assert nowhere.status_code == 404, nowhere.text


async def test_feedback_from_another_tenant_cannot_see_the_interaction(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    collection = fresh("feedback")
    reply = await client.post(
        "/api/v1/generate",
        json={"prompt": "Name a fruit.", "store_embedding": True, "collection": collection, **ASK},
        headers=gateway.auth("user", tenant="acme"),
    )
    assert reply.status_code == 200, reply.text
    interaction = reply.json()["stored"]["id"]
    other = await client.post(
        "/api/v1/feedback",
        json={"interaction_id": interaction, "score": 5, "collection": collection},
        headers=gateway.auth("user", tenant="globex"),
    )
    assert other.status_code == 404, other.text


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"interaction_id": 1, "score": 0}, 400, "score"),
        ({"interaction_id": 1, "score": 5.5}, 400, "score"),
        ({"interaction_id": "not-an-id", "score": 3}, 400, "interaction_id"),
        ({"interaction_id": 1}, 422, "score"),
        ({"interaction_id": 1, "score": 3, "mood": "happy"}, 422, "mood"),
    ],
)
async def test_bad_feedback_is_refused_naming_the_field(
    client: httpx.AsyncClient,
    gateway: RunningGateway,
    body: dict[str, object],
    status: int,
    field: str,
) -> None:
    reply = await client.post("/api/v1/feedback", json=body, headers=gateway.auth("user"))
    assert reply.status_code == status, reply.text
    violations = reply.json()["error"]["details"]["field_violations"]
    assert [v["field"] for v in violations] == [field]


async def test_feedback_needs_generate_permission(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    reply = await client.post(
        "/api/v1/feedback", json={"interaction_id": 1, "score": 3}, headers=gateway.auth("viewer")
    )
    assert reply.status_code == 403, reply.text


async def test_retrieval_feedback_and_memory_together(
    client: httpx.AsyncClient, gateway: RunningGateway, docs: str
) -> None:
    collection = fresh("together")
    question = "Which module implements a priority queue with heaps?"
    first = await _generate(client, gateway, question, collection, store_embedding=True)
    scored = await _score(client, gateway, collection, first["stored"]["id"], 5)  # type: ignore[index]
    assert scored.status_code == 200, scored.text
    reply = await client.post(
        "/api/v1/generate",
        json={
            "messages": [{"role": "user", "content": question}],
            "context": {"collection": docs, "limit": 2},
            "use_feedback": True,
            "store_embedding": True,
            "collection": collection,
            "stream": True,
            **ASK,
        },
        headers=gateway.auth("user"),
    )
    assert reply.status_code == 200, reply.text
    events = sse_events(reply.text)
    assert events[0][0] == "sources"
    sources = events[0][1]["sources"]
    assert "heapq" in [s["payload"]["source"] for s in sources]
    done = events[-1][1]
    assert [e["id"] for e in done["feedback"]["examples"]] == [first["stored"]["id"]]  # type: ignore[index]
    assert done["context"]["used"] == 2
    stored = await client.get(
        f"/api/v1/vectors/{done['stored']['id']}",
        params={"collection": collection},
        headers=gateway.auth("user"),
    )
    assert stored.status_code == 200, stored.text
    assert stored.json()["payload"]["source_ids"] == [s["id"] for s in sources]
    assert stored.json()["payload"]["prompt"] == question
