"""The MCP server at /mcp, driven by the official SDK's streamable HTTP client
against the running stack."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.flows import corpus
from tests.flows.conftest import fresh
from tests.flows.harness import RunningGateway


@contextlib.asynccontextmanager
async def _session(gateway: RunningGateway, token: str) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        streamable_http_client(f"{gateway.url}/mcp", http_client=http) as streams,
        ClientSession(streams[0], streams[1]) as session,
    ):
        await session.initialize()
        yield session


async def _call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content
    structured = result.structured_content
    assert structured is not None
    # The text content carries the same result, for clients that read only text.
    assert json.loads(result.content[0].text) == structured  # type: ignore[union-attr]
    return structured


async def _refusal(session: ClientSession, tool: str, **arguments: Any) -> str:
    result = await session.call_tool(tool, arguments)
    assert result.is_error
    text: str = result.content[0].text  # type: ignore[union-attr]
    # The SDK prefixes the tool's message with "Error executing tool <name>: ".
    return text.removeprefix(f"Error executing tool {tool}: ")


async def test_the_tools_are_listed(gateway: RunningGateway) -> None:
    async with _session(gateway, gateway.token("user")) as session:
        listed = await session.list_tools()
    names = {tool.name for tool in listed.tools}
    assert names == {"list_collections", "search", "ask", "remember", "recall"}
    search = next(tool for tool in listed.tools if tool.name == "search")
    assert set(search.input_schema["required"]) == {"collection", "text"}


async def test_list_and_search_respect_the_allow_list(gateway: RunningGateway, docs: str) -> None:
    async with _session(gateway, gateway.token("viewer")) as session:
        listed = await _call(session, "list_collections")
        assert docs in {c["name"] for c in listed["collections"]}
        question, module = next(iter(corpus.QUESTIONS.items()))
        found = await _call(session, "search", collection=docs, text=question, limit=3)
        assert found["points"][0]["payload"]["source"] == module
        only = await _call(
            session,
            "search",
            collection=docs,
            text=question,
            filter={"must": [{"key": "source", "match": {"keyword": "csv"}}]},
        )
        assert [hit["payload"]["source"] for hit in only["points"]] == ["csv"]
    # A token limited to another collection sees neither the collection nor its points.
    other = gateway.token("viewer", collections=["elsewhere"])
    async with _session(gateway, other) as session:
        listed = await _call(session, "list_collections")
        assert docs not in {c["name"] for c in listed["collections"]}
        refused = await _refusal(session, "search", collection=docs, text="heaps")
    assert refused.startswith("COLLECTION_NOT_ALLOWED:")


async def test_ask_answers_with_sources(gateway: RunningGateway, docs: str) -> None:
    question, module = next(iter(corpus.QUESTIONS.items()))
    async with _session(gateway, gateway.token("user")) as session:
        answer = await _call(session, "ask", question=question, collection=docs, max_tokens=24)
    assert answer["answer"]
    assert module in {source["payload"]["source"] for source in answer["sources"]}


async def test_a_permission_refusal(gateway: RunningGateway) -> None:
    async with _session(gateway, gateway.token("viewer")) as session:
        refused = await _refusal(session, "ask", question="Hello?")
        assert refused.startswith("MISSING_PERMISSION:")
        assert "GenerateText" in refused
        refused = await _refusal(session, "remember", text="I like tea.")
        assert refused.startswith("MISSING_PERMISSION:")
        invalid = await _refusal(session, "search", collection="Not A Name!", text="x")
        # Refused by the request model's name pattern, naming the field.
        assert invalid.startswith("INVALID_ARGUMENT: collection:"), invalid


async def test_remember_and_recall_are_personal(gateway: RunningGateway) -> None:
    note = f"My favourite tea is oolong from the {fresh('hill')} estate."
    async with _session(gateway, gateway.token("user", sub="mcp-alice")) as session:
        stored = await _call(session, "remember", text=note)
        assert stored["id"]
        assert stored["prompt"] == note
        recalled = await _call(session, "recall", query="my favourite tea, oolong", limit=5)
    assert stored["id"] in [m["id"] for m in recalled["memories"]]
    # The memory routes see what the tool remembered: one memory, whoever writes it.
    async with gateway.client() as http:
        listed = await http.get("/api/v1/memory", headers=gateway.auth("user", sub="mcp-alice"))
    assert listed.status_code == 200, listed.text
    assert stored["id"] in [item["id"] for item in listed.json()["items"]]
    async with _session(gateway, gateway.token("user", sub="mcp-bob")) as session:
        theirs = await _call(session, "recall", query="my favourite tea, oolong", limit=5)
    assert stored["id"] not in [m["id"] for m in theirs["memories"]]


async def test_the_endpoint_needs_a_token(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        reply = await http.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"},
        )
    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "UNAUTHENTICATED"


@pytest.fixture(autouse=True)
def _quiet_sdk_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="mcp")
