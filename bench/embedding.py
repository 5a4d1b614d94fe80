"""Embedding benchmark: the raw libraries against the service over gRPC, per backend.

    python -m bench.embedding [--seconds 4] [--rounds 3] [--clients 64]
                              [--backends torch onnx [onnx-int8]]

In one run, with the same model and the same short texts (sentences from the
standard library's docstrings, so nothing is downloaded), for each backend:

- the raw library at batch 32 (texts/s) and one text at a time (latency p50):
  ``SentenceTransformer.encode`` for torch; for the onnx backends an ONNX Runtime
  session on the cached export, fed by the model's tokenizer, pooled and normalised;
- the service, a real gRPC server on loopback running that backend, under
  ``--clients`` concurrent clients that each send one text per call (texts/s), and
  one client alone (latency p50).

Backends, and raw and service windows, alternate for ``--rounds`` rounds and the
medians are compared, so that load from other processes affects every side alike.
The targets: each service within reach of its raw library, and the onnx backend's
service under 5 ms p50 for one short text with a throughput no lower than torch's.
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
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from bench.processes import free_port, service_process
from lodestar.embedding.v1 import embedding_service_pb2 as pb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as pb_grpc
from lodestar.runtime.channels import insecure_channel
from lodestar.services.embedding.engine import EmbeddingEngine
from lodestar.services.embedding.server import create_server
from lodestar.services.embedding.settings import Backend, EmbeddingSettings

RAW_BATCH = 32
LATENCY_BLOCKS = 10
THROUGHPUT_TARGET = 0.8
OVERHEAD_TARGET_MS = 1.0
SINGLE_TEXT_TARGET_MS = 5.0
BACKENDS: tuple[Backend, ...] = ("torch", "onnx", "onnx-int8")

# The raw library's call for a list of texts: normalised vectors, no service in between.
RawEncode = Callable[[list[str]], Any]


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


def raw_encoder(
    backend: Backend, engine: EmbeddingEngine, settings: EmbeddingSettings
) -> RawEncode:
    """The raw library of ``backend``, on the model the engine loaded."""
    model = engine.model
    if backend == "torch":
        return lambda texts: model.encode(texts, batch_size=RAW_BATCH, normalize_embeddings=True)
    from lodestar.services.embedding import onnx_backend

    encoder = onnx_backend.load_encoder(
        model,
        name=engine.info.name,
        model_path=settings.model_path,
        cache_dir=settings.cache_dir or onnx_backend.default_cache_dir(),
        precision="int8" if backend == "onnx-int8" else "fp32",
        threads=settings.threads,
    )
    tokenizer = model.tokenizer

    def encode(texts: list[str]) -> Any:
        features = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
        vectors = encoder(features)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return encode


def raw_batch_throughput(encode: RawEncode, texts: list[str], seconds: float) -> float:
    chunks = [texts[i : i + RAW_BATCH] for i in range(0, len(texts) - RAW_BATCH + 1, RAW_BATCH)]
    source = iter(_cycle_chunks(chunks))

    def step() -> int:
        encode(next(source))
        return RAW_BATCH

    return _timed_loop(seconds, step)


def _cycle_chunks(chunks: list[list[str]]) -> Iterator[list[str]]:
    while True:
        yield from chunks


def raw_single_latencies(encode: RawEncode, texts: list[str]) -> list[float]:
    latencies = []
    for text in texts:
        start = time.perf_counter()
        encode([text])
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
        "LODESTAR_EMBEDDING_BACKEND": settings.backend,
    }
    if settings.threads is not None:
        env["LODESTAR_EMBEDDING_THREADS"] = str(settings.threads)
    address = f"127.0.0.1:{port}"
    async with service_process("lodestar.services.embedding", env, grpc_address=address):
        yield address


@dataclass
class Figures:
    """Per-round figures of one backend."""

    raw_batch_tps: list[float] = field(default_factory=list)
    raw_single_p50_s: list[float] = field(default_factory=list)
    service_tps: list[float] = field(default_factory=list)
    service_single_p50_s: list[float] = field(default_factory=list)


@dataclass
class Side:
    """One backend: its engine, its raw library's call, its service's channels."""

    backend: Backend
    settings: EmbeddingSettings
    engine: EmbeddingEngine
    raw: RawEncode
    figures: Figures = field(default_factory=Figures)
    channels: list[grpc.aio.Channel] = field(default_factory=list)


def _settings(args: argparse.Namespace, backend: Backend) -> EmbeddingSettings:
    return EmbeddingSettings(
        port=0,
        metrics_port=None,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        threads=args.threads,
        backend=backend,
    )


async def measure(args: argparse.Namespace) -> tuple[list[Side], int]:
    sides = []
    for backend in args.backends:
        settings = _settings(args, backend)
        engine = EmbeddingEngine.load(
            settings.model_path, threads=settings.threads, backend=backend
        )
        sides.append(Side(backend, settings, engine, raw_encoder(backend, engine, settings)))
    texts = stdlib_sentences()
    async with contextlib.AsyncExitStack() as stack:
        for side in sides:
            address = await stack.enter_async_context(
                subprocess_service(side.settings)
                if args.server == "subprocess"
                else inprocess_service(side.engine, side.settings)
            )
            side.channels = [insecure_channel(address) for _ in range(args.channels)]
            for channel in side.channels:
                stack.push_async_callback(channel.close)
            # Warm up (allocator, kernels, connections).
            raw_batch_throughput(side.raw, texts, 1.0)
            await service_throughput(side.channels, texts, args.clients, 1.0)
        for round_ in range(args.rounds):
            for side in sides:
                side.figures.raw_batch_tps.append(
                    raw_batch_throughput(side.raw, texts, args.seconds)
                )
                side.figures.service_tps.append(
                    await service_throughput(side.channels, texts, args.clients, args.seconds)
                )
            # Short alternating blocks, so that every side sees the same load.
            raw: dict[str, list[float]] = {side.backend: [] for side in sides}
            served: dict[str, list[float]] = {side.backend: [] for side in sides}
            for block in range(LATENCY_BLOCKS):
                start = (round_ * LATENCY_BLOCKS + block) * args.calls // LATENCY_BLOCKS
                sample = (texts * 2)[start % len(texts) :][: args.calls // LATENCY_BLOCKS]
                for side in sides:
                    raw[side.backend] += raw_single_latencies(side.raw, sample)
                    served[side.backend] += await service_single_latencies(side.channels[0], sample)
            for side in sides:
                figures = side.figures
                figures.raw_single_p50_s.append(statistics.median(raw[side.backend]))
                figures.service_single_p50_s.append(statistics.median(served[side.backend]))
                print(
                    f"  round {round_ + 1} {side.backend:>9}: raw {figures.raw_batch_tps[-1]:.0f} "
                    f"texts/s, service {figures.service_tps[-1]:.0f} texts/s; p50 raw "
                    f"{figures.raw_single_p50_s[-1] * 1e3:.2f} ms, service "
                    f"{figures.service_single_p50_s[-1] * 1e3:.2f} ms",
                    flush=True,
                )
    return sides, len(texts)


def report(sides: list[Side], args: argparse.Namespace, n: int) -> bool:
    fast: Backend = "onnx"  # the backend the latency and throughput goals are set for
    print(
        f"embedding: {sides[0].engine.info.name}, threads {args.threads or 'default'}, {n} "
        f"stdlib sentences, service {args.server} (max batch {args.max_batch_size}, max wait "
        f"{args.max_wait_ms} ms), medians of {args.rounds} rounds"
    )
    print(
        f"  {'backend':>9} | {'raw b' + str(RAW_BATCH):>10} | {str(args.clients) + ' clients':>10} "
        f"| ratio | {'raw p50':>8} | {'svc p50':>8} | overhead   (texts/s; ms)"
    )
    met = True
    medians: dict[str, tuple[float, float, float, float]] = {}
    for side in sides:
        f = side.figures
        raw_tps, service_tps = statistics.median(f.raw_batch_tps), statistics.median(f.service_tps)
        raw_p50 = statistics.median(f.raw_single_p50_s) * 1e3
        service_p50 = statistics.median(f.service_single_p50_s) * 1e3
        medians[side.backend] = (raw_tps, service_tps, raw_p50, service_p50)
        ratio, overhead = service_tps / raw_tps, service_p50 - raw_p50
        ok = ratio >= THROUGHPUT_TARGET and overhead <= OVERHEAD_TARGET_MS
        met &= ok
        print(
            f"  {side.backend:>9} | {raw_tps:10.1f} | {service_tps:10.1f} | {ratio:5.2f} | "
            f"{raw_p50:8.2f} | {service_p50:8.2f} | {overhead:+6.2f}   "
            f"{'ok' if ok else 'MISSED'}"
        )
    print(
        f"  targets: service/raw throughput >= {THROUGHPUT_TARGET:.2f}, overhead <= "
        f"{OVERHEAD_TARGET_MS:.1f} ms"
    )
    if fast in medians:
        _, service_tps, _, service_p50 = medians[fast]
        ok = service_p50 < SINGLE_TEXT_TARGET_MS
        met &= ok
        print(
            f"  {fast}: one short text through the service {service_p50:.2f} "
            f"ms p50 (target < {SINGLE_TEXT_TARGET_MS:.0f} ms) {'ok' if ok else 'MISSED'}"
        )
        if "torch" in medians:
            torch_raw, torch_service, _, torch_service_p50 = medians["torch"]
            raw_tps = medians[fast][0]
            ok = service_tps >= torch_service
            met &= ok
            print(
                f"  {fast} / torch: service throughput x{service_tps / torch_service:.2f}, "
                f"raw batch {RAW_BATCH} x{raw_tps / torch_raw:.2f} (target >= 1), service p50 "
                f"x{torch_service_p50 / service_p50:.2f} faster {'ok' if ok else 'MISSED'}"
            )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.embedding", description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each window")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every side")
    parser.add_argument("--calls", type=int, default=100, help="single calls per side and round")
    parser.add_argument("--clients", type=int, default=64, help="concurrent gRPC clients")
    parser.add_argument("--channels", type=int, default=64, help="connections they share")
    parser.add_argument("--server", choices=("inprocess", "subprocess"), default="inprocess")
    parser.add_argument(
        "--backends", nargs="+", choices=BACKENDS, default=["torch", "onnx"], help="sides"
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=EmbeddingSettings.model_fields["max_batch_size"].default,
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=EmbeddingSettings.model_fields["max_wait_ms"].default
    )
    parser.add_argument("--threads", type=int, default=None, help="torch/ONNX Runtime threads")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    sides, n = asyncio.run(measure(args))
    met = report(sides, args, n)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
