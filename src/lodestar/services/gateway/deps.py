"""Route dependencies: authentication, permission, rate limit and deadline.

Every protected route declares what it needs next to its definition::

    @router.post("/vectors/search")
    async def search(
        body: SearchRequest,
        call: Annotated[Call, Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ))],
    ) -> Response: ...

``require`` authenticates the bearer token (401), checks the permission (403
naming it), takes one request from the subject's budget for the route class
(429) and starts the request's deadline (the route class's default, shortened
by an ``X-Request-Timeout`` or ``grpc-timeout`` header). The route gets a
``Call`` with the principal, the backends and the options for backend calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from lodestar.auth.permissions import Permission, Principal, missing_permission
from lodestar.runtime.context import current_request_id
from lodestar.runtime.errors import PermissionDenied, Unauthenticated
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.context import Gateway, gateway_of
from lodestar.services.gateway.deadline import CallOptions, Deadline, parse_timeout_header
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.state import STATE_RATE_LIMIT, STATE_SUBJECT, request_state


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
    request_state(request.scope)[STATE_SUBJECT] = principal.subject
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


@dataclass(frozen=True, slots=True)
class Requirement:
    """The dependency of a route needing ``permission`` (a tuple: at least one
    of them, the route checking the rest; None: any valid token), rate-limited
    and timed as ``route_class`` (None: not rate-limited, read deadline). The
    OpenAPI document and the permission tests read both back from the route."""

    permission: Permission | tuple[Permission, ...] | None
    route_class: RouteClass | None

    async def __call__(self, request: Request) -> Call:
        gateway = gateway_of(request)
        principal = await authenticate(request, gateway)
        permission = self.permission
        if isinstance(permission, tuple):
            if not any(principal.has(p) for p in permission):
                raise PermissionDenied(
                    "this request needs one of the "
                    + ", ".join(p.value for p in permission)
                    + " permissions",
                    reason="MISSING_PERMISSION",
                    metadata={"permission": "|".join(p.value for p in permission)},
                )
        elif permission is not None and not principal.has(permission):
            raise missing_permission(permission)
        if self.route_class is not None:
            decision = await gateway.limiter.check_request(principal.subject, self.route_class)
            if decision is not None:
                request_state(request.scope)[STATE_RATE_LIMIT] = decision
        settings = gateway.settings
        deadline = Deadline.after(
            settings.deadline_for(self.route_class or RouteClass.READ), client_timeout(request)
        )
        return Call(
            principal,
            # The services check the caller's own token (``gateway.identity``).
            CallOptions.for_request(deadline, current_request_id(), bearer_token(request) or ""),
            request,
            settings,
            gateway.backends,
            gateway.limiter,
            gateway.flows.reserved_collections if gateway.flows is not None else frozenset(),
        )


def require(
    permission: Permission | tuple[Permission, ...] | None, route_class: RouteClass | None
) -> Requirement:
    return Requirement(permission, route_class)


def flows_of(request: Request) -> FlowsRuntime:
    """The flows of the app serving ``request``; the routes that depend on
    this are mounted only on apps that have flows."""
    flows = gateway_of(request).flows
    if flows is None:
        raise RuntimeError("a flows route is mounted on a gateway without flows")
    return flows
