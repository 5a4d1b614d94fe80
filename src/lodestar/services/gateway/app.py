"""The gateway application factory: ``create_app(settings) -> FastAPI``.

Everything with a lifetime (gRPC channels, the rate-limit store, the token
verifier) is built in the app's lifespan, so one process can run several
independent gateway apps (as the tests do) and nothing lives in module
globals.

Extensions add routers and generation stages without editing this module::

    create_app(settings, extensions=[Extension("flows", routers=[feedback.router],
                                                on_start=install_stages)])
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter, iter_route_contexts

from lodestar.services.gateway.auth import Permission, TokenVerifier
from lodestar.services.gateway.backends import Backends
from lodestar.services.gateway.deps import Gateway
from lodestar.services.gateway.direct import DirectRoutes
from lodestar.services.gateway.errors import install_error_handlers
from lodestar.services.gateway.middleware import GatewayMiddleware
from lodestar.services.gateway.pipeline import GeneratePipeline
from lodestar.services.gateway.ratelimit import RouteClass, create_rate_limiter
from lodestar.services.gateway.routes import API_ROUTERS, ROOT_ROUTERS, system
from lodestar.services.gateway.settings import DEVELOPMENT_SIGNING_KEY, GatewaySettings

_log = logging.getLogger(__name__)

VERSION = "0.1.0"


@dataclass(frozen=True)
class Extension:
    """Routes and startup work added to the gateway by another package."""

    name: str
    # Routers with full paths (``routes.base.api_router`` adds /api/v1).
    routers: Sequence[APIRouter] = ()
    # Called once the gateway is built (e.g. to add generation stages).
    on_start: Callable[[Gateway], Awaitable[None]] | None = None
    on_stop: Callable[[Gateway], Awaitable[None]] | None = None


def build_gateway(settings: GatewaySettings) -> Gateway:
    return Gateway(
        settings=settings,
        backends=Backends(settings),
        verifier=TokenVerifier(settings),
        limiter=create_rate_limiter(
            settings.redis_url,
            settings.redis_key_prefix,
            settings.requests_per_minute,
            settings.generated_tokens_per_minute,
            settings.rate_limit_window_s,
        ),
        pipeline=GeneratePipeline(),
    )


async def close_gateway(gateway: Gateway) -> None:
    await gateway.backends.close()
    await gateway.limiter.close()


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
    """What each API route needs: the permission matrix, read from the routes."""
    settings: GatewaySettings = app.state.settings
    out: list[RouteSecurity] = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute):
            continue
        declared: tuple[Any, Any] | None = None
        for dependency in route.dependant.dependencies:
            if hasattr(dependency.call, "route_class"):
                declared = (dependency.call.permission, dependency.call.route_class)  # type: ignore[union-attr]
        for method in sorted(route.methods or ()):
            if declared is not None:
                out.append(RouteSecurity(method, route.path, declared[0], declared[1], True))
            elif route.endpoint in _HANDLER_PERMISSIONS:
                required = route.endpoint is not system.health and not (
                    route.endpoint is system.metrics and settings.metrics_public
                )
                out.append(
                    RouteSecurity(
                        method, route.path, _HANDLER_PERMISSIONS[route.endpoint], None, required
                    )
                )
    return out


def _install_openapi_security(app: FastAPI) -> None:
    """Bearer auth in the OpenAPI document, and each operation's permission."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

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
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


_DESCRIPTION = """\
The REST front of Lodestar: text generation (JSON or Server-Sent Events),
vectors and collections (by vector or by text), snapshots, analytics and health.

Every route but the liveness probe takes a bearer JWT; each names the
permission it needs. Errors share one body: `{"error": {"code", "message",
"details", "request_id"}}`. `X-Request-Timeout` (e.g. `2.5s`) shortens a
request's deadline.
"""


def create_app(
    settings: GatewaySettings | None = None, *, extensions: Sequence[Extension] = ()
) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = build_gateway(settings)
        app.state.gateway = gateway
        if (
            not settings.jwt_jwks_url
            and settings.jwt_signing_key.get_secret_value() == DEVELOPMENT_SIGNING_KEY
        ):
            _log.warning(
                "tokens are verified with the public development key; "
                "set LODESTAR_GATEWAY_JWT_JWKS_URL (or JWT_SIGNING_KEY) outside development"
            )
        started: list[Extension] = []
        try:
            for extension in extensions:
                if extension.on_start is not None:
                    await extension.on_start(gateway)
                started.append(extension)
            yield
        finally:
            for extension in reversed(started):
                if extension.on_stop is not None:
                    await extension.on_stop(gateway)
            await close_gateway(gateway)

    app = FastAPI(
        title="Lodestar",
        version=VERSION,
        description=_DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    for router in [*API_ROUTERS, *ROOT_ROUTERS]:
        app.include_router(router)
    for extension in extensions:
        for router in extension.routers:
            app.include_router(router)
    _install_openapi_security(app)
    # Inside GatewayMiddleware (added after it, so nearer the routes).
    app.add_middleware(
        DirectRoutes,  # type: ignore[arg-type]
        fastapi_app=app,
        enabled=settings.direct_routes,
    )
    app.add_middleware(
        GatewayMiddleware,  # type: ignore[arg-type]
        max_body_bytes=settings.max_body_bytes,
        access_log=settings.access_log,
    )
    return app
