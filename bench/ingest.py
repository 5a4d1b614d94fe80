"""Ingest benchmark: ``lodestar ingest`` end to end against raw sentence-transformers.

    python -m bench.ingest [--rounds 3] [--topics 40] [--server inprocess|subprocess]

In one run, over the same corpus (the Python language reference topics that
ship with every Python, ``pydoc_data.topics``, written out as .rst files, so
nothing is downloaded) and the same chunks:

- raw: ``SentenceTransformer.encode(chunks, batch_size=32)`` on the bundled
  all-MiniLM-L6-v2, in this process (chunks/s);
- ingest: the ingest pipeline end to end, from reading the files to every
  point acknowledged by the vector service, through real gRPC servers on
  loopback, into a fresh collection each round, without a checkpoint
  (chunks/s). By default both services run in this process, the embedding
  service sharing the raw side's model, so both sides run the same torch
  configuration under the same conditions; ``--server subprocess`` runs each
  as its own process, as ``lodestar run`` does.

Raw and ingest windows alternate for ``--rounds`` rounds and the medians are
compared, so that load from other processes affects both sides alike.
Target: ingest ≥ 0.7 × raw.

On a machine busy with other work, wall-clock figures favour the side with
more runnable threads (the services' processes get a larger share of the CPU
than the raw side's one process), so the CPU time each side used is measured
too (every process involved: this one, and the services' when they run apart)
and chunks per CPU-second are compared as well.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.processes import cpu_seconds, free_port, service_process
from lodestar.ingest import IngestOptions, Ingestor
from lodestar.ingest.chunking import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    ChunkingOptions,
    format_for_name,
    split_text,
)
from lodestar.ingest.sinks import GrpcSink
from lodestar.ingest.sources import SourceRef, discover, read_source
from lodestar.services.embedding.engine import EmbeddingEngine
from lodestar.services.embedding.settings import EmbeddingSettings

RAW_BATCH = 32
TARGET_RATIO = 0.7


def write_corpus(directory: Path, limit: int) -> list[SourceRef]:
    from pydoc_data.topics import topics

    for name in sorted(topics)[:limit]:
        (directory / f"{name}.rst").write_text(topics[name], encoding="utf-8")
    return discover([str(directory)])


def chunk_texts(sources: list[SourceRef], chunking: ChunkingOptions) -> list[str]:
    texts: list[str] = []
    for ref in sources:
        document = read_source(ref)
        assert not hasattr(document, "reason"), document
        text: str = document.text  # type: ignore[union-attr]
        texts.extend(c.text for c in split_text(text, format_for_name(ref.source), chunking))
    return texts


def raw_throughput(model: Any, texts: list[str]) -> tuple[float, float]:
    """(chunks/s, chunks per CPU-second)."""
    cpu, start = time.process_time(), time.perf_counter()
    model.encode(texts, batch_size=RAW_BATCH, normalize_embeddings=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return len(texts) / wall, len(texts) / cpu


@dataclass(frozen=True)
class Running:
    addresses: tuple[str, str]
    pids: tuple[int, ...] = ()  # service processes apart from this one

    def cpu_seconds(self) -> float:
        """CPU time used so far by this process and the service processes."""
        return time.process_time() + sum(cpu_seconds(pid) for pid in self.pids)


@contextlib.asynccontextmanager
async def subprocess_services(data_dir: Path) -> AsyncIterator[Running]:
    """Embedding and vector services as their own processes (as ``lodestar run`` starts them)."""
    embedding_port, vector_port = free_port(), free_port()
    addresses = (f"127.0.0.1:{embedding_port}", f"127.0.0.1:{vector_port}")
    embedding_env = {
        "LODESTAR_EMBEDDING_PORT": str(embedding_port),
        "LODESTAR_EMBEDDING_METRICS_PORT": "0",
    }
    vector_env = {
        "LODESTAR_VECTOR_PORT": str(vector_port),
        "LODESTAR_VECTOR_METRICS_PORT": "0",
        "LODESTAR_VECTOR_DATA_DIR": str(data_dir),
    }
    async with (
        service_process(
            "lodestar.services.embedding", embedding_env, grpc_address=addresses[0]
        ) as embedding,
        service_process(
            "lodestar.services.vector", vector_env, grpc_address=addresses[1]
        ) as vector,
    ):
        yield Running(addresses, (embedding, vector))


@contextlib.asynccontextmanager
async def inprocess_services(engine: EmbeddingEngine, data_dir: Path) -> AsyncIterator[Running]:
    """Both services in this process, the embedding one sharing the raw side's model."""
    from lodestar.services.embedding.server import create_server as create_embedding
    from lodestar.services.vector.server import create_server as create_vector
    from lodestar.services.vector.settings import VectorSettings

    embedding = create_embedding(EmbeddingSettings(port=0, metrics_port=None), engine)
    vector = await create_vector(VectorSettings(port=0, metrics_port=None, data_dir=data_dir))
    embedding_port = await embedding.start()
    vector_port = await vector.start()
    try:
        yield Running((f"127.0.0.1:{embedding_port}", f"127.0.0.1:{vector_port}"))
    finally:
        await embedding.stop(5)
        await vector.stop(5)


async def ingest_throughput(
    services: Running, sources: list[SourceRef], options: IngestOptions
) -> tuple[float, float, int]:
    """(chunks/s, chunks per CPU-second of every process involved, chunks)."""
    sink = GrpcSink(*services.addresses)
    cpu = services.cpu_seconds()
    try:
        report = await Ingestor(options, sink).run(sources)
    finally:
        await sink.close()
    cpu = services.cpu_seconds() - cpu
    if report.chunks_new != report.chunks:
        raise RuntimeError(f"expected a fresh collection, got {report.as_dict()}")
    return report.chunks / report.elapsed_s, report.chunks / cpu, report.chunks


@dataclass
class Figures:
    raw: list[float] = field(default_factory=list)
    ingest: list[float] = field(default_factory=list)
    raw_per_cpu: list[float] = field(default_factory=list)
    ingest_per_cpu: list[float] = field(default_factory=list)


async def measure(args: argparse.Namespace) -> tuple[Figures, int, int]:
    chunking = ChunkingOptions(args.chunk_size, args.chunk_overlap)
    engine = EmbeddingEngine.load(EmbeddingSettings().model_path)
    model = engine.model
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="lodestar-bench-ingest-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        sources = write_corpus(corpus, args.topics)
        texts = chunk_texts(sources, chunking)
        services = (
            subprocess_services(Path(tmp) / "vector")
            if args.server == "subprocess"
            else inprocess_services(engine, Path(tmp) / "vector")
        )
        async with services as running:

            def options(collection: str) -> IngestOptions:
                return IngestOptions(
                    collection=collection,
                    create=True,
                    chunking=chunking,
                    batch_size=args.batch_size,
                    concurrency=args.concurrency,
                    checkpoint_path=None,
                    progress=False,
                )

            # Warm both sides up (allocator, kernels, connections).
            raw_throughput(model, texts[:64])
            await ingest_throughput(running, sources[:3], options("bench-warmup"))
            for round_ in range(args.rounds):
                rate, per_cpu = raw_throughput(model, texts)
                figures.raw.append(rate)
                figures.raw_per_cpu.append(per_cpu)
                rate, per_cpu, chunks = await ingest_throughput(
                    running, sources, options(f"bench-round-{round_}")
                )
                if chunks != len(texts):
                    raise RuntimeError(f"ingest made {chunks} chunks, raw side {len(texts)}")
                figures.ingest.append(rate)
                figures.ingest_per_cpu.append(per_cpu)
                print(
                    f"  round {round_ + 1}: raw {figures.raw[-1]:.1f} chunks/s "
                    f"({figures.raw_per_cpu[-1]:.1f}/CPU-s), ingest {figures.ingest[-1]:.1f} "
                    f"chunks/s ({figures.ingest_per_cpu[-1]:.1f}/CPU-s)",
                    flush=True,
                )
    return figures, len(sources), len(texts)


def report(figures: Figures, args: argparse.Namespace, files: int, chunks: int) -> bool:
    import torch

    raw = statistics.median(figures.raw)
    ingest = statistics.median(figures.ingest)
    ratio = ingest / raw
    raw_cpu = statistics.median(figures.raw_per_cpu)
    ingest_cpu = statistics.median(figures.ingest_per_cpu)
    cpu_ratio = ingest_cpu / raw_cpu
    met = ratio >= TARGET_RATIO
    print(
        f"ingest: {files} files, {chunks} chunks of <= {args.chunk_size} chars "
        f"(overlap {args.chunk_overlap}), all-MiniLM-L6-v2, {torch.get_num_threads()} torch "
        f"threads; services {args.server}; batch {args.batch_size} x {args.concurrency} in "
        f"flight; medians of {args.rounds} rounds"
    )
    print(
        f"  raw encode batch {RAW_BATCH}: {raw:8.1f} chunks/s | lodestar ingest end to end: "
        f"{ingest:8.1f} chunks/s | ratio {ratio:.2f} (target >= {TARGET_RATIO:.2f}) "
        f"{'ok' if met else 'MISSED'}"
    )
    print(
        f"  per CPU-second:        {raw_cpu:8.1f} chunks   | all processes of the ingest:  "
        f"{ingest_cpu:8.1f} chunks   | ratio {cpu_ratio:.2f}"
    )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="raw/ingest rounds")
    parser.add_argument("--topics", type=int, default=40, help="pydoc topics in the corpus")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--chunk-overlap", type=int, default=DEFAULT_CHUNK_OVERLAP)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--server", choices=("inprocess", "subprocess"), default="inprocess")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    figures, files, chunks = asyncio.run(measure(args))
    met = report(figures, args, files, chunks)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
