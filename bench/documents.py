"""Documents benchmark: uploads through the documents API against raw sentence-transformers.

    python -m bench.documents [--rounds 3] [--topics 40] [--concurrency 4]

In one run, over the same corpus (the Python language reference topics of
``pydoc_data.topics``, uploaded as text files, so nothing is downloaded) and
the same chunks (the documents pipeline's own reading and chunking):

- raw: ``SentenceTransformer.encode(chunks, batch_size=32)`` on the bundled
  all-MiniLM-L6-v2, in this process (chunks/s);
- documents: every file uploaded with ``POST /api/v1/collections/{name}/documents``
  (multipart, ``--concurrency`` uploads in flight) to a gateway on loopback in
  front of real embedding and vector gRPC servers, until every upload has
  answered with its stored document (chunks/s). The services and the gateway
  run in this process, the embedding service sharing the raw side's model.

Raw and upload windows alternate for ``--rounds`` rounds and the medians are
compared, so that load from other processes affects both sides alike.
Target: documents ≥ 0.7 × raw.
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
from pathlib import Path

import httpx

from bench.ingest import RAW_BATCH, TARGET_RATIO, inprocess_services, raw_throughput
from lodestar.auth.tokens import mint_token
from lodestar.documents.formats import DocumentFormat, parse_document
from lodestar.documents.pipeline import DocumentInput, plan_chunks
from lodestar.ingest.chunking import ChunkingOptions
from lodestar.services.embedding.engine import EmbeddingEngine
from lodestar.services.embedding.settings import EmbeddingSettings
from lodestar.services.gateway.server import bound_port, create_server
from lodestar.services.gateway.settings import GatewaySettings

_LIMITS = {"generate": 1_000_000, "read": 1_000_000, "write": 1_000_000, "admin": 1_000_000}


def corpus(limit: int) -> dict[str, bytes]:
    from pydoc_data.topics import topics

    return {f"{name}.txt": topics[name].encode("utf-8") for name in sorted(topics)[:limit]}


def chunk_texts(files: dict[str, bytes]) -> list[str]:
    texts: list[str] = []
    for name, data in files.items():
        parsed = parse_document(data, DocumentFormat.TEXT)
        document = DocumentInput(name, name, name, parsed, len(data))
        texts.extend(c.text for c in plan_chunks(document, ChunkingOptions()))
    return texts


@contextlib.asynccontextmanager
async def gateway(embedding: str, vector: str) -> AsyncIterator[tuple[str, GatewaySettings]]:
    settings = GatewaySettings(
        port=0,
        embedding_addresses=embedding,  # type: ignore[arg-type]
        vector_addresses=vector,  # type: ignore[arg-type]
        access_log=False,
        requests_per_minute=_LIMITS,  # type: ignore[arg-type]
        document_job_threshold_bytes=1 << 30,  # every upload written within its request
    )
    server = create_server(settings)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{bound_port(server)}", settings
    finally:
        server.should_exit = True
        await task


async def upload_all(
    http: httpx.AsyncClient, token: str, collection: str, files: dict[str, bytes], concurrency: int
) -> tuple[float, int]:
    """(chunks/s, chunks) of uploading every file."""
    headers = {"Authorization": f"Bearer {token}"}
    reply = await http.post(
        "/api/v1/collections", json={"name": collection, "distance": "cosine"}, headers=headers
    )
    reply.raise_for_status()
    limit = asyncio.Semaphore(concurrency)

    async def upload(name: str, data: bytes) -> int:
        async with limit:
            reply = await http.post(
                f"/api/v1/collections/{collection}/documents",
                files={"file": (name, data)},
                headers=headers,
            )
        if reply.status_code != 201:
            raise RuntimeError(f"{name}: {reply.status_code} {reply.text}")
        chunks: int = reply.json()["document"]["chunks"]
        return chunks

    start = time.perf_counter()
    counts = await asyncio.gather(*(upload(n, d) for n, d in files.items()))
    elapsed = time.perf_counter() - start
    return sum(counts) / elapsed, sum(counts)


async def measure(args: argparse.Namespace) -> tuple[list[float], list[float], int, int]:
    engine = EmbeddingEngine.load(EmbeddingSettings().model_path)
    files = corpus(args.topics)
    texts = chunk_texts(files)
    raw_rates: list[float] = []
    upload_rates: list[float] = []
    with tempfile.TemporaryDirectory(prefix="lodestar-bench-documents-") as tmp:
        async with (
            inprocess_services(engine, Path(tmp) / "vector") as running,
            gateway(*running.addresses) as (url, settings),
            httpx.AsyncClient(base_url=url, timeout=300) as http,
        ):
            token = mint_token(settings, "bench", ["admin"], 3600)
            raw_throughput(engine.model, texts[:64])
            await upload_all(http, token, "bench-warmup", dict(list(files.items())[:3]), 2)
            for round_ in range(args.rounds):
                raw_rates.append(raw_throughput(engine.model, texts)[0])
                rate, chunks = await upload_all(
                    http, token, f"bench-round-{round_}", files, args.concurrency
                )
                if chunks != len(texts):
                    raise RuntimeError(f"the uploads made {chunks} chunks, raw side {len(texts)}")
                upload_rates.append(rate)
                print(
                    f"  round {round_ + 1}: raw {raw_rates[-1]:.1f} chunks/s, "
                    f"documents API {upload_rates[-1]:.1f} chunks/s",
                    flush=True,
                )
    return raw_rates, upload_rates, len(files), len(texts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.documents", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="raw/upload rounds")
    parser.add_argument("--topics", type=int, default=40, help="pydoc topics in the corpus")
    parser.add_argument("--concurrency", type=int, default=4, help="uploads in flight")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    raw_rates, upload_rates, files, chunks = asyncio.run(measure(args))
    raw, uploads = statistics.median(raw_rates), statistics.median(upload_rates)
    ratio = uploads / raw
    met = ratio >= TARGET_RATIO
    print(
        f"documents: {files} files, {chunks} chunks, all-MiniLM-L6-v2; "
        f"{args.concurrency} uploads in flight; medians of {args.rounds} rounds"
    )
    print(
        f"  raw encode batch {RAW_BATCH}: {raw:8.1f} chunks/s | documents API end to end: "
        f"{uploads:8.1f} chunks/s | ratio {ratio:.2f} (target >= {TARGET_RATIO:.2f}) "
        f"{'ok' if met else 'MISSED'}"
    )
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
