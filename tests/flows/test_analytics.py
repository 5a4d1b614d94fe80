"""Analytics count what clients did: usage per subject and route (recorded by
the gateway in the background), searches and collection sizes; the figures are
the same from every gateway replica and survive restarts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from lodestar.services.vector.server import create_server as create_vector_server
from tests.flows import corpus
from tests.flows.conftest import Stack, flows_settings, fresh, replica, vector_settings
from tests.flows.harness import RunningGateway, gateway_settings, run_gateway

ROUTES = ("POST /api/v1/vectors/search", "GET /api/v1/vectors/{id}", "POST /api/v1/generate")


async def _usage(http: httpx.AsyncClient, gateway: RunningGateway, subject: str) -> dict[str, Any]:
    reply = await http.get(
        "/api/v1/analytics/usage", params={"subject": subject}, headers=gateway.auth("operator")
    )
    assert reply.status_code == 200, reply.text
    return {row["route"]: row for row in reply.json()["usage"]}


async def _wait_for_usage(
    http: httpx.AsyncClient, gateway: RunningGateway, subject: str, requests: int
) -> dict[str, Any]:
    """Usage rows once ``requests`` requests are recorded (the gateway sends
    them in the background)."""
    deadline = time.monotonic() + 15
    while True:
        rows = await _usage(http, gateway, subject)
        if sum(row["request_count"] for row in rows.values()) >= requests:
            return rows
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.1)


async def _act(http: httpx.AsyncClient, gateway: RunningGateway, subject: str, docs: str) -> Any:
    """Three searches, one missing point (404) and one generation."""
    auth = gateway.auth("user", sub=subject)
    for _ in range(3):
        found = await http.post(
            "/api/v1/vectors/search",
            json={"collection": docs, "text": "reading CSV files", "limit": 2},
            headers=auth,
        )
        assert found.status_code == 200, found.text
    missing = await http.get("/api/v1/vectors/12345", params={"collection": docs}, headers=auth)
    assert missing.status_code == 404
    generated = await http.post(
        "/api/v1/generate",
        json={"prompt": "Say yes.", "max_tokens": 5, "temperature": 0},
        headers=auth,
    )
    assert generated.status_code == 200, generated.text
    return generated.json()["usage"]


def _check(rows: dict[str, Any], tokens: dict[str, int]) -> None:
    assert set(rows) == set(ROUTES), rows
    search, get, generate = (rows[route] for route in ROUTES)
    assert (search["request_count"], search["error_count"]) == (3, 0)
    assert (get["request_count"], get["error_count"]) == (1, 1)
    assert (generate["request_count"], generate["error_count"]) == (1, 0)
    assert generate["prompt_tokens"] == tokens["prompt_tokens"] > 0
    assert generate["completion_tokens"] == tokens["completion_tokens"] > 0
    assert search["prompt_tokens"] == search["completion_tokens"] == 0


async def test_usage_counts_what_a_subject_did_on_every_replica(
    client: httpx.AsyncClient, gateway: RunningGateway, stack: Stack, docs: str
) -> None:
    subject = fresh("analyst")
    tokens = await _act(client, gateway, subject, docs)
    _check(await _wait_for_usage(client, gateway, subject, 5), tokens)
    async with replica(stack) as other, other.client() as http:
        _check(await _usage(http, other, subject), tokens)
        # Requests to the other replica add to the same figures.
        await _act(http, other, subject, docs)
        rows = await _wait_for_usage(client, gateway, subject, 10)
    assert rows["POST /api/v1/vectors/search"]["request_count"] == 6
    assert rows["GET /api/v1/vectors/{id}"]["error_count"] == 2


async def test_usage_survives_restarts(stack: Stack, tmp_path_factory: Any) -> None:
    data_dir = tmp_path_factory.mktemp("analytics")
    subject = fresh("restarts")

    async def gateway_on(vector: str) -> Any:
        return run_gateway(
            gateway_settings(stack.embedding, vector, stack.inference), flows_settings()
        )

    server = await create_vector_server(vector_settings(data_dir))
    address = f"127.0.0.1:{await server.start()}"
    try:
        async with await gateway_on(address) as gateway, gateway.client() as http:
            name = fresh("docs")
            admin = gateway.auth("admin")
            made = await http.post("/api/v1/collections", json={"name": name}, headers=admin)
            assert made.status_code in (200, 201), made.text
            inserted = await http.post(
                "/api/v1/vectors/insert",
                json={"collection": name, "points": corpus.points()[:4]},
                headers=admin,
            )
            assert inserted.status_code == 200, inserted.text
            tokens = await _act(http, gateway, subject, name)
            await _wait_for_usage(http, gateway, subject, 5)
    finally:
        await server.stop(2)

    server = await create_vector_server(vector_settings(data_dir))
    address = f"127.0.0.1:{await server.start()}"
    try:
        async with await gateway_on(address) as gateway, gateway.client() as http:
            _check(await _usage(http, gateway, subject), tokens)
    finally:
        await server.stop(2)


async def test_search_analytics_count_searches_and_popular_queries(
    client: httpx.AsyncClient, gateway: RunningGateway, docs: str
) -> None:
    query = f"how to compress data {fresh('q')}"
    for _ in range(4):
        found = await client.post(
            "/api/v1/vectors/search",
            json={"collection": docs, "text": query},
            headers=gateway.auth("user"),
        )
        assert found.status_code == 200, found.text
    question = "Which module compares files with shell-style patterns?"
    asked = await client.post(
        "/api/v1/generate",
        json={"prompt": question, "context": {"collection": docs}, "max_tokens": 4},
        headers=gateway.auth("user"),
    )
    assert asked.status_code == 200, asked.text
    reply = await client.get(
        "/api/v1/analytics/search",
        params={"collection": docs, "top_queries": 100},
        headers=gateway.auth("operator"),
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    popular = {q["query_text"]: q["count"] for q in body["popular_queries"]}
    assert popular[query] == 4
    # Retrieval for generation is a search too, under its (normalised) question.
    assert popular[question.casefold()] == 1
    stats = body["collections"][0]
    assert stats["collection"] == docs
    assert stats["search_count"] >= 5
    assert stats["latency_p50_ms"] > 0
    assert stats["latency_p99_ms"] >= stats["latency_p50_ms"]


async def test_vector_analytics_report_collection_sizes(
    client: httpx.AsyncClient, gateway: RunningGateway, docs: str
) -> None:
    reply = await client.get(
        "/api/v1/analytics/vectors", params={"collection": docs}, headers=gateway.auth("operator")
    )
    assert reply.status_code == 200, reply.text
    (collection,) = reply.json()["collections"]
    assert collection["collection"] == docs
    assert collection["points_count"] == len(corpus.MODULES)


async def test_analytics_need_view_analytics(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    for path in (
        "/api/v1/analytics/usage",
        "/api/v1/analytics/search",
        "/api/v1/analytics/vectors",
    ):
        reply = await client.get(path, headers=gateway.auth("editor"))
        assert reply.status_code == 403, reply.text
        assert "ViewAnalytics" in reply.json()["error"]["message"]


async def test_usage_counts_the_tokens_of_batches_and_of_cancelled_streams(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    subject = fresh("tokens")
    auth = gateway.auth("user", sub=subject)
    batch = await client.post(
        "/api/v1/generate/batch",
        json={
            "requests": [
                {"prompt": "One", "max_tokens": 3, "temperature": 0},
                {"prompt": "Two", "max_tokens": 3, "temperature": 0},
            ]
        },
        headers=auth,
    )
    assert batch.status_code == 200, batch.text
    answers = [r["response"]["usage"] for r in batch.json()["results"]]
    streamed = 0
    async with client.stream(
        "POST",
        "/api/v1/generate",
        json={"prompt": "Write a long story.", "max_tokens": 200, "temperature": 0, "stream": True},
        headers=auth,
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: token"):
                streamed += 1
                if streamed == 3:
                    break  # leaving the block closes the connection: the stream is cancelled
    rows = await _wait_for_usage(client, gateway, subject, 2)
    generated = rows["POST /api/v1/generate/batch"]
    assert generated["prompt_tokens"] == sum(a["prompt_tokens"] for a in answers) > 0
    assert generated["completion_tokens"] == sum(a["completion_tokens"] for a in answers) > 0
    stream = rows["POST /api/v1/generate"]
    assert stream["completion_tokens"] >= 3
