"""Replacing a document while others replace it too: concurrent uploads of one
document id (in one gateway, and through Redis across a gateway and a worker)
leave exactly one whole version; and the document list says which documents a
job is writing."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.flows.conftest import Stack, create_collection, flows_settings, fresh
from tests.flows.harness import RunningGateway, gateway_settings, run_gateway
from tests.flows.test_document_workers import start_worker, wait_for
from tests.flows.test_documents import FINISHED, chunk_payloads
from tests.gateway.harness import redis_server

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Different lengths, so that the versions have different chunk counts.
SIZES = (6, 17, 31, 48)


def text(paragraphs: int, word: str) -> str:
    return "\n\n".join(
        f"Paragraph {i} of version {word} tells of the harbour's {word} boats."
        for i in range(paragraphs)
    )


def upload_body(document_id: str, paragraphs: int, word: str, **extra: Any) -> dict[str, Any]:
    return {
        "text": text(paragraphs, word),
        "id": document_id,
        "chunk_size": 120,
        "chunk_overlap": 10,
        **extra,
    }


async def assert_one_whole_version(
    http: httpx.AsyncClient, headers: dict[str, str], collection: str, document_id: str
) -> dict[str, Any]:
    """The document's stored points are exactly one version, whole, as its chunk 0 says."""
    payloads = await chunk_payloads(http, headers, collection, document_id)
    versions = {p["document_version"] for p in payloads}
    assert len(versions) == 1, sorted(versions)
    heads = [p for p in payloads if p["chunk_index"] == 0]
    assert len(heads) == 1
    count = heads[0]["chunk_count"]
    assert sorted(p["chunk_index"] for p in payloads) == list(range(count))
    assert all(p["chunk_count"] == count for p in payloads)
    word = heads[0]["text"].split("version ", 1)[1].split(" ", 1)[0]
    assert all(f"version {word} " in p["text"] for p in payloads)
    got = await http.get(
        f"/api/v1/collections/{collection}/documents/{document_id}", headers=headers
    )
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["document"]["version"] == heads[0]["document_version"]
    assert body["document"]["chunks"] == count == len(body["chunks"])
    return body


async def test_concurrent_uploads_of_one_document_leave_one_whole_version(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    admin = gateway.auth("admin")
    collection = fresh("kbc")
    await create_collection(client, admin, collection)
    url = f"/api/v1/collections/{collection}/documents"
    for round_ in range(3):
        # Inline puts and job puts of the same id, all at once.
        replies = await asyncio.gather(
            *(
                client.post(
                    url,
                    json=upload_body("shared", n, f"r{round_}v{i}", background=i % 2 == 1),
                    headers=admin,
                )
                for i, n in enumerate(SIZES)
            )
        )
        jobs = []
        for reply in replies:
            assert reply.status_code in (201, 202), reply.text
            if reply.status_code == 202:
                jobs.append(reply.json()["job"]["id"])
        for job_id in jobs:
            for _ in range(600):
                status = (await client.get(f"/api/v1/jobs/{job_id}", headers=admin)).json()
                if status["status"] in FINISHED:
                    break
                await asyncio.sleep(0.05)
            assert status["status"] == "succeeded", status
        await assert_one_whole_version(client, admin, collection, "shared")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


async def test_concurrent_uploads_through_redis_leave_one_whole_version(
    stack: Stack, redis_url: str
) -> None:
    """A gateway writing an upload itself while two worker processes write others."""
    prefix = fresh("t") + ":"
    settings = gateway_settings(
        stack.embedding,
        stack.vector,
        stack.inference,
        redis_url=redis_url,
        redis_key_prefix=prefix,
        document_jobs_per_process=0,
    )
    workers = [start_worker(stack, redis_url, prefix) for _ in range(2)]
    try:
        async with run_gateway(settings, flows_settings()) as running, running.client() as http:
            admin = running.auth("admin")
            collection = fresh("kbr")
            await create_collection(http, admin, collection)
            url = f"/api/v1/collections/{collection}/documents"
            for round_ in range(3):
                replies = await asyncio.gather(
                    *(
                        http.post(
                            url,
                            json=upload_body("shared", n, f"r{round_}v{i}", background=i > 0),
                            headers=admin,
                        )
                        for i, n in enumerate(SIZES)
                    )
                )
                pids = set()
                for reply in replies[1:]:
                    assert reply.status_code == 202, reply.text
                    done = await wait_for(
                        http,
                        admin,
                        reply.json()["job"]["id"],
                        lambda s: s["status"] in FINISHED,
                        timeout_s=120,
                    )
                    assert done["status"] == "succeeded", done
                    pids.add(int(str(done["worker"]).rsplit(":", 1)[1]))
                assert pids <= {w.pid for w in workers}
                await assert_one_whole_version(http, admin, collection, "shared")
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)


async def listed(
    http: httpx.AsyncClient, headers: dict[str, str], collection: str
) -> dict[str, dict[str, Any]]:
    reply = await http.get(f"/api/v1/collections/{collection}/documents", headers=headers)
    assert reply.status_code == 200, reply.text
    return {d["id"]: d for d in reply.json()["documents"]}


async def test_a_document_a_job_is_writing_is_listed_as_processing(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    admin = gateway.auth("admin")
    collection = fresh("kbs")
    await create_collection(client, admin, collection)
    url = f"/api/v1/collections/{collection}/documents"
    first = (await client.post(url, json=upload_body("doc", 3, "one"), headers=admin)).json()
    replies = [
        await client.post(url, json=upload_body(i, 300, "two", background=True), headers=admin)
        for i in ("doc", "new")
    ]
    jobs = [reply.json()["job"]["id"] for reply in replies]
    rows = await listed(client, admin, collection)
    assert rows["doc"]["status"] == "processing"
    assert rows["doc"]["job"] == jobs[0]
    # The previous version is still the one served.
    assert rows["doc"]["version"] == first["document"]["version"]
    assert rows["new"]["status"] == "processing"
    assert rows["new"]["job"] == jobs[1]
    assert rows["new"]["chunks"] == 0
    got = (await client.get(f"{url}/doc", headers=admin)).json()
    assert got["document"]["status"] == "processing"
    assert len(got["chunks"]) == first["document"]["chunks"]
    got = (await client.get(f"{url}/new", headers=admin)).json()
    assert got["document"]["status"] == "processing"
    assert got["chunks"] == []
    for job_id in jobs:
        for _ in range(1200):
            status = (await client.get(f"/api/v1/jobs/{job_id}", headers=admin)).json()
            if status["status"] in FINISHED:
                break
            await asyncio.sleep(0.05)
        assert status["status"] == "succeeded", status
    rows = await listed(client, admin, collection)
    assert {d["status"] for d in rows.values()} == {"ready"}
    assert not any("job" in d for d in rows.values())
    assert rows["doc"]["version"] != first["document"]["version"]


async def test_document_statuses_through_redis(stack: Stack, redis_url: str) -> None:
    """Queued jobs (no worker yet) show processing; a failed job shows failed, over
    the version it did not replace; a later version is ready again."""
    prefix = fresh("t") + ":"
    settings = gateway_settings(
        stack.embedding,
        stack.vector,
        stack.inference,
        redis_url=redis_url,
        redis_key_prefix=prefix,
        document_jobs_per_process=0,
    )
    async with run_gateway(settings, flows_settings()) as running, running.client() as http:
        admin = running.auth("admin")
        collection = fresh("kbq")
        await create_collection(http, admin, collection)
        url = f"/api/v1/collections/{collection}/documents"
        first = (await http.post(url, json=upload_body("doc", 3, "one"), headers=admin)).json()
        jobs = [
            (
                await http.post(url, json=upload_body(i, 8, "two", background=True), headers=admin)
            ).json()["job"]["id"]
            for i in ("doc", "new")
        ]
        rows = await listed(http, admin, collection)
        assert (rows["doc"]["status"], rows["doc"]["job"]) == ("processing", jobs[0])
        assert rows["doc"]["version"] == first["document"]["version"]
        assert (rows["new"]["status"], rows["new"]["job"]) == ("processing", jobs[1])

        worker = start_worker(stack, redis_url, prefix)
        try:
            for job_id in jobs:
                done = await wait_for(
                    http, admin, job_id, lambda s: s["status"] in FINISHED, timeout_s=120
                )
                assert done["status"] == "succeeded", done
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        rows = await listed(http, admin, collection)
        assert {(d["id"], d["status"]) for d in rows.values()} == {
            ("doc", "ready"),
            ("new", "ready"),
        }
        second = rows["doc"]["version"]

        worker = start_worker(stack, redis_url, prefix, timeout_s=0.2)
        try:
            reply = await http.post(
                url, json=upload_body("doc", 1500, "three", background=True), headers=admin
            )
            job_id = reply.json()["job"]["id"]
            failed = await wait_for(
                http,
                admin,
                job_id,
                lambda s: s["status"] not in ("queued", "running"),
                timeout_s=90,
            )
            assert failed["status"] == "failed", failed
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        rows = await listed(http, admin, collection)
        assert rows["doc"]["status"] == "failed"
        assert rows["doc"]["job"] == job_id
        assert "TimeoutError" in rows["doc"]["error"]
        assert rows["doc"]["version"] == second
        got = (await http.get(f"{url}/doc", headers=admin)).json()
        assert got["document"]["status"] == "failed"
        # A new version outdates the failure.
        await http.post(url, json=upload_body("doc", 3, "four"), headers=admin)
        rows = await listed(http, admin, collection)
        assert rows["doc"]["status"] == "ready"
        assert "error" not in rows["doc"]
