"""The one context every hop carries, kept in a contextvar.

A `FluxContext` is created at the edge (the first gRPC call or message without one),
travels in gRPC metadata, Kafka headers and AMQP headers, and is bound for the
duration of each handled call or message so that anything emitted inside inherits it.
The OpenTelemetry context travels beside it in OpenTelemetry's own contextvar."""

from __future__ import annotations

import os
import re
import threading
import time
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from interceptors._errors import ContextValueError

__all__ = [
    "FluxContext",
    "bind",
    "check_event_id",
    "check_id",
    "current",
    "new_id",
]

# Ids travel in headers and logs and end up in Redis keys: a tight alphabet keeps them
# from smuggling separators, control characters or unbounded sizes across hops.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
# Event ids (`ce_id`, `x-request-id`, and the causation ids that repeat them) are other
# producers' to choose: CloudEvents allows any non-empty string, and real ones look like
# `orders/2026/7`. Any printable ASCII is taken (what gRPC metadata can carry on the next
# hop), bounded; replacing a valid id would break dedupe on redelivery.
_EVENT_ID = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?")
EVENT_ID_MAX = 256


# Random bytes for ids, read from the OS a page at a time: `uuid.uuid4()` reads 16 bytes
# per id, a system call that cost about 11 µs on the development machine, and a message
# hop mints two or three ids. The bytes are the OS's all the same (unpredictable), and a
# forked child starts with none of its parent's, so the two never mint the same id.
_RANDOM_PAGE = 4096
_random = b""
_used = 0
_random_lock = threading.Lock()


def _forget_random() -> None:
    # In the child only: a new lock too, in case another thread held it at the fork.
    global _random, _used, _random_lock
    _random, _used, _random_lock = b"", 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_random)


def random_bytes16() -> bytes:
    """16 random bytes from the OS (see above)."""
    global _random, _used
    with _random_lock:
        if _used + 16 > len(_random):
            _random, _used = os.urandom(_RANDOM_PAGE), 0
        out = _random[_used : _used + 16]
        _used += 16
    return out


def new_id() -> str:
    """A fresh random id: a version-4 UUID as 32 hex characters (`uuid.uuid4().hex`)."""
    raw = bytearray(random_bytes16())
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


def check_id(key: str, value: str, *, tenant: bool = False) -> str:
    """Returns `value` if it is a well-formed id, else raises `ContextValueError`."""
    pattern, limit = (_TENANT, 64) if tenant else (_ID, 128)
    if len(value) > limit:
        raise ContextValueError(key, f"longer than {limit} characters")
    if not pattern.fullmatch(value):
        raise ContextValueError(
            key, "must start with a letter or digit and use only letters, digits and ._:-"
        )
    return value


def check_event_id(key: str, value: str) -> str:
    """Returns `value` if it is an acceptable event id (1-256 printable ASCII characters,
    not starting or ending with a space), else raises `ContextValueError`."""
    if len(value) > EVENT_ID_MAX:
        raise ContextValueError(key, f"longer than {EVENT_ID_MAX} characters")
    if not _EVENT_ID.fullmatch(value):
        raise ContextValueError(key, "must be printable ASCII, not starting or ending with a space")
    return value


@dataclass(frozen=True, slots=True)
class FluxContext:
    """Cross-cutting facts about the work being done.

    `correlation_id` ties together everything one request caused; `event_id` is the id
    of the call or message being handled now, and becomes the `causation_id` of what
    it emits; `causation_id` is the id of whatever caused the current one."""

    correlation_id: str
    event_id: str = ""
    causation_id: str = ""
    idempotency_key: str = ""
    tenant_id: str = ""
    run_id: str = ""
    deadline: float | None = None  # absolute, seconds since the epoch

    @classmethod
    def new(cls, **fields: str | float | None) -> FluxContext:
        """A context for work that starts here (fresh correlation and event ids)."""
        # Only the ids not given are minted: a fresh id costs a read of os.urandom.
        if not fields.get("correlation_id"):
            fields["correlation_id"] = new_id()
        if not fields.get("event_id"):
            fields["event_id"] = new_id()
        return cls(**fields)  # type: ignore[arg-type]

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or None without one."""
        return None if self.deadline is None else max(0.0, self.deadline - time.time())

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self.deadline is not None and time.time() >= self.deadline

    def child(self, event_id: str) -> FluxContext:
        """The context of work caused by this one, identified by `event_id`."""
        return replace(self, causation_id=self.event_id, event_id=event_id)

    def with_(self, **fields: str | float | None) -> FluxContext:
        """A copy with some fields replaced."""
        return replace(self, **fields)  # type: ignore[arg-type]


T = TypeVar("T")

_current: ContextVar[FluxContext | None] = ContextVar("agentflux_context", default=None)


def current() -> FluxContext | None:
    """The context bound to the running task, if any."""
    return _current.get()


class Bound(Generic[T]):
    """Sets `var` to `value` for the duration of a `with` block (reset afterwards).

    A class rather than a @contextmanager generator: the hops set context variables
    around every handled message and call, where the generator's machinery cost about
    2 µs more."""

    __slots__ = ("token", "value", "var")

    def __init__(self, var: ContextVar[T | None], value: T) -> None:
        self.var = var
        self.value = value

    def __enter__(self) -> T:
        self.token = self.var.set(self.value)
        return self.value

    def __exit__(self, *exc: object) -> None:
        self.var.reset(self.token)


def bind(ctx: FluxContext) -> AbstractContextManager[FluxContext]:
    """Binds `ctx` for the duration of the block (restored afterwards, task-local)."""
    return Bound(_current, ctx)
