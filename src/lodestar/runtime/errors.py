"""Domain errors and their one mapping to canonical gRPC status codes.

Engines raise these; the error interceptor turns them into a gRPC status with
``google.rpc.Status`` details (``ErrorInfo`` with an UPPER_SNAKE reason, and
``BadRequest`` naming the offending field). Clients decode them back with
``ErrorDetails.from_rpc_error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "lodestar"


class LodestarError(Exception):
    """Base of every error that reaches a client with its own status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.field = field
        self.metadata = dict(metadata or {})
        self.retry_after_s = retry_after_s


class InvalidArgument(LodestarError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(LodestarError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(LodestarError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(LodestarError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class OutOfRange(LodestarError):
    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"


class ResourceExhausted(LodestarError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(LodestarError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(LodestarError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Cancelled(LodestarError):
    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"


class Aborted(LodestarError):
    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class PermissionDenied(LodestarError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(LodestarError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class Internal(LodestarError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_grpc_status(error: LodestarError) -> grpc.Status:
    """The gRPC status (with rich details) a domain error is sent as."""
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
            )
        )
    ]
    if error.field:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=error.field, description=error.message
                        )
                    ]
                )
            )
        )
    if error.retry_after_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(int(error.retry_after_s * 1000))
        details.append(_pack(retry))
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=details)
    result: grpc.Status = rpc_status.to_status(status)
    return result


@dataclass(frozen=True)
class ErrorDetails:
    """A decoded gRPC error: what a client (such as the gateway) shows to people."""

    code: grpc.StatusCode
    message: str
    reason: str
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after_s: float | None = None

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ErrorDetails:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = (error.details() if hasattr(error, "details") else None) or code.name
        reason = code.name
        violations: list[tuple[str, str]] = []
        metadata: dict[str, str] = {}
        retry_after: float | None = None
        status = _status_from_error(error)
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason or reason
                    metadata = dict(info.metadata)
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    violations = [(v.field, v.description) for v in bad.field_violations]
                elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    retry = error_details_pb2.RetryInfo()
                    detail.Unpack(retry)
                    retry_after = retry.retry_delay.ToMilliseconds() / 1000
        return cls(code, message, reason, violations, metadata, retry_after)


def _status_from_error(error: grpc.RpcError) -> status_pb2.Status | None:
    trailing: Any = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in tuple(trailing or ()):
        if key == rpc_status.GRPC_DETAILS_METADATA_KEY:
            status = status_pb2.Status()
            status.MergeFromString(value)
            return status
    return None


# The HTTP status each gRPC code maps to (google/rpc/code.proto's HTTP mapping).
HTTP_STATUS_BY_GRPC_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

assert len(HTTP_STATUS_BY_GRPC_CODE) == len(code_pb2.Code.keys())


def http_status_for(code: grpc.StatusCode) -> int:
    return HTTP_STATUS_BY_GRPC_CODE.get(code, 500)
