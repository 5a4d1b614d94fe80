"""Flows benchmark: retrieval-augmented generation through the gateway against
the same steps called directly over gRPC.

    python -m bench.flows [--queries 16] [--warmup 3] [--limit 3] [--max-tokens 8]

In one run, with the embedding, vector and inference services and the gateway
(``python -m lodestar.services.<name>``) as their own processes on loopback,
this process as the client, the bundled models, and a corpus of standard
library docstrings inserted as texts through the gateway:

- gateway: ``POST /api/v1/generate`` with ``context`` (``limit`` passages) and
  ``stream: true``; time to the first token event and to the end of the
  stream, measured by the client, and the gateway's own embed, search and
  prompt-build times (``context.timing_ms`` of the final event);
- direct: the same steps from this process over gRPC: ``EmbedTexts`` of the
  question, ``SearchPoints``, the same prompt built and fitted to the context
  with ``CountTokens`` (the flows' own prompt code), then ``StreamGenerateText``.

Both sides ask the same questions with greedy decoding, so they send the same
prompt and produce the same text (checked). Direct and gateway calls alternate,
the order flipping every query, so that load from other processes and any
caching affect both alike.

The model's own time varies from run to run by far more than the overhead
being measured (tens to hundreds of milliseconds on a shared CPU), so the
overhead is taken around it: each side's time to first token (and total time)
minus the inference service's own time for that generation (its reported
time to first token and total), and the median of the paired differences
(gateway − direct) of what remains: HTTP, authentication, the stages, the
gateway's own gRPC calls and the SSE relay. The raw paired difference is
printed too. Target: overhead ≤ 5 ms at p50.
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
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.processes import stack_processes
from lodestar.auth.tokens import mint_token
from lodestar.embedding.v1 import embedding_service_pb2 as epb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as epb_grpc
from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from lodestar.runtime.channels import insecure_channel
from lodestar.runtime.protojson import struct_to_dict
from lodestar.services.gateway.flows import prompting
from lodestar.services.gateway.flows.budget import PROMPT_SAFETY_TOKENS, fit
from lodestar.services.gateway.flows.prompting import Passage, Turn
from lodestar.services.gateway.flows.settings import FlowsSettings
from lodestar.services.gateway.settings import GatewaySettings
from lodestar.vector.v1 import vector_service_pb2 as vpb
from lodestar.vector.v1 import vector_service_pb2_grpc as vpb_grpc

OVERHEAD_TARGET_MS = 5.0
COLLECTION = "bench_flows"
MODULES = (
    *("heapq", "csv", "statistics", "secrets", "colorsys", "timeit", "tempfile", "json"),
    *("sqlite3", "uuid", "sched", "zlib", "hmac", "ipaddress", "gzip", "fnmatch", "pickle"),
    *("copy", "itertools", "operator", "difflib", "string", "calendar", "random"),
)
QUESTIONS = (
    "Which module implements a priority queue with heaps?",
    "How do I read and write comma separated value files?",
    "How can I compute the variance and standard deviation of data?",
    "How do I generate secure random tokens for passwords?",
    "How can I convert colours between RGB and HSV?",
    "How do I measure the execution time of small code snippets?",
    "How do I create temporary files and directories?",
    "How do I compress data with the zlib library?",
)
STEPS = ("embed", "search", "prompt", "first_token", "ttft", "total")


@dataclass
class Run:
    """One RAG query; times in milliseconds."""

    embed: float
    search: float
    prompt: float
    # From the end of the prompt build to the first token.
    first_token: float
    # From the request to the first token, and to the last.
    ttft: float
    total: float
    # The inference service's own times for the generation (arrival to first
    # token, and to the last): the same work on both sides, whose variance
    # under load dwarfs the orchestration overhead.
    service_ttft: float
    service_total: float
    text: str
    prompt_tokens: int

    @property
    def around_ttft(self) -> float:
        """Time to first token outside the inference service's own work."""
        return self.ttft - self.service_ttft

    @property
    def around_total(self) -> float:
        return self.total - self.service_total


def _passage(module: str, max_chars: int = 400) -> str:
    doc = inspect.getdoc(importlib.import_module(module)) or module
    text = " ".join(doc.split())
    cut = text[:max_chars]
    return cut if len(text) <= max_chars else cut[: cut.rfind(" ")]


class Direct:
    """The RAG steps called from this process over gRPC."""

    def __init__(self, channels: dict[str, grpc.aio.Channel], args: argparse.Namespace) -> None:
        self.embedding = epb_grpc.EmbeddingServiceStub(channels["embedding"])
        self.vector = vpb_grpc.VectorServiceStub(channels["vector"])
        self.inference = ipb_grpc.InferenceServiceStub(channels["inference"])
        self.args = args
        self.flows = FlowsSettings()
        self.context_size = 0

    async def prepare(self) -> None:
        info = await self.inference.GetModelInfo(ipb.GetModelInfoRequest())
        self.context_size = info.model.context_size

    async def count(self, turns: str | list[Turn]) -> int:
        assert not isinstance(turns, str)
        request = ipb.CountTokensRequest(messages=prompting.turns_to_proto(turns))
        return (await self.inference.CountTokens(request)).token_count

    async def ask(self, question: str) -> Run:
        args = self.args
        start = time.perf_counter()
        embedded = await self.embedding.EmbedTexts(epb.EmbedTextsRequest(texts=[question]))
        embed_done = time.perf_counter()
        found = await self.vector.SearchPoints(
            vpb.SearchPointsRequest(
                collection=COLLECTION,
                vector=embedded.embeddings[0].values,
                limit=args.limit,
                with_payload=True,
                query_text=question[:256],
            )
        )
        search_done = time.perf_counter()
        passages = []
        for point in found.points:
            payload = struct_to_dict(point.payload)
            text = prompting.passage_text(payload, "text")
            passages.append(Passage(point.id.uuid or point.id.num, point.score, text, payload))

        def render(chosen: Sequence[Passage]) -> str | list[Turn]:
            return prompting.compose_turns([("user", question)], chosen, [], context_requested=True)

        limit = self.context_size - args.max_tokens - PROMPT_SAFETY_TOKENS
        fitted = await fit(
            passages,
            render,
            self.count,
            limit=limit,
            max_tokens=args.max_tokens,
            context_size=self.context_size,
        )
        assert not isinstance(fitted.rendered, str)
        request = ipb.StreamGenerateTextRequest(
            messages=prompting.turns_to_proto(fitted.rendered),
            sampling=ipb.SamplingOptions(max_tokens=args.max_tokens, temperature=0, seed=1),
        )
        prompt_done = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        usage = ipb.Usage()
        timing = ipb.Timing()
        async for message in self.inference.StreamGenerateText(request):
            if message.delta:
                if first is None:
                    first = time.perf_counter()
                parts.append(message.delta)
            if message.HasField("usage"):
                usage = message.usage
            if message.HasField("timing"):
                timing = message.timing
        end = time.perf_counter()
        first = first or end
        return Run(
            embed=(embed_done - start) * 1000,
            search=(search_done - embed_done) * 1000,
            prompt=(prompt_done - search_done) * 1000,
            first_token=(first - prompt_done) * 1000,
            ttft=(first - start) * 1000,
            total=(end - start) * 1000,
            service_ttft=timing.time_to_first_token_ms,
            service_total=timing.total_ms,
            text="".join(parts),
            prompt_tokens=usage.prompt_tokens,
        )


async def gateway_ask(http: httpx.AsyncClient, question: str, args: argparse.Namespace) -> Run:
    body = {
        "prompt": question,
        "context": {"collection": COLLECTION, "limit": args.limit},
        "stream": True,
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "seed": 1,
    }
    start = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    done: dict[str, object] = {}
    event = ""
    async with http.stream("POST", "/api/v1/generate", json=body) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"gateway answered {reply.status_code}: {await reply.aread()!r}")
        async for line in reply.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if event == "token":
                    if first is None:
                        first = time.perf_counter()
                    parts.append(data["delta"])
                elif event == "done":
                    done = data
                elif event == "error":
                    raise RuntimeError(f"gateway stream failed: {data}")
    end = time.perf_counter()
    first = first or end
    context = done["context"]
    assert isinstance(context, dict)
    timing = context["timing_ms"]
    usage = done["usage"]
    service = done["timing"]
    assert isinstance(usage, dict)
    assert isinstance(service, dict)
    ttft = (first - start) * 1000
    return Run(
        embed=timing["embed"],
        search=timing["search"],
        prompt=timing["prompt"],
        first_token=ttft - timing["embed"] - timing["search"] - timing["prompt"],
        ttft=ttft,
        total=(end - start) * 1000,
        service_ttft=service["time_to_first_token_ms"],
        service_total=service["total_ms"],
        text="".join(parts),
        prompt_tokens=int(usage["prompt_tokens"]),
    )


async def _insert_corpus(http: httpx.AsyncClient) -> None:
    made = await http.post("/api/v1/collections", json={"name": COLLECTION})
    if made.status_code not in (200, 201):
        raise RuntimeError(f"could not create the collection: {made.text}")
    points = [{"text": _passage(m), "payload": {"source": m}} for m in MODULES]
    inserted = await http.post(
        "/api/v1/vectors/insert", json={"collection": COLLECTION, "points": points}
    )
    if inserted.status_code != 200:
        raise RuntimeError(f"could not insert the corpus: {inserted.text}")


async def measure(
    args: argparse.Namespace,
) -> tuple[list[Run], list[Run], dict[str, float]]:
    token = mint_token(GatewaySettings(), "bench", ["admin"], 3600)
    direct_runs: list[Run] = []
    gateway_runs: list[Run] = []
    async with contextlib.AsyncExitStack() as stack:
        url, addresses = await stack.enter_async_context(stack_processes("lodestar-bench-flows-"))
        print("stack ready", flush=True)
        channels = {
            name: await stack.enter_async_context(insecure_channel(addresses[name]))
            for name in ("embedding", "vector", "inference")
        }
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
            )
        )
        await _insert_corpus(http)
        direct = Direct(channels, args)
        await direct.prepare()
        for i in range(args.warmup + args.queries):
            question = QUESTIONS[i % len(QUESTIONS)]
            order = ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct")
            runs: dict[str, Run] = {}
            for side in order:
                if side == "direct":
                    runs[side] = await direct.ask(question)
                else:
                    runs[side] = await gateway_ask(http, question, args)
            if i >= args.warmup:
                direct_runs.append(runs["direct"])
                gateway_runs.append(runs["gateway"])
        hops = await _round_trips(url, channels["inference"])
    return direct_runs, gateway_runs, hops


async def _round_trips(url: str, channel: grpc.aio.Channel, count: int = 60) -> dict[str, float]:
    """p50 of the cheapest round trip to the gateway (liveness over HTTP) and
    to a service (gRPC health): what one process hop costs on this machine now."""
    health = health_pb2_grpc.HealthStub(channel)
    times: dict[str, list[float]] = {"http": [], "grpc": []}
    async with httpx.AsyncClient(base_url=url) as http:
        for _ in range(count):
            start = time.perf_counter()
            await http.get("/api/v1/health")
            times["http"].append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            await health.Check(health_pb2.HealthCheckRequest())
            times["grpc"].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def _p50(values: Sequence[float]) -> float:
    return statistics.median(values)


def _paired(direct: list[Run], gateway: list[Run], value: str) -> float:
    return _p50(
        [getattr(g, value) - getattr(d, value) for d, g in zip(direct, gateway, strict=True)]
    )


def report(
    direct: list[Run], gateway: list[Run], hops: dict[str, float], args: argparse.Namespace
) -> bool:
    pairs = list(zip(direct, gateway, strict=True))
    same_text = sum(d.text == g.text for d, g in pairs)
    same_prompt = sum(d.prompt_tokens == g.prompt_tokens for d, g in pairs)
    print(
        f"\nRAG latency, {len(pairs)} queries ({args.limit} passages, {args.max_tokens} tokens, "
        f"greedy), load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'p50 ms':36}{'direct gRPC':>13}{'gateway':>13}{'paired diff':>13}")
    labels = {
        "embed": "embed (EmbedTexts)",
        "search": "search (SearchPoints)",
        "prompt": "prompt build (CountTokens, fit)",
        "first_token": "first token after the prompt",
        "ttft": "time to first token",
        "total": "total",
        "service_ttft": "  of which inference service ttft",
        "around_ttft": "  ttft outside the inference service",
        "around_total": "  total outside the inference service",
    }
    for step, label in labels.items():
        d = _p50([getattr(r, step) for r in direct])
        g = _p50([getattr(r, step) for r in gateway])
        print(f"{label:36}{d:>13.2f}{g:>13.2f}{_paired(direct, gateway, step):>+13.2f}")
    steps = _p50([d.embed + d.search + d.prompt + d.first_token for d in direct])
    print(f"{'sum of the direct steps to 1st token':36}{steps:>13.2f}")
    overhead_ttft = _paired(direct, gateway, "around_ttft")
    overhead_total = _paired(direct, gateway, "around_total")
    ok = overhead_ttft <= OVERHEAD_TARGET_MS
    print(
        f"\norchestration overhead p50 (gateway - direct, the inference service's own time "
        f"taken out): to first token {overhead_ttft:+.2f} ms, whole answer "
        f"{overhead_total:+.2f} ms; target <= {OVERHEAD_TARGET_MS:.0f} ms: "
        f"{'PASS' if ok else 'FAIL'}"
    )
    raw_ttft, raw_total = _paired(direct, gateway, "ttft"), _paired(direct, gateway, "total")
    print(
        f"raw paired difference p50 (includes the model's run-to-run variance): to first token "
        f"{raw_ttft:+.2f} ms, total {raw_total:+.2f} ms"
    )
    print(
        f"loopback round trip p50 now: gateway HTTP liveness {hops['http']:.2f} ms, "
        f"gRPC health {hops['grpc']:.2f} ms (the gateway adds one hop each way)"
    )
    print(
        f"same prompt tokens in {same_prompt}/{len(pairs)} queries, "
        f"same text in {same_text}/{len(pairs)}"
    )
    return ok and same_prompt == len(pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--limit", type=int, default=3, help="passages retrieved per question")
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    direct, gateway, hops = asyncio.run(measure(args))
    return 0 if report(direct, gateway, hops, args) else 1


if __name__ == "__main__":
    sys.exit(main())
