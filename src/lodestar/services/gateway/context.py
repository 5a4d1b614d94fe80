"""``Gateway``: what one running gateway app is made of, built at its startup.

The app's lifespan builds it (``app.build_gateway``) and keeps it on
``app.state``; ``gateway_of`` hands it to routes and dependencies. Everything
with a lifetime hangs off it, so several gateway apps can run in one process
(as the tests do) and nothing lives in module globals.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from lodestar.auth.tokens import TokenVerifier
from lodestar.services.gateway.backends import Backends
from lodestar.services.gateway.documents.service import Documents
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.pipeline import GeneratePipeline
from lodestar.services.gateway.ratelimit import RateLimiter
from lodestar.services.gateway.settings import GatewaySettings


@dataclass(frozen=True, eq=False)
class Gateway:
    settings: GatewaySettings
    backends: Backends
    verifier: TokenVerifier
    limiter: RateLimiter
    pipeline: GeneratePipeline
    # The combined AI flows and the OpenAI-compatible API's state; None when
    # the app serves the core REST API alone.
    flows: FlowsRuntime | None = None
    # Document jobs: their runner, and the worker taking them with Redis.
    documents: Documents | None = None

    async def close(self) -> None:
        if self.documents is not None:
            await self.documents.close()
        if self.flows is not None:
            await self.flows.stop()
        await self.backends.close()
        await self.limiter.close()


def gateway_of(request: Request) -> Gateway:
    """The gateway of the app serving ``request``."""
    gateway: Gateway = request.app.state.gateway
    return gateway
