"""The flows of one gateway: their state, their generation stages and their routes."""

from __future__ import annotations

from fastapi import APIRouter

from lodestar.services.gateway.backends import Backends
from lodestar.services.gateway.flows import (
    cluster,
    experiment_routes,
    feedback,
    personal_routes,
    topics,
)
from lodestar.services.gateway.flows.augment import ComposeStage
from lodestar.services.gateway.flows.conversations import (
    ConversationStage,
    MemoryStage,
    RememberStage,
)
from lodestar.services.gateway.flows.experiments import ExperimentStage
from lodestar.services.gateway.flows.feedback import FeedbackStage
from lodestar.services.gateway.flows.memory import StoreStage
from lodestar.services.gateway.flows.rag import ContextStage
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.flows.semantic_cache import CacheStage
from lodestar.services.gateway.flows.settings import FlowsSettings
from lodestar.services.gateway.flows.usage import UsageRecorder, UsageStage
from lodestar.services.gateway.pipeline import GenerateStage

ROUTERS: tuple[APIRouter, ...] = (
    feedback.router,
    cluster.router,
    personal_routes.router,
    experiment_routes.router,
    topics.router,
)


def build_flows(settings: FlowsSettings, backends: Backends) -> FlowsRuntime:
    """The flows' state; its usage recorder starts with the app (``FlowsRuntime.start``)."""
    return FlowsRuntime(settings, UsageRecorder(backends.analytics.record_usage))


def flow_stages(flows: FlowsRuntime) -> list[GenerateStage]:
    """The generation stages, in order: the experiment marks the answer, the
    cache may answer at once, feedback and retrieval collect, the conversation's
    history and the caller's memories go into the prompt, compose builds the
    prompt from what was found, then the answer is stored, remembered and
    counted."""
    return [
        ExperimentStage(flows),
        CacheStage(flows),
        FeedbackStage(flows),
        ContextStage(flows),
        ConversationStage(flows),
        MemoryStage(flows),
        ComposeStage(flows),
        StoreStage(flows),
        RememberStage(flows),
        UsageStage(),
    ]
