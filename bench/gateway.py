"""Gateway benchmark: vector calls made directly over gRPC against the same
calls through the gateway over HTTP.

    python -m bench.gateway [--points 10000] [--dim 128] [--calls 600] [--rate 100]
                            [--clients 32] [--seconds 3] [--rounds 3]

In one run, with the vector service (``python -m lodestar.services.vector``)
and the gateway (``python -m lodestar.services.gateway``) as their own
processes on loopback and this process as the client:

- a collection of ``--points`` random ``--dim``-d vectors with small payloads;
- two calls: a GET of one point (``GetPoints`` / ``GET /api/v1/vectors/{id}``)
  and a search (``SearchPoints`` / ``POST /api/v1/vectors/search``, limit 10,
  with payloads), the HTTP side with a bearer token, over keep-alive
  connections with a minimal HTTP/1.1 client (``bench.http``, as load tools
  work; ``--http-client httpx`` measures through httpx instead, whose own
  per-request CPU then counts as the gateway's);
- latency at a moderate load: one client making ``--calls`` calls on each
  path at ``--rate`` calls/s per path, direct and gateway calls taking turns
  (each starts half an interval after the other), so that both paths meet the
  same conditions; p50 and p99 of each path, and the gateway's added latency
  (gateway − direct) at both;
- requests/s at saturation: ``--clients`` concurrent clients for
  ``--seconds``, spread over ``--client-processes`` processes (one Python
  client process cannot keep a server busy), with the gateway process's CPU
  use during the window.

Latency windows and saturation windows (direct, then gateway) repeat for
``--rounds`` rounds and the medians are reported, so that load from other
processes affects both alike. Targets: added latency p50 ≤ 1 ms and p99 ≤ 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import httpx

from bench.http import KeepAliveHttp
from bench.processes import cpu_seconds, free_port, metric_samples, service_process
from lodestar.auth.tokens import mint_token
from lodestar.runtime.channels import insecure_channel
from lodestar.services.gateway.settings import GatewaySettings
from lodestar.vector.v1 import vector_service_pb2 as pb
from lodestar.vector.v1 import vector_service_pb2_grpc as pb_grpc

COLLECTION = "bench_gateway"
P50_TARGET_MS = 1.0
P99_TARGET_MS = 5.0

Call = Callable[[int], Awaitable[None]]


async def _load(stub: pb_grpc.VectorServiceAsyncStub, points: int, dim: int) -> list[float]:
    await stub.CreateCollection(
        pb.CreateCollectionRequest(name=COLLECTION, config=pb.CollectionConfig(dimension=dim))
    )
    rng = random.Random(7)
    batch = 1000
    for start in range(0, points, batch):
        chunk = []
        for i in range(start, min(points, start + batch)):
            point = pb.Point(id=pb.PointId(num=i), vector=[rng.gauss(0, 1) for _ in range(dim)])
            point.payload.update({"title": f"document {i}", "group": i % 10})
            chunk.append(point)
        await stub.UpsertPoints(pb.UpsertPointsRequest(collection=COLLECTION, points=chunk))
    return [rng.gauss(0, 1) for _ in range(dim)]


@dataclass
class Paths:
    """The four ways to call: (get, search) × (direct, gateway)."""

    get_direct: Call
    get_gateway: Call
    search_direct: Call
    search_gateway: Call


class HttpxClient:
    """httpx behind the same two calls as ``KeepAliveHttp`` (``--http-client httpx``)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def get(self, path: str) -> tuple[int, bytes]:
        response = await self.client.get(path)
        return response.status_code, response.content

    async def post_json(self, path: str, body: object) -> tuple[int, bytes]:
        response = await self.client.post(path, json=body)
        return response.status_code, response.content

    async def close(self) -> None:
        await self.client.aclose()


HttpClient = KeepAliveHttp | HttpxClient


def _http_client(kind: str, url: str, token: str) -> HttpClient:
    headers = {"Authorization": f"Bearer {token}"}
    if kind == "httpx":
        return HttpxClient(httpx.AsyncClient(base_url=url, headers=headers, timeout=30))
    host, _, port = url.removeprefix("http://").rpartition(":")
    return KeepAliveHttp(host, int(port), headers)


def _paths(
    stub: pb_grpc.VectorServiceAsyncStub,
    http: HttpClient,
    points: int,
    query: list[float],
) -> Paths:
    search_request = pb.SearchPointsRequest(
        collection=COLLECTION, vector=query, limit=10, with_payload=True
    )
    search_body = {"collection": COLLECTION, "vector": query, "limit": 10, "with_payload": True}

    async def get_direct(i: int) -> None:
        reply = await stub.GetPoints(
            pb.GetPointsRequest(
                collection=COLLECTION, ids=[pb.PointId(num=i % points)], with_payload=True
            ),
            timeout=10,
        )
        assert len(reply.points) == 1

    async def get_gateway(i: int) -> None:
        status, body = await http.get(f"/api/v1/vectors/{i % points}?collection={COLLECTION}")
        assert status == 200, body

    async def search_direct(i: int) -> None:
        reply = await stub.SearchPoints(search_request, timeout=10)
        assert len(reply.points) == 10

    async def search_gateway(i: int) -> None:
        status, body = await http.post_json("/api/v1/vectors/search", search_body)
        assert status == 200, body

    return Paths(get_direct, get_gateway, search_direct, search_gateway)


async def _paced(calls: Sequence[Call], count: int, rate: float) -> list[list[float]]:
    """Latencies (ms) of ``count`` sequential calls of each of ``calls``, which
    take turns: one call every 1/(rate × len(calls)) s, so each is called
    ``rate`` times a second."""
    interval = 1.0 / (rate * len(calls))
    latencies: list[list[float]] = [[] for _ in calls]
    next_start = time.perf_counter()
    for i in range(count * len(calls)):
        now = time.perf_counter()
        if next_start > now:
            await asyncio.sleep(next_start - now)
        turn = i % len(calls)
        start = time.perf_counter()
        await calls[turn](i // len(calls))
        latencies[turn].append((time.perf_counter() - start) * 1000)
        next_start = max(next_start + interval, time.perf_counter())
    return latencies


@dataclass(frozen=True)
class Target:
    """What a saturation worker process calls (picklable)."""

    vector: str
    gateway: str
    token: str
    points: int
    query: list[float]
    http_client: str


async def _worker_loop(
    target: Target, path: str, clients: int, seconds: float, start_at: float
) -> int:
    channel = insecure_channel(target.vector)
    stub = pb_grpc.VectorServiceStub(channel)
    # One connection per client loop, as separate users would have.
    https = [_http_client(target.http_client, target.gateway, target.token) for _ in range(clients)]
    calls: list[Call] = [
        getattr(_paths(stub, http, target.points, target.query), path) for http in https
    ]
    for i, call in enumerate(calls):  # open the connections before the window
        await call(i)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    stop = time.perf_counter() + seconds
    done = [0]

    async def loop(offset: int) -> None:
        call = calls[offset]
        i = offset
        while time.perf_counter() < stop:
            await call(i)
            done[0] += 1
            i += clients

    await asyncio.gather(*(loop(c) for c in range(clients)))
    for http in https:
        await http.close()
    await channel.close()
    return done[0]


def _saturation_worker(
    target: Target, path: str, clients: int, seconds: float, start_at: float
) -> int:
    return asyncio.run(_worker_loop(target, path, clients, seconds, start_at))


async def _saturate(
    pool: ProcessPoolExecutor,
    processes: int,
    target: Target,
    path: str,
    clients: int,
    seconds: float,
    gateway_pid: int,
) -> tuple[float, float]:
    """Calls per second from ``clients`` concurrent loops spread over
    ``processes`` client processes (one Python client process cannot keep a
    server busy on its own), all in the same ``seconds`` window; and the
    gateway process's CPU use (cores) in that window."""
    loop = asyncio.get_running_loop()
    start_at = time.time() + 1.0
    per_process = max(1, clients // processes)
    runs = asyncio.gather(
        *(
            loop.run_in_executor(
                pool, _saturation_worker, target, path, per_process, seconds, start_at
            )
            for _ in range(processes)
        )
    )
    await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu_before = cpu_seconds(gateway_pid)
    await asyncio.sleep(seconds)
    cpu = (cpu_seconds(gateway_pid) - cpu_before) / seconds
    counts = await runs
    return sum(counts) / seconds, cpu


_ROUTES = {
    "get": ("GET", "/api/v1/vectors/{id}", "GetPoints"),
    "search": ("POST", "/api/v1/vectors/search", "SearchPoints"),
}
_HTTP = "lodestar_gateway_http_request_duration_seconds"
_BACKEND = "lodestar_gateway_backend_request_duration_seconds"


async def _server_times(
    http: httpx.AsyncClient, token: str
) -> dict[str, tuple[float, float, float, float]]:
    """Cumulative handler and backend-call times of each benchmarked route,
    from the gateway's own Prometheus histograms."""
    text = (await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})).text
    values: dict[tuple[str, ...], float] = {}
    for name, labels, value in metric_samples(text):
        for suffix in ("_sum", "_count"):
            if name == _HTTP + suffix:
                values[(suffix, labels["method"], labels["route"])] = value
            elif name == _BACKEND + suffix and labels.get("code") == "OK":
                values[(suffix, labels["method"])] = value
    return {
        name: (
            values.get(("_sum", method, route), 0.0),
            values.get(("_sum", rpc), 0.0),
            values.get(("_count", method, route), 0.0),
            values.get(("_count", rpc), 0.0),
        )
        for name, (method, route, rpc) in _ROUTES.items()
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Figures:
    latency: dict[str, list[list[float]]] = field(default_factory=dict)
    rps: dict[str, list[float]] = field(default_factory=dict)
    gateway_cpu: list[float] = field(default_factory=list)
    # Gateway CPU seconds per call at saturation, by call.
    cpu_per_call: dict[str, list[float]] = field(default_factory=dict)
    # Per call: (seconds in the gateway's handler, seconds waiting for the
    # vector service, requests, backend calls), from the gateway's metrics.
    inside: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)

    def p(self, name: str, q: float) -> float:
        return statistics.median(_pct(run, q) for run in self.latency[name])

    def r(self, name: str) -> float:
        return statistics.median(self.rps[name])


async def measure(args: argparse.Namespace) -> Figures:
    vector_port, gateway_port = free_port(), free_port()
    data_dir = tempfile.mkdtemp(prefix="lodestar-bench-gateway-")
    vector_env = {
        "LODESTAR_VECTOR_PORT": str(vector_port),
        "LODESTAR_VECTOR_METRICS_PORT": "0",
        "LODESTAR_VECTOR_DATA_DIR": data_dir,
        "LODESTAR_LOG_LEVEL": "WARNING",
    }
    limits = (
        '{"read": 1000000000, "write": 1000000000, "generate": 1000000000, "admin": 1000000000}'
    )
    gateway_env = {
        "LODESTAR_GATEWAY_PORT": str(gateway_port),
        "LODESTAR_GATEWAY_VECTOR_ADDRESSES": f"127.0.0.1:{vector_port}",
        "LODESTAR_GATEWAY_ACCESS_LOG": "false",
        "LODESTAR_GATEWAY_REQUESTS_PER_MINUTE": limits,
        "LODESTAR_LOG_LEVEL": "WARNING",
    }
    url = f"http://127.0.0.1:{gateway_port}"
    token = mint_token(GatewaySettings(), "bench", ["viewer"], 3600)
    ops_token = mint_token(GatewaySettings(), "bench-ops", ["operator"], 3600)
    figures = Figures()
    pool = ProcessPoolExecutor(args.client_processes, mp_context=mp.get_context("spawn"))
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(
            service_process(
                "lodestar.services.vector", vector_env, grpc_address=f"127.0.0.1:{vector_port}"
            )
        )
        gateway_pid = await stack.enter_async_context(
            service_process("lodestar.services.gateway", gateway_env, http_url=url)
        )
        channel = insecure_channel(f"127.0.0.1:{vector_port}")
        stub = pb_grpc.VectorServiceStub(channel)
        # For the gateway's own metrics; the measured calls use ``--http-client``.
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            query = await _load(stub, args.points, args.dim)
            client = _http_client(args.http_client, url, token)
            paths = _paths(stub, client, args.points, query)
            turns: dict[str, tuple[Call, ...]] = {
                "get": (paths.get_direct, paths.get_gateway),
                "search": (paths.search_direct, paths.search_gateway),
            }
            for calls in turns.values():  # warm up connections, caches, JIT-free paths
                for i in range(200):
                    for call in calls:
                        await call(i)
            target = Target(
                f"127.0.0.1:{vector_port}", url, token, args.points, query, args.http_client
            )
            for round_no in range(args.rounds):
                for name, calls in turns.items():
                    before = await _server_times(http, ops_token)
                    measured = await _paced(calls, args.calls, args.rate)
                    after = await _server_times(http, ops_token)
                    for side, ms in zip(("direct", "gateway"), measured, strict=True):
                        figures.latency.setdefault(f"{name}.{side}", []).append(ms)
                    (a0, a1, a2, a3), (b0, b1, b2, b3) = after[name], before[name]
                    figures.inside.setdefault(name, []).append((a0 - b0, a1 - b1, a2 - b2, a3 - b3))
                for name in turns:
                    for side in ("direct", "gateway"):
                        key = f"{name}.{side}"
                        rps, cpu = await _saturate(
                            pool,
                            args.client_processes,
                            target,
                            f"{name}_{side}",
                            args.clients,
                            args.seconds,
                            gateway_pid,
                        )
                        if side == "gateway":
                            figures.gateway_cpu.append(cpu)
                            figures.cpu_per_call.setdefault(name, []).append(cpu / rps)
                        figures.rps.setdefault(key, []).append(rps)
                print(f"  round {round_no + 1}/{args.rounds} done", flush=True)
            await client.close()
        await channel.close()
    pool.shutdown()
    return figures


def report(figures: Figures, args: argparse.Namespace) -> bool:
    print(
        f"\nvector collection: {args.points} points × {args.dim}-d; "
        f"latency at {args.rate:g} calls/s "
        f"per path (one client, direct and gateway calls taking turns, {args.calls} calls "
        f"× {args.rounds} rounds); "
        f"saturation with {args.clients} clients in {args.client_processes} processes"
    )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    header = f"{'':22}{'direct gRPC':>14}{'via gateway':>14}{'added':>12}{'ratio':>8}"
    print(header)
    met = True
    for name, label in (("get", "GET point"), ("search", "search (k=10)")):
        for q, qname, target in ((0.5, "p50", P50_TARGET_MS), (0.99, "p99", P99_TARGET_MS)):
            direct = figures.p(f"{name}.direct", q)
            via = figures.p(f"{name}.gateway", q)
            added = via - direct
            ok = added <= target
            met &= ok
            print(
                f"{label + ' ' + qname + ' ms':22}{direct:>14.3f}{via:>14.3f}"
                f"{added:>+11.3f}{'' if ok else '!'}{via / direct:>8.2f}"
            )
        direct_rps = figures.r(f"{name}.direct")
        via_rps = figures.r(f"{name}.gateway")
        print(
            f"{label + ' req/s':22}{direct_rps:>14.0f}{via_rps:>14.0f}"
            f"{'':>12}{via_rps / direct_rps:>8.2f}"
        )
    for name, label in (("get", "GET point"), ("search", "search (k=10)")):
        runs = figures.inside.get(name, [])
        if runs and all(r[2] and r[3] for r in runs):
            handler = statistics.median(r[0] / r[2] for r in runs) * 1000
            backend = statistics.median(r[1] / r[3] for r in runs) * 1000
            print(
                f"{label}: mean {handler:.3f} ms in the gateway's handler stack, "
                f"{backend:.3f} ms of it waiting for the vector service "
                f"(own work {handler - backend:.3f} ms, from its metrics)"
            )
    if figures.gateway_cpu:
        cpu = statistics.median(figures.gateway_cpu)
        print(f"gateway process CPU at saturation: {cpu * 100:.0f}% of one core (median)")
        per_call = ", ".join(
            f"{name} {statistics.median(v) * 1e6:.0f} µs"
            for name, v in figures.cpu_per_call.items()
        )
        print(f"gateway CPU per call at saturation (load-independent-ish): {per_call}")
    print(
        f"targets: added p50 ≤ {P50_TARGET_MS} ms, p99 ≤ {P99_TARGET_MS} ms: "
        f"{'met' if met else 'NOT met'}"
    )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    parser.add_argument("--points", type=int, default=10_000, help="points in the collection")
    parser.add_argument("--dim", type=int, default=128, help="vector dimension")
    parser.add_argument("--calls", type=int, default=600, help="paced calls per path and window")
    parser.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="paced calls per second and path (both paths together: twice this)",
    )
    parser.add_argument("--clients", type=int, default=32, help="clients at saturation")
    parser.add_argument(
        "--client-processes",
        type=int,
        default=max(2, os.cpu_count() or 2),
        help="processes the saturation clients are spread over",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="saturation window")
    parser.add_argument("--rounds", type=int, default=3, help="direct/gateway rounds")
    parser.add_argument(
        "--http-client",
        choices=("raw", "httpx"),
        default="raw",
        help="HTTP client of the gateway side: a minimal keep-alive client (as load tools "
        "use) or httpx (adds its own per-request CPU to the gateway's figures)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    figures = asyncio.run(measure(args))
    met = report(figures, args)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
