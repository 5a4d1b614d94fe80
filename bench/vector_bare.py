"""A bare gRPC server around the engine's search, both in one process.

    python -m bench.vector_bare SHARD_DIR PORT

``bench.vector`` runs it beside the service, on a copy of the raw shard, and drives
both with the same clients in turns. It answers ``SearchPoints`` and nothing else:
the request's vector goes straight to ``EdgeShard.query`` on the event loop and
the hits' ids and scores come back. No validation, collection lookup, metrics,
interceptors, tracing or analytics: only grpc.aio, protobuf and the engine. It runs
under the service's CPU scheduling policy (``runtime.scheduling``, the default of
``LODESTAR_VECTOR_CPU_SCHEDULING``), so that the two differ only in what they do.

Its QPS over raw qdrant-edge's is what serving searches over gRPC from one Python
process costs on the machine: the engine holds the GIL while it searches, so the
server's work and the searches share one core's worth of time. That is why the
service runs the engine in a child process; the service's QPS over this server's
is what that gains, net of the service's own work.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import qdrant_edge as qe
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lodestar.runtime import scheduling
from lodestar.services.vector.settings import VectorSettings
from lodestar.vector.v1 import vector_service_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["VectorService"].full_name


def search_handler(
    shard: qe.EdgeShard, default_ef: int
) -> grpc.RpcMethodHandler[pb.SearchPointsRequest, pb.SearchPointsResponse]:
    default_params = qe.SearchParams(hnsw_ef=default_ef)

    async def search(
        request: pb.SearchPointsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.SearchPointsResponse:
        hits = shard.query(
            qe.QueryRequest(
                limit=request.limit,
                query=qe.Query.Nearest(list(request.vector)),
                params=qe.SearchParams(hnsw_ef=request.params.hnsw_ef)
                if request.params.hnsw_ef
                else default_params,
            )
        )
        response = pb.SearchPointsResponse()
        for hit in hits:
            point = response.points.add()
            point.id.num = hit.id  # type: ignore[assignment]
            point.score = hit.score
        return response

    return grpc.unary_unary_rpc_method_handler(
        search,
        request_deserializer=pb.SearchPointsRequest.FromString,
        response_serializer=pb.SearchPointsResponse.SerializeToString,
    )


async def serve(shard_dir: str, port: int, default_ef: int) -> None:
    shard = qe.EdgeShard.load(shard_dir)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE, {"SearchPoints": search_handler(shard, default_ef)}
            )
        ]
    )
    checks = health.aio.HealthServicer()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        await server.wait_for_termination()
    finally:
        shard.close()


def main() -> None:
    from bench.vector import EF_SEARCH

    shard_dir, port = sys.argv[1], int(sys.argv[2])
    scheduling.apply(VectorSettings().cpu_scheduling)
    asyncio.run(serve(shard_dir, port, EF_SEARCH))


if __name__ == "__main__":
    main()
