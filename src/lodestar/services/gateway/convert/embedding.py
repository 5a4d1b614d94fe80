"""Texts ⇄ ``lodestar.embedding.v1`` messages."""

from __future__ import annotations

from collections.abc import Sequence

from lodestar.embedding.v1 import embedding_service_pb2 as pb


def embed_request(texts: Sequence[str]) -> pb.EmbedTextsRequest:
    return pb.EmbedTextsRequest(texts=list(texts))


def vectors_from_proto(response: pb.EmbedTextsResponse) -> list[list[float]]:
    return [list(embedding.values) for embedding in response.embeddings]
