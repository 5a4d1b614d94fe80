"""Inference benchmark: raw llama-cpp-python against the service over gRPC streaming.

    python -m bench.inference [--rounds 3] [--max-tokens 128] [--streams 8]

In one run, on the same GGUF model (the bundled SmolLM2-135M-Instruct Q4_1 unless
``LODESTAR_INFERENCE_MODEL_PATH`` says otherwise), the same chat prompts, greedy
decoding and the same number of CPU threads:

1. single stream: a tight loop on llama-cpp-python's low-level API in this process
   (``llama_decode`` of the prompt, then one token per ``llama_decode``, greedy argmax of
   the logits, ``llama_token_to_piece``) against one ``StreamGenerateText`` call to the service.
   Compared: decode tokens/s (tokens after the first over the time from the first to
   the last) and time to first token (from the call to the first text).
2. ``--streams`` concurrent streams of ``--max-tokens`` tokens each against the service:
   aggregate tokens/s (all tokens over the wall time of the whole group, prompts
   included) against the service's own single stream measured the same way. For scale,
   the same figure for raw llama-cpp-python decoding all the sequences in one batch
   (the ceiling of batched decoding for this model on this CPU).

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
import os
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import llama_cpp
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lodestar.inference.v1 import inference_service_pb2 as pb
from lodestar.inference.v1 import inference_service_pb2_grpc as pb_grpc
from lodestar.runtime.channels import insecure_channel
from lodestar.services.inference.engine import InferenceEngine
from lodestar.services.inference.model import LlamaModel
from lodestar.services.inference.server import SERVICE_NAME, create_server
from lodestar.services.inference.settings import InferenceSettings

DECODE_RATIO_TARGET = 0.95
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

    def generate_batch(self, texts: list[str], max_tokens: int) -> tuple[int, float]:
        """All texts decoded together; returns the tokens generated and the wall time."""
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
        return sum(counts.values()), time.perf_counter() - started


# -- the service ---------------------------------------------------------------------


def service_settings(args: argparse.Namespace) -> InferenceSettings:
    return InferenceSettings(
        port=0,
        metrics_port=None,
        context_size=args.context_size,
        max_concurrent_sequences=args.streams,
        threads=args.threads,
        flash_attention=not args.no_flash,
    )


@contextlib.asynccontextmanager
async def inprocess_service(settings: InferenceSettings, model: LlamaModel) -> AsyncIterator[str]:
    engine = InferenceEngine.from_settings(settings, model)
    server = create_server(settings, engine)
    port = await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(1)
        await engine.aclose()


@contextlib.asynccontextmanager
async def subprocess_service(settings: InferenceSettings) -> AsyncIterator[str]:
    """The service as its own process (``python -m lodestar.services.inference``)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {
        **os.environ,
        "LODESTAR_INFERENCE_PORT": str(port),
        "LODESTAR_INFERENCE_METRICS_PORT": "0",
        "LODESTAR_INFERENCE_CONTEXT_SIZE": str(settings.context_size),
        "LODESTAR_INFERENCE_MAX_CONCURRENT_SEQUENCES": str(settings.max_concurrent_sequences),
        "LODESTAR_INFERENCE_THREADS": str(settings.threads),
        "LODESTAR_INFERENCE_FLASH_ATTENTION": str(settings.flash_attention).lower(),
        "LODESTAR_LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lodestar.services.inference", env=env
    )
    address = f"127.0.0.1:{port}"
    try:
        async with insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(600):
                if process.returncode is not None:
                    raise RuntimeError(f"the service exited with {process.returncode}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(
                        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("the service did not become healthy in time")
        yield address
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)


async def service_stream(
    stub: pb_grpc.InferenceServiceAsyncStub, topic: str, max_tokens: int
) -> StreamFigures:
    request = pb.StreamGenerateTextRequest(
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content=c) for _, c in prompt_messages(topic)],
        sampling=pb.SamplingOptions(temperature=0.0, repeat_penalty=1.0, max_tokens=max_tokens),
    )
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


@dataclass
class Round:
    raw: list[StreamFigures] = field(default_factory=list)
    single: list[StreamFigures] = field(default_factory=list)
    group_tps: list[float] = field(default_factory=list)
    raw_group_tps: list[float] = field(default_factory=list)


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


async def measure(args: argparse.Namespace) -> tuple[Round, LlamaModel, InferenceSettings]:
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
    topic = TOPICS[0]
    raw_prompt = model.render_chat(prompt_messages(topic))
    group_prompts = [
        model.render_chat(prompt_messages(TOPICS[i % len(TOPICS)])) for i in range(args.streams)
    ]
    figures = Round()
    service = (
        subprocess_service(settings)
        if args.server == "subprocess"
        else inprocess_service(settings, model)
    )
    try:
        async with service as address, insecure_channel(address) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            # Warm both sides up (allocations, thread pools, the connection).
            raw.generate(raw_prompt, 8)
            raw_batched.generate_batch(group_prompts, 8)
            await service_stream(stub, topic, 8)
            for round_ in range(args.rounds):
                figures.raw.append(raw.generate(raw_prompt, args.max_tokens))
                figures.single.append(await service_stream(stub, topic, args.max_tokens))
                started = time.perf_counter()
                group = await asyncio.gather(
                    *(
                        service_stream(stub, TOPICS[i % len(TOPICS)], args.max_tokens)
                        for i in range(args.streams)
                    )
                )
                elapsed = time.perf_counter() - started
                figures.group_tps.append(sum(s.tokens for s in group) / elapsed)
                tokens, elapsed = raw_batched.generate_batch(group_prompts, args.max_tokens)
                figures.raw_group_tps.append(tokens / elapsed)
                r, s = figures.raw[-1], figures.single[-1]
                print(
                    f"  round {round_ + 1} (load {load_average()}): single: raw "
                    f"{r.decode_tps:6.1f} tok/s ttft {r.ttft_ms:6.1f} ms, service "
                    f"{s.decode_tps:6.1f} tok/s ttft {s.ttft_ms:6.1f} ms | x{args.streams} end to "
                    f"end: raw {figures.raw_group_tps[-1]:6.1f} tok/s, service "
                    f"{figures.group_tps[-1]:6.1f} tok/s",
                    flush=True,
                )
                if s.text != r.text:
                    raise RuntimeError(
                        "the service and raw llama-cpp-python produced different text for the "
                        f"same greedy request:\n raw: {r.text[:200]!r}\n svc: {s.text[:200]!r}"
                    )
    finally:
        raw.close()
        raw_batched.close()
    return figures, model, settings


def report(
    figures: Round, model: LlamaModel, settings: InferenceSettings, args: argparse.Namespace
) -> bool:
    median = statistics.median
    raw_tps = median(r.decode_tps for r in figures.raw)
    service_tps = median(s.decode_tps for s in figures.single)
    raw_ttft = median(r.ttft_ms for r in figures.raw)
    service_ttft = median(s.ttft_ms for s in figures.single)
    single_e2e = median(s.end_to_end_tps for s in figures.single)
    group = median(figures.group_tps)
    decode_ratio = service_tps / raw_tps
    overhead = service_ttft - raw_ttft
    concurrency = group / single_e2e
    decode_ok = decode_ratio >= DECODE_RATIO_TARGET
    ttft_ok = overhead <= TTFT_OVERHEAD_TARGET_MS
    concurrency_ok = concurrency >= CONCURRENCY_RATIO_TARGET
    tokens = median(s.tokens for s in figures.single)
    print(
        f"inference: {model.name}, {settings.effective_threads} threads, greedy, "
        f"{tokens:.0f} tokens a stream, service {args.server}, medians of {args.rounds} rounds, "
        f"load average {load_average()} on {os.cpu_count()} CPUs"
    )
    print(
        f"  single stream decode   raw llama-cpp-python: {raw_tps:7.1f} tok/s | service: "
        f"{service_tps:7.1f} tok/s | ratio {decode_ratio:.3f} (target >= {DECODE_RATIO_TARGET}) "
        f"{'ok' if decode_ok else 'MISSED'}"
    )
    print(
        f"  time to first token    raw llama-cpp-python: {raw_ttft:7.1f} ms    | service: "
        f"{service_ttft:7.1f} ms    | overhead {overhead:+.1f} ms (target <= "
        f"{TTFT_OVERHEAD_TARGET_MS:.0f} ms) {'ok' if ttft_ok else 'MISSED'}"
    )
    print(
        f"  {args.streams} concurrent streams  service single stream: {single_e2e:7.1f} tok/s | "
        f"service x{args.streams}: {group:7.1f} tok/s | ratio {concurrency:.2f} (target >= "
        f"{CONCURRENCY_RATIO_TARGET}) {'ok' if concurrency_ok else 'MISSED'}"
    )
    raw_single_e2e = median(r.end_to_end_tps for r in figures.raw)
    raw_group = median(figures.raw_group_tps)
    print(
        f"  for scale: raw llama-cpp-python, {args.streams} sequences in one batch: "
        f"{raw_group:7.1f} tok/s = {raw_group / raw_single_e2e:.2f}x its single stream "
        f"({raw_single_e2e:.1f} tok/s end to end); service x{args.streams} / raw "
        f"x{args.streams}: {group / raw_group:.2f}"
    )
    return decode_ok and ttft_ok and concurrency_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inference", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="raw/service rounds")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens a stream")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams")
    parser.add_argument("--context-size", type=int, default=1024, help="tokens a sequence")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: all)")
    parser.add_argument("--no-flash", action="store_true", help="without flash attention")
    parser.add_argument("--server", choices=("inprocess", "subprocess"), default="subprocess")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    figures, model, settings = asyncio.run(measure(args))
    met = report(figures, model, settings, args)
    model.close()
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
