"""Health, metrics, the OpenAPI document and the token command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

import httpx
import pytest

from lodestar.auth.tokens import TokenVerifier, mint_token
from lodestar.services.gateway.cli import token_main
from lodestar.services.gateway.server import create_server
from lodestar.services.gateway.settings import GatewaySettings
from tests.gateway.fakes import FakeBackends
from tests.gateway.harness import RunningGateway, free_port, gateway_settings, run_gateway


async def test_health_liveness_and_details(
    gateway: RunningGateway, client: httpx.AsyncClient
) -> None:
    live = await client.get("/api/v1/health")
    assert live.json() == {"status": "ok"}
    detailed = await client.get("/api/v1/health", headers=gateway.auth("viewer"))
    assert detailed.status_code == 200
    body = detailed.json()
    assert body["status"] == "ok"
    assert set(body["backends"]) == {"embedding", "vector", "inference"}
    replica = body["backends"]["vector"]["replicas"][0]
    assert replica["serving"] == "SERVING"
    assert replica["breaker"] == "closed"


async def test_prometheus_metrics_need_view_metrics(
    gateway: RunningGateway, client: httpx.AsyncClient
) -> None:
    await client.post(
        "/api/v1/vectors/search",
        json={"collection": "alpha", "vector": [1, 0, 0, 0]},
        headers=gateway.auth("viewer"),
    )
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers=gateway.auth("editor"))).status_code == 403
    scraped = await client.get("/metrics", headers=gateway.auth("operator"))
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    text = scraped.text
    assert (
        'lodestar_gateway_http_requests_total{method="POST",route="/api/v1/vectors/search",'
        'status="200"}' in text
    )
    assert "lodestar_gateway_circuit_breaker_state{" in text
    assert 'lodestar_gateway_backend_request_duration_seconds_count{backend="vector"' in text
    summary = await client.get("/api/v1/metrics", headers=gateway.auth("operator"))
    data = summary.json()
    assert data["requests"]["POST /api/v1/vectors/search"]["2xx"] >= 1
    assert set(data["circuit_breakers"]) == {"embedding", "vector", "inference"}


async def test_public_metrics_setting(fakes: FakeBackends) -> None:
    settings = gateway_settings(
        fakes.address("embedding"),
        fakes.address("vector"),
        fakes.address("inference"),
        metrics_public=True,
    )
    async with run_gateway(settings) as gw, gw.client() as http:
        assert (await http.get("/metrics")).status_code == 200


async def test_openapi_document_and_docs(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    search = schema["paths"]["/api/v1/vectors/search"]["post"]
    assert search["x-required-permissions"] == ["SearchVectors"]
    assert search["security"] == [{"bearerAuth": []}]
    assert "SearchVectors" in search["description"]
    assert "security" not in schema["paths"]["/api/v1/health"]["get"]
    for path in ("/api/v1/generate", "/api/v1/collections/{name}/snapshots/{snapshot}/restore"):
        assert path in schema["paths"]
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_token_command(capsys: pytest.CaptureFixture[str]) -> None:
    code = token_main(["--sub", "alice", "--role", "user", "--ttl", "1h", "--tenant", "acme"])
    assert code == 0
    token = capsys.readouterr().out.strip()
    principal = await TokenVerifier(GatewaySettings()).verify(token)
    assert principal.subject == "alice"
    assert principal.tenant == "acme"
    assert principal.roles == ("user",)
    assert 3500 < principal.expires_at - principal.not_before <= 3600
    for argv in (
        ["--sub", "a", "--role", "wizard"],
        ["--sub", "a"],
        ["--sub", "a", "--role", "user", "--ttl", "soon"],
    ):
        with pytest.raises(SystemExit) as caught:
            token_main(argv)
        assert caught.value.code == 2


async def test_sigterm_drains_in_flight_requests_and_exits_cleanly(fakes: FakeBackends) -> None:
    port = free_port()
    env = {
        **os.environ,
        "LODESTAR_GATEWAY_PORT": str(port),
        "LODESTAR_GATEWAY_EMBEDDING_ADDRESSES": fakes.address("embedding"),
        "LODESTAR_GATEWAY_VECTOR_ADDRESSES": fakes.address("vector"),
        "LODESTAR_GATEWAY_INFERENCE_ADDRESSES": fakes.address("inference"),
        "LODESTAR_LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lodestar.services.gateway",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/api/v1/health")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            fakes.vector.recorder.delay_s = 1.0
            fakes.vector.recorder.called.clear()
            token = mint_token(GatewaySettings(), "alice", ["viewer"], 60)
            slow = asyncio.create_task(
                http.post(
                    "/api/v1/vectors/search",
                    json={"collection": "alpha", "vector": [1, 0, 0, 0]},
                    headers={"Authorization": f"Bearer {token}"},
                )
            )
            await asyncio.wait_for(fakes.vector.recorder.called.wait(), 10)
            process.send_signal(signal.SIGTERM)
            response = await slow
            assert response.status_code == 200
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0, stderr.decode()[-2000:]
        assert b"Traceback" not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_server_calls_back_once_it_listens_and_leaves_signals_alone(
    gateway: RunningGateway,
) -> None:
    settings = gateway.settings.model_copy(update={"port": 0})
    listening = asyncio.Event()
    seen: list[bool] = []
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def started() -> None:
        seen.append(server.started)
        # Whoever runs the server owns the process's signals (runtime.process does).
        seen.append(all(signal.getsignal(sig) == h for sig, h in handlers.items()))
        listening.set()

    server = create_server(settings, on_started=started)
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.wait_for(listening.wait(), 30)
        assert seen == [True, True]
    finally:
        server.should_exit = True
        await task
