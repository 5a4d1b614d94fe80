"""gRPC transport of the embedding service: validation and proto ⇄ engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import grpc
import numpy as np
from opentelemetry import trace

from lodestar.embedding.v1 import embedding_service_pb2 as pb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as pb_grpc
from lodestar.runtime import genai
from lodestar.runtime.errors import InvalidArgument
from lodestar.services.embedding.batcher import DynamicBatcher
from lodestar.services.embedding.engine import EmbeddingEngine


class TextItem(NamedTuple):
    """One text waiting for its vector, with its caller's normalisation choice."""

    text: str
    normalize: bool


def validate_texts(texts: Sequence[str], *, max_texts: int, max_chars: int) -> None:
    """Raise InvalidArgument naming the first offending field."""
    if not texts:
        raise InvalidArgument(
            "texts is empty; send at least one text", field="texts", reason="EMPTY_TEXTS"
        )
    if len(texts) > max_texts:
        raise InvalidArgument(
            f"texts has {len(texts)} entries; send at most {max_texts} per call "
            "(split the list over several calls)",
            field="texts",
            reason="TOO_MANY_TEXTS",
            metadata={"limit": str(max_texts), "count": str(len(texts))},
        )
    for index, text in enumerate(texts):
        if not text or text.isspace():
            raise InvalidArgument(
                f"texts[{index}] is empty or only whitespace; send text with content",
                field=f"texts[{index}]",
                reason="EMPTY_TEXT",
            )
        if len(text) > max_chars:
            raise InvalidArgument(
                f"texts[{index}] has {len(text)} characters; the limit is {max_chars} "
                "(split long documents into chunks)",
                field=f"texts[{index}]",
                reason="TEXT_TOO_LONG",
                metadata={"limit": str(max_chars), "count": str(len(text))},
            )


class EmbeddingServicer(pb_grpc.EmbeddingServiceServicer):
    """EmbedTexts and GetModelInfo over a shared, dynamically batched engine."""

    def __init__(
        self,
        engine: EmbeddingEngine,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queued_texts: int | None = None,
        max_texts_per_request: int,
        max_text_chars: int,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._engine = engine
        self._tracer = tracer or trace.get_tracer(__name__)
        self._max_texts = max_texts_per_request
        self._max_chars = max_text_chars
        self.batcher: DynamicBatcher[TextItem, pb.Embedding] = DynamicBatcher(
            self._embed_batch,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            max_queued=max_queued_texts,
        )
        info = engine.info
        self._model_info = pb.ModelInfo(
            name=info.name,
            dimension=info.dimension,
            max_sequence_length=info.max_sequence_length,
            max_texts_per_request=max_texts_per_request,
            max_text_chars=max_text_chars,
            similarity=info.similarity,
        )

    def _embed_batch(self, items: list[TextItem]) -> list[pb.Embedding]:
        """Runs in the batcher's worker thread, so proto building stays off the event loop."""
        result = self._engine.embed([item.text for item in items], normalize=False)
        vectors = result.vectors
        wanted = np.fromiter((item.normalize for item in items), dtype=bool, count=len(items))
        if wanted.any():
            norms = np.linalg.norm(vectors[wanted], axis=1, keepdims=True)
            # Guards a zero vector; the model does not produce one for real text.
            vectors[wanted] = vectors[wanted] / np.maximum(norms, 1e-12)
        return [
            pb.Embedding(values=row, token_count=count, truncated=cut)
            for row, count, cut in zip(
                vectors.tolist(), result.token_counts, result.truncated, strict=True
            )
        ]

    async def EmbedTexts(
        self, request: pb.EmbedTextsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.EmbedTextsResponse:
        texts = request.texts
        validate_texts(texts, max_texts=self._max_texts, max_chars=self._max_chars)
        normalize = request.normalize if request.HasField("normalize") else True
        model = self._model_info.name
        with genai.operation_span(
            self._tracer, genai.EMBEDDINGS, model, genai.SENTENCE_TRANSFORMERS
        ) as span:
            embeddings = await self.batcher.submit([TextItem(text, normalize) for text in texts])
            total_tokens = sum(e.token_count for e in embeddings)
            genai.record_response(span, model=model, input_tokens=total_tokens)
        return pb.EmbedTextsResponse(
            embeddings=embeddings,
            model=model,
            dimension=self._model_info.dimension,
            total_tokens=total_tokens,
        )

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.GetModelInfoResponse:
        return pb.GetModelInfoResponse(model=self._model_info)
