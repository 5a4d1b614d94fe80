"""The inference service: a llama.cpp model behind gRPC, with continuous batching.

``create_server`` builds the service (used by ``__main__`` and by tests);
``InferenceEngine`` does the real work and can be used without gRPC.
"""

from lodestar.services.inference.engine import InferenceEngine
from lodestar.services.inference.server import create_server
from lodestar.services.inference.settings import InferenceSettings

__all__ = ["InferenceEngine", "InferenceSettings", "create_server"]
