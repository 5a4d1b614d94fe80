"""Route dependencies: authentication, permission, rate limit and deadline.

Every protected route declares what it needs next to its definition::

    @router.post("/vectors/search")
    async def search(
        body: SearchRequest,
        call: Call = Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ)),
    ) -> Response: ...

``require`` authenticates the bearer token (401), checks the permission (403
naming it), takes one request from the subject's budget for the route class
(429) and starts the request's deadline (the route class's default, shortened
by an ``X-Request-Timeout`` or ``grpc-timeout`` header). The route gets a
``Call`` with the principal, the backends and the options for backend calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from lodestar.runtime.context import current_request_id
from lodestar.runtime.errors import PermissionDenied, Unauthenticated
from lodestar.services.gateway.auth import Permission, Principal, TokenVerifier
from lodestar.services.gateway.middleware import STATE_RATE_LIMIT, STATE_SUBJECT
from lodestar.services.gateway.ratelimit import RateLimiter, RouteClass
from lodestar.services.gateway.resilience import CallOptions, Deadline, parse_timeout_header

if TYPE_CHECKING:
    from lodestar.services.gateway.backends import Backends
    from lodestar.services.gateway.pipeline import GeneratePipeline
    from lodestar.services.gateway.settings import GatewaySettings


@dataclass(eq=False)
class Gateway:
    """What the running gateway is made of (one per app, built at startup)."""

    settings: GatewaySettings
    backends: Backends
    verifier: TokenVerifier
    limiter: RateLimiter
    pipeline: GeneratePipeline
    # Anything an extension wants to keep for the app's lifetime.
    extensions: dict[str, Any] = field(default_factory=dict)


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


@dataclass(slots=True)
class Call:
    """One authorised request: who calls, and how to call the backends for it."""

    gateway: Gateway
    principal: Principal
    options: CallOptions
    request: Request

    @property
    def backends(self) -> Backends:
        return self.gateway.backends

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    def require(self, permission: Permission) -> None:
        """For routes whose needs depend on the request (e.g. batch operations)."""
        if not self.principal.has(permission):
            raise missing_permission(permission)

    def collection(self, name: str) -> str:
        """``name``, if the token's collection allow-list permits it (else 403)."""
        if not self.principal.may_use_collection(name):
            raise PermissionDenied(
                f"this token may not use collection {name!r}",
                reason="COLLECTION_NOT_ALLOWED",
                metadata={"collection": name},
            )
        return name

    def whole_collection(self, action: str) -> None:
        """Refuse collection-wide actions to tenant-scoped tokens: they would
        touch or expose other tenants' points."""
        if self.principal.tenant:
            raise PermissionDenied(
                f"a tenant-scoped token cannot {action}; it would affect other tenants' points",
                reason="TENANT_SCOPED_TOKEN",
                metadata={"tenant": self.principal.tenant},
            )


def missing_permission(permission: Permission) -> PermissionDenied:
    return PermissionDenied(
        f"this request needs the {permission} permission",
        reason="MISSING_PERMISSION",
        metadata={"permission": permission.value},
    )


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "the Authorization header must be 'Bearer <token>'", reason="MALFORMED_AUTHORIZATION"
        )
    return token.strip()


async def authenticate(request: Request, gateway: Gateway) -> Principal:
    token = bearer_token(request)
    if token is None:
        raise Unauthenticated("a bearer token is required", reason="MISSING_TOKEN")
    principal = await gateway.verifier.verify(token)
    request.scope.setdefault("state", {})[STATE_SUBJECT] = principal.subject
    return principal


def client_timeout(request: Request) -> float | None:
    headers = request.headers
    value = headers.get("x-request-timeout")
    if value is not None:
        return parse_timeout_header("X-Request-Timeout", value)
    value = headers.get("grpc-timeout")
    if value is not None:
        return parse_timeout_header("grpc-timeout", value)
    return None


def require(
    permission: Permission | tuple[Permission, ...] | None,
    route_class: RouteClass | None,
) -> Callable[[Request], Awaitable[Call]]:
    """The dependency of a route needing ``permission`` (a tuple: at least one
    of them, the route checking the rest; None: any valid token), rate-limited
    and timed as ``route_class`` (None: not rate-limited, read deadline)."""
    any_of = permission if isinstance(permission, tuple) else None
    single = permission if isinstance(permission, Permission) else None

    async def dependency(request: Request) -> Call:
        gateway = gateway_of(request)
        principal = await authenticate(request, gateway)
        if any_of is not None:
            if not any(principal.has(p) for p in any_of):
                raise PermissionDenied(
                    "this request needs one of the "
                    + ", ".join(p.value for p in any_of)
                    + " permissions",
                    reason="MISSING_PERMISSION",
                    metadata={"permission": "|".join(p.value for p in any_of)},
                )
        elif single is not None and not principal.has(single):
            raise missing_permission(single)
        if route_class is not None:
            decision = await gateway.limiter.check_request(principal.subject, route_class)
            if decision is not None:
                request.scope.setdefault("state", {})[STATE_RATE_LIMIT] = decision
        deadline = Deadline.after(
            gateway.settings.deadline_for(route_class or RouteClass.READ), client_timeout(request)
        )
        return Call(
            gateway, principal, CallOptions.for_request(deadline, current_request_id()), request
        )

    # Read back by the OpenAPI document and the permission tests.
    dependency.permission = permission  # type: ignore[attr-defined]
    dependency.route_class = route_class  # type: ignore[attr-defined]
    return dependency
