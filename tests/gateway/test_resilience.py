"""Circuit breakers, failover between replicas, retries and 503s."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from lodestar.runtime.errors import InvalidArgument, Unavailable
from lodestar.services.gateway.resilience import (
    BreakerState,
    CircuitBreaker,
    Deadline,
    parse_timeout_header,
)
from tests.gateway.fakes import FakeBackends, FakeVector, start_vector_fake
from tests.gateway.harness import free_port, gateway_settings, run_gateway

SEARCH = "/api/v1/vectors/search"
BODY = {"collection": "alpha", "vector": [1, 0, 0, 0]}


def breaker_state(replica: str, backend: str = "vector") -> float | None:
    return REGISTRY.get_sample_value(
        "lodestar_gateway_circuit_breaker_state", {"backend": backend, "replica": replica}
    )


def backend_calls(backend: str) -> float:
    """gRPC calls the gateways in this process have made to a backend's replicas."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "lodestar_gateway_backend_request_duration_seconds"
        for sample in metric.samples
        if sample.name.endswith("_count") and sample.labels["backend"] == backend
    )


def test_breaker_state_machine() -> None:
    now = [100.0]
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(3, 5.0, on_change=changes.append, clock=lambda: now[0])
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # not consecutive any more
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.probe_due()
    assert breaker.retry_after() == 5.0
    now[0] += 5.0
    assert breaker.probe_due()
    breaker.begin_probe()
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record_failure()  # the probe failed: open again, timer restarted
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 5.0
    now[0] += 5.0
    breaker.begin_probe()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert changes == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_timeout_headers_and_deadlines() -> None:
    assert parse_timeout_header("X-Request-Timeout", "2.5") == 2.5
    assert parse_timeout_header("X-Request-Timeout", "250ms") == 0.25
    assert parse_timeout_header("grpc-timeout", "3S") == 3
    assert parse_timeout_header("grpc-timeout", "20m") == pytest.approx(0.02)
    assert parse_timeout_header("grpc-timeout", "1H") == 3600
    with pytest.raises(InvalidArgument, match="grpc-timeout"):
        parse_timeout_header("grpc-timeout", "1.5S")
    assert not Deadline.after(10, 20).shortened
    short = Deadline.after(10, 0.5)
    assert short.shortened
    assert 0.4 < short.remaining() <= 0.5


async def test_idempotent_calls_retry_once_others_do_not(fakes: FakeBackends) -> None:
    settings = gateway_settings(
        fakes.address("embedding"), fakes.address("vector"), fakes.address("inference")
    )
    async with run_gateway(settings) as gw, gw.client() as http:
        recorder = fakes.vector.recorder
        recorder.fail_next.append(Unavailable("replica restarting"))
        response = await http.post(SEARCH, json=BODY, headers=gw.auth("viewer"))
        assert response.status_code == 200
        assert recorder.methods().count("SearchPoints") == 2
        recorder.fail_next.append(Unavailable("replica restarting"))
        created = await http.post(
            "/api/v1/collections", json={"name": "c", "dimension": 4}, headers=gw.auth("admin")
        )
        assert created.status_code == 503
        assert recorder.methods().count("CreateCollection") == 1


async def test_all_replicas_open_answers_503_at_once(fakes: FakeBackends) -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    settings = gateway_settings(
        fakes.address("embedding"),
        dead,
        fakes.address("inference"),
        breaker_failure_threshold=2,
        breaker_open_s=30,
    )
    async with run_gateway(settings) as gw, gw.client() as http:
        headers = gw.auth("viewer")
        for _ in range(2):
            response = await http.post(SEARCH, json=BODY, headers=headers)
            assert response.status_code == 503
        assert [breaker_state(a) for a in dead] == [2, 2]
        calls = backend_calls("vector")
        response = await http.post(SEARCH, json=BODY, headers=headers)
        assert response.status_code == 503
        # Refused without trying a replica, nor waiting for a probe of one.
        assert backend_calls("vector") == calls
        assert [breaker_state(a) for a in dead] == [2, 2]
        assert response.json()["error"]["details"]["reason"] == "BACKEND_UNAVAILABLE"
        assert 25 <= int(response.headers["retry-after"]) <= 30
        health = await http.get("/api/v1/health", headers=gw.auth("admin"))
        assert health.status_code == 503
        vector = health.json()["backends"]["vector"]
        assert vector["status"] == "unavailable"
        assert {r["breaker"] for r in vector["replicas"]} == {"open"}
        assert health.json()["backends"]["embedding"]["status"] == "ok"


async def test_failover_when_a_replica_dies_and_recovery(fakes: FakeBackends) -> None:
    first, second = FakeVector(), FakeVector()
    server_one = await start_vector_fake(first)
    server_two = await start_vector_fake(second)
    port_one = server_one.port
    address_one = f"127.0.0.1:{port_one}"
    settings = gateway_settings(
        fakes.address("embedding"),
        [address_one, f"127.0.0.1:{server_two.port}"],
        fakes.address("inference"),
        breaker_failure_threshold=3,
        breaker_open_s=0.5,
        probe_timeout_s=0.5,
        reconnect_backoff_max_s=0.3,
    )
    failures: list[str] = []
    done = asyncio.Event()
    counts = {"requests": 0}

    async with run_gateway(settings) as gw, gw.client() as http:
        headers = gw.auth("viewer")

        async def worker(kind: int) -> None:
            while not done.is_set():
                if kind % 2:
                    response = await http.get("/api/v1/vectors/1?collection=alpha", headers=headers)
                else:
                    response = await http.post(SEARCH, json=BODY, headers=headers)
                counts["requests"] += 1
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                await asyncio.sleep(0.005)

        workers = [asyncio.create_task(worker(i)) for i in range(4)]
        try:
            await asyncio.sleep(0.3)
            assert first.recorder.calls
            assert second.recorder.calls
            await server_one.stop(0)  # killed during a stream of requests
            deadline = time.monotonic() + 5
            while breaker_state(address_one) != BreakerState.OPEN:
                assert time.monotonic() < deadline, "the dead replica's breaker did not open"
                await asyncio.sleep(0.02)
            served_before = len(second.recorder.calls)
            await asyncio.sleep(0.5)
            assert len(second.recorder.calls) > served_before  # the survivor takes the load

            revived = FakeVector()
            server_one = await start_vector_fake(revived, port=port_one)
            deadline = time.monotonic() + 10
            while breaker_state(address_one) != BreakerState.CLOSED or not revived.recorder.calls:
                assert time.monotonic() < deadline, "the revived replica's breaker did not close"
                await asyncio.sleep(0.05)
        finally:
            done.set()
            await asyncio.gather(*workers)
            await server_one.stop(0)
            await server_two.stop(0)
    assert counts["requests"] > 50
    assert failures == []


async def test_a_request_waits_for_a_due_probe_instead_of_failing(fakes: FakeBackends) -> None:
    server = await start_vector_fake(FakeVector())
    port = server.port
    address = f"127.0.0.1:{port}"
    settings = gateway_settings(
        fakes.address("embedding"),
        address,
        fakes.address("inference"),
        breaker_failure_threshold=1,
        breaker_open_s=0.3,
        probe_timeout_s=2,
        reconnect_backoff_max_s=0.2,
    )
    try:
        async with run_gateway(settings) as gw, gw.client() as http:
            headers = gw.auth("viewer")
            assert (await http.post(SEARCH, json=BODY, headers=headers)).status_code == 200
            await server.stop(0)
            assert (await http.post(SEARCH, json=BODY, headers=headers)).status_code == 503
            assert breaker_state(address) == BreakerState.OPEN
            server = await start_vector_fake(FakeVector(), port=port)
            await asyncio.sleep(0.4)  # the breaker's open time is over: a probe is due
            response = await http.post(SEARCH, json=BODY, headers=headers)
            assert response.status_code == 200, response.text
            assert breaker_state(address) == BreakerState.CLOSED
    finally:
        await server.stop(0)
