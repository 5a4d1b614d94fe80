"""What the flows keep for a running gateway (``Gateway.flows``): settings, the
usage recorder and a short-lived cache of the inference model's description."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.flows.experiment_models import Experiment
from lodestar.services.gateway.flows.settings import FlowsSettings
from lodestar.services.gateway.flows.usage import UsageRecorder

_MODEL_INFO_TTL_S = 60.0


@dataclass(eq=False)
class FlowsRuntime:
    settings: FlowsSettings
    usage: UsageRecorder
    # Unix time the flows started (the "created" of the models listed).
    started_at: float = field(default_factory=time.time)
    _inference_info: tuple[ipb.ModelInfo, float] | None = field(default=None, init=False)
    # The running experiments and when they were read (``experiments.running``).
    running_experiments: tuple[tuple[Experiment, ...], float] | None = field(
        default=None, init=False
    )
    # When this gateway last dropped the semantic cache's expired entries.
    cache_pruned_at: float = field(default=0.0, init=False)

    @property
    def reserved_collections(self) -> frozenset[str]:
        """Collections of subjects' private data (conversations and memory, cached
        answers, experiments' answers), which no raw route may name
        (``Call.collection``): the flows reach them for the caller alone."""
        settings = self.settings
        return frozenset(
            {
                settings.conversations_collection,
                settings.cache_collection,
                settings.experiments_collection,
            }
        )

    def start(self) -> None:
        self.usage.start()

    async def stop(self) -> None:
        await self.usage.stop()

    async def inference_info(self, call: Call) -> ipb.ModelInfo:
        """The inference model's description (context size, default max_tokens)."""
        cached = self._inference_info
        if cached is not None and time.monotonic() - cached[1] < _MODEL_INFO_TTL_S:
            return cached[0]
        response = await call.backends.inference.model_info(call.options)
        self._inference_info = (response.model, time.monotonic())
        return response.model
