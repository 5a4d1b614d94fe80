"""The errors of backend calls as clients see them: a service's own errors pass
through, transport failures name the backend and leak nothing of its internals."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_status import rpc_status

from lodestar.runtime.errors import ErrorDetails, LodestarError, Unavailable

_log = logging.getLogger(__name__)


class BackendError(LodestarError):
    """A backend's gRPC error, as the gateway passes it on."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str,
        field_violations: Sequence[tuple[str, str]] = (),
        metadata: dict[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        first_field = field_violations[0][0] if field_violations else None
        super().__init__(
            message,
            reason=reason,
            field=first_field,
            metadata=metadata,
            retry_after_s=retry_after_s,
        )
        self.code = code
        self.field_violations = list(field_violations)


class AllReplicasUnavailable(Unavailable):
    """Every replica's breaker is open: 503 at once, with Retry-After."""


# A backend that could not be reached (restarting, say) is worth trying again this
# soon: clients, writes above all, are told when in a Retry-After.
UNREACHABLE_RETRY_AFTER_S = 1.0

_TRANSPORT_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "the {backend} service is unavailable; retry shortly",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the {backend} service did not answer within the deadline",
    grpc.StatusCode.CANCELLED: "the call to the {backend} service was cancelled",
}


def _has_rich_status(error: grpc.RpcError) -> bool:
    trailing: Any = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    return any(item[0] == rpc_status.GRPC_DETAILS_METADATA_KEY for item in trailing or ())


def backend_error(backend: str, error: grpc.RpcError) -> BackendError:
    """The error a client sees for a failed backend call.

    Errors a service raised on purpose (they carry google.rpc details) pass
    through with their message, reason and field. Transport failures and bare
    internal errors get a message that names the backend but leaks nothing of
    its internals (addresses, stack traces); an unreachable backend's 503 says
    when to retry (``UNREACHABLE_RETRY_AFTER_S``).
    """
    details = ErrorDetails.from_rpc_error(error)
    code = details.code
    if _has_rich_status(error) and code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return BackendError(
            code,
            details.message,
            reason=details.reason,
            field_violations=details.field_violations,
            metadata=details.metadata,
            retry_after_s=details.retry_after_s,
        )
    retry_after_s = details.retry_after_s
    if code is grpc.StatusCode.UNAVAILABLE and retry_after_s is None:
        retry_after_s = UNREACHABLE_RETRY_AFTER_S
    template = _TRANSPORT_MESSAGES.get(code)
    if template is not None:
        message = template.format(backend=backend)
        reason = "BACKEND_" + code.name
    elif code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS):
        _log.error("%s service internal error: %s", backend, details.message)
        message = f"the {backend} service failed; the error has been logged"
        reason = "BACKEND_INTERNAL"
        code = grpc.StatusCode.INTERNAL
    else:
        message, reason = details.message, details.reason
    return BackendError(
        code,
        message,
        reason=reason,
        field_violations=details.field_violations,
        metadata={"backend": backend},
        retry_after_s=retry_after_s,
    )
