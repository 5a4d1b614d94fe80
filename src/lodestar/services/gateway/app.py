"""The gateway application factory: ``create_app(settings, flows) -> FastAPI``.

Everything with a lifetime (gRPC channels, the rate-limit store, the token
verifier, the flows' usage recorder) is built in the app's lifespan as one
``Gateway``, so one process can run several independent gateway apps (as the
tests do) and nothing lives in module globals. With ``flows`` settings the app
also serves the flows (their routes and generation stages, usage accounting)
and the OpenAI-compatible API; without, the core REST API alone.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, APIRouter

from lodestar.auth.permissions import Permission
from lodestar.auth.tokens import TokenVerifier
from lodestar.services.gateway.backends import Backends
from lodestar.services.gateway.console import install_console
from lodestar.services.gateway.context import Gateway
from lodestar.services.gateway.deps import Requirement
from lodestar.services.gateway.documents.service import Documents
from lodestar.services.gateway.errors import install_error_handlers
from lodestar.services.gateway.flows.assembly import ROUTERS as FLOWS_ROUTERS
from lodestar.services.gateway.flows.assembly import build_flows, flow_stages
from lodestar.services.gateway.flows.settings import FlowsSettings
from lodestar.services.gateway.flows.usage import Scope, UsageMiddleware, UsageRecorder
from lodestar.services.gateway.mcp import McpEndpoint, mcp_route
from lodestar.services.gateway.middleware import GatewayMiddleware
from lodestar.services.gateway.openai.errors import OpenAIRoute
from lodestar.services.gateway.openai.routes import router as openai_router
from lodestar.services.gateway.pipeline import GeneratePipeline
from lodestar.services.gateway.ratelimit import RouteClass, create_rate_limiter
from lodestar.services.gateway.routes import API_ROUTERS, ROOT_ROUTERS, system
from lodestar.services.gateway.schemas.errors import ErrorBody, OpenAIErrorBody, error_responses
from lodestar.services.gateway.settings import DEVELOPMENT_SIGNING_KEY, GatewaySettings

_log = logging.getLogger(__name__)

VERSION = "0.1.0"


def build_gateway(settings: GatewaySettings, flows: FlowsSettings | None = None) -> Gateway:
    backends = Backends(settings)
    runtime = build_flows(flows, backends) if flows is not None else None
    return Gateway(
        settings=settings,
        backends=backends,
        verifier=TokenVerifier(settings),
        limiter=create_rate_limiter(
            settings.redis_url,
            settings.redis_key_prefix,
            settings.requests_per_minute,
            settings.generated_tokens_per_minute,
            settings.rate_limit_window_s,
        ),
        pipeline=GeneratePipeline(flow_stages(runtime) if runtime is not None else ()),
        flows=runtime,
        documents=Documents(settings, backends),
    )


# Routes that authorise inside their handler rather than through ``require``.
_HANDLER_PERMISSIONS: dict[Callable[..., Any], Permission] = {
    system.health: Permission.HEALTH_CHECK,
    system.metrics: Permission.VIEW_METRICS,
}


@dataclass(frozen=True)
class RouteSecurity:
    method: str
    path: str
    permission: Permission | tuple[Permission, ...] | None
    route_class: RouteClass | None
    # False for the liveness probe (and /metrics when public).
    token_required: bool


def route_security(app: FastAPI) -> list[RouteSecurity]:
    """What each API route needs: the permission matrix, read from the routes
    of the routers ``create_app`` included (their paths are full paths)."""
    settings: GatewaySettings = app.state.settings
    routers: list[APIRouter] = app.state.routers
    out: list[RouteSecurity] = []
    for route in (r for router in routers for r in router.routes):
        if not isinstance(route, APIRoute):
            continue
        declared = [d.call for d in route.dependant.dependencies if isinstance(d.call, Requirement)]
        for method in sorted(route.methods or ()):
            if declared:
                need = declared[-1]
                out.append(
                    RouteSecurity(
                        method, route.path_format, need.permission, need.route_class, True
                    )
                )
            elif route.endpoint in _HANDLER_PERMISSIONS:
                required = route.endpoint is not system.health and not (
                    route.endpoint is system.metrics and settings.metrics_public
                )
                out.append(
                    RouteSecurity(
                        method,
                        route.path_format,
                        _HANDLER_PERMISSIONS[route.endpoint],
                        None,
                        required,
                    )
                )
    return out


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _exact_integer_bounds(node: Any) -> None:
    """FastAPI's document model keeps bounds as floats, which rounds 64-bit ones;
    the wide integer bounds are powers of two (exact as floats), so those are
    written back as the integers they are."""
    if isinstance(node, dict):
        for key, value in node.items():
            if (
                key in _BOUNDS
                and isinstance(value, float)
                and value.is_integer()
                and math.frexp(value)[0] == 0.5
            ):
                node[key] = int(value)
            else:
                _exact_integer_bounds(value)
    elif isinstance(node, list):
        for item in node:
            _exact_integer_bounds(item)


def _install_openapi_security(app: FastAPI) -> None:
    """Bearer auth in the OpenAPI document, and each operation's permission."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        }
        for entry in route_security(app):
            operation = schema["paths"].get(entry.path, {}).get(entry.method.lower())
            if operation is None:
                continue
            permission = entry.permission
            names = (
                [p.value for p in permission]
                if isinstance(permission, tuple)
                else ([permission.value] if permission is not None else [])
            )
            operation["x-required-permissions"] = names
            if entry.token_required:
                operation["security"] = [{"bearerAuth": []}]
            if names:
                needs = " or ".join(names)
                operation["description"] = (
                    operation.get("description", "") + f"\n\nRequires the **{needs}** permission."
                ).strip()
        _exact_integer_bounds(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


_DESCRIPTION = """\
The REST front of Lodestar: text generation (JSON or Server-Sent Events),
vectors and collections (by vector or by text), snapshots, analytics and health.

Every route but the liveness probe takes a bearer JWT; each names the
permission it needs. Errors share one body, `ErrorBody`: `{"error": {"code",
"message", "details": {"reason", "field_violations", ...}, "request_id"}}`
(the OpenAI-compatible routes answer in OpenAI's shape). `X-Request-Timeout`
(e.g. `2.5s`) shortens a request's deadline.
"""


def create_app(
    settings: GatewaySettings | None = None, flows: FlowsSettings | None = None
) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = build_gateway(settings, flows)
        app.state.gateway = gateway
        if (
            not settings.jwt_jwks_url
            and settings.jwt_signing_key.get_secret_value() == DEVELOPMENT_SIGNING_KEY
        ):
            _log.warning(
                "tokens are verified with the public development key; "
                "set LODESTAR_GATEWAY_JWT_JWKS_URL (or JWT_SIGNING_KEY) outside development"
            )
        try:
            if gateway.flows is not None:
                gateway.flows.start()
            if gateway.documents is not None:
                gateway.documents.start()
            async with mcp.lifespan() if mcp is not None else contextlib.nullcontext():
                yield
        finally:
            await gateway.close()

    app = FastAPI(
        title="Lodestar",
        version=VERSION,
        description=_DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    routers = [*API_ROUTERS, *ROOT_ROUTERS]
    if flows is not None:
        routers += [*FLOWS_ROUTERS, openai_router]
    for router in routers:
        # Every route documents the errors it can answer, in its API's shape.
        body = OpenAIErrorBody if issubclass(router.route_class, OpenAIRoute) else ErrorBody
        app.include_router(router, responses=error_responses(body))
    app.state.routers = routers
    mcp: McpEndpoint | None = None
    if flows is not None:
        route, mcp = mcp_route()
        app.router.routes.append(route)
    install_console(app, docs=settings.docs_enabled)
    _install_openapi_security(app)
    app.add_middleware(
        GatewayMiddleware,  # type: ignore[arg-type]
        max_body_bytes=settings.max_body_bytes,
        access_log=settings.access_log,
    )
    if flows is not None:
        # Outermost, so that it sees every final status and a stream's whole time.
        app.add_middleware(
            UsageMiddleware,  # type: ignore[arg-type]
            recorder=_usage_recorder(app),
            excluded=frozenset(flows.usage_excluded_routes),
        )
    return app


def _usage_recorder(app: FastAPI) -> Callable[[Scope], UsageRecorder | None]:
    def recorder(scope: Scope) -> UsageRecorder | None:
        gateway: Gateway | None = getattr(app.state, "gateway", None)
        if gateway is None or gateway.flows is None:
            return None
        return gateway.flows.usage

    return recorder
