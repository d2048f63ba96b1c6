"""agentflux's exception tree; each error carries the gRPC status it maps to.

    FluxError                       INTERNAL
    ├── InvalidArgument             INVALID_ARGUMENT (+ google.rpc.BadRequest field violations)
    │   └── ContextValueError       a malformed context value (metadata key or header)
    ├── Unauthenticated             UNAUTHENTICATED
    ├── PermissionDenied            PERMISSION_DENIED
    ├── NotFound                    NOT_FOUND (also another tenant's resource: no existence leak)
    ├── AlreadyExists               ALREADY_EXISTS
    ├── FailedPrecondition          FAILED_PRECONDITION
    ├── ResourceExhausted           RESOURCE_EXHAUSTED (+ google.rpc.RetryInfo when retry_after)
    ├── DeadlineExceeded            DEADLINE_EXCEEDED
    └── Unavailable                 UNAVAILABLE (+ RetryInfo)

The gRPC server interceptor turns any `FluxError` into its status with
`google.rpc.Status` details (ErrorInfo always), and anything else into INTERNAL
without leaking the exception text."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

__all__ = [
    "AlreadyExists",
    "ContextValueError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FluxError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]

DOMAIN = "agentflux.dev"


class FluxError(Exception):
    """Root of agentflux's errors. `reason` is a stable UPPER_SNAKE machine code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after


class InvalidArgument(FluxError):
    """The request is malformed; `field` is the path of the field at fault."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, description: str, **kw: object) -> None:
        super().__init__(f"{field}: {description}", **kw)  # type: ignore[arg-type]
        self.field = field
        self.description = description


class ContextValueError(InvalidArgument):
    """An incoming context value (metadata key or message header) is malformed."""

    default_reason = "INVALID_CONTEXT"

    @property
    def key(self) -> str:
        """The metadata key or header name at fault."""
        return self.field


class Unauthenticated(FluxError):
    """No valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(FluxError):
    """Credentials are valid but do not allow this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class NotFound(FluxError):
    """No such resource for this caller."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(FluxError):
    """The resource exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(FluxError):
    """The system is not in a state that allows this."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(FluxError):
    """A rate limit, budget or size limit was hit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(FluxError):
    """The deadline passed before the work finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unavailable(FluxError):
    """A dependency is down; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"
