"""Circuit breakers, failover between replicas, retries and 503s."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from pathlib import Path

import pytest
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from prometheus_client import REGISTRY

import lodestar
from lodestar.runtime.errors import InvalidArgument, Unavailable
from lodestar.services.gateway import backends as backends_module
from lodestar.services.gateway.backend_errors import BackendError
from lodestar.services.gateway.backends import (
    ANALYTICS_SERVICE,
    EMBEDDING_SERVICE,
    IDEMPOTENT,
    INFERENCE_SERVICE,
    VECTOR_SERVICE,
    Backends,
)
from lodestar.services.gateway.deadline import CallOptions, Deadline, parse_timeout_header
from lodestar.services.gateway.resilience import BreakerState, CircuitBreaker, Rpc
from lodestar.vector.v1 import vector_service_pb2 as vpb
from tests.gateway.fakes import (
    FakeAnalytics,
    FakeBackends,
    FakeEmbedding,
    FakeInference,
    FakeVector,
    start_vector_fake,
)
from tests.gateway.harness import free_port, gateway_settings, run_gateway

SEARCH = "/api/v1/vectors/search"
BODY = {"collection": "alpha", "vector": [1, 0, 0, 0]}


def breaker_state(replica: str, backend: str = "vector") -> BreakerState | None:
    """The state whose series is 1 (each state is a label of its own series)."""
    for state in BreakerState:
        value = REGISTRY.get_sample_value(
            "lodestar_gateway_circuit_breaker_state",
            {"backend": backend, "replica": replica, "state": state.name.lower()},
        )
        if value == 1:
            return state
    return None


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


def _generated_services() -> list[ServiceDescriptor]:
    """Every service in the generated protos, found from the files themselves."""
    root = Path(lodestar.__file__).parent
    services = []
    for path in sorted(root.glob("*/v1/*_pb2.py")):
        name = ".".join(("lodestar", *path.relative_to(root).with_suffix("").parts))
        services.extend(importlib.import_module(name).DESCRIPTOR.services_by_name.values())
    return services


def test_every_backend_rpc_declares_whether_it_is_idempotent() -> None:
    generated = {s.full_name: {m.name for m in s.methods} for s in _generated_services()}
    assert len(generated) == 4
    declared = {service: set(methods) for service, methods in IDEMPOTENT.items()}
    assert declared == generated


async def test_a_client_rpc_must_be_one_of_the_proto() -> None:
    backends = Backends(gateway_settings("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"))
    try:
        service = backends_module._Service(backends.vector_pool, VECTOR_SERVICE)
        assert service.unary(vpb.GetPointsRequest, vpb.GetPointsResponse).rpc == Rpc(
            VECTOR_SERVICE.full_name, "GetPoints", True
        )
        with pytest.raises(TypeError, match="SearchPointsResponse"):
            service.unary(vpb.GetPointsRequest, vpb.SearchPointsResponse)
        with pytest.raises(TypeError, match="server-streaming"):
            service.stream(vpb.GetPointsRequest, vpb.GetPointsResponse)
    finally:
        await backends.close()


async def test_the_table_decides_which_calls_are_retried(fakes: FakeBackends) -> None:
    """Every RPC the fakes serve, its first attempt failing with UNAVAILABLE:
    it is sent a second time exactly when the table calls it idempotent."""
    settings = gateway_settings(
        fakes.address("embedding"),
        fakes.address("vector"),
        fakes.address("inference"),
        breaker_failure_threshold=1000,
    )
    backends = Backends(settings)
    served = {
        EMBEDDING_SERVICE: (backends.embedding_pool, fakes.embedding.recorder, FakeEmbedding),
        VECTOR_SERVICE: (backends.vector_pool, fakes.vector.recorder, FakeVector),
        ANALYTICS_SERVICE: (backends.vector_pool, fakes.vector.recorder, FakeAnalytics),
        INFERENCE_SERVICE: (backends.inference_pool, fakes.inference.recorder, FakeInference),
    }
    retried: dict[str, bool] = {}
    try:
        for service, (pool, recorder, fake) in served.items():
            for method in service.methods:
                if method.name not in vars(fake):
                    continue  # the fake leaves it unimplemented
                recorder.calls.clear()
                recorder.fail_next[:] = [Unavailable("replica restarting")]
                rpc = Rpc(
                    service.full_name, method.name, IDEMPOTENT[service.full_name][method.name]
                )
                request = GetMessageClass(method.input_type)()
                options = CallOptions(Deadline.after(5.0))
                # Some fakes reject an empty request on the second attempt.
                with contextlib.suppress(BackendError):
                    if method.server_streaming:
                        async for _ in pool.stream(rpc, request, options):
                            pass
                    else:
                        await pool.unary(rpc, request, options)
                attempts = recorder.methods()
                assert set(attempts) == {method.name}
                retried[method.full_name] = len(attempts) == 2
    finally:
        await backends.close()
    expected = {
        f"{service}.{method}": idempotent
        for service, methods in IDEMPOTENT.items()
        for method, idempotent in methods.items()
        if f"{service}.{method}" in retried
    }
    assert retried == expected
    assert len(retried) >= 25
    assert not retried["lodestar.vector.v1.AnalyticsService.RecordUsage"]
    assert retried["lodestar.inference.v1.InferenceService.StreamGenerateText"]


async def test_all_replicas_open_refuses_writes_at_once_and_reads_within_their_deadline(
    fakes: FakeBackends,
) -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    settings = gateway_settings(
        fakes.address("embedding"),
        dead,
        fakes.address("inference"),
        breaker_failure_threshold=2,
        breaker_open_s=30,
    )
    async with run_gateway(settings) as gw, gw.client() as http:
        headers = {**gw.auth("viewer"), "X-Request-Timeout": "0.5"}
        for _ in range(2):
            response = await http.post(SEARCH, json=BODY, headers=headers)
            assert response.status_code == 503
        assert [breaker_state(a) for a in dead] == [2, 2]
        calls = backend_calls("vector")
        # A read waits for a replica to come back, but no longer than its deadline.
        started = time.monotonic()
        response = await http.post(SEARCH, json=BODY, headers=headers)
        waited = time.monotonic() - started
        assert response.status_code == 503
        assert 0.4 <= waited < 3, waited
        assert response.json()["error"]["details"]["reason"] == "BACKEND_UNAVAILABLE"
        assert 25 <= int(response.headers["retry-after"]) <= 30
        # A call that may not be sent twice is refused at once, without a try.
        started = time.monotonic()
        response = await http.post(
            "/api/v1/collections",
            json={"name": "beta", "dimension": 4},
            headers=gw.auth("admin"),
        )
        assert response.status_code == 503, response.text
        assert time.monotonic() - started < 0.4
        assert 25 <= int(response.headers["retry-after"]) <= 30
        assert backend_calls("vector") == calls
        assert [breaker_state(a) for a in dead] == [2, 2]
        health = await http.get("/api/v1/health", headers=gw.auth("admin"))
        assert health.status_code == 503
        vector = health.json()["backends"]["vector"]
        assert vector["status"] == "unavailable"
        assert {r["breaker"] for r in vector["replicas"]} == {"open"}
        assert health.json()["backends"]["embedding"]["status"] == "ok"


async def test_reads_and_writes_ride_out_a_restart_of_the_only_replica(
    fakes: FakeBackends,
) -> None:
    vector = FakeVector()
    server = await start_vector_fake(vector)
    port = server.port
    address = f"127.0.0.1:{port}"
    settings = gateway_settings(
        fakes.address("embedding"),
        address,
        fakes.address("inference"),
        breaker_failure_threshold=1,
        breaker_open_s=5,
    )
    try:
        async with run_gateway(settings) as gw, gw.client() as http:
            headers = gw.auth("editor")
            assert (await http.post(SEARCH, json=BODY, headers=headers)).status_code == 200
            await server.stop(0)
            # Calls made while the only replica is down, one before its breaker
            # opens and some after, all wait for it.
            started = time.monotonic()
            calls = [
                asyncio.create_task(http.post(SEARCH, json=BODY, headers=headers)),
                asyncio.create_task(
                    http.get("/api/v1/vectors/1?collection=alpha", headers=headers)
                ),
            ]
            await asyncio.sleep(0.3)
            calls.append(
                asyncio.create_task(
                    http.post(
                        "/api/v1/vectors/insert",
                        json={
                            "collection": "alpha",
                            "points": [{"id": "7", "vector": [1, 0, 0, 0]}],
                        },
                        headers=headers,
                    )
                )
            )
            await asyncio.sleep(0.5)
            server = await start_vector_fake(vector, port=port)
            answers = await asyncio.gather(*calls)
            assert [r.status_code for r in answers] == [200, 200, 200], [r.text for r in answers]
            # Back well before the breaker's 5 s open period would have ended.
            assert time.monotonic() - started < 4
            assert breaker_state(address) == BreakerState.CLOSED
    finally:
        await server.stop(0)


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
