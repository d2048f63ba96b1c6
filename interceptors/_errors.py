"""agentflux's exception tree; each error carries the gRPC status it maps to and
whether trying the same work again may succeed.

    FluxError                       INTERNAL                                      retryable
    ├── InvalidArgument             INVALID_ARGUMENT (+ BadRequest: every field at fault)
    │   └── ContextValueError       a malformed context value (metadata key or header)
    ├── Unauthenticated             UNAUTHENTICATED
    ├── PermissionDenied            PERMISSION_DENIED
    ├── NotFound                    NOT_FOUND (also another tenant's resource: no existence leak)
    ├── AlreadyExists               ALREADY_EXISTS
    ├── FailedPrecondition          FAILED_PRECONDITION
    ├── OutOfRange                  OUT_OF_RANGE (a position past what exists, e.g. a resume point)
    ├── ResourceExhausted           RESOURCE_EXHAUSTED (+ RetryInfo, QuotaFailure) retryable
    ├── DeadlineExceeded            DEADLINE_EXCEEDED                             retryable
    └── Unavailable                 UNAVAILABLE (+ RetryInfo)                     retryable

The gRPC server interceptor turns any `FluxError` into its status with
`google.rpc.Status` details (ErrorInfo always), and anything else into INTERNAL
without leaking the exception text. Consumers retry a failed handler only when its
error is retryable (`is_retryable(exc)`: any exception that is not a `FluxError` is, since
its cause is unknown); invalid input goes to the dead-letter queue at once. Each class
has a default, and `retryable=` on an instance overrides it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

__all__ = [
    "AlreadyExists",
    "ContextValueError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FluxError",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "is_retryable",
]

DOMAIN = "agentflux.dev"


class FluxError(Exception):
    """Root of agentflux's errors. `reason` is a stable UPPER_SNAKE machine code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"
    default_retryable = True

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after
        self.retryable = self.default_retryable if retryable is None else retryable


class InvalidArgument(FluxError):
    """The request is malformed; `field` is the path of the field at fault."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"
    default_retryable = False

    def __init__(
        self,
        field: str,
        description: str,
        *,
        more: Sequence[tuple[str, str]] = (),
        **kw: object,
    ) -> None:
        message = "; ".join(f"{f}: {d}" for f, d in ((field, description), *more))
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.field = field
        self.description = description
        self.violations: tuple[tuple[str, str], ...] = ((field, description), *more)

    @classmethod
    def of(cls, violations: Sequence[tuple[str, str]], **kw: object) -> InvalidArgument:
        """One error naming every `(field, description)` at fault (at least one)."""
        (field, description), *more = violations
        return cls(field, description, more=more, **kw)


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
    default_retryable = False


class PermissionDenied(FluxError):
    """Credentials are valid but do not allow this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"
    default_retryable = False


class NotFound(FluxError):
    """No such resource for this caller."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"
    default_retryable = False


class AlreadyExists(FluxError):
    """The resource exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"
    default_retryable = False


class FailedPrecondition(FluxError):
    """The system is not in a state that allows this."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"
    default_retryable = False


class OutOfRange(FluxError):
    """A position (an offset, a resume point) outside what exists; unlike
    INVALID_ARGUMENT, the same value may become valid, or may have been valid once."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"
    default_retryable = False


class ResourceExhausted(FluxError):
    """A rate limit, budget or size limit was hit. `quota` names each quota at fault as
    `(subject, description)`, sent as a google.rpc.QuotaFailure detail."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self, message: str, *, quota: Sequence[tuple[str, str]] = (), **kw: object
    ) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.quota = tuple(quota)


class DeadlineExceeded(FluxError):
    """The deadline passed before the work finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unavailable(FluxError):
    """A dependency is down; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


def is_retryable(error: BaseException) -> bool:
    """Whether doing the same work again may succeed: a `FluxError` says so itself;
    anything else has an unknown cause (a network blip, a bug) and gets the bounded
    retries, after which it is dead-lettered with its reason."""
    return error.retryable if isinstance(error, FluxError) else True
