"""Embedding benchmark: raw sentence-transformers against the service over gRPC.

    python -m bench.embedding [--seconds 4] [--rounds 3] [--clients 64]

In one run, with the same model and the same short texts (sentences from the
standard library's docstrings, so nothing is downloaded):

- raw ``SentenceTransformer.encode`` at batch 32 (texts/s) and one text at a
  time (latency p50);
- the service, a real gRPC server on loopback, under ``--clients`` concurrent
  clients that each send one text per call (texts/s), and one client alone
  (latency p50).

Raw and service windows alternate for ``--rounds`` rounds and the medians are
compared, so that load from other processes affects both sides alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from bench.processes import free_port, service_process
from lodestar.embedding.v1 import embedding_service_pb2 as pb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as pb_grpc
from lodestar.runtime.channels import insecure_channel
from lodestar.services.embedding.engine import EmbeddingEngine
from lodestar.services.embedding.server import create_server
from lodestar.services.embedding.settings import EmbeddingSettings

RAW_BATCH = 32
LATENCY_BLOCKS = 10
THROUGHPUT_TARGET = 0.8
OVERHEAD_TARGET_MS = 1.0


def stdlib_sentences(limit: int = 1024) -> list[str]:
    """Short English sentences from the docstrings of a few standard-library modules."""
    import argparse as m1
    import collections as m2
    import email.message as m3
    import http.client as m4
    import json as m5
    import logging as m6
    import pathlib as m7
    import textwrap as m8
    import threading as m9

    sentences: dict[str, None] = {}
    for module in (m1, m2, m3, m4, m5, m6, m7, m8, m9):
        for name in sorted(dir(module)):
            doc = inspect.getdoc(getattr(module, name, None))
            if not isinstance(doc, str):
                continue
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if 30 <= len(sentence) <= 120 and sentence[0].isupper():
                    sentences[sentence] = None
    texts = list(sentences)[:limit]
    if len(texts) < 64:
        raise RuntimeError("too few sentences found in the standard library's docstrings")
    return texts


def _cycle(texts: list[str]) -> Iterator[str]:
    while True:
        yield from texts


def _timed_loop(seconds: float, step: Callable[[], int]) -> float:
    """Items per second of ``step`` (returning items done) repeated for ``seconds``."""
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        done += step()
    return done / elapsed


def raw_batch_throughput(model: Any, texts: list[str], seconds: float) -> float:
    chunks = [texts[i : i + RAW_BATCH] for i in range(0, len(texts) - RAW_BATCH + 1, RAW_BATCH)]
    source = iter(_cycle_chunks(chunks))

    def step() -> int:
        model.encode(next(source), batch_size=RAW_BATCH, normalize_embeddings=True)
        return RAW_BATCH

    return _timed_loop(seconds, step)


def _cycle_chunks(chunks: list[list[str]]) -> Iterator[list[str]]:
    while True:
        yield from chunks


def raw_single_latencies(model: Any, texts: list[str]) -> list[float]:
    latencies = []
    for text in texts:
        start = time.perf_counter()
        model.encode(text, normalize_embeddings=True)
        latencies.append(time.perf_counter() - start)
    return latencies


async def service_throughput(
    channels: list[grpc.aio.Channel], texts: list[str], clients: int, seconds: float
) -> float:
    """Texts/s with ``clients`` callers each sending one text per call, back to back."""
    stubs = [pb_grpc.EmbeddingServiceStub(ch) for ch in channels]
    done = [0] * clients
    deadline = time.perf_counter() + seconds

    async def client(index: int) -> None:
        stub = stubs[index % len(stubs)]
        source = iter(_cycle(texts[index:] + texts[:index]))
        while time.perf_counter() < deadline:
            reply = await stub.EmbedTexts(pb.EmbedTextsRequest(texts=[next(source)]), timeout=60)
            done[index] += len(reply.embeddings)

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return sum(done) / (time.perf_counter() - start)


async def service_single_latencies(channel: grpc.aio.Channel, texts: list[str]) -> list[float]:
    stub = pb_grpc.EmbeddingServiceStub(channel)
    latencies = []
    for text in texts:
        start = time.perf_counter()
        await stub.EmbedTexts(pb.EmbedTextsRequest(texts=[text]), timeout=60)
        latencies.append(time.perf_counter() - start)
    return latencies


@contextlib.asynccontextmanager
async def inprocess_service(
    engine: EmbeddingEngine, settings: EmbeddingSettings
) -> AsyncIterator[str]:
    """The service in this process, sharing the raw side's model, on a loopback port."""
    server = create_server(settings, engine)
    port = await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(5)


@contextlib.asynccontextmanager
async def subprocess_service(settings: EmbeddingSettings) -> AsyncIterator[str]:
    """The service as its own process (``python -m lodestar.services.embedding``)."""
    port = free_port()
    env = {
        "LODESTAR_EMBEDDING_PORT": str(port),
        "LODESTAR_EMBEDDING_METRICS_PORT": "0",
        "LODESTAR_EMBEDDING_MAX_BATCH_SIZE": str(settings.max_batch_size),
        "LODESTAR_EMBEDDING_MAX_WAIT_MS": str(settings.max_wait_ms),
    }
    if settings.threads is not None:
        env["LODESTAR_EMBEDDING_THREADS"] = str(settings.threads)
    address = f"127.0.0.1:{port}"
    async with service_process("lodestar.services.embedding", env, grpc_address=address):
        yield address


@dataclass
class Figures:
    raw_batch_tps: list[float]
    raw_single_p50_s: list[float]
    service_tps: list[float]
    service_single_p50_s: list[float]


async def measure(args: argparse.Namespace) -> tuple[Figures, EmbeddingEngine, int]:
    settings = EmbeddingSettings(
        port=0,
        metrics_port=None,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        threads=args.threads,
    )
    engine = EmbeddingEngine.load(settings.model_path, threads=settings.threads)
    model = engine.model
    texts = stdlib_sentences()
    figures = Figures([], [], [], [])
    service = (
        subprocess_service(settings)
        if args.server == "subprocess"
        else inprocess_service(engine, settings)
    )
    async with service as address:
        channels = [insecure_channel(address) for _ in range(args.channels)]
        try:
            # Warm both sides up (allocator, kernels, connections).
            raw_batch_throughput(model, texts, 1.0)
            await service_throughput(channels, texts, args.clients, 1.0)
            for round_ in range(args.rounds):
                figures.raw_batch_tps.append(raw_batch_throughput(model, texts, args.seconds))
                figures.service_tps.append(
                    await service_throughput(channels, texts, args.clients, args.seconds)
                )
                # Short alternating blocks, so that both sides see the same load.
                raw: list[float] = []
                served: list[float] = []
                for block in range(LATENCY_BLOCKS):
                    start = (round_ * LATENCY_BLOCKS + block) * args.calls // LATENCY_BLOCKS
                    sample = (texts * 2)[start % len(texts) :][: args.calls // LATENCY_BLOCKS]
                    raw += raw_single_latencies(model, sample)
                    served += await service_single_latencies(channels[0], sample)
                figures.raw_single_p50_s.append(statistics.median(raw))
                figures.service_single_p50_s.append(statistics.median(served))
                print(
                    f"  round {round_ + 1}: raw {figures.raw_batch_tps[-1]:.0f} texts/s, "
                    f"service {figures.service_tps[-1]:.0f} texts/s; "
                    f"p50 raw {figures.raw_single_p50_s[-1] * 1e3:.2f} ms, "
                    f"service {figures.service_single_p50_s[-1] * 1e3:.2f} ms",
                    flush=True,
                )
        finally:
            for channel in channels:
                await channel.close()
    return figures, engine, len(texts)


def report(figures: Figures, engine: EmbeddingEngine, args: argparse.Namespace, n: int) -> bool:
    import torch

    raw_tps = statistics.median(figures.raw_batch_tps)
    service_tps = statistics.median(figures.service_tps)
    raw_p50 = statistics.median(figures.raw_single_p50_s) * 1e3
    service_p50 = statistics.median(figures.service_single_p50_s) * 1e3
    ratio = service_tps / raw_tps
    overhead = service_p50 - raw_p50
    throughput_ok = ratio >= THROUGHPUT_TARGET
    latency_ok = overhead <= OVERHEAD_TARGET_MS
    print(
        f"embedding: {engine.info.name}, {torch.get_num_threads()} torch threads, {n} stdlib "
        f"sentences, service {args.server} (max batch {args.max_batch_size}, "
        f"max wait {args.max_wait_ms} ms), medians of {args.rounds} rounds"
    )
    print(
        f"  throughput  raw encode batch {RAW_BATCH}: {raw_tps:8.1f} texts/s | service, "
        f"{args.clients} clients x 1 text: {service_tps:8.1f} texts/s | ratio {ratio:.2f} "
        f"(target >= {THROUGHPUT_TARGET:.2f}) {'ok' if throughput_ok else 'MISSED'}"
    )
    print(
        f"  latency p50 raw encode 1 text:  {raw_p50:8.2f} ms      | service, 1 call:       "
        f"{service_p50:8.2f} ms      | overhead {overhead:+.2f} ms "
        f"(target <= {OVERHEAD_TARGET_MS:.1f} ms) {'ok' if latency_ok else 'MISSED'}"
    )
    return throughput_ok and latency_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.embedding", description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each window")
    parser.add_argument("--rounds", type=int, default=3, help="raw/service rounds")
    parser.add_argument("--calls", type=int, default=100, help="single calls per side and round")
    parser.add_argument("--clients", type=int, default=64, help="concurrent gRPC clients")
    parser.add_argument("--channels", type=int, default=64, help="connections they share")
    parser.add_argument("--server", choices=("inprocess", "subprocess"), default="inprocess")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=EmbeddingSettings.model_fields["max_batch_size"].default,
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=EmbeddingSettings.model_fields["max_wait_ms"].default
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    figures, engine, n = asyncio.run(measure(args))
    met = report(figures, engine, args, n)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
