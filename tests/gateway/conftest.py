"""Fixtures: fake backends on real gRPC servers and a gateway in front of them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.gateway.fakes import FakeBackends, start_fakes
from tests.gateway.harness import RunningGateway, gateway_settings, run_gateway


@pytest.fixture(scope="session")
async def fakes() -> AsyncIterator[FakeBackends]:
    backends = await start_fakes()
    yield backends
    await backends.stop()


@pytest.fixture(autouse=True)
def _reset_fakes(request: pytest.FixtureRequest) -> None:
    if "fakes" not in request.fixturenames and "gateway" not in request.fixturenames:
        return
    backends: FakeBackends = request.getfixturevalue("fakes")
    for recorder in (
        backends.embedding.recorder,
        backends.vector.recorder,
        backends.inference.recorder,
    ):
        recorder.calls.clear()
        recorder.fail_next.clear()
        recorder.delay_s = 0.0
    backends.inference.completion_tokens = 5
    backends.inference.stream_tokens = 5
    backends.inference.stream_delay_s = 0.0
    backends.inference.first_token_delay_s = 0.0


@pytest.fixture(scope="session")
async def gateway(fakes: FakeBackends) -> AsyncIterator[RunningGateway]:
    """A gateway over the fakes with generous limits (shared by many tests)."""
    settings = gateway_settings(
        fakes.address("embedding"),
        fakes.address("vector"),
        fakes.address("inference"),
        max_body_bytes=64 * 1024,
        requests_per_minute={"generate": 100000, "read": 100000, "write": 100000, "admin": 100000},
        generated_tokens_per_minute=10_000_000,
    )
    async with run_gateway(settings) as running:
        yield running


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client() as http:
        yield http
