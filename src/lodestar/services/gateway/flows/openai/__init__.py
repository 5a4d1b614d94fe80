"""The OpenAI-compatible API (``/v1/...``), for the official ``openai`` client
and the tools built on it."""

from __future__ import annotations

from lodestar.services.gateway.flows.openai.routes import router

__all__ = ["router"]
