"""``Call``: one authorised request, as the routes and generation stages see it.

A call carries what handling the request needs (the principal, the options for
backend calls, the backends, the rate limiter and the settings) but not the
application-wide ``Gateway`` itself, so that the generation pipeline, whose
stages take calls, sits below the gateway object that holds the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from lodestar.auth.permissions import Permission, Principal, missing_permission
from lodestar.runtime.errors import PermissionDenied
from lodestar.services.gateway.backends import Backends
from lodestar.services.gateway.deadline import CallOptions
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
    # Collections that hold subjects' private data (conversations and memory):
    # only flows reach them, each confined to the caller's own points.
    reserved: frozenset[str] = field(default_factory=frozenset)

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    def require(self, permission: Permission) -> None:
        """For routes whose needs depend on the request (e.g. batch operations)."""
        if not self.principal.has(permission):
            raise missing_permission(permission)

    def _reserved(self, name: str) -> bool:
        # AdministerSystem (the admin role) may read them raw, e.g. to answer a
        # data-protection request; ManageCollections does not suffice, since
        # running collections is no reason to read people's conversations.
        return name in self.reserved and not self.principal.has(Permission.ADMINISTER_SYSTEM)

    def may_use_collection(self, name: str) -> bool:
        """Whether ``collection(name)`` would allow it (for listings)."""
        return not self._reserved(name) and self.principal.may_use_collection(name)

    def collection(self, name: str) -> str:
        """``name``, if the caller may use it directly (else 403): it is in the
        token's collection allow-list and not reserved, or the caller has
        AdministerSystem. Every route that names a collection checks this, so
        no raw route (points, search, clustering, snapshots, RAG sources)
        reaches another subject's conversations or memory."""
        if self._reserved(name):
            raise PermissionDenied(
                f"collection {name!r} holds subjects' private conversations and memory; "
                "use /api/v1/conversations and /api/v1/memory (reading it directly needs "
                f"the {Permission.ADMINISTER_SYSTEM} permission)",
                reason="COLLECTION_RESERVED",
                metadata={"collection": name},
            )
        if not self.principal.may_use_collection(name):
            raise PermissionDenied(
                f"this token may not use collection {name!r}",
                reason="COLLECTION_NOT_ALLOWED",
                metadata={"collection": name},
            )
        return name

    def flow_collection(self, name: str) -> str:
        """``name`` for a flow that reads and writes in it only what the caller
        may see (their own interactions, or shared ones by id): a reserved
        collection is allowed whatever the token's allow-list, any other must
        pass ``collection``."""
        return name if name in self.reserved else self.collection(name)

    def flow_options(self, name: str) -> CallOptions:
        """The options of a flow's call on collection ``name``: a reserved one is
        the flows' private store, reached on the gateway's own authority once the
        flow has confined the call to what the caller may see (``identity``)."""
        return self.options.as_gateway() if name in self.reserved else self.options

    def whole_collection(self, action: str) -> None:
        """Refuse collection-wide actions to tenant-scoped tokens: they would
        touch or expose other tenants' points."""
        if self.principal.tenant:
            raise PermissionDenied(
                f"a tenant-scoped token cannot {action}; it would affect other tenants' points",
                reason="TENANT_SCOPED_TOKEN",
                metadata={"tenant": self.principal.tenant},
            )
