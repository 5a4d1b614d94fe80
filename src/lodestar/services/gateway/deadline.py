"""A request's deadline and the options every backend call made for it carries.

The deadline starts at the route class's default, shortened (never lengthened) by
the client's ``X-Request-Timeout`` or ``grpc-timeout`` header; each backend call
gets what is left of it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from lodestar.auth.rpc import AUTHORIZATION_METADATA
from lodestar.runtime.context import REQUEST_ID_HEADER
from lodestar.runtime.errors import DeadlineExceeded, InvalidArgument

Metadata = tuple[tuple[str, str], ...]

_GRPC_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_GRPC_TIMEOUT_UNIT_S = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_SECONDS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")


def parse_timeout_header(name: str, value: str) -> float:
    """Seconds in an ``X-Request-Timeout`` (``2.5``, ``2.5s``, ``500ms``) or a
    ``grpc-timeout`` (``500m``, ``2S``) header."""
    if name == "grpc-timeout":
        match = _GRPC_TIMEOUT.match(value.strip())
        if match is not None:
            return int(match.group(1)) * _GRPC_TIMEOUT_UNIT_S[match.group(2)]
    else:
        match = _SECONDS.match(value)
        if match is not None:
            return float(match.group(1)) * (0.001 if match.group(2) == "ms" else 1.0)
    raise InvalidArgument(
        f"header {name} must be a positive duration such as 2.5, 2.5s or 500ms"
        if name != "grpc-timeout"
        else "header grpc-timeout must be digits and a unit (H, M, S, m, u, n), e.g. 500m",
        field=name,
        reason="BAD_TIMEOUT_HEADER",
    )


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a request's work must be done (monotonic clock)."""

    expires_at: float
    # The client asked for less than the route's default: running out of
    # time then says nothing about the backend's health.
    shortened: bool = False

    @classmethod
    def after(cls, default_s: float, client_s: float | None = None) -> Deadline:
        now = time.monotonic()
        if client_s is not None and client_s < default_s:
            return cls(now + client_s, True)
        return cls(now + default_s, False)

    def remaining(self) -> float:
        return self.expires_at - time.monotonic()

    def timeout(self, backend: str) -> float:
        remaining = self.expires_at - time.monotonic()
        if remaining <= 0.0005:
            raise DeadlineExceeded(
                f"the request's deadline passed before the {backend} service could be called",
                reason="DEADLINE_EXCEEDED",
            )
        return remaining


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Per-request settings of every backend call: deadline and metadata."""

    deadline: Deadline
    metadata: Metadata = ()

    @classmethod
    def for_request(cls, deadline: Deadline, request_id: str, token: str = "") -> CallOptions:
        """Options of the backend calls made for one request: its id, and the
        caller's bearer token, which the services verify (``gateway.identity``)."""
        metadata: Metadata = ((REQUEST_ID_HEADER, request_id),) if request_id else ()
        if token:
            metadata += ((AUTHORIZATION_METADATA, f"Bearer {token}"),)
        return cls(deadline, metadata)

    def as_gateway(self) -> CallOptions:
        """These options without the caller's token: for what the gateway does on its
        own authority once it has checked the caller (``identity.GatewayIdentity``)."""
        kept = tuple(item for item in self.metadata if item[0] != AUTHORIZATION_METADATA)
        return CallOptions(self.deadline, kept)
