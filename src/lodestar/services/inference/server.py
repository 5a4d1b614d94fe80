"""Assembly of the inference service: engine, servicer and the shared gRPC server."""

from __future__ import annotations

from lodestar.inference.v1 import inference_service_pb2 as pb
from lodestar.inference.v1 import inference_service_pb2_grpc as pb_grpc
from lodestar.runtime.server import GrpcServer, ServiceRegistration
from lodestar.services.inference.engine import InferenceEngine
from lodestar.services.inference.servicer import InferenceServicer
from lodestar.services.inference.settings import InferenceSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


def create_server(settings: InferenceSettings, engine: InferenceEngine | None = None) -> GrpcServer:
    """The inference gRPC server (not started); loads the model unless an engine is given.

    An engine the server creates is closed when the server stops (after in-flight calls
    have drained); one passed in belongs to the caller.
    """
    own = engine is None
    engine = engine or InferenceEngine.from_settings(settings)
    servicer = InferenceServicer(engine)
    return GrpcServer(
        settings,
        [
            ServiceRegistration(
                SERVICE_NAME,
                lambda server: pb_grpc.add_InferenceServiceServicer_to_server(servicer, server),
            )
        ],
        on_stop=engine.aclose if own else None,
    )
