"""What the flows keep for a running gateway: settings, the usage recorder and
short-lived caches of the backends' model descriptions."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.services.gateway.deps import Call, Gateway
from lodestar.services.gateway.flows.settings import FlowsSettings
from lodestar.services.gateway.flows.usage import UsageRecorder

EXTENSION_KEY = "flows"
_MODEL_INFO_TTL_S = 60.0


@dataclass(eq=False)
class FlowsRuntime:
    settings: FlowsSettings
    usage: UsageRecorder
    # Unix time the flows started (the "created" of the models listed).
    started_at: float = field(default_factory=time.time)
    _inference_info: tuple[ipb.ModelInfo, float] | None = field(default=None, init=False)

    async def inference_info(self, call: Call) -> ipb.ModelInfo:
        """The inference model's description (context size, default max_tokens)."""
        cached = self._inference_info
        if cached is not None and time.monotonic() - cached[1] < _MODEL_INFO_TTL_S:
            return cached[0]
        response = await call.backends.inference.model_info(call.options)
        self._inference_info = (response.model, time.monotonic())
        return response.model


def runtime_of(gateway: Gateway) -> FlowsRuntime:
    runtime: FlowsRuntime = gateway.extensions[EXTENSION_KEY]
    return runtime
