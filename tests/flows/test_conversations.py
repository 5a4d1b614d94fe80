"""Conversations with server-side history, personal memory, personalised search,
and their privacy across subjects and tenants, on the real stack."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.flows.conftest import SMALL_CONTEXT_SIZE, create_collection, fresh, insert_texts
from tests.flows.harness import RunningGateway, sse_events

ASK = {"max_tokens": 12, "temperature": 0, "seed": 3}


async def _chat(
    http: httpx.AsyncClient,
    gateway: RunningGateway,
    sub: str,
    content: str,
    *,
    status: int = 200,
    claims: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    reply = await http.post(
        "/api/v1/generate",
        json={"messages": [{"role": "user", "content": content}], **ASK, **options},
        headers=gateway.auth("user", sub=sub, **(claims or {})),
    )
    assert reply.status_code == status, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def _get(
    http: httpx.AsyncClient,
    gateway: RunningGateway,
    sub: str,
    url: str,
    *,
    status: int = 200,
    claims: dict[str, Any] | None = None,
    **params: Any,
) -> dict[str, Any]:
    reply = await http.get(
        url, params=params, headers=gateway.auth("user", sub=sub, **(claims or {}))
    )
    assert reply.status_code == status, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def _delete(
    http: httpx.AsyncClient,
    gateway: RunningGateway,
    sub: str,
    url: str,
    *,
    claims: dict[str, Any] | None = None,
) -> httpx.Response:
    return await http.delete(url, headers=gateway.auth("user", sub=sub, **(claims or {})))


def _memory_ids(body: dict[str, Any]) -> list[Any]:
    return [item["id"] for item in body["items"]]


# --- conversations --------------------------------------------------------------------


async def test_a_conversation_remembers_turn_one_at_turn_three(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    sub, conversation = fresh("chatter"), fresh("conv")
    first_prompt = "My name is Zorblax and I keep a pet otter called Pebble."
    first = await _chat(client, gateway, sub, first_prompt, conversation_id=conversation)
    assert first["conversation"]["turn"] == 1
    assert first["conversation"]["history"] == []
    second = await _chat(
        client, gateway, sub, "What is the capital of France?", conversation_id=conversation
    )
    third_prompt = "What is the name of my pet?"
    third = await _chat(client, gateway, sub, third_prompt, conversation_id=conversation)
    turn_ids = [first["conversation"]["turn_id"], second["conversation"]["turn_id"]]
    assert third["conversation"]["turn"] == 3
    assert third["conversation"]["history"] == turn_ids
    assert third["conversation"]["dropped"] == 0

    # The model saw the earlier turns: the same question alone is far shorter.
    alone = await _chat(client, gateway, sub, third_prompt, conversation_id=fresh("conv"))
    grown = third["usage"]["prompt_tokens"] - alone["usage"]["prompt_tokens"]
    first_tokens = first["usage"]["prompt_tokens"] - 5  # without the chat template's frame
    assert grown >= first_tokens + second["usage"]["completion_tokens"]

    turns = await _get(client, gateway, sub, f"/api/v1/conversations/{conversation}")
    assert [t["turn"] for t in turns["turns"]] == [1, 2, 3]
    assert turns["turns"][0]["prompt"] == first_prompt
    assert turns["turns"][0]["answer"] == first["text"]
    assert turns["turns"][2]["id"] == third["conversation"]["turn_id"]


async def test_a_streamed_turn_is_kept(client: httpx.AsyncClient, gateway: RunningGateway) -> None:
    sub, conversation = fresh("streamer"), fresh("conv")
    await _chat(client, gateway, sub, "I live in Lisbon.", conversation_id=conversation)
    reply = await client.post(
        "/api/v1/generate",
        json={
            "messages": [{"role": "user", "content": "Where do I live?"}],
            "conversation_id": conversation,
            "stream": True,
            **ASK,
        },
        headers=gateway.auth("user", sub=sub),
    )
    assert reply.status_code == 200, reply.text
    done = sse_events(reply.text)[-1]
    assert done[0] == "done"
    assert done[1]["conversation"]["turn"] == 2
    assert len(done[1]["conversation"]["history"]) == 1
    text = "".join(data["delta"] for name, data in sse_events(reply.text) if name == "token")
    turns = await _get(client, gateway, sub, f"/api/v1/conversations/{conversation}")
    assert turns["turns"][1]["answer"] == text


async def test_a_long_conversation_never_overflows_the_context(
    small_gateway: RunningGateway,
) -> None:
    sub, conversation = fresh("talker"), fresh("conv")
    max_tokens = 48
    filler = "The quick brown fox jumps over the lazy dog near the riverbank. " * 4
    async with small_gateway.client() as http:
        bodies = []
        for number in range(1, 11):
            body = await _chat(
                http,
                small_gateway,
                sub,
                f"Note {number}: {filler}",
                conversation_id=conversation,
                max_tokens=max_tokens,
            )
            assert body["usage"]["prompt_tokens"] + max_tokens <= SMALL_CONTEXT_SIZE
            assert body["conversation"]["turn"] == number
            bodies.append(body)
        last = bodies[-1]["conversation"]
        assert last["dropped"] > 0
        # The newest earlier turns are kept, the oldest dropped.
        assert last["history"][-1] == bodies[-2]["conversation"]["turn_id"]
        assert bodies[0]["conversation"]["turn_id"] not in last["history"]
        turns = await _get(http, small_gateway, sub, f"/api/v1/conversations/{conversation}")
        assert len(turns["turns"]) == 10


async def test_list_and_delete_conversations(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    sub, other = fresh("lister"), fresh("stranger")
    older, newer = fresh("conv"), fresh("conv")
    await _chat(client, gateway, sub, "Tell me about tulips.", conversation_id=older)
    await _chat(client, gateway, sub, "And roses?", conversation_id=older)
    await _chat(client, gateway, sub, "Tell me about trains.", conversation_id=newer)
    await _chat(client, gateway, other, "My own chat.", conversation_id=fresh("conv"))

    listed = await _get(client, gateway, sub, "/api/v1/conversations")
    assert [c["id"] for c in listed["conversations"]] == [newer, older]
    assert [c["turns"] for c in listed["conversations"]] == [1, 2]
    assert listed["conversations"][1]["title"] == "Tell me about tulips."
    assert listed["next_page_token"] == ""

    page = await _get(client, gateway, sub, "/api/v1/conversations", page_size=1)
    assert [c["id"] for c in page["conversations"]] == [newer]
    rest = await _get(
        client,
        gateway,
        sub,
        "/api/v1/conversations",
        page_size=1,
        page_token=page["next_page_token"],
    )
    assert [c["id"] for c in rest["conversations"]] == [older]
    assert rest["next_page_token"] == ""

    # Another subject sees none of it and cannot delete it.
    theirs = await _get(client, gateway, other, "/api/v1/conversations")
    assert older not in [c["id"] for c in theirs["conversations"]]
    await _get(client, gateway, other, f"/api/v1/conversations/{older}", status=404)
    refused = await _delete(client, gateway, other, f"/api/v1/conversations/{older}")
    assert refused.status_code == 404, refused.text
    assert refused.json()["error"]["details"]["reason"] == "CONVERSATION_NOT_FOUND"

    deleted = await _delete(client, gateway, sub, f"/api/v1/conversations/{older}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] == 2
    await _get(client, gateway, sub, f"/api/v1/conversations/{older}", status=404)
    after = await _get(client, gateway, sub, "/api/v1/conversations")
    assert [c["id"] for c in after["conversations"]] == [newer]
    memory = await _get(client, gateway, sub, "/api/v1/memory")
    assert [i["conversation_id"] for i in memory["items"]] == [newer]
    again = await _delete(client, gateway, sub, f"/api/v1/conversations/{older}")
    assert again.status_code == 404, again.text


# --- memory -------------------------------------------------------------------------


async def test_memory_recalls_the_subjects_own_fact_and_not_anothers(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    ann, ben = fresh("ann"), fresh("ben")
    said = await _chat(client, gateway, ann, "My favourite colour is teal.", memory=True)
    theirs = await _chat(client, gateway, ben, "My favourite colour is crimson.", memory=True)
    assert said["memory"]["recalled"] == []
    mine_id, theirs_id = said["memory"]["remembered"], theirs["memory"]["remembered"]

    asked = await _chat(client, gateway, ann, "What is my favourite colour?", memory=True)
    recalled = [m["id"] for m in asked["memory"]["recalled"]]
    assert recalled == [mine_id]
    assert "crimson" not in str(asked)
    plain = await _chat(client, gateway, ann, "What is my favourite colour?")
    assert asked["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]

    ben_asked = await _chat(client, gateway, ben, "What is my favourite colour?", memory=True)
    assert [m["id"] for m in ben_asked["memory"]["recalled"]] == [theirs_id]

    listed = await _get(client, gateway, ann, "/api/v1/memory")
    prompts = [item["prompt"] for item in listed["items"]]
    assert "My favourite colour is teal." in prompts
    assert "My favourite colour is crimson." not in prompts
    assert theirs_id not in _memory_ids(listed)
    assert listed["profile"]["interactions"] == len(listed["items"])


async def test_forgetting_removes_an_item_everywhere(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    sub, conversation = fresh("forgetful"), fresh("conv")
    secret = await _chat(
        client, gateway, sub, "My locker code is 4417.", memory=True, conversation_id=conversation
    )
    item = secret["memory"]["remembered"]
    assert item == secret["conversation"]["turn_id"]
    kept = await _chat(client, gateway, sub, "I enjoy chess.", memory=True)
    before = await _get(client, gateway, sub, "/api/v1/memory")
    assert before["profile"]["interactions"] == 2

    # Another subject cannot forget it for them.
    refused = await _delete(client, gateway, fresh("intruder"), f"/api/v1/memory/{item}")
    assert refused.status_code == 404, refused.text

    forgotten = await _delete(client, gateway, sub, f"/api/v1/memory/{item}")
    assert forgotten.status_code == 200, forgotten.text
    after = await _get(client, gateway, sub, "/api/v1/memory")
    assert _memory_ids(after) == [kept["memory"]["remembered"]]
    assert after["profile"]["interactions"] == 1
    await _get(client, gateway, sub, f"/api/v1/conversations/{conversation}", status=404)
    point = await client.get(
        f"/api/v1/vectors/{item}",
        params={"collection": "conversations"},
        headers=gateway.auth("admin"),
    )
    assert point.status_code == 404, point.text
    asked = await _chat(client, gateway, sub, "What is my locker code?", memory=True)
    assert item not in [m["id"] for m in asked["memory"]["recalled"]]
    again = await _delete(client, gateway, sub, f"/api/v1/memory/{item}")
    assert again.status_code == 404, again.text


async def test_forgetting_everything_leaves_nothing_and_spares_others(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    sub, bystander = fresh("leaver"), fresh("bystander")
    elsewhere = fresh("stored")
    await _chat(client, gateway, sub, "I grow tomatoes.", memory=True, conversation_id=fresh("c"))
    stored = await _chat(
        client, gateway, sub, "I grow peppers.", store_embedding=True, collection=elsewhere
    )
    theirs = await _chat(client, gateway, bystander, "I grow beans.", memory=True)

    reply = await _delete(client, gateway, sub, "/api/v1/memory")
    assert reply.status_code == 200, reply.text
    assert reply.json()["deleted"] >= 2
    gone = await _get(client, gateway, sub, "/api/v1/memory")
    assert gone["items"] == []
    assert gone["profile"] is None
    assert (await _get(client, gateway, sub, "/api/v1/conversations"))["conversations"] == []
    # The stored generation in another collection went too.
    point = await client.get(
        f"/api/v1/vectors/{stored['stored']['id']}",
        params={"collection": elsewhere},
        headers=gateway.auth("admin"),
    )
    assert point.status_code == 404, point.text
    left = await _get(client, gateway, bystander, "/api/v1/memory")
    assert theirs["memory"]["remembered"] in _memory_ids(left)
    assert left["profile"] is not None


# --- personalised search ------------------------------------------------------------

COOKING = [
    "A guide to baking sourdough bread with a crisp crust.",
    "Simmering a rich tomato pasta sauce with garlic and basil.",
    "How to season a cast iron pan for cooking.",
]
ASTRONOMY = [
    "Observing spiral galaxies and nebulae with an amateur telescope.",
    "How astronomers measure the distance to faraway stars.",
    "A beginner's map of the planets visible in the night sky.",
]


async def test_personalised_search_ranks_the_subjects_interests_first(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    collection = fresh("library")
    admin = gateway.auth("admin")
    await create_collection(client, admin, collection)
    await insert_texts(
        client,
        admin,
        collection,
        [{"text": t, "payload": {"source": "cooking"}} for t in COOKING]
        + [{"text": t, "payload": {"source": "astronomy"}} for t in ASTRONOMY],
    )
    cook, stargazer, newcomer = fresh("cook"), fresh("stargazer"), fresh("newcomer")
    for said in ("I love baking bread and cooking pasta.", "Which spices suit a stew?"):
        await _chat(client, gateway, cook, said, memory=True)
    for said in ("I love looking at galaxies through my telescope.", "How far is Jupiter?"):
        await _chat(client, gateway, stargazer, said, memory=True)

    async def search(sub: str, personalize: bool) -> dict[str, Any]:
        reply = await client.post(
            "/api/v1/vectors/search",
            json={
                "collection": collection,
                "text": "Recommend me something to read this weekend.",
                "limit": 3,
                "personalize": personalize,
            },
            headers=gateway.auth("user", sub=sub),
        )
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        return body

    def sources(body: dict[str, Any]) -> list[str]:
        return [hit["payload"]["source"] for hit in body["points"]]

    cooks = await search(cook, True)
    stars = await search(stargazer, True)
    assert cooks["personalized"] is True
    assert stars["personalized"] is True
    # The query leans to neither; each subject's interests come first.
    assert sources(cooks)[:2] == ["cooking"] * 2
    assert sources(stars)[:2] == ["astronomy"] * 2
    scores = [hit["score"] for hit in cooks["points"]]
    assert scores == sorted(scores, reverse=True)

    plain = await search(newcomer, True)
    assert plain["personalized"] is False
    assert plain["points"] == (await search(newcomer, False))["points"]


# --- privacy ------------------------------------------------------------------------


async def test_feedback_examples_are_the_callers_own_unless_shared(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    collection = fresh("private-feedback")
    author, other = fresh("author"), fresh("other")
    first = await _chat(
        client,
        gateway,
        author,
        "How do I reverse a list in Python? My secret token is QX-7731.",
        store_embedding=True,
        collection=collection,
    )
    interaction = first["stored"]["id"]
    scored = await client.post(
        "/api/v1/feedback",
        json={"interaction_id": interaction, "score": 5, "collection": collection},
        headers=gateway.auth("user", sub=author),
    )
    assert scored.status_code == 200, scored.text
    later = "What is the way to reverse a Python list?"

    own = await _chat(client, gateway, author, later, use_feedback=True, collection=collection)
    assert [e["id"] for e in own["feedback"]["examples"]] == [interaction]
    theirs = await _chat(client, gateway, other, later, use_feedback=True, collection=collection)
    assert theirs["feedback"]["examples"] == []
    assert "QX-7731" not in str(theirs)

    # Sharing needs ManageCollections.
    url = f"/api/v1/interactions/{interaction}/share"
    user = await client.post(
        url, params={"collection": collection}, headers=gateway.auth("user", sub=author)
    )
    assert user.status_code == 403, user.text
    shared = await client.post(
        url, params={"collection": collection}, headers=gateway.auth("operator", sub="op")
    )
    assert shared.status_code == 200, shared.text
    assert shared.json()["shared"] is True
    now = await _chat(client, gateway, other, later, use_feedback=True, collection=collection)
    assert [e["id"] for e in now["feedback"]["examples"]] == [interaction]
    # Shared as an example, not into the other subject's memory.
    assert interaction not in _memory_ids(await _get(client, gateway, other, "/api/v1/memory"))

    unshared = await client.delete(
        url, params={"collection": collection}, headers=gateway.auth("operator", sub="op")
    )
    assert unshared.status_code == 200, unshared.text
    hidden = await _chat(client, gateway, other, later, use_feedback=True, collection=collection)
    assert hidden["feedback"]["examples"] == []


async def test_another_subjects_interactions_are_never_sources(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    collection = fresh("mixed")
    admin = gateway.auth("admin")
    await create_collection(client, admin, collection)
    await insert_texts(
        client, admin, collection, [{"text": "Lighthouses guide ships along rocky coasts."}]
    )
    author, other = fresh("keeper"), fresh("sailor")
    prompt = "I am the keeper of the lighthouse at Cape Wrath; my alarm code is LH-5512."
    stored = await _chat(
        client, gateway, author, prompt, store_embedding=True, collection=collection
    )
    question = "Tell me about the lighthouse keeper at Cape Wrath."
    context = {"collection": collection, "limit": 5}

    own = await _chat(client, gateway, author, question, context=context)
    assert stored["stored"]["id"] in [s["id"] for s in own["sources"]]
    theirs = await _chat(client, gateway, other, question, context=context)
    assert stored["stored"]["id"] not in [s["id"] for s in theirs["sources"]]
    assert theirs["sources"], "the shared document is still a source"
    assert "LH-5512" not in str(theirs)


async def test_tenants_and_subjects_stay_separate(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    sub, conversation = fresh("twin"), fresh("conv")
    acme, globex = {"tenant": "acme"}, {"tenant": "globex"}
    said = await _chat(
        client,
        gateway,
        sub,
        "The launch password is ORCHID-92.",
        memory=True,
        conversation_id=conversation,
        claims=acme,
    )
    # The same subject name in another tenant, or with no tenant, is someone else.
    for claims in (globex, {}):
        await _get(
            client,
            gateway,
            sub,
            f"/api/v1/conversations/{conversation}",
            status=404,
            claims=claims,
        )
        listed = await _get(client, gateway, sub, "/api/v1/conversations", claims=claims)
        assert listed["conversations"] == []
        memory = await _get(client, gateway, sub, "/api/v1/memory", claims=claims)
        assert memory["items"] == []
        assert memory["profile"] is None
        asked = await _chat(
            client,
            gateway,
            sub,
            "What is the launch password?",
            memory=True,
            conversation_id=conversation,
            claims=claims,
        )
        assert asked["memory"]["recalled"] == []
        assert asked["conversation"]["history"] == []
        assert "ORCHID-92" not in str(asked)
        refused = await _delete(
            client, gateway, sub, f"/api/v1/memory/{said['memory']['remembered']}", claims=claims
        )
        assert refused.status_code == 404, refused.text
    mine = await _get(client, gateway, sub, f"/api/v1/conversations/{conversation}", claims=acme)
    assert [t["prompt"] for t in mine["turns"]] == ["The launch password is ORCHID-92."]


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "field"),
    [
        ("POST", "/api/v1/generate", {"prompt": "hi", "conversation_id": "c1"}, 422, None),
        (
            "POST",
            "/api/v1/generate",
            {"messages": [{"role": "user", "content": "hi"}], "conversation_id": "a b"},
            422,
            "conversation_id",
        ),
        ("GET", "/api/v1/conversations?page_size=0", None, 422, "page_size"),
        ("GET", "/api/v1/conversations?page_token=%25%25", None, 400, "page_token"),
        ("GET", "/api/v1/conversations/bad%20id", None, 422, "conversation_id"),
        ("DELETE", "/api/v1/memory/not-an-id", None, 422, "id"),
        ("POST", "/api/v1/interactions/not-an-id/share", None, 422, "id"),
        (
            "POST",
            "/api/v1/vectors/search/batch",
            {"searches": [{"collection": "x", "text": "a", "personalize": True}]},
            422,
            None,
        ),
    ],
)
async def test_bad_input_is_refused_clearly(
    client: httpx.AsyncClient,
    gateway: RunningGateway,
    method: str,
    url: str,
    body: dict[str, Any] | None,
    status: int,
    field: str | None,
) -> None:
    reply = await client.request(method, url, json=body, headers=gateway.auth("admin"))
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["message"]
    if field is not None:
        violations = error["details"]["field_violations"]
        assert field in [v["field"] for v in violations], violations


async def test_unknown_interaction_cannot_be_shared(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    reply = await client.post(
        "/api/v1/interactions/5d0d4a8e-0b3c-4a55-9d7e-2a4b6c8d0e1f/share",
        headers=gateway.auth("operator"),
    )
    assert reply.status_code == 404, reply.text
    assert reply.json()["error"]["details"]["reason"] == "INTERACTION_NOT_FOUND"


async def test_memory_needs_generate_permission(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    viewer = gateway.auth("viewer")
    for method, url in (("GET", "/api/v1/memory"), ("DELETE", "/api/v1/memory")):
        reply = await client.request(method, url, headers=viewer)
        assert reply.status_code == 403, reply.text
    generated = await client.post(
        "/api/v1/generate",
        json={"prompt": "hi", "memory": True, **ASK},
        headers=viewer,
    )
    assert generated.status_code == 403, generated.text


async def test_memory_works_for_a_token_kept_out_of_the_raw_collection(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    sub, claims = fresh("fenced"), {"collections": ["docs-*"]}
    said = await _chat(client, gateway, sub, "I collect stamps.", memory=True, claims=claims)
    listed = await _get(client, gateway, sub, "/api/v1/memory", claims=claims)
    assert _memory_ids(listed) == [said["memory"]["remembered"]]
    raw = await client.post(
        "/api/v1/vectors/search",
        json={"collection": "conversations", "text": "stamps"},
        headers=gateway.auth("user", sub=sub, **claims),
    )
    assert raw.status_code == 403, raw.text


async def test_openapi_documents_the_memory_routes_and_their_permissions(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    expected = {
        ("/api/v1/conversations", "get"): ["GenerateText"],
        ("/api/v1/conversations/{conversation_id}", "get"): ["GenerateText"],
        ("/api/v1/conversations/{conversation_id}", "delete"): ["GenerateText"],
        ("/api/v1/memory", "get"): ["GenerateText"],
        ("/api/v1/memory", "delete"): ["GenerateText"],
        ("/api/v1/memory/{id}", "delete"): ["GenerateText"],
        ("/api/v1/interactions/{id}/share", "post"): ["ManageCollections"],
        ("/api/v1/interactions/{id}/share", "delete"): ["ManageCollections"],
    }
    for (path, method), permissions in expected.items():
        operation = schema["paths"][path][method]
        assert operation["x-required-permissions"] == permissions, path
    search = schema["components"]["schemas"]["PersonalizedSearchRequest"]
    assert "personalize" in search["properties"]
    generate = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert {"conversation_id", "memory"} <= set(generate)
