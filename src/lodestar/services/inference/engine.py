"""Text generation for many concurrent requests with one llama.cpp context.

The engine checks and prepares a request (prompt length, chat template, sampler
chain) and hands it to the ``Scheduler``, whose decode thread batches every running
sequence into each llama.cpp step; the caller reads the answer from the
``GenerationStream`` it gets back. Nothing here blocks on a generation.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace

from lodestar.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from lodestar.services.inference.constraints import to_gbnf
from lodestar.services.inference.generation import (
    EngineInfo,
    GenerationParams,
    GenerationResult,
    GenerationStream,
    Request,
    SamplingDefaults,
)
from lodestar.services.inference.model import (
    GrammarError,
    LlamaContext,
    LlamaModel,
    Sampler,
    SamplerConfig,
)
from lodestar.services.inference.scheduler import Scheduler
from lodestar.services.inference.settings import InferenceSettings
from lodestar.services.inference.tools import ToolSpec, with_tools

# llama.cpp treats this seed value as "pick a random seed".
_RANDOM_SEED = 0xFFFFFFFF


class InferenceEngine:
    """Generates text for many concurrent requests with one llama.cpp context."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        context_size: int = 2048,
        max_concurrent_sequences: int = 8,
        max_queue_length: int = 64,
        batch_size: int = 256,
        threads: int = 2,
        flash_attention: bool = True,
        prompt_cache: bool = True,
        defaults: SamplingDefaults | None = None,
        own_model: bool = False,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.model = model
        self._tracer = tracer or trace.get_tracer(__name__)
        self.defaults = defaults or SamplingDefaults()
        self._own_model = own_model
        self._context = LlamaContext(
            model,
            context_size=context_size,
            max_sequences=max_concurrent_sequences,
            batch_size=max(batch_size, max_concurrent_sequences),
            threads=threads,
            flash_attention=flash_attention,
        )
        self.context_size = self._context.sequence_context
        self.max_concurrent_sequences = max_concurrent_sequences
        self.max_queue_length = max_queue_length
        self.prompt_cache = prompt_cache
        self.info = EngineInfo(
            name=model.name,
            path=model.path,
            context_size=self.context_size,
            max_concurrent_sequences=max_concurrent_sequences,
            max_queue_length=max_queue_length,
            gpu_layers=model.gpu_layers,
            has_chat_template=model.chat_template is not None,
            vocab_size=model.vocab_size,
            default_max_tokens=min(self.defaults.max_tokens, self.context_size),
        )
        self._random = random.SystemRandom()
        self._scheduler = Scheduler(
            model,
            self._context,
            max_sequences=max_concurrent_sequences,
            max_queue_length=max_queue_length,
            prompt_cache=prompt_cache,
            tracer=self._tracer,
        )

    @classmethod
    def from_settings(
        cls, settings: InferenceSettings, model: LlamaModel | None = None
    ) -> InferenceEngine:
        """An engine as the settings describe it; loads the model unless one is given."""
        own = model is None
        if model is None:
            model = LlamaModel(
                settings.model_path, gpu_layers=settings.gpu_layers, name=settings.model_name
            )
        return cls(
            model,
            context_size=settings.context_size,
            max_concurrent_sequences=settings.max_concurrent_sequences,
            max_queue_length=settings.max_queue_length,
            batch_size=settings.batch_size,
            threads=settings.effective_threads,
            flash_attention=settings.flash_attention,
            prompt_cache=settings.prompt_cache,
            defaults=SamplingDefaults(
                max_tokens=settings.default_max_tokens,
                temperature=settings.default_temperature,
                top_p=settings.default_top_p,
                top_k=settings.default_top_k,
                min_p=settings.default_min_p,
                repeat_penalty=settings.default_repeat_penalty,
                repeat_last_n=settings.repeat_last_n,
            ),
            own_model=own,
        )

    # -- prompts -------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text)

    def document_start(self) -> list[int]:
        """What an empty prompt is generated from: the model's start-of-text token (what
        a tokenizer that adds one gives for an empty text), or nothing if it has none."""
        return [self.model.bos_token] if self.model.bos_token >= 0 else []

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any] | tuple[str, str]],
        *,
        tools: Sequence[ToolSpec] = (),
        field: str = "messages",
    ) -> str:
        """The conversation in the model's chat template; InvalidArgument if it rejects it."""
        if self.model.chat_template is None:
            raise FailedPrecondition(
                f"the model {self.model.name} has no chat template; send a prompt instead",
                field=field,
                reason="NO_CHAT_TEMPLATE",
            )
        try:
            dicts = [
                {"role": m[0], "content": m[1]} if isinstance(m, tuple) else dict(m)
                for m in messages
            ]
            turns, template_tools = with_tools(
                dicts, tools, template_renders_tools=self.model.template_renders_tools
            )
            return self.model.render_chat(turns, template_tools)
        except Exception as error:
            raise InvalidArgument(
                f"{field} cannot be rendered with the model's chat template: {error}",
                field=field,
                reason="INVALID_CONVERSATION",
            ) from None

    def check_prompt_length(self, prompt_tokens: int, *, field: str = "prompt") -> None:
        if prompt_tokens >= self.context_size:
            raise InvalidArgument(
                f"{field} is {prompt_tokens} tokens but the context holds {self.context_size} "
                f"tokens for prompt and answer together; shorten it to fewer than "
                f"{self.context_size} tokens",
                field=field,
                reason="PROMPT_TOO_LONG",
                metadata={
                    "prompt_tokens": str(prompt_tokens),
                    "context_size": str(self.context_size),
                },
            )

    # -- generation ------------------------------------------------------------------

    def stream(
        self,
        prompt: list[int],
        params: GenerationParams,
        *,
        arrival: float | None = None,
        prompt_field: str = "prompt",
    ) -> GenerationStream:
        """Start a generation; ResourceExhausted at once when the queue is full."""
        if not prompt:
            raise InvalidArgument(
                f"{prompt_field} is empty", field=prompt_field, reason="EMPTY_PROMPT"
            )
        self.check_prompt_length(len(prompt), field=prompt_field)
        sampler = self._make_sampler(params)
        loop = asyncio.get_running_loop()
        stream = GenerationStream(self._scheduler.cancel)
        request = Request(
            prompt,
            sampler,
            params.max_tokens,
            params.stop,
            stream,
            loop,
            time.perf_counter() if arrival is None else arrival,
            params.top_logprobs,
        )
        stream.request = request
        if not self._scheduler.submit(request):
            sampler.free()
            if self._scheduler.closing:
                raise Unavailable("the inference service is shutting down", reason="SHUTTING_DOWN")
            raise ResourceExhausted(
                f"all {self.max_concurrent_sequences} sequence slots are busy and "
                f"{self.max_queue_length} requests are already waiting; retry later",
                reason="QUEUE_FULL",
                retry_after_s=1.0,
            )
        return stream

    async def generate(
        self, prompt: list[int], params: GenerationParams, *, arrival: float | None = None
    ) -> GenerationResult:
        return await self.stream(prompt, params, arrival=arrival).collect()

    def _make_sampler(self, params: GenerationParams) -> Sampler:
        grammar: str | None = None
        if params.constraint is not None:
            grammar = to_gbnf(params.constraint)
        seed = params.seed
        if seed is None:
            seed = self._random.getrandbits(32)
        try:
            return self.model.make_sampler(
                SamplerConfig(
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k,
                    min_p=params.min_p,
                    repeat_penalty=params.repeat_penalty,
                    repeat_last_n=self.defaults.repeat_last_n,
                    seed=seed % _RANDOM_SEED,
                    grammar=grammar,
                )
            )
        except GrammarError as error:
            assert params.constraint is not None
            field = params.constraint.field
            raise InvalidArgument(
                f"{field} is not a valid grammar: {error}", field=field, reason="INVALID_GRAMMAR"
            ) from None

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop the decode loop (running generations end as cancelled) and free memory."""
        self._scheduler.close()
        self._context.close()
        if self._own_model:
            self.model.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)
