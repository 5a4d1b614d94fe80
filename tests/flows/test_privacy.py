"""The conversations collection is reserved: no raw route (points, search,
recommendation, clustering, collection management, snapshots) and no RAG
source reaches it, for any caller short of AdministerSystem, while each
subject's own conversations and memory keep working. On the real stack."""

from __future__ import annotations

from typing import Any

import httpx

from tests.flows.conftest import fresh
from tests.flows.harness import RunningGateway

ASK = {"max_tokens": 12, "temperature": 0, "seed": 3}
SECRET = "VX-3390"
RESERVED = "conversations"


async def _remember_secret(
    client: httpx.AsyncClient, gateway: RunningGateway, sub: str
) -> dict[str, Any]:
    reply = await client.post(
        "/api/v1/generate",
        json={
            "messages": [{"role": "user", "content": f"My vault code is {SECRET}, keep it."}],
            "conversation_id": fresh("conv"),
            "memory": True,
            **ASK,
        },
        headers=gateway.auth("user", sub=sub),
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    assert body["memory"]["remembered"] == body["conversation"]["turn_id"]
    return body


def _raw_requests(turn_id: Any) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every raw route that names a collection, aimed at the reserved one."""
    point = f"/api/v1/vectors/{turn_id}?collection={RESERVED}"
    collection = f"/api/v1/collections/{RESERVED}"
    return [
        ("POST", "/api/v1/vectors/search", {"collection": RESERVED, "text": "vault code"}),
        (
            "POST",
            "/api/v1/vectors/search",
            {"collection": RESERVED, "text": "vault code", "personalize": True},
        ),
        (
            "POST",
            "/api/v1/vectors/search/batch",
            {"searches": [{"collection": RESERVED, "text": "vault code"}]},
        ),
        ("GET", point, None),
        ("POST", "/api/v1/vectors/recommend", {"collection": RESERVED, "positive": [turn_id]}),
        (
            "POST",
            "/api/v1/vectors/recommend",
            {"collection": RESERVED, "positive": [{"text": "vault"}]},
        ),
        ("POST", "/api/v1/vectors/cluster", {"collection": RESERVED, "num_clusters": 2}),
        (
            "POST",
            "/api/v1/vectors/cluster/subset",
            {"collection": RESERVED, "texts": ["vault code"], "num_clusters": 2},
        ),
        ("POST", "/api/v1/vectors/insert", {"collection": RESERVED, "points": [{"text": "x"}]}),
        ("PUT", point, {"payload": {"subject": "me"}}),
        ("DELETE", point, None),
        (
            "POST",
            "/api/v1/vectors/batch",
            {"collection": RESERVED, "operations": [{"delete": {"ids": [turn_id]}}]},
        ),
        ("GET", collection, None),
        ("PUT", collection, {"add_payload_fields": {"x": "keyword"}}),
        ("POST", f"{collection}/snapshot", None),
        ("GET", f"{collection}/snapshots", None),
        (
            "POST",
            f"{collection}/snapshots/any.snapshot/restore",
            {"target_collection": fresh("copy")},
        ),
        ("DELETE", collection, None),
        ("POST", "/api/v1/collections", {"name": RESERVED, "dimension": 4}),
    ]


async def test_no_raw_route_reaches_another_subjects_conversations(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    author = fresh("author")
    said = await _remember_secret(client, gateway, author)
    turn_id = said["conversation"]["turn_id"]

    # An operator holds every permission those routes need but AdministerSystem;
    # the author themselves is no exception. An editor lacks some of them anyway.
    for headers, reasons in (
        (gateway.auth("operator", sub=fresh("operator")), {"COLLECTION_RESERVED"}),
        (gateway.auth("operator", sub=author), {"COLLECTION_RESERVED"}),
        (
            gateway.auth("editor", sub=fresh("editor")),
            {"COLLECTION_RESERVED", "MISSING_PERMISSION"},
        ),
    ):
        for method, url, body in _raw_requests(turn_id):
            reply = await client.request(method, url, json=body, headers=headers)
            assert reply.status_code == 403, (method, url, reply.text)
            details = reply.json()["error"]["details"]
            assert details["reason"] in reasons, (method, url, details)
            assert SECRET not in reply.text

        listed = await client.get("/api/v1/collections", headers=headers)
        assert listed.status_code == 200, listed.text
        assert RESERVED not in [c["name"] for c in listed.json()["collections"]]

    # The turn is untouched, and its author still has it.
    turns = await client.get(
        f"/api/v1/conversations/{said['conversation']['id']}",
        headers=gateway.auth("user", sub=author),
    )
    assert turns.status_code == 200, turns.text
    assert SECRET in turns.json()["turns"][0]["prompt"]


async def test_the_reserved_collection_is_not_a_rag_source(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    await _remember_secret(client, gateway, fresh("author"))
    for sub in (fresh("reader"), fresh("author")):
        reply = await client.post(
            "/api/v1/generate",
            json={
                "messages": [{"role": "user", "content": "What is the vault code?"}],
                "context": {"collection": RESERVED},
                **ASK,
            },
            headers=gateway.auth("operator", sub=sub),
        )
        assert reply.status_code == 403, reply.text
        assert reply.json()["error"]["details"]["reason"] == "COLLECTION_RESERVED"
        assert SECRET not in reply.text


async def test_use_feedback_in_the_reserved_collection_sees_only_the_callers_own(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    author, other = fresh("author"), fresh("other")
    said = await _remember_secret(client, gateway, author)
    scored = await client.post(
        "/api/v1/feedback",
        json={"interaction_id": said["memory"]["remembered"], "score": 5},
        headers=gateway.auth("user", sub=author),
    )
    assert scored.status_code == 200, scored.text
    question = f"What is the vault code {SECRET[:2]}?"

    async def examples(sub: str) -> list[Any]:
        reply = await client.post(
            "/api/v1/generate",
            json={
                "messages": [{"role": "user", "content": question}],
                "use_feedback": True,
                "collection": RESERVED,
                **ASK,
            },
            headers=gateway.auth("user", sub=sub),
        )
        assert reply.status_code == 200, reply.text
        if sub != author:
            assert SECRET not in reply.text
        return [e["id"] for e in reply.json()["feedback"]["examples"]]

    assert await examples(author) == [said["memory"]["remembered"]]
    assert await examples(other) == []


async def test_administer_system_may_read_the_reserved_collection(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    said = await _remember_secret(client, gateway, fresh("author"))
    admin = gateway.auth("admin", sub=fresh("admin"))
    point = await client.get(
        f"/api/v1/vectors/{said['memory']['remembered']}",
        params={"collection": RESERVED},
        headers=admin,
    )
    assert point.status_code == 200, point.text
    assert SECRET in point.json()["payload"]["prompt"]
    listed = await client.get("/api/v1/collections", headers=admin)
    assert RESERVED in [c["name"] for c in listed.json()["collections"]]


async def test_only_the_author_or_an_operator_scores_an_interaction(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    author = fresh("author")
    said = await _remember_secret(client, gateway, author)
    interaction = said["memory"]["remembered"]
    admin = gateway.auth("admin", sub=fresh("admin"))

    async def score_of() -> Any:
        point = await client.get(
            f"/api/v1/vectors/{interaction}", params={"collection": RESERVED}, headers=admin
        )
        assert point.status_code == 200, point.text
        return point.json()["payload"].get("feedback_score")

    # Another subject, even knowing the id, is told no such interaction exists.
    stranger = await client.post(
        "/api/v1/feedback",
        json={"interaction_id": interaction, "score": 1},
        headers=gateway.auth("user", sub=fresh("other")),
    )
    assert stranger.status_code == 404, stranger.text
    assert stranger.json()["error"]["details"]["reason"] == "INTERACTION_NOT_FOUND"
    assert await score_of() is None

    own = await client.post(
        "/api/v1/feedback",
        json={"interaction_id": interaction, "score": 4},
        headers=gateway.auth("user", sub=author),
    )
    assert own.status_code == 200, own.text
    assert await score_of() == 4

    # ManageCollections may score anyone's (e.g. to curate shared examples).
    curated = await client.post(
        "/api/v1/feedback",
        json={"interaction_id": interaction, "score": 5},
        headers=gateway.auth("operator", sub=fresh("operator")),
    )
    assert curated.status_code == 200, curated.text
    assert await score_of() == 5
