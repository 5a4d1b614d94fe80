"""The document store's calls over the gateway's backends (breakers, retries,
failover), each with its own deadline: a job outlives the request that made it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lodestar.services.gateway.backends import Backends
from lodestar.services.gateway.deadline import CallOptions, Deadline
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.settings import GatewaySettings
from lodestar.vector.v1 import vector_service_pb2 as vpb


class BackendCalls:
    def __init__(self, backends: Backends, options: Callable[[], CallOptions]) -> None:
        self._backends = backends
        self._options = options

    @classmethod
    def for_jobs(cls, backends: Backends, settings: GatewaySettings) -> BackendCalls:
        """Calls for work done outside a request: the write deadline per call."""
        seconds = settings.deadline_for(RouteClass.WRITE)
        return cls(backends, lambda: CallOptions(Deadline.after(seconds)))

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return await self._backends.embedding.embed(texts, self._options())

    async def upsert(self, request: vpb.UpsertPointsRequest) -> None:
        await self._backends.vector.upsert_points(request, self._options())

    async def list(self, request: vpb.ListPointsRequest) -> vpb.ListPointsResponse:
        return await self._backends.vector.list_points(request, self._options())

    async def delete(self, request: vpb.DeletePointsRequest) -> int:
        # On the gateway's authority: the route has checked the caller (replacing a
        # document removes its old chunks for a caller who may only insert; deleting
        # one needs DeleteVectors at the route), and the request keeps their tenant.
        response = await self._backends.vector.delete_points(request, self._options().as_gateway())
        return int(response.deleted_count)
