"""Clustering a subset of a collection given by ids or by texts, and
recommending by texts, through the gateway."""

from __future__ import annotations

import httpx

from tests.flows.conftest import create_collection, fresh, insert_texts
from tests.flows.harness import RunningGateway

FRUIT = ["apples and pears", "ripe bananas", "oranges and lemons", "sweet cherries"]
VEHICLES = ["a red sports car", "a diesel truck", "a motorbike on the road", "a city bus"]
WEATHER = ["heavy rain and storms", "a sunny afternoon", "snow in the mountains"]


async def _themes(
    http: httpx.AsyncClient, gateway: RunningGateway, tenant: str = ""
) -> tuple[str, dict[str, list[int | str]]]:
    name = fresh("themes")
    await create_collection(http, gateway.auth("admin"), name)
    claims = {"tenant": tenant} if tenant else {}
    ids = {}
    for theme, texts in (("fruit", FRUIT), ("vehicles", VEHICLES), ("weather", WEATHER)):
        ids[theme] = await insert_texts(
            http,
            gateway.auth("user", **claims),
            name,
            [{"text": text, "payload": {"source": theme}} for text in texts],
        )
    return name, ids


def _groups(body: dict[str, object]) -> list[set[object]]:
    clusters = body["clusters"]
    assert isinstance(clusters, list)
    return [set(cluster["member_ids"]) for cluster in clusters]


async def test_cluster_by_ids(client: httpx.AsyncClient, gateway: RunningGateway) -> None:
    name, ids = await _themes(client, gateway)
    chosen = ids["fruit"] + ids["vehicles"]
    reply = await client.post(
        "/api/v1/vectors/cluster/subset",
        json={"collection": name, "ids": chosen, "num_clusters": 2, "seed": 1},
        headers=gateway.auth("viewer"),
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["selected"] == len(chosen)
    assert body["sampled_points"] == len(chosen)
    groups = _groups(body)
    assert len(groups) == 2
    # Exactly the chosen points are clustered, each once; the weather is left out.
    assert set().union(*groups) == set(chosen)
    assert sum(len(g) for g in groups) == len(chosen)
    representative = body["clusters"][0]["representatives"][0]
    assert representative["payload"]["source"] in ("fruit", "vehicles")


async def test_cluster_by_texts(client: httpx.AsyncClient, gateway: RunningGateway) -> None:
    name, ids = await _themes(client, gateway)
    reply = await client.post(
        "/api/v1/vectors/cluster/subset",
        json={
            "collection": name,
            "texts": ["fresh fruit", "weather forecast"],
            "neighbours": 3,
            "num_clusters": 2,
            "seed": 1,
        },
        headers=gateway.auth("viewer"),
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["selected"] == 6
    members = set().union(*_groups(body))
    assert members <= set(ids["fruit"]) | set(ids["weather"])
    assert not members & set(ids["vehicles"])


async def test_cluster_by_texts_stays_in_the_tenant(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    name, _ = await _themes(client, gateway, tenant="acme")
    reply = await client.post(
        "/api/v1/vectors/cluster/subset",
        json={"collection": name, "texts": ["fresh fruit"], "num_clusters": 2},
        headers=gateway.auth("viewer", tenant="globex"),
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "clusters": [],
        "total_points": 0,
        "sampled_points": 0,
        "noise_points": 0,
        "selected": 0,
    }


async def test_cluster_subset_needs_ids_or_texts(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    for body in ({"collection": "x"}, {"collection": "x", "ids": [1, 2], "texts": ["a"]}):
        reply = await client.post(
            "/api/v1/vectors/cluster/subset", json=body, headers=gateway.auth("viewer")
        )
        assert reply.status_code == 422, reply.text
        assert "exactly one of ids or texts" in reply.json()["error"]["message"]


async def test_recommend_by_texts(client: httpx.AsyncClient, gateway: RunningGateway) -> None:
    name, ids = await _themes(client, gateway)
    reply = await client.post(
        "/api/v1/vectors/recommend",
        json={
            "collection": name,
            "positive": [{"text": "a tasty fruit salad"}],
            "negative": [{"text": "traffic"}],
            "limit": 3,
        },
        headers=gateway.auth("viewer"),
    )
    assert reply.status_code == 200, reply.text
    hits = [p["id"] for p in reply.json()["points"]]
    assert len(hits) == 3
    assert set(hits) <= set(ids["fruit"])


async def test_openapi_documents_the_flows_routes_and_their_permissions(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    expected = {
        ("/api/v1/feedback", "post"): ["GenerateText"],
        ("/api/v1/vectors/cluster/subset", "post"): ["SearchVectors"],
        ("/v1/chat/completions", "post"): ["GenerateText"],
        ("/v1/completions", "post"): ["GenerateText"],
        ("/v1/embeddings", "post"): ["SearchVectors"],
        ("/v1/models", "get"): ["GenerateText", "SearchVectors"],
    }
    for (path, method), permissions in expected.items():
        operation = schema["paths"][path][method]
        assert operation["x-required-permissions"] == permissions, path
        assert operation["security"] == [{"bearerAuth": []}]
