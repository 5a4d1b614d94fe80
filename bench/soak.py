"""Soak run: the whole stack under a steady mixed load through the gateway.

    python -m bench.soak [--minutes 10] [--rate 4] [--warmup-s 30] [--max-tokens 8]

Starts the stack as ``lodestar run`` does (``python -m lodestar.cli run``: every
service its own process on embedded defaults, on free ports, with its own
temporary data directory), seeds a collection with a small corpus of standard
library docstrings, then drives the gateway's REST API with a real bearer
token: searches by vector and by text, inserts by text, gets by id, generations
unary and streamed (``--max-tokens`` tokens) and RAG generations with
``context``. The load is open-loop: requests start at a fixed rate
(``--rate`` per second, all routes together, in a fixed interleaved mix)
whether or not earlier ones have finished, as independent users would send
them, first for ``--warmup-s`` seconds and then for ``--minutes``.

Prints per route the requests, failures and p50/p99 latency of the measured
window; every failure's route, status and the start of its body; the resident
memory (VmRSS) of each service process and of the vector engine's child at the
start of the window (after the warm-up), its peak and at the end, with the
growth; and whether every acknowledged insert is in the collection. Exits 1 on
any failed request, a lost write, a process that restarted, or a growth of
``--max-growth`` percent (10) or more.

It runs for minutes, so ``python -m bench`` (``make bench``) leaves it out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.flows import MODULES, QUESTIONS
from bench.processes import child_pids, command_process, free_port, http_ready
from lodestar.auth.tokens import mint_token
from lodestar.services.gateway.settings import GatewaySettings

COLLECTION = "soak"
SERVICES = ("embedding", "vector", "inference", "gateway")
ENGINE = "vector engine"
# The routes in the order they are started; reads outnumber writes and generations.
MIX = (
    "search_text",
    "get",
    "generate",
    "search_vector",
    "insert",
    "generate_stream",
    "search_text",
    "get",
    "rag",
    "search_vector",
    "insert",
    "get",
)
LABELS = {
    "search_vector": "search (vector)",
    "search_text": "search (text)",
    "insert": "insert (text)",
    "get": "get",
    "generate": "generate",
    "generate_stream": "generate (SSE)",
    "rag": "generate + context (RAG)",
}
WORDS = (
    *("river", "lantern", "copper", "orchard", "harbour", "meadow", "signal", "granite"),
    *("violin", "compass", "glacier", "thread", "window", "saddle", "beacon", "pepper"),
)


class Failed(Exception):
    """A request the gateway did not answer as expected."""

    def __init__(self, status: int, body: str, retry_after: str | None = None) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


@dataclass
class Record:
    """What the load saw: latencies (ms) per route in the measured window, and failures."""

    measuring: bool = False
    latencies: dict[str, list[float]] = field(default_factory=lambda: {r: [] for r in LABELS})
    failures: list[tuple[str, int, str]] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    in_flight: int = 0
    max_in_flight: int = 0
    max_lateness_ms: float = 0.0


def _passage(module: str, max_chars: int = 400) -> str:
    doc = inspect.getdoc(importlib.import_module(module)) or module
    text = " ".join(doc.split())
    return text if len(text) <= max_chars else text[:max_chars].rsplit(" ", 1)[0]


def _sentence(i: int) -> str:
    picked = [WORDS[(i * k + k) % len(WORDS)] for k in (1, 3, 5, 7, 11)]
    return f"Note {i}: the {picked[0]} near the {picked[1]} keeps a {picked[2]}, " + (
        f"a {picked[3]} and a {picked[4]}."
    )


class Load:
    """The routes, called through one HTTP client with a bearer token."""

    def __init__(self, http: httpx.AsyncClient, max_tokens: int) -> None:
        self.http = http
        self.max_tokens = max_tokens
        self.ids: list[str] = []
        self.vectors: list[list[float]] = []
        self.inserted = 0
        self.seeded = 0

    async def _json(
        self, method: str, path: str, body: object = None, *, needs: str = ""
    ) -> dict[str, Any]:
        """The JSON object answered; ``Failed`` unless 200/201 with a non-empty ``needs``."""
        reply = await self.http.request(method, path, json=body)
        if reply.status_code not in (200, 201):
            raise Failed(reply.status_code, reply.text, reply.headers.get("Retry-After"))
        answer = reply.json()
        if not isinstance(answer, dict) or (needs and answer.get(needs) in (None, [], "")):
            raise Failed(reply.status_code, f"no {needs!r} in {reply.text}")
        return answer

    async def seed(self) -> None:
        await self._json("POST", "/api/v1/collections", {"name": COLLECTION})
        points = [{"text": _passage(m), "payload": {"source": m}} for m in MODULES]
        answer = await self._json(
            "POST", "/api/v1/vectors/insert", {"collection": COLLECTION, "points": points}
        )
        self.ids = [str(i) for i in answer["ids"]]
        self.seeded = len(self.ids)
        for point_id in self.ids[:8]:
            point = await self._json(
                "GET", f"/api/v1/vectors/{point_id}?collection={COLLECTION}&with_vector=true"
            )
            self.vectors.append([float(v) for v in point["vector"]])

    async def points_count(self) -> int:
        answer = await self._json("GET", f"/api/v1/collections/{COLLECTION}")
        return int(answer["points_count"])

    async def call(self, route: str, i: int) -> None:
        call: Callable[[int], Awaitable[None]] = getattr(self, route)
        await call(i)

    async def search_vector(self, i: int) -> None:
        body = {"collection": COLLECTION, "vector": self.vectors[i % len(self.vectors)]}
        await self._json("POST", "/api/v1/vectors/search", {**body, "limit": 5}, needs="points")

    async def search_text(self, i: int) -> None:
        body = {"collection": COLLECTION, "text": QUESTIONS[i % len(QUESTIONS)], "limit": 5}
        await self._json("POST", "/api/v1/vectors/search", body, needs="points")

    async def insert(self, i: int) -> None:
        point = {"text": _sentence(i), "payload": {"source": "soak", "n": i}}
        body = {"collection": COLLECTION, "points": [point]}
        answer = await self._json("POST", "/api/v1/vectors/insert", body, needs="ids")
        self.ids.extend(str(point_id) for point_id in answer["ids"])
        self.inserted += len(answer["ids"])

    async def get(self, i: int) -> None:
        point_id = self.ids[(i * 7) % len(self.ids)]
        await self._json("GET", f"/api/v1/vectors/{point_id}?collection={COLLECTION}", needs="id")

    def _prompt(self, i: int) -> dict[str, object]:
        question = QUESTIONS[i % len(QUESTIONS)]
        return {"prompt": question, "max_tokens": self.max_tokens, "temperature": 0.7, "seed": i}

    async def generate(self, i: int) -> None:
        await self._json("POST", "/api/v1/generate", self._prompt(i), needs="finish_reason")

    async def rag(self, i: int) -> None:
        body = {**self._prompt(i), "context": {"collection": COLLECTION, "limit": 3}}
        await self._json("POST", "/api/v1/generate", body, needs="finish_reason")

    async def generate_stream(self, i: int) -> None:
        event, done = "", False
        body = {**self._prompt(i), "stream": True}
        async with self.http.stream("POST", "/api/v1/generate", json=body) as reply:
            if reply.status_code != 200:
                text = (await reply.aread()).decode(errors="replace")
                raise Failed(reply.status_code, text, reply.headers.get("Retry-After"))
            async for line in reply.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "error":
                    raise Failed(200, f"error event: {line[6:]}")
                elif line.startswith("data: ") and event == "done":
                    done = True
        if not done:
            raise Failed(200, "the stream ended without a done event")


async def _timed(load: Load, record: Record, route: str, i: int) -> None:
    record.in_flight += 1
    record.max_in_flight = max(record.max_in_flight, record.in_flight)
    start = time.perf_counter()
    try:
        await load.call(route, i)
    except (Failed, httpx.HTTPError, ValueError) as error:
        status = error.status if isinstance(error, Failed) else 0
        body = error.body if isinstance(error, Failed) else f"{type(error).__name__}: {error}"
        record.failed[route] += 1
        record.failures.append((route, status, body))
    else:
        if record.measuring:
            record.latencies[route].append((time.perf_counter() - start) * 1000)
    finally:
        record.in_flight -= 1


async def drive(load: Load, record: Record, rate: float, seconds: float, first: int) -> int:
    """Starts a request every 1/``rate`` s for ``seconds`` (open loop); waits for
    them all; the index after the last one started."""
    interval = 1.0 / rate
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    i = first
    for n in range(max(1, round(seconds * rate))):
        at = start + n * interval
        now = time.perf_counter()
        if at > now:
            await asyncio.sleep(at - now)
        record.max_lateness_ms = max(record.max_lateness_ms, (time.perf_counter() - at) * 1000)
        task = asyncio.create_task(_timed(load, record, MIX[i % len(MIX)], i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    await asyncio.gather(*tasks)
    return i


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as raw:
            return [part.decode(errors="replace") for part in raw.read().split(b"\0") if part]
    except OSError:
        return []


def stack_pids(run_pid: int) -> dict[str, int]:
    """Each service process ``lodestar run`` started, and the vector engine's child."""
    found: dict[str, int] = {}
    for pid in child_pids(run_pid):
        argv = _cmdline(pid)
        for name in SERVICES:
            if f"lodestar.services.{name}" in argv:
                found[name] = pid
    if "vector" in found:
        for pid in child_pids(found["vector"]):
            if any("engine_process" in part for part in _cmdline(pid)):
                found[ENGINE] = pid
    return found


def rss_kib(pid: int) -> int | None:
    """Resident set size of a process (VmRSS of /proc/PID/status), or None once gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


async def sample_peaks(pids: dict[str, int], peaks: dict[str, int], every_s: float = 5) -> None:
    while True:
        for name, pid in pids.items():
            peaks[name] = max(peaks.get(name, 0), rss_kib(pid) or 0)
        await asyncio.sleep(every_s)


_UNLIMITED = 1_000_000_000
# Quiet logs, and no per-client limits: the load measures the stack, not the limits.
LOAD_ENV = {
    "LODESTAR_LOG_LEVEL": "WARNING",
    "LODESTAR_GATEWAY_ACCESS_LOG": "false",
    "LODESTAR_GATEWAY_REQUESTS_PER_MINUTE": json.dumps(
        dict.fromkeys(("read", "write", "generate", "admin"), _UNLIMITED)
    ),
    "LODESTAR_GATEWAY_GENERATED_TOKENS_PER_MINUTE": "0",
}


def _stack_env(data_dir: str) -> tuple[dict[str, str], str]:
    env: dict[str, str] = {}
    for name in SERVICES:
        env[f"LODESTAR_{name.upper()}_PORT"] = str(free_port())
        env[f"LODESTAR_{name.upper()}_HOST"] = "127.0.0.1"
        if name != "gateway":
            env[f"LODESTAR_{name.upper()}_METRICS_PORT"] = str(free_port())
            address = f"127.0.0.1:{env[f'LODESTAR_{name.upper()}_PORT']}"
            env[f"LODESTAR_GATEWAY_{name.upper()}_ADDRESSES"] = address
    env.update({"LODESTAR_VECTOR_DATA_DIR": data_dir, **LOAD_ENV})
    return env, f"http://127.0.0.1:{env['LODESTAR_GATEWAY_PORT']}"


@dataclass
class Outcome:
    record: Record
    requests: dict[str, int]
    start_rss: dict[str, int | None]
    end_rss: dict[str, int | None]
    peaks: dict[str, int]
    pids: dict[str, int]
    restarted: list[str]
    expected_points: int
    points: int


async def soak(args: argparse.Namespace) -> Outcome:
    record = Record()
    with tempfile.TemporaryDirectory(prefix="lodestar-soak-") as data_dir:
        env, url = _stack_env(data_dir)
        for key in [k for k in os.environ if k.startswith("OTEL_")]:
            del os.environ[key]  # no traces exported from a soak
        os.environ.update(env)  # the token below is signed as the gateway will verify it
        ttl = int(args.warmup_s + args.minutes * 60 + 3600)
        token = mint_token(GatewaySettings(), "soak", ["admin"], ttl)
        run = [sys.executable, "-m", "lodestar.cli", "run"]
        started = time.perf_counter()
        async with (
            command_process(run, env=env, ready=http_ready(f"{url}/api/v1/health")) as run_pid,
            httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
            ) as http,
        ):
            print(f"stack ready in {time.perf_counter() - started:.0f} s", flush=True)
            load = Load(http, args.max_tokens)
            await load.seed()
            print(f"warm-up: {args.warmup_s:g} s at {args.rate:g} requests/s", flush=True)
            i = await drive(load, record, args.rate, args.warmup_s, 0)
            pids = stack_pids(run_pid)
            start_rss = {name: rss_kib(pid) for name, pid in pids.items()}
            warm = i
            record.measuring = True
            print(f"soak: {args.minutes:g} min at {args.rate:g} requests/s", flush=True)
            peaks: dict[str, int] = {}
            sampler = asyncio.create_task(sample_peaks(pids, peaks))
            try:
                i = await drive(load, record, args.rate, args.minutes * 60, i)
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            end_rss = {name: rss_kib(pid) for name, pid in pids.items()}
            now = stack_pids(run_pid)
            restarted = [name for name, pid in pids.items() if now.get(name) != pid]
            points = await load.points_count()
    requests = dict.fromkeys(LABELS, 0)
    for n in range(warm, i):
        requests[MIX[n % len(MIX)]] += 1
    return Outcome(
        record,
        requests,
        start_rss,
        end_rss,
        peaks,
        pids,
        restarted,
        load.seeded + load.inserted,
        points,
    )


def _percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def report(outcome: Outcome, args: argparse.Namespace) -> bool:
    record = outcome.record
    print(
        f"\nsoak: {args.minutes:g} min at {args.rate:g} requests/s (open loop, after "
        f"{args.warmup_s:g} s of warm-up), load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'route':28}{'requests':>10}{'failed':>8}{'p50 ms':>10}{'p99 ms':>10}")
    everything: list[float] = []
    for route, label in LABELS.items():
        latencies = record.latencies[route]
        everything.extend(latencies)
        print(
            f"{label:28}{outcome.requests[route]:>10}{record.failed[route]:>8}"
            f"{_percentile(latencies, 50):>10.1f}{_percentile(latencies, 99):>10.1f}"
        )
    errors = len(record.failures)
    print(
        f"{'all':28}{sum(outcome.requests.values()):>10}{sum(record.failed.values()):>8}"
        f"{_percentile(everything, 50):>10.1f}{_percentile(everything, 99):>10.1f}"
    )
    print(
        f"most requests in flight {record.max_in_flight}, latest start "
        f"{record.max_lateness_ms:.0f} ms after its schedule"
    )
    print(f"errors (warm-up included): {errors} (target 0)")
    for route, status, body in record.failures[:10]:
        print(f"  {LABELS[route]}: {status} {' '.join(body.split())[:200]}")
    print(f"\n{'memory (VmRSS)':16}{'pid':>9}{'start MiB':>11}{'peak MiB':>10}{'end MiB':>10}")
    growths: list[float] = []
    for name in (*SERVICES, ENGINE):
        if name not in outcome.pids:
            print(f"{name:16}  not found")
            continue
        start, end = outcome.start_rss[name], outcome.end_rss[name]
        if start is None or end is None:
            print(f"{name:16}{outcome.pids[name]:>9}  exited during the soak")
            growths.append(float("inf"))
            continue
        growth = (end - start) / start * 100
        growths.append(growth)
        print(
            f"{name:16}{outcome.pids[name]:>9}{start / 1024:>11.1f}"
            f"{outcome.peaks.get(name, 0) / 1024:>10.1f}{end / 1024:>10.1f}   {growth:+.1f}%"
        )
    worst = max(growths, default=float("inf"))
    missing = [name for name in (*SERVICES, ENGINE) if name not in outcome.pids]
    memory_ok = worst < args.max_growth and not missing
    print(
        f"largest growth {worst:+.1f}% (target < {args.max_growth:g}%): "
        f"{'PASS' if memory_ok else 'FAIL'}"
    )
    if outcome.restarted:
        print(f"restarted during the soak: {', '.join(outcome.restarted)}")
    writes_ok = outcome.points == outcome.expected_points
    print(
        f"points in the collection {outcome.points}, acknowledged "
        f"{outcome.expected_points}: {'PASS' if writes_ok else 'FAIL'}"
    )
    ok = errors == 0 and memory_ok and writes_ok and not outcome.restarted
    print(f"\nsoak {'PASS' if ok else 'FAIL'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10, help="measured window")
    parser.add_argument("--rate", type=float, default=4, help="requests/s, all routes together")
    parser.add_argument("--warmup-s", type=float, default=30, help="load before the window")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per generation")
    parser.add_argument("--max-growth", type=float, default=10, help="memory growth limit, %%")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.warmup_s < 0:
        parser.error("--minutes and --rate must be positive, --warmup-s not negative")
    return 0 if report(asyncio.run(soak(args)), args) else 1


if __name__ == "__main__":
    sys.exit(main())
