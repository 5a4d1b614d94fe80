"""Semantic cache benchmark: an answer from the cache against a generation,
through the gateway's REST API.

    python -m bench.semantic_cache [--repeats 20] [--max-tokens 64]

In one run, with the embedding, vector and inference services and a gateway
with the semantic cache on (``LODESTAR_GATEWAY_SEMANTIC_CACHE=true``) as their
own processes on loopback, this process as the client, and the bundled models:

- generation: each question asked with ``cache: false``, so the model answers
  (``max_tokens`` tokens at most, greedy);
- repeated: the same question asked again once its answer is cached;
- paraphrased: another wording of a cached question (each pair's similarity
  is above the cache's threshold, which the run checks from the response's
  ``X-Lodestar-Cache`` header).

Generation, repeated and paraphrased requests alternate question by question
so that load from other processes affects them alike. Latency is the client's,
request sent to body received. The run prints each kind's p50 and p95 and the
ratio of a hit's p50 to a generation's. Goal: a hit under 10 ms p50 where a
generation takes more than 500 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx

from bench.processes import stack_processes
from lodestar.auth.tokens import mint_token
from lodestar.services.gateway.settings import GatewaySettings

HIT_GOAL_MS = 10.0
GENERATION_FLOOR_MS = 500.0
THRESHOLD = 0.9
# (question, paraphrase): MiniLM puts each pair above THRESHOLD.
PAIRS = (
    ("What is the capital city of France?", "What's the capital of France?"),
    ("How do I reset my password?", "How can I reset my password?"),
    ("How many legs does a spider have?", "How many legs do spiders have?"),
    ("What is the boiling point of water?", "What's the boiling point of water?"),
    ("Who wrote the play Romeo and Juliet?", "Who is the author of Romeo and Juliet?"),
    ("How far is the Moon from the Earth?", "What is the distance from the Earth to the Moon?"),
)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


async def _ask(
    http: httpx.AsyncClient, question: str, args: argparse.Namespace, **extra: Any
) -> tuple[float, str, dict[str, Any]]:
    body = {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
        **extra,
    }
    start = time.perf_counter()
    reply = await http.post("/api/v1/generate", json=body)
    elapsed = _ms(start)
    reply.raise_for_status()
    return elapsed, reply.headers.get("X-Lodestar-Cache", ""), reply.json()


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    token = mint_token(GatewaySettings(), "bench", ["admin"], 3600)
    times: dict[str, list[float]] = {"generation": [], "repeated": [], "paraphrased": []}
    cache_env = {
        "LODESTAR_GATEWAY_SEMANTIC_CACHE": "true",
        "LODESTAR_GATEWAY_CACHE_MIN_SIMILARITY": str(THRESHOLD),
    }
    async with contextlib.AsyncExitStack() as stack:
        url, _ = await stack.enter_async_context(
            stack_processes("lodestar-bench-cache-", cache_env)
        )
        print("stack ready", flush=True)
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
            )
        )
        # Warm up, and cache every question's answer.
        for question, _ in PAIRS:
            _, header, body = await _ask(http, question, args)
            if header != "miss" or not body["text"]:
                raise SystemExit(f"{question!r}: expected a stored miss, got {header!r}")
        for _ in range(2):
            await _ask(http, PAIRS[0][0], args, cache=False)
        for round_ in range(args.repeats):
            question, paraphrase = PAIRS[round_ % len(PAIRS)]
            elapsed, header, _ = await _ask(http, question, args, cache=False)
            if header != "bypass":
                raise SystemExit(f"generation: expected a bypass, got {header!r}")
            times["generation"].append(elapsed)
            for kind, text in (("repeated", question), ("paraphrased", paraphrase)):
                elapsed, header, body = await _ask(http, text, args)
                if not header.startswith("hit"):
                    raise SystemExit(f"{kind} {text!r}: expected a hit, got {header!r}")
                if body["usage"]["completion_tokens"] != 0:
                    raise SystemExit(f"{kind}: a hit reported generated tokens")
                times[kind].append(elapsed)
    return times


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(times: dict[str, list[float]], args: argparse.Namespace) -> None:
    print(
        f"{args.repeats} rounds, max_tokens={args.max_tokens}, "
        f"cache_min_similarity={THRESHOLD}, latency at the client (ms)"
    )
    print(f"{'kind':<14}{'p50':>10}{'p95':>10}")
    for kind, values in times.items():
        print(f"{kind:<14}{statistics.median(values):>10.2f}{_quantile(values, 0.95):>10.2f}")
    generation = statistics.median(times["generation"])
    met = True
    for kind in ("repeated", "paraphrased"):
        hit = statistics.median(times[kind])
        print(f"{kind} hit p50 / generation p50: {hit / generation:.4f} ({generation / hit:.0f}x)")
        met = met and hit < HIT_GOAL_MS
    goal = f"hit < {HIT_GOAL_MS:g} ms p50 where generation > {GENERATION_FLOOR_MS:g} ms"
    if generation <= GENERATION_FLOOR_MS:
        print(f"goal ({goal}): generation took only {generation:.0f} ms; raise --max-tokens")
    else:
        print(f"goal ({goal}): {'met' if met else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    report(asyncio.run(measure(args)), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
