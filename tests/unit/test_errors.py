"""Which errors a consumer retries: invalid input never, unknown failures always (bounded)."""

from __future__ import annotations

import pytest

from interceptors import (
    AlreadyExists,
    ContextValueError,
    DeadlineExceeded,
    FailedPrecondition,
    FluxError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    is_retryable,
)


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (InvalidArgument("prompt", "empty"), False),
        (ContextValueError("ce_tenantid", "bad"), False),
        (Unauthenticated("no key"), False),
        (PermissionDenied("suspended"), False),
        (NotFound("no run"), False),
        (AlreadyExists("run exists"), False),
        (FailedPrecondition("cancelled"), False),
        (ResourceExhausted("rate limit", retry_after=1.0), True),
        (DeadlineExceeded("too slow"), True),
        (Unavailable("redis down"), True),
        (FluxError("internal"), True),
        (ConnectionError("reset by peer"), True),
        (ValueError("a bug, or bad data: unknown"), True),
    ],
)
def test_each_error_says_whether_doing_it_again_may_succeed(
    error: BaseException, retry: bool
) -> None:
    assert is_retryable(error) is retry


def test_an_instance_can_override_its_class() -> None:
    assert not is_retryable(Unavailable("tool gone for good", retryable=False))
    assert is_retryable(NotFound("not indexed yet", retryable=True))
