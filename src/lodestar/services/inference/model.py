"""A GGUF model through llama-cpp-python's low-level API.

``LlamaModel`` holds the weights and the vocabulary (shared, read-only: safe to use
from any thread); ``LlamaContext`` holds one context with its KV memory and is used by
one thread only (the engine's decode loop). Samplers are llama.cpp sampler chains built
per request, so every sequence samples with its own settings and random state.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

_log = logging.getLogger(__name__)
_llama_log = logging.getLogger("lodestar.inference.llama_cpp")

# ggml log levels (ggml.h: NONE, DEBUG, INFO, WARN, ERROR, CONT) → logging levels.
# llama.cpp is chatty at INFO (every load prints dozens of lines), so INFO becomes DEBUG.
_LEVELS = {
    0: logging.DEBUG,
    1: logging.DEBUG,
    2: logging.DEBUG,
    3: logging.WARNING,
    4: logging.ERROR,
}
_LEVEL_CONT = 5


class _LlamaLogRouter:
    """Routes llama.cpp's log lines to Python logging, or to a per-thread capture.

    llama.cpp has one process-wide log callback. Capturing lets a caller turn the
    library's diagnostics (such as a grammar parse error) into a message for the client.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._level = logging.DEBUG
        self.callback = llama_cpp.llama_log_callback(self._on_log)

    def _on_log(self, level: int, text: bytes, _user_data: Any) -> None:
        message = text.decode("utf-8", errors="replace")
        captured: list[str] | None = getattr(self._local, "captured", None)
        if captured is not None:
            captured.append(message)
            return
        if level != _LEVEL_CONT:
            self._level = _LEVELS.get(level, logging.DEBUG)
        if message.strip() and _llama_log.isEnabledFor(self._level):
            _llama_log.log(self._level, "%s", message.rstrip())

    def start_capture(self) -> None:
        self._local.captured = []

    def stop_capture(self) -> str:
        captured: list[str] = getattr(self._local, "captured", None) or []
        self._local.captured = None
        return "".join(captured)


@cache
def _log_router() -> _LlamaLogRouter:
    """Install the log router once per process (the callback must outlive every model)."""
    router = _LlamaLogRouter()
    llama_cpp.llama_log_set(router.callback, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    return router


class GrammarError(ValueError):
    """A GBNF grammar llama.cpp could not compile; the message says why."""


@dataclass(frozen=True)
class SamplerConfig:
    """How one sequence picks its tokens."""

    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    repeat_last_n: int
    seed: int
    grammar: str | None = None


class Sampler:
    """A llama.cpp sampler chain owned by one sequence, and its grammar sampler if its
    output is constrained; ``free`` releases them.

    ``greedy`` marks a chain that only takes the most likely token: the engine then takes
    the argmax of the logits row itself, which skips the chain's copy of the whole
    vocabulary into a candidate array (about ten times cheaper per token).

    The grammar is kept out of the chain: ``LlamaContext.sample`` lets the chain choose a
    token first and asks the grammar about that one token, filtering the whole vocabulary
    through it only when it refuses (as llama.cpp's own server does), because checking
    every token of the vocabulary against the grammar costs more than the model's step.
    """

    __slots__ = ("grammar", "greedy", "pointer")

    def __init__(self, pointer: Any, *, greedy: bool = False, grammar: Any = None) -> None:
        self.pointer = pointer
        self.greedy = greedy
        self.grammar = grammar

    def free(self) -> None:
        if self.pointer is not None:
            llama_cpp.llama_sampler_free(self.pointer)
            self.pointer = None
        if self.grammar is not None:
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None


# llama_token_data as a numpy record: the candidate arrays are filled from a logits row
# with one vectorised assignment instead of a Python loop over the vocabulary.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


class Candidates:
    """A reusable llama_token_data_array over ``size`` numpy-owned records."""

    def __init__(self, size: int) -> None:
        self.records: npt.NDArray[np.void] = np.zeros(size, dtype=TOKEN_DATA)
        self._ids = np.arange(size, dtype=np.int32)
        self._data = self.records.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        self.struct = llama_cpp.llama_token_data_array(self._data, size, -1, False)
        self.pointer = ctypes.pointer(self.struct)

    def fill(self, logits: npt.NDArray[np.float32]) -> None:
        """Every token with its logit (all ``size`` of them), unsorted, none selected."""
        records = self.records
        records["id"] = self._ids
        records["logit"] = logits
        self._reset(records.shape[0])

    def one(self, token: int) -> None:
        """Only ``token``, with a finite logit."""
        self.records[0] = (token, 0.0, 0.0)
        self._reset(1)

    def _reset(self, size: int) -> None:
        struct = self.struct
        struct.data = self._data  # type: ignore[assignment]  # a sampler may have moved it
        struct.size = size
        struct.selected = -1
        struct.sorted = False

    def chosen(self) -> int:
        """The token the samplers selected."""
        struct = self.struct
        return int(struct.data[struct.selected].id)

    def first_allowed(self) -> bool:
        """Whether the first candidate is still possible (a grammar sets refused ones to -inf)."""
        return bool(np.isfinite(self.struct.data[0].logit))


class LlamaModel:
    """Weights, vocabulary, chat template and token pieces of one GGUF file."""

    def __init__(self, path: str, *, gpu_layers: int = 0, name: str | None = None) -> None:
        self._router = _log_router()
        if not Path(path).is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = gpu_layers if gpu_layers >= 0 else 0x7FFFFFFF
        model = llama_cpp.llama_model_load_from_file(path.encode(), params)
        if not model:
            raise RuntimeError(f"llama.cpp could not load the model {path}")
        self.pointer = model
        self.path = path
        self.name = name or Path(path).name.removesuffix(".gguf")
        self.gpu_layers = gpu_layers if llama_cpp.llama_supports_gpu_offload() else 0
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.vocab_size = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.context_train = int(llama_cpp.llama_model_n_ctx_train(model))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        # Every token's text, looked up by id while decoding: no C call per token.
        self.pieces: list[bytes] = [self._piece(t) for t in range(self.vocab_size)]
        eog = np.zeros(self.vocab_size, dtype=np.bool_)
        for token in range(self.vocab_size):
            eog[token] = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
        self.end_of_generation: frozenset[int] = frozenset(int(t) for t in np.flatnonzero(eog))
        # The start-of-text token (-1 when the model has none).
        self.bos_token = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.bos_text = self._special_text(self.bos_token)
        self.eos_text = self._special_text(llama_cpp.llama_vocab_eos(self.vocab))
        self.chat_template = self._meta("tokenizer.chat_template")
        self._chat_formatter: Any = None
        self._chat_lock = threading.Lock()

    def close(self) -> None:
        if self.pointer is not None:
            llama_cpp.llama_model_free(self.pointer)
            self.pointer = None

    def _piece(self, token: int, *, special: bool = False) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        size = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, 64, 0, special)
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, -size, 0, special)
        return buffer.raw[:size]

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", errors="replace")

    def _meta(self, key: str) -> str | None:
        size = llama_cpp.llama_model_meta_val_str(self.pointer, key.encode(), None, 0)
        if size < 0:
            return None
        buffer = ctypes.create_string_buffer(size + 1)
        llama_cpp.llama_model_meta_val_str(self.pointer, key.encode(), buffer, size + 1)
        return buffer.value.decode("utf-8", errors="replace")

    # -- text ⇄ tokens ---------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Tokens of a prompt; special tokens written in the text (``<|im_start|>``) count
        as such, so a prompt already in the model's chat format works as is."""
        data = text.encode("utf-8")
        add_special = self.add_bos and not (self.bos_text and text.startswith(self.bos_text))
        capacity = len(data) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), tokens, capacity, add_special, True
        )
        if count < 0:
            capacity = -count
            tokens = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), tokens, capacity, add_special, True
            )
        return list(tokens[:count])

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.pieces[t] for t in tokens).decode("utf-8", errors="replace")

    @property
    def template_renders_tools(self) -> bool:
        """Whether the chat template renders a ``tools`` list itself."""
        return self.chat_template is not None and "tools" in self.chat_template

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any] | tuple[str, str]],
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The conversation (OpenAI-style message dicts, or (role, content) pairs) in the
        model's own chat template, ready for its answer."""
        if self.chat_template is None:
            raise ValueError("the model has no chat template")
        with self._chat_lock:
            if self._chat_formatter is None:
                from llama_cpp.llama_chat_format import Jinja2ChatFormatter

                self._chat_formatter = Jinja2ChatFormatter(
                    template=self.chat_template,
                    eos_token=self.eos_text,
                    bos_token=self.bos_text,
                    add_generation_prompt=True,
                )
            formatter = self._chat_formatter
        turns = [
            {"role": m[0], "content": m[1]} if isinstance(m, tuple) else dict(m) for m in messages
        ]
        result = formatter(messages=turns, tools=tools)
        prompt: str = result.prompt
        return prompt

    # -- samplers --------------------------------------------------------------------

    def compile_grammar(self, grammar: str) -> Any:
        """A grammar sampler for a GBNF grammar (root rule ``root``); GrammarError if invalid."""
        self._router.start_capture()
        try:
            sampler = llama_cpp.llama_sampler_init_grammar(
                self.vocab, grammar.encode("utf-8"), b"root"
            )
        finally:
            diagnostics = self._router.stop_capture()
        if not sampler:
            lines = [line.strip() for line in diagnostics.splitlines() if line.strip()]
            detail = "; ".join(lines[-3:]) if lines else "llama.cpp rejected it"
            raise GrammarError(detail)
        return sampler

    def make_sampler(self, config: SamplerConfig) -> Sampler:
        """A sampler chain: grammar, top-k, repetition penalty, top-p, min-p, temperature,
        then a seeded draw (greedy at temperature 0)."""
        grammar = self.compile_grammar(config.grammar) if config.grammar is not None else None
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        # Top-k before the penalty: penalising works per candidate, and 40 candidates
        # cost far less than the whole vocabulary (llama.cpp's own advice).
        if config.top_k > 0:
            add(chain, llama_cpp.llama_sampler_init_top_k(config.top_k))
        if config.repeat_penalty != 1.0 and config.repeat_last_n > 0:
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    self.vocab_size, config.repeat_last_n, config.repeat_penalty, 0.0, 0.0
                ),
            )
        if config.temperature <= 0.0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            # Top-k does not change which token is the most likely one.
            stateless = grammar is None and config.repeat_penalty == 1.0
            return Sampler(chain, greedy=stateless, grammar=grammar)
        if config.top_p < 1.0:
            add(chain, llama_cpp.llama_sampler_init_top_p(config.top_p, 1))
        if config.min_p > 0.0:
            add(chain, llama_cpp.llama_sampler_init_min_p(config.min_p, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(config.temperature))
        add(chain, llama_cpp.llama_sampler_init_dist(config.seed))
        return Sampler(chain, grammar=grammar)


class DecodeBatch:
    """A reusable llama_batch whose arrays are numpy views (one sequence id per token).

    The arrays are owned here, not by llama.cpp, so a step fills them with slice
    assignments instead of one ctypes call per field and token.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tokens: npt.NDArray[np.int32] = np.zeros(capacity, dtype=np.int32)
        self.positions: npt.NDArray[np.int32] = np.zeros(capacity, dtype=np.int32)
        self.seq_ids: npt.NDArray[np.int32] = np.zeros(capacity, dtype=np.int32)
        self.logits: npt.NDArray[np.int8] = np.zeros(capacity, dtype=np.int8)
        self._n_seq_id: npt.NDArray[np.int32] = np.ones(capacity, dtype=np.int32)
        int32_p = ctypes.POINTER(ctypes.c_int32)
        base = self.seq_ids.ctypes.data
        self._seq_id_pointers = (int32_p * capacity)(
            *(ctypes.cast(base + 4 * i, int32_p) for i in range(capacity))
        )
        batch = llama_cpp.llama_batch(
            0,
            self.tokens.ctypes.data_as(int32_p),
            ctypes.POINTER(ctypes.c_float)(),
            self.positions.ctypes.data_as(int32_p),
            self._n_seq_id.ctypes.data_as(int32_p),
            self._seq_id_pointers,
            self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )
        self.struct = batch


class LlamaContext:
    """One llama.cpp context: per-sequence KV memory and a reusable batch.

    Each sequence has its own KV stream (llama.cpp's non-unified cache): its attention
    never runs over another sequence's cells, so its logits are bit-for-bit what it would
    get alone, and same seed + same input gives the same text however requests are batched.
    """

    def __init__(
        self,
        model: LlamaModel,
        *,
        context_size: int,
        max_sequences: int,
        batch_size: int,
        threads: int,
        flash_attention: bool = True,
    ) -> None:
        self.model = model
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = context_size * max_sequences
        params.n_batch = batch_size
        params.n_ubatch = batch_size
        params.n_seq_max = max_sequences
        params.n_threads = threads
        params.n_threads_batch = threads
        params.kv_unified = False
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
            if flash_attention
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True
        context = llama_cpp.llama_init_from_model(model.pointer, params)
        if not context:
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        self.pointer = context
        self.memory = llama_cpp.llama_get_memory(context)
        self.sequence_context = int(llama_cpp.llama_n_ctx_seq(context))
        self.max_sequences = max_sequences
        self.batch_size = int(llama_cpp.llama_n_batch(context))
        self.batch = DecodeBatch(self.batch_size)
        # Candidate arrays of constrained sampling (used by the decode thread only).
        self._candidates = Candidates(model.vocab_size)
        self._probe = Candidates(1)

    def decode(self, n_tokens: int) -> int:
        """Run the model on the first ``n_tokens`` of the batch (releases the GIL)."""
        self.batch.struct.n_tokens = n_tokens
        return int(llama_cpp.llama_decode(self.pointer, self.batch.struct))

    def logits(self, n_outputs: int) -> npt.NDArray[np.float32]:
        """The last decode's logits, one row per output in batch order (a view, no copy)."""
        pointer = llama_cpp.llama_get_logits(self.pointer)
        return np.ctypeslib.as_array(pointer, shape=(n_outputs, self.model.vocab_size))

    def sample(self, sampler: Sampler, index: int) -> int:
        """Sample (and accept) the next token from the logits of batch row ``index``."""
        grammar = sampler.grammar
        if grammar is None:
            return int(llama_cpp.llama_sampler_sample(sampler.pointer, self.pointer, index))
        vocab_size = self.model.vocab_size
        row = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(self.pointer, index), shape=(vocab_size,)
        )
        candidates = self._candidates
        candidates.fill(row)
        llama_cpp.llama_sampler_apply(sampler.pointer, candidates.pointer)
        token = candidates.chosen()
        # Does the grammar allow the chain's choice? One token is cheap to check.
        probe = self._probe
        probe.one(token)
        llama_cpp.llama_sampler_apply(grammar, probe.pointer)
        if not probe.first_allowed():
            # Refused: choose again among the tokens the grammar allows.
            candidates.fill(row)
            llama_cpp.llama_sampler_apply(grammar, candidates.pointer)
            llama_cpp.llama_sampler_apply(sampler.pointer, candidates.pointer)
            token = candidates.chosen()
        llama_cpp.llama_sampler_accept(grammar, token)
        llama_cpp.llama_sampler_accept(sampler.pointer, token)
        return token

    def forget(self, seq_id: int) -> None:
        """Free every KV cell of a sequence."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    def keep_prefix(self, seq_id: int, n_tokens: int) -> int:
        """Free a sequence's KV cells from position ``n_tokens`` on; the positions kept.

        That is ``n_tokens`` when positions 0 to ``n_tokens - 1`` all remain. A memory
        that cannot be cut there (a recurrent model's state) or that has already dropped
        early cells (a sliding attention window) is cleared for the sequence instead,
        and 0 is returned.
        """
        memory = self.memory
        if n_tokens > 0 and (
            llama_cpp.llama_memory_seq_rm(memory, seq_id, n_tokens, -1)
            and llama_cpp.llama_memory_seq_pos_min(memory, seq_id) == 0
            and llama_cpp.llama_memory_seq_pos_max(memory, seq_id) == n_tokens - 1
        ):
            return n_tokens
        self.forget(seq_id)
        return 0

    def clear(self) -> None:
        """Free every KV cell of every sequence."""
        llama_cpp.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        if self.pointer is not None:
            llama_cpp.llama_free(self.pointer)
            self.pointer = None
