"""Document jobs through Redis: two ``lodestar worker`` processes take them off
the queue, and a job whose worker is killed is run again by the other."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.flows.conftest import Stack, create_collection, flows_settings, fresh
from tests.flows.harness import RunningGateway, gateway_settings, run_gateway
from tests.flows.test_documents import big_text
from tests.gateway.harness import redis_server

pytestmark = pytest.mark.asyncio(loop_scope="session")

JOB_TIMEOUT_S = 20
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def start_worker(
    stack: Stack, redis_url: str, prefix: str, timeout_s: float = JOB_TIMEOUT_S
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
        "LODESTAR_GATEWAY_REDIS_URL": redis_url,
        "LODESTAR_GATEWAY_REDIS_KEY_PREFIX": prefix,
        "LODESTAR_GATEWAY_EMBEDDING_ADDRESSES": stack.embedding,
        "LODESTAR_GATEWAY_VECTOR_ADDRESSES": stack.vector,
        "LODESTAR_GATEWAY_INFERENCE_ADDRESSES": stack.inference,
        "LODESTAR_GATEWAY_DOCUMENT_JOB_TIMEOUT_S": str(timeout_s),
        "LODESTAR_GATEWAY_DOCUMENT_JOBS_PER_PROCESS": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "lodestar.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
    )


@pytest.fixture
async def queued_gateway(stack: Stack, redis_url: str) -> AsyncIterator[RunningGateway]:
    """A gateway that queues document jobs in Redis and runs none itself."""
    settings = gateway_settings(
        stack.embedding,
        stack.vector,
        stack.inference,
        redis_url=redis_url,
        redis_key_prefix=fresh("t") + ":",
        document_jobs_per_process=0,
    )
    async with run_gateway(settings, flows_settings()) as running:
        yield running


async def wait_for(
    http: httpx.AsyncClient, headers: dict[str, str], job_id: str, done: object, timeout_s: float
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        status: dict[str, object] = (
            await http.get(f"/api/v1/jobs/{job_id}", headers=headers)
        ).json()
        if done(status):  # type: ignore[operator]
            return status
        assert loop.time() < deadline, status
        await asyncio.sleep(0.05)


async def test_a_job_whose_worker_dies_is_run_again_by_another(
    stack: Stack, redis_url: str, queued_gateway: RunningGateway
) -> None:
    prefix = queued_gateway.settings.redis_key_prefix
    workers = [start_worker(stack, redis_url, prefix) for _ in range(2)]
    try:
        async with queued_gateway.client() as http:
            admin = queued_gateway.auth("admin")
            collection = fresh("kbq")
            await create_collection(http, admin, collection)
            reply = await http.post(
                f"/api/v1/collections/{collection}/documents",
                json={"text": big_text(80), "id": "queued", "background": True},
                headers=admin,
            )
            assert reply.status_code == 202, reply.text
            job_id = reply.json()["job"]["id"]
            running = await wait_for(
                http, admin, job_id, lambda s: s["status"] == "running", timeout_s=60
            )
            pid = int(str(running["worker"]).rsplit(":", 1)[1])
            (victim,) = [w for w in workers if w.pid == pid]
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            finished = await wait_for(
                http,
                admin,
                job_id,
                lambda s: s["status"] in ("succeeded", "failed"),
                timeout_s=JOB_TIMEOUT_S + 10 + 60,
            )
            assert finished["status"] == "succeeded", str(finished)
            assert finished["attempt"] == 2
            assert int(str(finished["worker"]).rsplit(":", 1)[1]) != pid
            got = await http.get(
                f"/api/v1/collections/{collection}/documents/queued", headers=admin
            )
            body = got.json()
            assert body["document"]["chunks"] == len(body["chunks"])
            # The killed try's unfinished version left nothing behind.
            assert {c["position"] for c in body["chunks"]} == set(range(len(body["chunks"])))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)


async def test_a_job_the_queue_gives_up_on_is_reported_failed(
    stack: Stack, redis_url: str, queued_gateway: RunningGateway
) -> None:
    """A job that overruns its time is stopped by arq; the job says so."""
    prefix = queued_gateway.settings.redis_key_prefix
    worker = start_worker(stack, redis_url, prefix, timeout_s=0.2)
    try:
        async with queued_gateway.client() as http:
            admin = queued_gateway.auth("admin")
            collection = fresh("kbf")
            await create_collection(http, admin, collection)
            reply = await http.post(
                f"/api/v1/collections/{collection}/documents",
                json={"text": big_text(400), "id": "slow", "background": True},
                headers=admin,
            )
            job_id = reply.json()["job"]["id"]
            failed = await wait_for(
                http,
                admin,
                job_id,
                lambda s: s["status"] != "queued" and s["status"] != "running",
                timeout_s=90,
            )
            assert failed["status"] == "failed", str(failed)
            assert "TimeoutError" in str(failed["error"])
            # The unfinished version was never committed: there is no document.
            got = await http.get(f"/api/v1/collections/{collection}/documents/slow", headers=admin)
            assert got.status_code == 404
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
