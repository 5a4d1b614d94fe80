"""Rate limits: requests per route class and generated tokens per subject,
in memory and in Redis shared by two gateway instances."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from lodestar.services.gateway.ratelimit import (
    MemoryBucketStore,
    RateLimited,
    RateLimiter,
    RedisBucketStore,
    RouteClass,
)
from tests.gateway.fakes import FakeBackends
from tests.gateway.harness import gateway_settings, redis_server, run_gateway

SEARCH = "/api/v1/vectors/search"
BODY = {"collection": "alpha", "vector": [1, 0, 0, 0]}
WINDOW_S = 2.0


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def _settings(fakes: FakeBackends, **overrides: object) -> object:
    values: dict[str, object] = {
        "requests_per_minute": {"read": 4, "generate": 100, "write": 100, "admin": 100},
        "generated_tokens_per_minute": 8,
        "rate_limit_window_s": WINDOW_S,
    }
    values.update(overrides)
    return gateway_settings(
        fakes.address("embedding"), fakes.address("vector"), fakes.address("inference"), **values
    )


async def _search(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.post(SEARCH, json=BODY, headers={"Authorization": f"Bearer {token}"})


async def test_request_limit_reached_and_recovered(fakes: FakeBackends) -> None:
    async with run_gateway(_settings(fakes)) as gw, gw.client() as http:  # type: ignore[arg-type]
        alice, bob = gw.token("viewer", sub="alice"), gw.token("viewer", sub="bob")
        statuses = [(await _search(http, alice)).status_code for _ in range(4)]
        assert statuses == [200] * 4
        first = await _search(http, alice)
        refused = await _search(http, alice)
        assert first.headers["ratelimit-limit"] == "4"
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "RESOURCE_EXHAUSTED"
        assert error["details"]["reason"] == "RATE_LIMITED"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["ratelimit-remaining"] == "0"
        assert refused.headers["ratelimit-policy"] == "4;w=2"
        # Budgets are per subject and per route class.
        assert (await _search(http, bob)).status_code == 200
        generate = await http.post(
            "/api/v1/generate", json={"prompt": "x"}, headers=gw.auth("viewer", "user")
        )
        assert generate.status_code == 200
        await asyncio.sleep(WINDOW_S / 4 + 0.1)  # one request's worth refills
        recovered = await _search(http, alice)
        assert recovered.status_code == 200
        assert int(recovered.headers["ratelimit-remaining"]) == 0


async def test_generated_token_limit(fakes: FakeBackends) -> None:
    fakes.inference.completion_tokens = 6
    async with run_gateway(_settings(fakes)) as gw, gw.client() as http:  # type: ignore[arg-type]
        headers = gw.auth("user")
        first = await http.post("/api/v1/generate", json={"prompt": "a"}, headers=headers)
        second = await http.post("/api/v1/generate", json={"prompt": "b"}, headers=headers)
        assert (first.status_code, second.status_code) == (200, 200)  # 8 → 2 → -4
        third = await http.post("/api/v1/generate", json={"prompt": "c"}, headers=headers)
        assert third.status_code == 429
        assert third.json()["error"]["details"]["reason"] == "TOKEN_RATE_LIMITED"
        retry_after = int(third.headers["retry-after"])
        assert 1 <= retry_after <= WINDOW_S
        streamed = await http.post(
            "/api/v1/generate", json={"prompt": "d", "stream": True}, headers=headers
        )
        assert streamed.status_code == 429
        await asyncio.sleep(5 / (8 / WINDOW_S) + 0.1)  # from -4 back above 1
        assert (
            await http.post("/api/v1/generate", json={"prompt": "e"}, headers=headers)
        ).status_code == 200


async def test_redis_budget_is_shared_by_two_gateways(fakes: FakeBackends, redis_url: str) -> None:
    settings = _settings(fakes, redis_url=redis_url, redis_key_prefix=f"t{time.time_ns()}:")
    async with (
        run_gateway(settings) as one,  # type: ignore[arg-type]
        run_gateway(settings) as two,  # type: ignore[arg-type]
        one.client() as http_one,
        two.client() as http_two,
    ):
        token = one.token("viewer", sub="carol")
        statuses = []
        for i in range(6):
            http = http_one if i % 2 == 0 else http_two
            statuses.append((await _search(http, token)).status_code)
        assert statuses == [200, 200, 200, 200, 429, 429]
        assert (await _search(http_two, one.token("viewer", sub="dave"))).status_code == 200
        await asyncio.sleep(WINDOW_S / 4 + 0.1)
        assert (await _search(http_one, token)).status_code == 200
        assert (await _search(http_two, token)).status_code == 429


async def test_redis_and_memory_stores_agree(redis_url: str) -> None:
    stores = [MemoryBucketStore(), RedisBucketStore(redis_url, f"agree{time.time_ns()}:")]
    try:
        for store in stores:
            limiter = RateLimiter(store, {RouteClass.READ: 3}, 10, window_s=60)
            for _ in range(3):
                decision = await limiter.check_request("s", RouteClass.READ)
                assert decision is not None
            assert decision.remaining == 0
            with pytest.raises(RateLimited) as caught:
                await limiter.check_request("s", RouteClass.READ)
            assert caught.value.decision.retry_after_s == 20
            await limiter.check_tokens("s")
            await limiter.debit_tokens("s", 25)  # floors at -limit
            with pytest.raises(RateLimited) as caught:
                await limiter.check_tokens("s")
            assert caught.value.decision.retry_after_s == pytest.approx(66, abs=1)
    finally:
        for store in stores:
            await store.close()


async def test_unreachable_redis_does_not_block_requests(fakes: FakeBackends) -> None:
    settings = _settings(fakes, redis_url="redis://127.0.0.1:1/0")
    async with run_gateway(settings) as gw, gw.client() as http:  # type: ignore[arg-type]
        assert (await _search(http, gw.token("viewer"))).status_code == 200
