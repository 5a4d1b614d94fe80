"""``Call``: one authorised request, as the routes and generation stages see it.

A call carries what handling the request needs (the principal, the options for
backend calls, the backends, the rate limiter and the settings) but not the
application-wide ``Gateway`` itself, so that the generation pipeline, whose
stages take calls, sits below the gateway object that holds the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from lodestar.runtime.errors import PermissionDenied
from lodestar.services.gateway.backends import Backends
from lodestar.services.gateway.deadline import CallOptions
from lodestar.services.gateway.permissions import Permission, Principal, missing_permission
from lodestar.services.gateway.ratelimit import RateLimiter
from lodestar.services.gateway.settings import GatewaySettings


@dataclass(slots=True)
class Call:
    """Who calls, and how to call the backends for them."""

    principal: Principal
    options: CallOptions
    request: Request
    settings: GatewaySettings
    backends: Backends
    limiter: RateLimiter

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
