"""The embedding service: sentence-transformers behind gRPC, with dynamic batching.

``create_server`` builds the service (used by ``__main__`` and by tests);
``EmbeddingEngine`` does the real work and can be used without gRPC.
"""

from lodestar.services.embedding.server import create_server
from lodestar.services.embedding.settings import EmbeddingSettings

__all__ = ["EmbeddingSettings", "create_server"]
