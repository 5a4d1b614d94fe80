"""``create_server``: the vector service's gRPC server, used by ``__main__`` and tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from lodestar.runtime.server import GrpcServer, ServiceRegistration
from lodestar.services.vector.analytics import (
    SERVICE_NAME as ANALYTICS_SERVICE_NAME,
)
from lodestar.services.vector.analytics import (
    AnalyticsServicer,
    AnalyticsStore,
    create_analytics,
    sample_sizes_periodically,
)
from lodestar.services.vector.backend import VectorBackend
from lodestar.services.vector.embedded import EmbeddedBackend
from lodestar.services.vector.servicer import SERVICE_NAME, VectorServicer
from lodestar.services.vector.settings import VectorSettings
from lodestar.services.vector.store import VectorStore
from lodestar.vector.v1 import analytics_service_pb2_grpc as analytics_grpc
from lodestar.vector.v1 import vector_service_pb2_grpc as pb_grpc

_log = logging.getLogger(__name__)


def create_backend(settings: VectorSettings) -> VectorBackend:
    """The backend the settings choose (not opened yet)."""
    if settings.backend == "remote":
        from lodestar.services.vector.remote import RemoteBackend  # qdrant-client loads slowly

        return RemoteBackend(settings)
    if settings.engine_process:
        from lodestar.services.vector.engine_process import EngineProcess

        return EngineProcess(settings)
    return EmbeddedBackend(settings)


async def create_server(
    settings: VectorSettings,
    *,
    backend: VectorBackend | None = None,
    analytics: AnalyticsStore | None = None,
) -> GrpcServer:
    """The vector gRPC server (not started) with its backend opened.

    Serves VectorService and AnalyticsService; samples collection sizes into the
    analytics store every ``analytics_interval_s``. Stopping the server closes the
    backend and the analytics store.
    """
    backend = backend or create_backend(settings)
    await backend.open()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store_analytics = (
        analytics
        if analytics is not None
        else await asyncio.to_thread(
            create_analytics, settings.data_dir, retention_days=settings.analytics_retention_days
        )
    )
    store = VectorStore(backend, recorder=store_analytics)
    servicer = VectorServicer(store, settings)
    analytics_servicer = AnalyticsServicer(store_analytics, store.sizes)
    sampler = asyncio.get_running_loop().create_task(
        sample_sizes_periodically(store_analytics, store.sizes, settings.analytics_interval_s),
        name="vector-size-sampler",
    )

    async def stop() -> None:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await backend.close()
        await asyncio.to_thread(store_analytics.close)

    return GrpcServer(
        settings,
        [
            ServiceRegistration(
                SERVICE_NAME,
                lambda server: pb_grpc.add_VectorServiceServicer_to_server(servicer, server),
            ),
            ServiceRegistration(
                ANALYTICS_SERVICE_NAME,
                lambda server: analytics_grpc.add_AnalyticsServiceServicer_to_server(
                    analytics_servicer, server
                ),
            ),
        ],
        on_stop=stop,
    )
