"""The combined AI flows of the gateway, built on the three services:

- generate and remember (``store_embedding``), retrieval-augmented generation
  with sources (``context``) and learning from feedback (``use_feedback`` and
  ``POST /api/v1/feedback``), as stages of the generation pipeline;
- clustering of a subset given by ids or texts (``/api/v1/vectors/cluster/subset``);
- usage analytics: one event per request, recorded by the analytics service;
- the OpenAI-compatible API (``/v1/models``, ``/v1/chat/completions``,
  ``/v1/completions``, ``/v1/embeddings``).

``create_flows_app(settings)`` is the gateway app with all of them, which is
what ``python -m lodestar.services.gateway`` serves.
"""

from __future__ import annotations

from fastapi import FastAPI

from lodestar.services.gateway.app import Extension, create_app
from lodestar.services.gateway.deps import Gateway
from lodestar.services.gateway.flows import cluster, feedback, openai
from lodestar.services.gateway.flows.augment import ComposeStage
from lodestar.services.gateway.flows.feedback import FeedbackStage
from lodestar.services.gateway.flows.memory import StoreStage
from lodestar.services.gateway.flows.rag import ContextStage
from lodestar.services.gateway.flows.runtime import EXTENSION_KEY, FlowsRuntime, runtime_of
from lodestar.services.gateway.flows.settings import FlowsSettings
from lodestar.services.gateway.flows.usage import (
    Scope,
    UsageMiddleware,
    UsageRecorder,
    UsageStage,
)
from lodestar.services.gateway.settings import GatewaySettings

__all__ = ["FlowsRuntime", "FlowsSettings", "create_flows_app", "flows_extension", "runtime_of"]


def flows_extension(settings: FlowsSettings | None = None) -> Extension:
    """The flows as a gateway extension: routes, generation stages, and the
    usage recorder's lifetime. (Usage events also need ``UsageMiddleware``,
    which ``create_flows_app`` installs.)"""
    flows_settings = settings or FlowsSettings()

    async def start(gateway: Gateway) -> None:
        recorder = UsageRecorder(
            gateway.backends.analytics.record_usage,
            interval_s=flows_settings.usage_flush_interval_s,
            batch_size=flows_settings.usage_batch_size,
            max_pending=flows_settings.usage_max_pending,
        )
        runtime = FlowsRuntime(flows_settings, recorder)
        gateway.extensions[EXTENSION_KEY] = runtime
        # Order matters: feedback and retrieval collect, compose builds the
        # prompt from what they found, then the answer is stored and counted.
        for stage in (
            FeedbackStage(runtime),
            ContextStage(runtime),
            ComposeStage(runtime),
            StoreStage(runtime),
            UsageStage(),
        ):
            gateway.pipeline.add(stage)
        recorder.start()

    async def stop(gateway: Gateway) -> None:
        runtime = gateway.extensions.pop(EXTENSION_KEY, None)
        if isinstance(runtime, FlowsRuntime):
            await runtime.usage.stop()

    return Extension(
        "flows",
        routers=[feedback.router, cluster.router, openai.router],
        on_start=start,
        on_stop=stop,
    )


def create_flows_app(
    settings: GatewaySettings | None = None, flows_settings: FlowsSettings | None = None
) -> FastAPI:
    """The gateway app with the flows installed."""
    flows_settings = flows_settings or FlowsSettings()
    app = create_app(settings, extensions=[flows_extension(flows_settings)])

    def recorder(scope: Scope) -> UsageRecorder | None:
        gateway = getattr(app.state, "gateway", None)
        runtime = gateway.extensions.get(EXTENSION_KEY) if gateway is not None else None
        return runtime.usage if isinstance(runtime, FlowsRuntime) else None

    # Outermost, so that it sees every final status and a stream's whole time.
    app.add_middleware(
        UsageMiddleware,  # type: ignore[arg-type]
        recorder=recorder,
        excluded=frozenset(flows_settings.usage_excluded_routes),
    )
    return app
