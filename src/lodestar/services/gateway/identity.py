"""Who the services are told calls them: the caller's own token, forwarded.

Every backend call made for a REST request carries the caller's bearer token in
its ``authorization`` metadata (``deadline.CallOptions.for_request``), and the
services verify it with the platform's one verifier and enforce the same
permissions, tenant and allow-list (``auth.rpc``). That design, rather than a
service token plus the verified principal in signed metadata, because:

- the answer is the same by construction: the service sees exactly the token a
  direct caller would send, so a request through the gateway and the same calls
  made directly are judged alike, with no second encoding of a principal to keep
  in step;
- a compromised or confused gateway cannot speak for anyone it has no token of:
  a service token able to assert any principal would be a master key, and signed
  principal metadata a second signing secret to distribute and rotate;
- the token's own expiry bounds every forwarded call, and the services need
  nothing the gateway does not already have (the same keys, or JWKS URL).

Calls the gateway makes on its own authority, where a REST route grants more
than the RPC's permission, carry its own token instead (``GatewayIdentity``,
``CallOptions.as_gateway``), with the caller's tenant still set on the request:
usage records, written in the background for no caller; the collection a
generation stores its interaction in, created on first use for a caller who may
store (InsertVectors) but not manage collections; the score ``POST /feedback``
(GenerateText) writes on an interaction; and the flows' private stores (the
conversations and memory, the semantic cache, experiments' answers), which the
gateway reads and writes for a caller only after confining every call to what
that caller may see (their subject and tenant), and which no raw route may
name. The token is read from
``service_token_file`` (issued by your identity provider, re-read when it
changes) or, with the development HS256 key and no JWKS URL, signed by the
gateway itself. It needs AdministerSystem (RecordUsage), ManageCollections
(CreateCollection), and for the private stores SearchVectors, InsertVectors,
UpdateVectors and DeleteVectors.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lodestar.auth.permissions import Permission
from lodestar.auth.rpc import AUTHORIZATION_METADATA
from lodestar.auth.tokens import mint_token
from lodestar.services.gateway.deadline import Metadata
from lodestar.services.gateway.settings import GatewaySettings

_log = logging.getLogger(__name__)

SUBJECT = "lodestar-gateway"
# What the gateway does on its own authority needs these (see the module docstring).
OWN_PERMISSIONS = (
    Permission.ADMINISTER_SYSTEM,
    Permission.MANAGE_COLLECTIONS,
    Permission.SEARCH_VECTORS,
    Permission.INSERT_VECTORS,
    Permission.UPDATE_VECTORS,
    Permission.DELETE_VECTORS,
)
# A signed token lives this long and is signed again when less than a tenth is left.
_OWN_TOKEN_TTL_S = 3600.0


class GatewayIdentity:
    """The metadata of the gateway's own calls (empty: it has no token)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        self._file: Path | None = settings.service_token_file
        self._token = ""
        self._expires = 0.0
        self._stamp: tuple[int, int] | None = None

    def metadata(self) -> Metadata:
        token = self._from_file() if self._file is not None else self._signed()
        return ((AUTHORIZATION_METADATA, f"Bearer {token}"),) if token else ()

    def _from_file(self) -> str:
        assert self._file is not None
        try:
            stat = self._file.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                self._token = self._file.read_text().strip()
                self._stamp = stamp
        except OSError as error:
            _log.warning("gateway service token %s unreadable: %s", self._file, error)
        return self._token

    def _signed(self) -> str:
        if self._settings.jwt_jwks_url:
            return ""
        now = time.time()
        if now > self._expires - _OWN_TOKEN_TTL_S / 10:
            self._token = mint_token(
                self._settings,
                SUBJECT,
                (),
                _OWN_TOKEN_TTL_S,
                permissions=[p.value for p in OWN_PERMISSIONS],
                now=now,
            )
            self._expires = now + _OWN_TOKEN_TTL_S
        return self._token
