"""Permissions, roles and the principal: who may do what.

A leaf shared by the gateway and the gRPC services: it imports nothing from
either, so that the token verifier, the settings (whose role table defaults to
``DEFAULT_ROLES``), the gateway's routes and the services' RPC table can all
depend on it without depending on each other.

Permissions are the platform's units of authority; roles are named sets of
them, configured by ``LODESTAR_ROLES``. The defaults:

============  =================================================================
role          permissions
============  =================================================================
viewer        SearchVectors, HealthCheck
user          viewer + GenerateText, InsertVectors
editor        user + UpdateVectors, DeleteVectors
operator      editor + ManageCollections, CreateSnapshots, ViewMetrics,
              ViewAnalytics
admin         every permission, AdministerSystem included
============  =================================================================
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from lodestar.runtime.errors import PermissionDenied


class Permission(StrEnum):
    """What a route needs; names as in the product specification."""

    GENERATE_TEXT = "GenerateText"
    HEALTH_CHECK = "HealthCheck"
    VIEW_METRICS = "ViewMetrics"
    INSERT_VECTORS = "InsertVectors"
    SEARCH_VECTORS = "SearchVectors"
    UPDATE_VECTORS = "UpdateVectors"
    DELETE_VECTORS = "DeleteVectors"
    MANAGE_COLLECTIONS = "ManageCollections"
    CREATE_SNAPSHOTS = "CreateSnapshots"
    VIEW_ANALYTICS = "ViewAnalytics"
    ADMINISTER_SYSTEM = "AdministerSystem"


def _default_roles() -> dict[str, frozenset[Permission]]:
    p = Permission
    viewer = frozenset({p.SEARCH_VECTORS, p.HEALTH_CHECK})
    user = viewer | {p.GENERATE_TEXT, p.INSERT_VECTORS}
    editor = user | {p.UPDATE_VECTORS, p.DELETE_VECTORS}
    operator = editor | {p.MANAGE_COLLECTIONS, p.CREATE_SNAPSHOTS, p.VIEW_METRICS, p.VIEW_ANALYTICS}
    admin = frozenset(Permission)
    return {"viewer": viewer, "user": user, "editor": editor, "operator": operator, "admin": admin}


DEFAULT_ROLES: Mapping[str, frozenset[Permission]] = _default_roles()

_PERMISSION_BY_NAME = {p.value: p for p in Permission}


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request."""

    subject: str
    roles: tuple[str, ...]
    permissions: frozenset[Permission]
    # Empty: not confined to a tenant.
    tenant: str = ""
    # None: every collection is allowed.
    collections: tuple[str, ...] | None = None
    expires_at: float = float("inf")
    not_before: float = 0.0

    def has(self, permission: Permission) -> bool:
        return permission in self.permissions

    def may_use_collection(self, name: str) -> bool:
        if self.collections is None:
            return True
        return matches_collection_patterns(name, self.collections)


def matches_collection_patterns(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` matches one of ``patterns`` (shell-style, case-sensitive): how
    a token's collections claim is read wherever collections are filtered by it."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def permissions_for(
    roles: Iterable[str],
    extra: Iterable[str],
    role_table: Mapping[str, Iterable[Permission]],
) -> frozenset[Permission]:
    """The union of the roles' permissions and the explicitly granted ones."""
    granted: set[Permission] = set()
    for role in roles:
        granted.update(role_table.get(role, ()))
    for name in extra:
        permission = _PERMISSION_BY_NAME.get(name)
        if permission is not None:
            granted.add(permission)
    return frozenset(granted)


def missing_permission(permission: Permission) -> PermissionDenied:
    """The 403 of a request whose principal lacks ``permission``."""
    return PermissionDenied(
        f"this request needs the {permission} permission",
        reason="MISSING_PERMISSION",
        metadata={"permission": permission.value},
    )
