"""``GET /api/v1/me``: what the caller's token is and may do.

The console reads it to show only the controls the token may use; the API
still checks every request on its own, so this is a convenience, not a gate.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from pydantic import Field
from starlette.responses import Response

from lodestar.services.gateway.call import Call
from lodestar.services.gateway.deps import require
from lodestar.services.gateway.responses import respond
from lodestar.services.gateway.routes.base import api_router
from lodestar.services.gateway.schemas.common import ResponseModel

router = api_router("identity")


class Me(ResponseModel):
    subject: str
    roles: list[str]
    permissions: list[str] = Field(description="Sorted; the roles' and the explicit ones.")
    tenant: str = Field("", description="Empty: not confined to a tenant.")
    collections: list[str] | None = Field(
        None, description="Allowed collection patterns (shell wildcards); null: every one."
    )


@router.get("/me", response_model=Me, summary="The caller's identity and permissions")
async def me(call: Annotated[Call, Depends(require(None, None))]) -> Response:
    """Any valid token may read its own subject, roles, permissions, tenant and
    collection allow-list."""
    principal = call.principal
    return respond(
        Me(
            subject=principal.subject,
            roles=list(principal.roles),
            permissions=sorted(p.value for p in principal.permissions),
            tenant=principal.tenant,
            collections=list(principal.collections) if principal.collections is not None else None,
        )
    )
