"""The platform's permissions, roles and principal, as the gateway's routes name them.

They live in ``lodestar.auth.permissions``, shared with the gRPC services, which
enforce the same permissions per RPC; this module is the gateway's name for them.
"""

from lodestar.auth.permissions import (
    DEFAULT_ROLES,
    Permission,
    Principal,
    missing_permission,
    permissions_for,
)

__all__ = ["DEFAULT_ROLES", "Permission", "Principal", "missing_permission", "permissions_for"]
