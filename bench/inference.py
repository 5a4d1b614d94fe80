"""Inference benchmark: raw llama-cpp-python against the service over gRPC streaming.

    python -m bench.inference [--rounds 5] [--max-tokens 128] [--streams 8] [--ttft-pairs 15]

In one run, on the same GGUF model (the bundled SmolLM2-135M-Instruct Q4_1 unless
``LODESTAR_INFERENCE_MODEL_PATH`` says otherwise), greedy decoding and the same number
of CPU threads:

1. time to first token: ``--ttft-pairs`` pairs of one request to a tight loop on
   llama-cpp-python's low-level API in this process and one ``StreamGenerateText`` call
   to the service, for ``--ttft-tokens`` tokens, alternating which goes first. Each pair
   sends the same raw prompt, which starts with a nonce whose first token no earlier
   prompt had, so the service's prompt cache holds none of it and both sides process the
   whole prompt. Compared: the median of the paired differences (service − raw) of the
   time from the call to the first text.
2. single stream: ``--max-tokens`` tokens of one chat prompt, raw against the service.
   Compared: decode tokens/s (tokens after the first over the time from the first to the
   last). The service runs with its prompt cache on, as in production: after the first
   round its prompt comes from the cache (which does not change the decode rate).
3. ``--streams`` concurrent streams of ``--max-tokens`` tokens each against the service:
   aggregate tokens/s (all tokens over the wall time of the whole group, prompts
   included) against the service's own single stream measured the same way; here the
   cached prompts do count. For scale, raw llama-cpp-python decoding all the sequences
   in one batch (no cache: every prompt processed), end to end and decode only (the
   ceiling of batched decoding for this model on this CPU).
4. for reference, when it is built (``make llama-server``) or given with
   ``--llama-server``: llama.cpp's own C++ server on the same model, threads and
   prompts, one slot per stream, streaming over HTTP: its single stream and its
   ``--streams`` concurrent streams measured as the service's are (step 3) in the same
   rounds, and the service's ratio against the server's.
5. constrained decoding: the same single stream and ``--streams`` streams with the output
   bound to a JSON schema (an essay outline of eight sections, about 200 tokens), on the
   service and, when measured, on llama.cpp's server (its ``json_schema``), end to end;
   printed beside the unconstrained figures, with the service / server ratios.

The service's prompt-cache counters are read from its metrics endpoint around every
call, and the output says how many prompt tokens of each figure came from the cache.
Raw and service measurements alternate for ``--rounds`` rounds and the medians are
compared, so that load from other processes affects both sides alike; the load average
is printed next to the figures. Both sides must produce the same text (greedy decoding
of the same prompt), which is checked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import random
import statistics
import string
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import llama_cpp
import numpy as np

from bench.processes import command_process, free_port, http_ready, metric_samples, service_process
from bench.tools import TOOLS, add_tool_option, chosen_tool
from lodestar.inference.v1 import inference_service_pb2 as pb
from lodestar.inference.v1 import inference_service_pb2_grpc as pb_grpc
from lodestar.runtime.channels import insecure_channel
from lodestar.services.inference.engine import InferenceEngine
from lodestar.services.inference.model import LlamaModel
from lodestar.services.inference.server import create_server
from lodestar.services.inference.settings import InferenceSettings

DECODE_RATIO_TARGET = 0.95
CONSTRAINED_RATIO_TARGET = 0.9
TTFT_OVERHEAD_TARGET_MS = 5.0
CONCURRENCY_RATIO_TARGET = 2.0

TOPICS = (
    "the history of the printing press",
    "how bees make honey",
    "the life of a lighthouse keeper",
    "why the sky is blue",
    "a journey across the desert",
    "the invention of the telephone",
    "how volcanoes form",
    "a day in a busy bakery",
)


def prompt_messages(topic: str) -> list[tuple[str, str]]:
    return [("user", f"Write a long, detailed essay about {topic}.")]


def outline_messages(topic: str) -> list[tuple[str, str]]:
    return [("user", f"Write the outline of an essay about {topic} as JSON.")]


# The constrained streams' output: an outline of exactly eight sections.
OUTLINE_SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "sections": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"heading": {"type": "string"}, "summary": {"type": "string"}},
                    "required": ["heading", "summary"],
                },
                "minItems": 8,
                "maxItems": 8,
            },
        },
        "required": ["title", "sections"],
    }
)


@dataclass
class StreamFigures:
    """One stream: when it started, its first and last text, and how many tokens."""

    started: float
    first: float
    last: float
    tokens: int
    text: str

    @property
    def ttft_ms(self) -> float:
        return (self.first - self.started) * 1000

    @property
    def decode_tps(self) -> float:
        return (self.tokens - 1) / (self.last - self.first) if self.last > self.first else 0.0

    @property
    def end_to_end_tps(self) -> float:
        return self.tokens / (self.last - self.started)


# -- raw llama-cpp-python ------------------------------------------------------------


class RawLlama:
    """The baseline: llama-cpp-python's low-level API, greedy.

    ``generate`` runs one sequence; ``generate_batch`` runs several in one
    ``llama_decode`` per step (each sequence in its own KV stream, as in the service),
    which is the most a batched decode of this model on this CPU gives.
    """

    def __init__(
        self,
        model: LlamaModel,
        *,
        context_size: int,
        threads: int,
        flash: bool,
        sequences: int = 1,
    ) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = context_size * sequences
        params.n_batch = 512
        params.n_ubatch = 512
        params.n_seq_max = sequences
        params.kv_unified = False
        params.n_threads = threads
        params.n_threads_batch = threads
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
            if flash
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True
        self.model = model
        self.ctx = llama_cpp.llama_init_from_model(model.pointer, params)
        self.vocab = model.vocab
        self.n_vocab = model.vocab_size
        self.sequences = sequences
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)

    def _tokenize(self, text: str) -> list[int]:
        data = text.encode()
        tokens = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, len(tokens), False, True)
        return list(tokens[:n])

    def _greedy(self, index: int) -> int:
        # Greedy as the service does it: argmax of the logits row (cheaper than a
        # sampler chain, which copies the vocabulary into a candidate array first).
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,)
        )
        return int(logits.argmax())

    def generate(self, text: str, max_tokens: int) -> StreamFigures:
        started = time.perf_counter()
        tokens = self._tokenize(text)
        prompt = (llama_cpp.llama_token * len(tokens))(*tokens)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        piece = ctypes.create_string_buffer(64)
        out = bytearray()
        batch = llama_cpp.llama_batch_get_one(prompt, len(tokens))
        token_array = (llama_cpp.llama_token * 1)()
        first = last = 0.0
        count = 0
        while count < max_tokens:
            if llama_cpp.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            token = self._greedy(-1)
            if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                break
            size = llama_cpp.llama_token_to_piece(self.vocab, token, piece, 64, 0, False)
            out += piece.raw[:size]
            count += 1
            last = time.perf_counter()
            if count == 1:
                first = last
            token_array[0] = token
            batch = llama_cpp.llama_batch_get_one(token_array, 1)
        return StreamFigures(started, first, last, count, out.decode("utf-8", errors="replace"))

    def generate_batch(self, texts: list[str], max_tokens: int) -> tuple[int, float, float]:
        """All texts decoded together: the tokens generated, the wall time and the decode
        rate once the prompts are done (tokens after each sequence's first over that time)."""
        started = time.perf_counter()
        prompts = [self._tokenize(text) for text in texts]
        if max(map(len, prompts)) > 512:
            raise ValueError("prompts of the benchmark must fit in one batch")
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        batch = self.batch
        piece = ctypes.create_string_buffer(64)
        current: dict[int, int] = {}  # sequence -> its latest token
        # Prompts first: as many whole prompts per llama_decode as fit in the batch.
        pending = list(enumerate(prompts))
        while pending:
            rows: dict[int, int] = {}
            n = 0
            while pending and n + len(pending[0][1]) <= 512:
                seq, prompt = pending.pop(0)
                for pos, token in enumerate(prompt):
                    batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
                    batch.seq_id[n][0], batch.logits[n] = seq, pos == len(prompt) - 1
                    n += 1
                rows[seq] = n - 1
            batch.n_tokens = n
            if llama_cpp.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            current.update((seq, self._greedy(row)) for seq, row in rows.items())
        decoding = time.perf_counter()
        positions = {seq: len(prompts[seq]) for seq in current}
        counts = dict.fromkeys(current, 0)
        while True:
            running = []
            for seq, token in current.items():
                if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                    continue
                llama_cpp.llama_token_to_piece(self.vocab, token, piece, 64, 0, False)
                counts[seq] += 1
                if counts[seq] < max_tokens:
                    running.append(seq)
            if not running:
                break
            for row, seq in enumerate(running):
                batch.token[row], batch.pos[row], batch.n_seq_id[row] = (
                    current[seq],
                    positions[seq],
                    1,
                )
                batch.seq_id[row][0], batch.logits[row] = seq, True
                positions[seq] += 1
            batch.n_tokens = len(running)
            if llama_cpp.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            current = {seq: self._greedy(row) for row, seq in enumerate(running)}
        ended = time.perf_counter()
        tokens = sum(counts.values())
        return tokens, ended - started, (tokens - len(counts)) / (ended - decoding)


# -- the service ---------------------------------------------------------------------


def service_settings(args: argparse.Namespace) -> InferenceSettings:
    return InferenceSettings(
        port=0,
        metrics_port=0,
        context_size=args.context_size,
        max_concurrent_sequences=args.streams,
        threads=args.threads,
        flash_attention=not args.no_flash,
        prompt_cache=not args.no_prompt_cache,
    )


@dataclass(frozen=True)
class Endpoint:
    """Where the service answers: gRPC address and metrics URL."""

    address: str
    metrics_url: str


@contextlib.asynccontextmanager
async def inprocess_service(
    settings: InferenceSettings, model: LlamaModel
) -> AsyncIterator[Endpoint]:
    engine = InferenceEngine.from_settings(settings, model)
    server = create_server(settings, engine)
    port = await server.start()
    try:
        yield Endpoint(f"127.0.0.1:{port}", f"http://127.0.0.1:{server.metrics_port}/metrics")
    finally:
        await server.stop(1)
        await engine.aclose()


@contextlib.asynccontextmanager
async def subprocess_service(settings: InferenceSettings) -> AsyncIterator[Endpoint]:
    """The service as its own process (``python -m lodestar.services.inference``)."""
    port, metrics_port = free_port(), free_port()
    env = {
        "LODESTAR_INFERENCE_PORT": str(port),
        "LODESTAR_INFERENCE_METRICS_PORT": str(metrics_port),
        "LODESTAR_INFERENCE_CONTEXT_SIZE": str(settings.context_size),
        "LODESTAR_INFERENCE_MAX_CONCURRENT_SEQUENCES": str(settings.max_concurrent_sequences),
        "LODESTAR_INFERENCE_THREADS": str(settings.threads),
        "LODESTAR_INFERENCE_FLASH_ATTENTION": str(settings.flash_attention).lower(),
        "LODESTAR_INFERENCE_PROMPT_CACHE": str(settings.prompt_cache).lower(),
    }
    address = f"127.0.0.1:{port}"
    async with service_process("lodestar.services.inference", env, grpc_address=address):
        yield Endpoint(address, f"http://127.0.0.1:{metrics_port}/metrics")


def chat_request(topic: str, max_tokens: int) -> pb.StreamGenerateTextRequest:
    return pb.StreamGenerateTextRequest(
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content=c) for _, c in prompt_messages(topic)],
        sampling=pb.SamplingOptions(temperature=0.0, repeat_penalty=1.0, max_tokens=max_tokens),
    )


def outline_request(topic: str, max_tokens: int) -> pb.StreamGenerateTextRequest:
    return pb.StreamGenerateTextRequest(
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content=c) for _, c in outline_messages(topic)],
        sampling=pb.SamplingOptions(temperature=0.0, repeat_penalty=1.0, max_tokens=max_tokens),
        constraint=pb.OutputConstraint(json_schema=OUTLINE_SCHEMA),
    )


def prompt_request(text: str, max_tokens: int) -> pb.StreamGenerateTextRequest:
    return pb.StreamGenerateTextRequest(
        prompt=text,
        sampling=pb.SamplingOptions(temperature=0.0, repeat_penalty=1.0, max_tokens=max_tokens),
    )


async def service_stream(
    stub: pb_grpc.InferenceServiceAsyncStub, request: pb.StreamGenerateTextRequest
) -> StreamFigures:
    started = time.perf_counter()
    first = last = 0.0
    parts: list[str] = []
    tokens = 0
    async for message in stub.StreamGenerateText(request, timeout=600):
        now = time.perf_counter()
        if message.delta:
            parts.append(message.delta)
            if not first:
                first = now
            last = now
        if message.HasField("usage"):
            tokens = message.usage.completion_tokens
    return StreamFigures(started, first, last, tokens, "".join(parts))


# -- llama.cpp's own server, for reference ---------------------------------------------

# Where ``make llama-server`` builds it.
LLAMA_SERVER = TOOLS / "llama.cpp/build/bin/llama-server"


@contextlib.asynccontextmanager
async def llama_server(
    path: Path, settings: InferenceSettings, args: argparse.Namespace
) -> AsyncIterator[httpx.AsyncClient]:
    """llama.cpp's C++ server on the same model, threads and flash-attention setting,
    with one slot per stream and the service's context per slot; its other settings
    are its defaults (prompt cache on, unified KV cache). A client for it."""
    port = free_port()
    threads = str(settings.effective_threads)
    argv = [
        str(path),
        "--model",
        str(settings.model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        threads,
        "--threads-batch",
        threads,
        "--parallel",
        str(args.streams),
        "--ctx-size",
        str(args.context_size * args.streams),
        "--flash-attn",
        "auto" if settings.flash_attention else "off",
        "--no-webui",
    ]
    url = f"http://127.0.0.1:{port}"
    async with (
        command_process(argv, ready=http_ready(url + "/health"), quiet=True),
        # A connection per request: the server drops connections idle for 5 s, which
        # those kept between rounds are.
        httpx.AsyncClient(
            base_url=url, timeout=600, limits=httpx.Limits(max_keepalive_connections=0)
        ) as client,
    ):
        yield client


async def llama_server_stream(
    client: httpx.AsyncClient, prompt: str, max_tokens: int, *, json_schema: str | None = None
) -> StreamFigures:
    """One streamed completion of ``prompt`` (greedy), timed as ``service_stream`` is."""
    body: dict[str, object] = {
        "prompt": prompt,
        "n_predict": max_tokens,
        "temperature": 0.0,
        "repeat_penalty": 1.0,
        "stream": True,
        "cache_prompt": True,
    }
    if json_schema is not None:
        body["json_schema"] = json.loads(json_schema)
    started = time.perf_counter()
    first = last = 0.0
    parts: list[str] = []
    tokens = 0
    async with client.stream("POST", "/completion", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            now = time.perf_counter()
            event = json.loads(line.removeprefix("data: "))
            if event.get("content"):
                parts.append(event["content"])
                if not first:
                    first = now
                last = now
            if event.get("stop"):
                tokens = int(event["tokens_predicted"])
    return StreamFigures(started, first, last, tokens, "".join(parts))


# -- the service's prompt cache, from its metrics ----------------------------------------

PROMPT_COUNTERS = (
    "lodestar_inference_prompt_tokens_total",
    "lodestar_inference_cached_prompt_tokens_total",
)


def _read_prompt_counters(url: str) -> tuple[float, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values = dict.fromkeys(PROMPT_COUNTERS, 0.0)
    for name, _, value in metric_samples(text):
        if name in values:
            values[name] = value
    return values[PROMPT_COUNTERS[0]], values[PROMPT_COUNTERS[1]]


@dataclass
class CacheTally:
    """Prompt tokens the service admitted in some calls, and how many came from its cache."""

    prompt: float = 0.0
    cached: float = 0.0

    def __str__(self) -> str:
        return f"{self.cached:.0f} of {self.prompt:.0f} prompt tokens cached"


class CacheMeter:
    """Reads the service's prompt counters around calls (outside the timed parts)."""

    def __init__(self, metrics_url: str) -> None:
        self._url = metrics_url

    @contextlib.asynccontextmanager
    async def count(self, tally: CacheTally) -> AsyncIterator[None]:
        prompt, cached = await asyncio.to_thread(_read_prompt_counters, self._url)
        yield
        prompt_after, cached_after = await asyncio.to_thread(_read_prompt_counters, self._url)
        tally.prompt += prompt_after - prompt
        tally.cached += cached_after - cached


# -- the measurements ------------------------------------------------------------------


@dataclass
class Figures:
    ttft_pairs: list[tuple[float, float]] = field(default_factory=list)  # raw, service (ms)
    ttft_prompt_tokens: int = 0
    raw: list[StreamFigures] = field(default_factory=list)
    single: list[StreamFigures] = field(default_factory=list)
    group_tps: list[float] = field(default_factory=list)
    raw_group_tps: list[float] = field(default_factory=list)
    raw_group_decode_tps: list[float] = field(default_factory=list)
    ttft_cache: CacheTally = field(default_factory=CacheTally)
    single_cache: CacheTally = field(default_factory=CacheTally)
    group_cache: CacheTally = field(default_factory=CacheTally)
    server_single: list[StreamFigures] = field(default_factory=list)
    server_group_tps: list[float] = field(default_factory=list)
    # Constrained decoding (JSON schema), end to end: service and server, single and group.
    constrained_single: list[StreamFigures] = field(default_factory=list)
    constrained_group_tps: list[float] = field(default_factory=list)
    server_constrained_single: list[StreamFigures] = field(default_factory=list)
    server_constrained_group_tps: list[float] = field(default_factory=list)


async def timed_group(streams: list[Awaitable[StreamFigures]]) -> float:
    """Tokens/s of streams run together: all their tokens over the wall time."""
    started = time.perf_counter()
    group = await asyncio.gather(*streams)
    return sum(s.tokens for s in group) / (time.perf_counter() - started)


def load_average() -> str:
    try:
        with open("/proc/loadavg") as file:
            return " ".join(file.read().split()[:3])
    except OSError:
        return "n/a"


def uncached_prompts(model: LlamaModel, count: int, avoid: list[str]) -> list[str]:
    """Chat prompts each led by a nonce whose first token starts no other prompt here, so
    that no prompt shares even one token of prefix with any other."""
    rng = random.Random(20240601)
    used = {model.tokenize(text)[0] for text in avoid}
    prompts: list[str] = []
    while len(prompts) < count:
        nonce = "".join(rng.choice(string.ascii_letters) for _ in range(6))
        topic = TOPICS[len(prompts) % len(TOPICS)]
        text = f"{nonce}\n{model.render_chat(prompt_messages(topic))}"
        first = model.tokenize(text)[0]
        if first not in used:
            used.add(first)
            prompts.append(text)
    return prompts


def _same_text(raw: StreamFigures, service: StreamFigures) -> None:
    if service.text != raw.text:
        raise RuntimeError(
            "the service and raw llama-cpp-python produced different text for the same greedy "
            f"request:\n raw: {raw.text[:200]!r}\n svc: {service.text[:200]!r}"
        )


async def measure(args: argparse.Namespace) -> tuple[Figures, LlamaModel, InferenceSettings]:
    settings = service_settings(args)
    model = LlamaModel(settings.model_path)
    threads = settings.effective_threads
    raw = RawLlama(model, context_size=args.context_size, threads=threads, flash=not args.no_flash)
    raw_batched = RawLlama(
        model,
        context_size=args.context_size,
        threads=threads,
        flash=not args.no_flash,
        sequences=args.streams,
    )
    topics = [TOPICS[i % len(TOPICS)] for i in range(args.streams)]
    raw_prompt = model.render_chat(prompt_messages(TOPICS[0]))
    group_prompts = [model.render_chat(prompt_messages(topic)) for topic in topics]
    outline_prompts = [model.render_chat(outline_messages(topic)) for topic in topics]
    ttft_prompts = uncached_prompts(model, args.ttft_pairs + 1, group_prompts)
    figures = Figures(ttft_prompt_tokens=len(model.tokenize(ttft_prompts[0])))
    service = (
        subprocess_service(settings)
        if args.server == "subprocess"
        else inprocess_service(settings, model)
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            endpoint = await stack.enter_async_context(service)
            channel = await stack.enter_async_context(insecure_channel(endpoint.address))
            stub = pb_grpc.InferenceServiceStub(channel)
            meter = CacheMeter(endpoint.metrics_url)
            print(f"warming up (load {load_average()})", flush=True)
            # Allocations, thread pools, the connection.
            raw.generate(raw_prompt, 8)
            raw_batched.generate_batch(group_prompts, 8)
            await service_stream(stub, prompt_request(ttft_prompts[-1], 2))

            print(
                f"time to first token: {args.ttft_pairs} pairs of {args.ttft_tokens} tokens, "
                f"uncached prompts (load {load_average()})",
                flush=True,
            )
            for index, text in enumerate(ttft_prompts[: args.ttft_pairs]):
                async with meter.count(figures.ttft_cache):
                    if index % 2 == 0:
                        r = raw.generate(text, args.ttft_tokens)
                        s = await service_stream(stub, prompt_request(text, args.ttft_tokens))
                    else:
                        s = await service_stream(stub, prompt_request(text, args.ttft_tokens))
                        r = raw.generate(text, args.ttft_tokens)
                _same_text(r, s)
                figures.ttft_pairs.append((r.ttft_ms, s.ttft_ms))

            # The chat prompts of the rounds, once: from the first round on the service's
            # prompt cache holds them, as it would in steady use.
            await service_stream(stub, chat_request(TOPICS[0], 8))
            await asyncio.gather(*(service_stream(stub, chat_request(t, 8)) for t in topics))
            # The reference server runs from here on only: it is idle during the steps
            # before, but no process but the two compared should be there at all.
            reference = (
                await stack.enter_async_context(llama_server(args.llama_server, settings, args))
                if args.llama_server is not None
                else None
            )
            if reference is not None:
                await llama_server_stream(reference, raw_prompt, 8)
                await asyncio.gather(
                    *(llama_server_stream(reference, text, 8) for text in group_prompts)
                )
            print(
                f"decode rounds: {args.rounds} x (single stream, {args.streams} streams) of "
                f"{args.max_tokens} tokens (load {load_average()})",
                flush=True,
            )
            for round_ in range(args.rounds):
                figures.raw.append(raw.generate(raw_prompt, args.max_tokens))
                async with meter.count(figures.single_cache):
                    figures.single.append(
                        await service_stream(stub, chat_request(TOPICS[0], args.max_tokens))
                    )
                async with meter.count(figures.group_cache):
                    started = time.perf_counter()
                    group = await asyncio.gather(
                        *(service_stream(stub, chat_request(t, args.max_tokens)) for t in topics)
                    )
                    elapsed = time.perf_counter() - started
                figures.group_tps.append(sum(s.tokens for s in group) / elapsed)
                tokens, elapsed, decode_tps = raw_batched.generate_batch(
                    group_prompts, args.max_tokens
                )
                figures.raw_group_tps.append(tokens / elapsed)
                figures.raw_group_decode_tps.append(decode_tps)
                reference_line = ""
                if reference is not None:
                    single = await llama_server_stream(reference, raw_prompt, args.max_tokens)
                    figures.server_single.append(single)
                    started = time.perf_counter()
                    group = await asyncio.gather(
                        *(
                            llama_server_stream(reference, text, args.max_tokens)
                            for text in group_prompts
                        )
                    )
                    elapsed = time.perf_counter() - started
                    figures.server_group_tps.append(sum(s.tokens for s in group) / elapsed)
                    reference_line = (
                        f" | llama.cpp server: single {single.end_to_end_tps:6.1f}, "
                        f"x{args.streams} {figures.server_group_tps[-1]:6.1f} tok/s"
                    )
                r, s = figures.raw[-1], figures.single[-1]
                print(
                    f"  round {round_ + 1} (load {load_average()}): single: raw "
                    f"{r.decode_tps:6.1f} tok/s, service {s.decode_tps:6.1f} tok/s | "
                    f"x{args.streams} end to end: raw {figures.raw_group_tps[-1]:6.1f} tok/s, "
                    f"service {figures.group_tps[-1]:6.1f} tok/s{reference_line}",
                    flush=True,
                )
                _same_text(r, s)
                await measure_constrained(figures, stub, reference, topics, outline_prompts, args)
    finally:
        raw.close()
        raw_batched.close()
    return figures, model, settings


async def measure_constrained(
    figures: Figures,
    stub: pb_grpc.InferenceServiceAsyncStub,
    reference: httpx.AsyncClient | None,
    topics: list[str],
    prompts: list[str],
    args: argparse.Namespace,
) -> None:
    """One round of constrained decoding: a single stream and a group, on the service
    and (when measured) on llama.cpp's server."""
    tokens = args.constrained_tokens
    figures.constrained_single.append(
        await service_stream(stub, outline_request(topics[0], tokens))
    )
    figures.constrained_group_tps.append(
        await timed_group([service_stream(stub, outline_request(t, tokens)) for t in topics])
    )
    line = (
        f"    constrained (JSON schema): service single "
        f"{figures.constrained_single[-1].end_to_end_tps:6.1f}, "
        f"x{args.streams} {figures.constrained_group_tps[-1]:6.1f} tok/s"
    )
    if reference is not None:
        figures.server_constrained_single.append(
            await llama_server_stream(reference, prompts[0], tokens, json_schema=OUTLINE_SCHEMA)
        )
        figures.server_constrained_group_tps.append(
            await timed_group(
                [
                    llama_server_stream(reference, p, tokens, json_schema=OUTLINE_SCHEMA)
                    for p in prompts
                ]
            )
        )
        line += (
            f" | llama.cpp server: single "
            f"{figures.server_constrained_single[-1].end_to_end_tps:6.1f}, "
            f"x{args.streams} {figures.server_constrained_group_tps[-1]:6.1f} tok/s"
        )
    print(line, flush=True)


def report_constrained(figures: Figures, args: argparse.Namespace) -> bool:
    """The constrained figures beside the unconstrained ones; whether the service makes
    the target against the server (True when the server was not measured)."""
    median = statistics.median
    single = median(s.end_to_end_tps for s in figures.constrained_single)
    group = median(figures.constrained_group_tps)
    tokens = median(s.tokens for s in figures.constrained_single)
    free_single = median(s.end_to_end_tps for s in figures.single)
    free_group = median(figures.group_tps)
    print(
        f"  constrained decoding   JSON schema, {tokens:.0f} tokens, end to end: service single "
        f"{single:6.1f} tok/s ({single / free_single:.2f}x unconstrained) | x{args.streams} "
        f"{group:6.1f} tok/s ({group / free_group:.2f}x unconstrained)"
    )
    if not figures.server_constrained_single:
        return True
    server_single = median(s.end_to_end_tps for s in figures.server_constrained_single)
    server_group = median(figures.server_constrained_group_tps)
    single_ratio, group_ratio = single / server_single, group / server_group
    met = min(single_ratio, group_ratio) >= CONSTRAINED_RATIO_TARGET
    print(
        f"    against llama.cpp's server: single {server_single:6.1f} tok/s, ratio "
        f"{single_ratio:.2f} | x{args.streams} {server_group:6.1f} tok/s, ratio "
        f"{group_ratio:.2f} (target >= {CONSTRAINED_RATIO_TARGET}) {'ok' if met else 'MISSED'}"
    )
    return met


def report(
    figures: Figures, model: LlamaModel, settings: InferenceSettings, args: argparse.Namespace
) -> bool:
    median = statistics.median
    raw_tps = median(r.decode_tps for r in figures.raw)
    service_tps = median(s.decode_tps for s in figures.single)
    differences = [service - raw for raw, service in figures.ttft_pairs]
    overhead = median(differences)
    low, _, high = statistics.quantiles(differences, n=4)
    raw_ttft = median(raw for raw, _ in figures.ttft_pairs)
    service_ttft = median(service for _, service in figures.ttft_pairs)
    single_e2e = median(s.end_to_end_tps for s in figures.single)
    group = median(figures.group_tps)
    decode_ratio = service_tps / raw_tps
    concurrency = group / single_e2e
    decode_ok = decode_ratio >= DECODE_RATIO_TARGET
    ttft_ok = overhead <= TTFT_OVERHEAD_TARGET_MS
    concurrency_ok = concurrency >= CONCURRENCY_RATIO_TARGET
    tokens = median(s.tokens for s in figures.single)
    cache = "off" if args.no_prompt_cache else "on"
    print(
        f"inference: {model.name}, {settings.effective_threads} threads, greedy, service "
        f"{args.server} with prompt cache {cache}, load average {load_average()} on "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"  time to first token    {len(differences)} pairs, {figures.ttft_prompt_tokens}-token "
        f"prompts, service {figures.ttft_cache}: raw {raw_ttft:6.1f} ms | service "
        f"{service_ttft:6.1f} ms (medians) | overhead: median of paired differences "
        f"{overhead:+.1f} ms, quartiles {low:+.1f} / {high:+.1f} (target <= "
        f"{TTFT_OVERHEAD_TARGET_MS:.0f} ms) {'ok' if ttft_ok else 'MISSED'}"
    )
    print(
        f"  single stream decode   {tokens:.0f} tokens, medians of {args.rounds} rounds: raw "
        f"{raw_tps:6.1f} tok/s | service {service_tps:6.1f} tok/s | ratio {decode_ratio:.3f} "
        f"(target >= {DECODE_RATIO_TARGET}) {'ok' if decode_ok else 'MISSED'}"
    )
    print(
        f"  {args.streams} concurrent streams  end to end, prompts included: service single "
        f"stream {single_e2e:6.1f} tok/s ({figures.single_cache}) | service x{args.streams} "
        f"{group:6.1f} tok/s ({figures.group_cache}) | ratio {concurrency:.2f} (target >= "
        f"{CONCURRENCY_RATIO_TARGET}) {'ok' if concurrency_ok else 'MISSED'}"
    )
    raw_single_e2e = median(r.end_to_end_tps for r in figures.raw)
    raw_group = median(figures.raw_group_tps)
    raw_group_decode = median(figures.raw_group_decode_tps)
    print(
        f"  for scale: raw llama-cpp-python, {args.streams} sequences in one batch, every "
        f"prompt processed: end to end {raw_group:6.1f} tok/s = {raw_group / raw_single_e2e:.2f}x "
        f"its single stream ({raw_single_e2e:.1f} tok/s); decode only {raw_group_decode:6.1f} "
        f"tok/s = {raw_group_decode / raw_tps:.2f}x its single-stream decode; service "
        f"x{args.streams} / raw x{args.streams} end to end: {group / raw_group:.2f}"
    )
    if figures.server_single:
        server_single = median(s.end_to_end_tps for s in figures.server_single)
        server_group = median(figures.server_group_tps)
        server_ratio = server_group / server_single
        print(
            f"  for reference: llama.cpp's own server ({args.streams} slots, its default "
            f"unified KV cache, prompts cached, streamed), measured the same way: single "
            f"stream {server_single:6.1f} tok/s | x{args.streams} {server_group:6.1f} tok/s | "
            f"ratio {server_ratio:.2f}; service ratio / server ratio "
            f"{concurrency / server_ratio:.2f}, service / server: single "
            f"{single_e2e / server_single:.2f}, "
            f"x{args.streams} {group / server_group:.2f}"
        )
    else:
        print(
            "  for reference: llama.cpp's own server not measured (build it with "
            "`make llama-server`, or give --llama-server PATH)"
        )
    constrained_ok = report_constrained(figures, args)
    return decode_ok and ttft_ok and concurrency_ok and constrained_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.inference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=5, help="raw/service decode rounds")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens a stream")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams")
    parser.add_argument(
        "--constrained-tokens", type=int, default=256, help="tokens a constrained stream (at most)"
    )
    parser.add_argument("--ttft-pairs", type=int, default=15, help="raw/service TTFT pairs")
    parser.add_argument("--ttft-tokens", type=int, default=2, help="tokens a TTFT request")
    parser.add_argument("--context-size", type=int, default=1024, help="tokens a sequence")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: all)")
    parser.add_argument("--no-flash", action="store_true", help="without flash attention")
    parser.add_argument(
        "--no-prompt-cache", action="store_true", help="the service without its prompt cache"
    )
    parser.add_argument("--server", choices=("inprocess", "subprocess"), default="subprocess")
    add_tool_option(
        parser,
        "llama-server",
        LLAMA_SERVER,
        what="llama.cpp's server binary, measured for reference",
        without="without the llama.cpp server reference",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    args.llama_server = chosen_tool(parser, args, "llama-server")
    if args.ttft_pairs < 2:
        parser.error("--ttft-pairs must be at least 2")
    figures, model, settings = asyncio.run(measure(args))
    met = report(figures, model, settings, args)
    model.close()
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
