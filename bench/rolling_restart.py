"""Rolling restart under load: every process restarted, one at a time, while a
mixed load runs through two gateways.

    python -m bench.rolling_restart [--rate 4] [--pause-s 5] [--max-tokens 8]

Starts two replicas each of the embedding and inference services on 127.0.0.2 and
127.0.0.3 (one port per service), one vector service (embedded: one process per data
directory), one Redis without persistence, and two gateways sharing that Redis, each
given both replicas' addresses. Seeds a collection and drives the soak's mixed
open-loop load (``bench.soak``: searches, inserts by text, gets, generations unary
and streamed, RAG) at ``--rate`` requests/s, alternately through the two gateways.
Meanwhile it restarts each process in turn (SIGTERM, wait until it has drained and
exited, start it again, wait until it answers its health check, pause
``--pause-s``): embedding A, embedding B, inference A, inference B, vector,
gateway A, gateway B. While a gateway restarts, its share of the load goes to the
other one, as a load balancer would send it.

Prints per phase the requests and every failure (route, status, start of the body);
for the vector restart, the writes answered 503 with ``Retry-After`` (allowed:
the vector service is a single process) apart from the other failures; and
whether every acknowledged insert is in the collection. Exits 1 on any failure
other than those allowed 503s, or a lost write.

It runs for minutes, so ``python -m bench`` (``make bench``) leaves it out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from bench.processes import command_process, free_port, service_process
from bench.soak import COLLECTION, LABELS, LOAD_ENV, MIX, Failed, Load
from lodestar.auth.tokens import mint_token
from lodestar.services.gateway.settings import GatewaySettings

HOSTS = ("127.0.0.2", "127.0.0.3")
REPLICATED = ("embedding", "inference")
WRITES = frozenset({"insert"})


@dataclass
class Phase:
    """What the load saw while one process restarted (or, for "steady", none did)."""

    name: str
    requests: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, int, str]] = field(default_factory=list)
    retry_later: int = 0  # writes answered 503 with Retry-After during the vector restart
    stop_s: float = 0.0
    start_s: float = 0.0


class Service:
    """One process of the stack, which can be stopped (SIGTERM, drain) and started again."""

    def __init__(
        self,
        name: str,
        module: str,
        env: dict[str, str],
        *,
        grpc_address: str | None = None,
        http_url: str | None = None,
    ) -> None:
        self.name = name
        self.module = module
        self.env = env
        self.grpc_address = grpc_address
        self.http_url = http_url
        self.stack = contextlib.AsyncExitStack()

    async def start(self) -> None:
        await self.stack.enter_async_context(
            service_process(
                self.module, self.env, grpc_address=self.grpc_address, http_url=self.http_url
            )
        )

    async def stop(self) -> None:
        await self.stack.aclose()


class Gateways(httpx.AsyncBaseTransport):
    """Sends each request to the next gateway that is up, in turn: the client side of a
    load balancer in front of the gateways, which stops sending to one being restarted."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.down: set[int] = set()
        self.sent: Counter[int] = Counter()
        self.turn = 0
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        up = [n for n in range(len(self.ports)) if n not in self.down]
        chosen = up[self.turn % len(up)]
        self.turn += 1
        self.sent[chosen] += 1
        request.url = request.url.copy_with(host="127.0.0.1", port=self.ports[chosen])
        request.headers["Host"] = f"127.0.0.1:{self.ports[chosen]}"
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _call(load: Load, phase: Phase, route: str, i: int) -> None:
    phase.requests[route] += 1
    try:
        await load.call(route, i)
    except Failed as error:
        if (
            phase.name == "vector"
            and route in WRITES
            and error.status == 503
            and error.retry_after is not None
        ):
            phase.retry_later += 1
        else:
            phase.failures.append((route, error.status, error.body))
    except (httpx.HTTPError, ValueError) as error:
        phase.failures.append((route, 0, f"{type(error).__name__}: {error}"))


class Driver:
    """The open-loop load: a request every 1/rate s, counted in the current phase."""

    def __init__(self, load: Load, rate: float) -> None:
        self.load = load
        self.rate = rate
        self.phase = Phase("steady")
        self.phases = [self.phase]
        self.stopping = asyncio.Event()

    def begin(self, name: str) -> Phase:
        self.phase = Phase(name)
        self.phases.append(self.phase)
        return self.phase

    async def run(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        n = 0
        while not self.stopping.is_set():
            delay = start + n / self.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_call(self.load, self.phase, MIX[n % len(MIX)], n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.gather(*tasks)


def _stack(data_dir: str, redis_port: int) -> tuple[list[Service], list[int]]:
    """The services, in restart order, and the two gateways' ports."""
    ports = {name: free_port() for name in (*REPLICATED, "vector")}
    addresses = {name: ",".join(f"{host}:{ports[name]}" for host in HOSTS) for name in REPLICATED}
    addresses["vector"] = f"127.0.0.1:{ports['vector']}"
    services: list[Service] = []
    for name in REPLICATED:
        for letter, host in zip("AB", HOSTS, strict=True):
            env = {
                f"LODESTAR_{name.upper()}_HOST": host,
                f"LODESTAR_{name.upper()}_PORT": str(ports[name]),
            }
            if name == "inference":
                env["LODESTAR_INFERENCE_THREADS"] = "1"
            services.append(
                Service(
                    f"{name} {letter}",
                    f"lodestar.services.{name}",
                    {**LOAD_ENV, **env},
                    grpc_address=f"{host}:{ports[name]}",
                )
            )
    services.append(
        Service(
            "vector",
            "lodestar.services.vector",
            {
                **LOAD_ENV,
                "LODESTAR_VECTOR_HOST": "127.0.0.1",
                "LODESTAR_VECTOR_PORT": str(ports["vector"]),
                "LODESTAR_VECTOR_DATA_DIR": data_dir,
            },
            grpc_address=addresses["vector"],
        )
    )
    gateway_ports = [free_port(), free_port()]
    for letter, port in zip("AB", gateway_ports, strict=True):
        env = {
            **LOAD_ENV,
            "LODESTAR_GATEWAY_HOST": "127.0.0.1",
            "LODESTAR_GATEWAY_PORT": str(port),
            "LODESTAR_GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            **{f"LODESTAR_GATEWAY_{name.upper()}_ADDRESSES": a for name, a in addresses.items()},
        }
        services.append(
            Service(
                f"gateway {letter}",
                "lodestar.services.gateway",
                env,
                http_url=f"http://127.0.0.1:{port}",
            )
        )
    return services, gateway_ports


async def _redis_ready(port: int) -> bool:
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        return True
    return False


async def _missing(load: Load, ids: list[str]) -> list[str]:
    """The ids among ``ids`` that the collection does not hold."""
    limit = asyncio.Semaphore(8)
    gone: list[str] = []

    async def check(point_id: str) -> None:
        async with limit:
            reply = await load.http.get(f"/api/v1/vectors/{point_id}?collection={COLLECTION}")
            if reply.status_code != 200:
                gone.append(point_id)

    await asyncio.gather(*(check(point_id) for point_id in ids))
    return gone


@dataclass
class Outcome:
    phases: list[Phase]
    sent: Counter[int]
    expected_points: int
    points: int
    missing: list[str]


async def rolling(args: argparse.Namespace) -> Outcome:
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit("redis-server is not installed")
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        del os.environ[key]  # no traces exported from a benchmark
    redis_port = free_port()
    redis_argv = [redis, "--port", str(redis_port), "--bind", "127.0.0.1"]
    redis_argv += ["--save", "", "--appendonly", "no"]
    with tempfile.TemporaryDirectory(prefix="lodestar-rolling-") as data_dir:
        services, gateway_ports = _stack(data_dir, redis_port)
        token = mint_token(GatewaySettings(), "rolling", ["admin"], 6 * 3600)
        transport = Gateways(gateway_ports)
        async with contextlib.AsyncExitStack() as stack:
            started = time.perf_counter()
            await stack.enter_async_context(
                command_process(redis_argv, ready=lambda: _redis_ready(redis_port), quiet=True)
            )
            for service in services:
                await service.start()
                stack.push_async_callback(service.stop)
            print(f"stack ready in {time.perf_counter() - started:.0f} s", flush=True)
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url="http://gateways",
                    transport=transport,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=120,
                )
            )
            load = Load(http, args.max_tokens)
            await load.seed()
            driver = Driver(load, args.rate)
            running = asyncio.create_task(driver.run())
            print(f"load: {args.rate:g} requests/s through both gateways", flush=True)
            await asyncio.sleep(args.pause_s * 2)
            for n, service in enumerate(services):
                phase = driver.begin(service.name)
                gateway = service.name.startswith("gateway")
                if gateway:
                    transport.down.add(n - (len(services) - 2))
                began = time.perf_counter()
                await service.stop()
                phase.stop_s = time.perf_counter() - began
                began = time.perf_counter()
                await service.start()
                phase.start_s = time.perf_counter() - began
                if gateway:
                    transport.down.clear()
                print(
                    f"restarted {service.name}: stopped in {phase.stop_s:.1f} s, "
                    f"healthy {phase.start_s:.1f} s after its start",
                    flush=True,
                )
                await asyncio.sleep(args.pause_s)
            driver.begin("after")
            await asyncio.sleep(args.pause_s * 2)
            driver.stopping.set()
            await running
            points = await load.points_count()
            missing = await _missing(load, load.ids[load.seeded :])
    return Outcome(driver.phases, transport.sent, load.seeded + load.inserted, points, missing)


def report(outcome: Outcome, args: argparse.Namespace) -> bool:
    print(
        f"\nrolling restart at {args.rate:g} requests/s (open loop), "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'phase':14}{'requests':>10}{'failed':>8}{'503 writes':>12}")
    failures = 0
    for phase in outcome.phases:
        retry = str(phase.retry_later) if phase.name == "vector" else "-"
        print(f"{phase.name:14}{phase.requests.total():>10}{len(phase.failures):>8}{retry:>12}")
        failures += len(phase.failures)
    total = sum(phase.requests.total() for phase in outcome.phases)
    allowed = sum(phase.retry_later for phase in outcome.phases)
    print(f"{'all':14}{total:>10}{failures:>8}{allowed:>12}")
    requests: Counter[str] = Counter()
    for phase in outcome.phases:
        requests.update(phase.requests)
    print("per route: " + ", ".join(f"{LABELS[r]} {requests[r]}" for r in LABELS))
    print(
        "per gateway: "
        + ", ".join(f"{'AB'[n]} {count}" for n, count in sorted(outcome.sent.items()))
    )
    print(f"failures (target 0): {failures}")
    for phase in outcome.phases:
        if not phase.failures:
            continue
        kinds = Counter((route, status) for route, status, _ in phase.failures)
        tally = ", ".join(f"{LABELS[r]} {status} x{n}" for (r, status), n in kinds.items())
        print(f"  {phase.name}: {tally}")
        for route, status, body in phase.failures[:10]:
            print(f"    {LABELS[route]}: {status} {' '.join(body.split())[:200]}")
        if len(phase.failures) > 10:
            print(f"    ... and {len(phase.failures) - 10} more")
    print(f"writes answered 503 with Retry-After during the vector restart (allowed): {allowed}")
    writes_ok = not outcome.missing and outcome.points >= outcome.expected_points
    print(
        f"points in the collection {outcome.points}, acknowledged {outcome.expected_points}, "
        f"acknowledged inserts not found {len(outcome.missing)}: "
        f"{'PASS' if writes_ok else 'FAIL'}"
    )
    if outcome.points > outcome.expected_points:
        print(
            f"  {outcome.points - outcome.expected_points} point(s) more than acknowledged: "
            "writes whose answer was an error but which were applied"
        )
    ok = failures == 0 and writes_ok
    print(f"\nrolling restart {'PASS' if ok else 'FAIL'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=4, help="requests/s, all routes together")
    parser.add_argument("--pause-s", type=float, default=5, help="pause after each restart")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per generation")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.pause_s < 0:
        parser.error("--rate must be positive, --pause-s not negative")
    return 0 if report(asyncio.run(rolling(args)), args) else 1


if __name__ == "__main__":
    sys.exit(main())
