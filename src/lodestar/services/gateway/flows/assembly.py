"""The flows of one gateway: their state, their generation stages and their routes."""

from __future__ import annotations

from fastapi import APIRouter

from lodestar.services.gateway.backends import Backends
from lodestar.services.gateway.flows import cluster, feedback, topics
from lodestar.services.gateway.flows.augment import ComposeStage
from lodestar.services.gateway.flows.feedback import FeedbackStage
from lodestar.services.gateway.flows.memory import StoreStage
from lodestar.services.gateway.flows.rag import ContextStage
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.flows.settings import FlowsSettings
from lodestar.services.gateway.flows.usage import UsageRecorder, UsageStage
from lodestar.services.gateway.pipeline import GenerateStage

ROUTERS: tuple[APIRouter, ...] = (feedback.router, cluster.router, topics.router)


def build_flows(settings: FlowsSettings, backends: Backends) -> FlowsRuntime:
    """The flows' state; its usage recorder starts with the app (``FlowsRuntime.start``)."""
    return FlowsRuntime(settings, UsageRecorder(backends.analytics.record_usage))


def flow_stages(flows: FlowsRuntime) -> list[GenerateStage]:
    """The generation stages, in order: feedback and retrieval collect, compose
    builds the prompt from what they found, then the answer is stored and counted."""
    return [
        FeedbackStage(flows),
        ContextStage(flows),
        ComposeStage(flows),
        StoreStage(flows),
        UsageStage(),
    ]
