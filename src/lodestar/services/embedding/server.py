"""Assembly of the embedding service: engine, servicer and the shared gRPC server."""

from __future__ import annotations

from lodestar.embedding.v1 import embedding_service_pb2 as pb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as pb_grpc
from lodestar.runtime.server import GrpcServer, ServiceRegistration
from lodestar.services.embedding.engine import EmbeddingEngine
from lodestar.services.embedding.servicer import EmbeddingServicer
from lodestar.services.embedding.settings import EmbeddingSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name


def load_engine(settings: EmbeddingSettings) -> EmbeddingEngine:
    """Load the model the settings name."""
    return EmbeddingEngine.load(
        settings.model_path,
        device=settings.device,
        threads=settings.threads,
        name=settings.model_name,
        backend=settings.backend,
        cache_dir=settings.cache_dir,
    )


def create_server(settings: EmbeddingSettings, engine: EmbeddingEngine | None = None) -> GrpcServer:
    """The embedding gRPC server (not started); loads the model unless one is given."""
    servicer = EmbeddingServicer(
        engine or load_engine(settings),
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queued_texts=settings.max_queued_texts,
        max_texts_per_request=settings.max_texts_per_request,
        max_text_chars=settings.max_text_chars,
    )
    return GrpcServer(
        settings,
        [
            ServiceRegistration(
                SERVICE_NAME,
                lambda server: pb_grpc.add_EmbeddingServiceServicer_to_server(servicer, server),
            )
        ],
        # Runs after in-flight calls have drained.
        on_stop=servicer.batcher.close,
    )
