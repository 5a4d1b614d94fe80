"""Documents end to end: upload (Markdown, PDF, text), list, read, replace,
delete, jobs with progress and cancellation, permissions, bad input, and RAG
answers that cite a document's page."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from fpdf import FPDF

from tests.flows.conftest import Stack, create_collection, flows_settings, fresh
from tests.flows.harness import RunningGateway, gateway_settings, run_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

MARKDOWN = """# Harbour handbook

## Mooring

Boats moor at the north pier between six and nine in the morning. The harbour master
assigns berths by length: under ten metres on the inner side, longer boats outside.

## Fees

A night at the pier costs twelve crowns; a week costs seventy crowns.
"""

FINISHED = ("succeeded", "failed", "cancelled")
PDF_FACT = (
    "The Zorblax reactor of Kepler station runs on frozen lemonade, which the crew "
    "delivers every Tuesday in insulated barrels."
)


def make_pdf() -> bytes:
    pdf = FPDF()
    pdf.set_title("Station manual")
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(
        0,
        8,
        "Kepler station manual. Chapter one describes the crew quarters, "
        "the galley and the daily cleaning schedule of the common rooms.",
    )
    pdf.add_page()
    pdf.multi_cell(0, 8, PDF_FACT)
    return bytes(pdf.output())


def big_text(paragraphs: int) -> str:
    return "\n\n".join(
        f"Paragraph {i} of the long record tells about harbour {i}, its boats, its weather "
        f"and the fish landed there in season {i % 7}; nothing else is said of it."
        for i in range(paragraphs)
    )


async def upload_file(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    collection: str,
    name: str,
    data: bytes,
    **fields: str,
) -> httpx.Response:
    return await http.post(
        f"/api/v1/collections/{collection}/documents",
        files={"file": (name, data)},
        data=fields,
        headers=headers,
    )


async def chunk_payloads(
    http: httpx.AsyncClient, headers: dict[str, str], collection: str, document_id: str
) -> list[dict[str, Any]]:
    """Every stored point of a document, read straight from the vectors API."""
    reply = await http.post(
        "/api/v1/vectors/search",
        json={
            "collection": collection,
            "text": "anything",
            "limit": 1000,
            "filter": {"must": [{"key": "document_id", "match": {"keyword": document_id}}]},
        },
        headers=headers,
    )
    assert reply.status_code == 200, reply.text
    return [hit["payload"] for hit in reply.json()["points"]]


@pytest.fixture
async def collection(client: httpx.AsyncClient, gateway: RunningGateway) -> str:
    name = fresh("kb")
    await create_collection(client, gateway.auth("admin"), name)
    return name


async def test_documents_lifecycle(
    client: httpx.AsyncClient, gateway: RunningGateway, collection: str
) -> None:
    admin = gateway.auth("admin")
    reply = await upload_file(client, admin, collection, "harbour.md", MARKDOWN.encode())
    assert reply.status_code == 201, reply.text
    md = reply.json()["document"]
    assert md["title"] == "Harbour handbook"
    assert md["format"] == "markdown"
    assert md["chunks"] >= 2
    assert md["bytes"] == len(MARKDOWN.encode())
    reply = await upload_file(client, admin, collection, "manual.pdf", make_pdf())
    assert reply.status_code == 201, reply.text
    pdf = reply.json()["document"]
    assert pdf["title"] == "Station manual"
    assert pdf["format"] == "pdf"

    listed = await client.get(f"/api/v1/collections/{collection}/documents", headers=admin)
    assert listed.status_code == 200, listed.text
    by_id = {d["id"]: d for d in listed.json()["documents"]}
    assert set(by_id) == {md["id"], pdf["id"]}
    assert by_id[md["id"]]["source"] == "harbour.md"
    assert by_id[md["id"]]["status"] == "ready"
    # Pagination: one a page, then the rest.
    first = await client.get(
        f"/api/v1/collections/{collection}/documents", params={"page_size": 1}, headers=admin
    )
    body = first.json()
    assert len(body["documents"]) == 1
    assert body["next_page_token"]
    second = await client.get(
        f"/api/v1/collections/{collection}/documents",
        params={"page_size": 1, "page_token": body["next_page_token"]},
        headers=admin,
    )
    assert {d["id"] for d in body["documents"] + second.json()["documents"]} == set(by_id)

    got = await client.get(f"/api/v1/collections/{collection}/documents/{pdf['id']}", headers=admin)
    assert got.status_code == 200, got.text
    chunks = got.json()["chunks"]
    assert [c["position"] for c in chunks] == list(range(pdf["chunks"]))
    assert any("frozen lemonade" in c["text"] and c["page"] == 2 for c in chunks)

    # Re-upload a changed version: only the new chunks remain, created_at kept.
    changed = MARKDOWN.replace("twelve crowns", "fifteen crowns")
    reply = await upload_file(client, admin, collection, "harbour.md", changed.encode())
    assert reply.status_code == 201, reply.text
    new = reply.json()["document"]
    assert new["id"] == md["id"]
    assert new["version"] != md["version"]
    assert new["created_at"] == md["created_at"]
    payloads = await chunk_payloads(client, admin, collection, md["id"])
    assert len(payloads) == new["chunks"]
    assert {p["document_version"] for p in payloads} == {new["version"]}
    texts = " ".join(p["text"] for p in payloads)
    assert "fifteen crowns" in texts
    assert "twelve crowns" not in texts

    deleted = await client.delete(
        f"/api/v1/collections/{collection}/documents/{md['id']}", headers=admin
    )
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["chunks_deleted"] == new["chunks"]
    assert await chunk_payloads(client, admin, collection, md["id"]) == []
    missing = await client.get(
        f"/api/v1/collections/{collection}/documents/{md['id']}", headers=admin
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["details"]["reason"] == "DOCUMENT_NOT_FOUND"


async def test_a_question_only_the_pdf_answers_cites_its_page(
    client: httpx.AsyncClient, gateway: RunningGateway, collection: str
) -> None:
    admin = gateway.auth("admin")
    await upload_file(client, admin, collection, "harbour.md", MARKDOWN.encode())
    reply = await upload_file(client, admin, collection, "manual.pdf", make_pdf())
    pdf = reply.json()["document"]
    body = {
        "prompt": "What does the Zorblax reactor of Kepler station run on?",
        "max_tokens": 24,
        "temperature": 0,
        "context": {"collection": collection, "limit": 1},
    }
    reply = await client.post("/api/v1/generate", json=body, headers=admin)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    (source,) = answer["sources"]
    assert source["document_id"] == pdf["id"]
    assert source["title"] == "Station manual"
    assert source["page"] == 2
    assert source["citation"] == 1
    assert isinstance(source["position"], int)
    assert source["score"] > 0
    # Markers naming no source never reach the caller.
    assert all(n == "1" for n in re.findall(r"\[(\d+)\]", answer["text"]))

    async with client.stream(
        "POST", "/api/v1/generate", json={**body, "stream": True}, headers=admin
    ) as stream:
        events = [line async for line in stream.aiter_lines() if line.startswith("event:")]
    assert events[0] == "event: sources"


async def test_large_uploads_run_as_jobs_with_progress(
    client: httpx.AsyncClient, gateway: RunningGateway, collection: str
) -> None:
    admin = gateway.auth("admin")
    text = big_text(150)
    reply = await client.post(
        f"/api/v1/collections/{collection}/documents",
        json={"text": text, "id": "long-record", "background": True},
        headers=admin,
    )
    assert reply.status_code == 202, reply.text
    job = reply.json()["job"]
    assert reply.headers["location"] == f"/api/v1/jobs/{job['id']}"
    seen: list[int] = []
    for _ in range(600):
        status = (await client.get(f"/api/v1/jobs/{job['id']}", headers=admin)).json()
        seen.append(status["progress"]["chunks_done"])
        if status["status"] in FINISHED:
            break
        await asyncio.sleep(0.05)
    assert status["status"] == "succeeded", status
    total = status["progress"]["chunks_total"]
    assert total > 1
    assert status["progress"]["chunks_done"] == total
    assert any(0 < n < total for n in seen) or len(set(seen)) > 1, seen
    assert status["document"]["id"] == "long-record"


async def test_a_cancelled_job_stops_and_leaves_the_previous_version(
    client: httpx.AsyncClient, gateway: RunningGateway, collection: str
) -> None:
    admin = gateway.auth("admin")
    reply = await client.post(
        f"/api/v1/collections/{collection}/documents",
        json={"text": "The first version is short.", "id": "record"},
        headers=admin,
    )
    assert reply.status_code == 201, reply.text
    before = reply.json()["document"]
    reply = await client.post(
        f"/api/v1/collections/{collection}/documents",
        json={"text": big_text(1500), "id": "record", "background": True},
        headers=admin,
    )
    job = reply.json()["job"]
    for _ in range(1000):
        status = (await client.get(f"/api/v1/jobs/{job['id']}", headers=admin)).json()
        if status["progress"]["chunks_done"] > 0 or status["status"] in FINISHED:
            break
        await asyncio.sleep(0.01)
    assert status["status"] == "running", status
    cancelled = await client.delete(f"/api/v1/jobs/{job['id']}", headers=admin)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    done = cancelled.json()["progress"]["chunks_done"]
    await asyncio.sleep(0.5)
    after = (await client.get(f"/api/v1/jobs/{job['id']}", headers=admin)).json()
    assert after["status"] == "cancelled"
    assert after["progress"]["chunks_done"] == done
    assert done < after["progress"]["chunks_total"]
    got = (
        await client.get(f"/api/v1/collections/{collection}/documents/record", headers=admin)
    ).json()
    assert got["document"]["version"] == before["version"]
    payloads = await chunk_payloads(client, admin, collection, "record")
    assert {p["document_version"] for p in payloads} == {before["version"]}


async def test_permissions_tenants_and_allow_lists(
    client: httpx.AsyncClient, gateway: RunningGateway, collection: str
) -> None:
    url = f"/api/v1/collections/{collection}/documents"
    viewer = gateway.auth("viewer")
    reply = await client.post(url, json={"text": "hello there", "id": "d"}, headers=viewer)
    assert reply.status_code == 403
    user = gateway.auth("user", tenant="acme")
    reply = await client.post(url, json={"text": "acme only fact", "id": "d"}, headers=user)
    assert reply.status_code == 201, reply.text
    other = gateway.auth("admin", tenant="globex")
    assert (await client.get(f"{url}/d", headers=other)).status_code == 404
    assert (await client.get(url, headers=other)).json()["documents"] == []
    assert (await client.delete(f"{url}/d", headers=other)).status_code == 404
    elsewhere = gateway.auth("admin", tenant="acme", collections=["other"])
    reply = await client.get(f"{url}/d", headers=elsewhere)
    assert reply.status_code == 403
    assert (await client.get(f"{url}/d", headers=user)).status_code == 200


@pytest.mark.parametrize(
    ("files", "json_body", "reason", "status"),
    [
        ({"file": ("data.bin", b"\x01\x02")}, None, "UNSUPPORTED_FORMAT", 400),
        ({"file": ("empty.txt", b"")}, None, "EMPTY_DOCUMENT", 400),
        ({"file": ("blank.md", b"   \n\n ")}, None, "EMPTY_DOCUMENT", 400),
        ({"file": ("broken.pdf", b"%PDF-1.4 not really")}, None, "BAD_PDF", 400),
        (None, {"text": "x", "id": "../etc"}, "BAD_DOCUMENT_ID", 400),
        (None, {"text": "x", "format": "docx"}, "UNSUPPORTED_FORMAT", 400),
        # 0 is a size (below the least), not the default.
        (None, {"text": "x", "chunk_size": 0}, "BAD_CHUNKING", 400),
        ({"file": ("a.txt", b"x")}, {"chunk_size": "0"}, "BAD_CHUNKING", 400),
    ],
)
async def test_bad_input_is_a_clear_4xx(
    client: httpx.AsyncClient,
    gateway: RunningGateway,
    collection: str,
    files: dict[str, Any] | None,
    json_body: dict[str, Any] | None,
    reason: str,
    status: int,
) -> None:
    reply = await client.post(
        f"/api/v1/collections/{collection}/documents",
        files=files,
        # With a file, the fields are the form's.
        data=json_body if files else None,
        json=None if files else json_body,
        headers=gateway.auth("admin"),
    )
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["details"]["reason"] == reason


async def test_too_large_and_missing_collection(
    client: httpx.AsyncClient, gateway: RunningGateway, collection: str, stack: Stack
) -> None:
    admin = gateway.auth("admin")
    settings = gateway_settings(
        stack.embedding, stack.vector, stack.inference, document_max_bytes=1000
    )
    async with run_gateway(settings, flows_settings()) as small, small.client() as http:
        reply = await upload_file(http, small.auth("admin"), collection, "big.txt", b"a " * 501)
        assert reply.status_code == 413, reply.text
        assert reply.json()["error"]["details"]["reason"] == "BODY_TOO_LARGE"
    reply = await client.post(
        "/api/v1/collections/no-such-kb/documents", json={"text": "hello"}, headers=admin
    )
    assert reply.status_code == 404, reply.text
    reply = await client.get("/api/v1/jobs/job-nothing", headers=admin)
    assert reply.status_code == 404
    assert json.loads(reply.text)["error"]["details"]["reason"] == "JOB_NOT_FOUND"
