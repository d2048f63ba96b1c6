"""What every link of the consume chain sees, and how a transport settles a message.

`Inbound` is a message as it arrived, in terms common to Kafka and RabbitMQ; `Incoming`
is the decoded message a handler and every link receive. A service adds a link (a tenant
check, metrics) with a `ConsumeInterceptor`, as in temporalio's SDK: each link holds
`next` and takes one small dataclass, so a new field never breaks an existing link. The
first interceptor given is the outermost. A transport supplies a `Settler`; the rest of
the consume path is one core (`interceptors._consume`)."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import Message
from opentelemetry.propagators.textmap import Getter

from interceptors._context import FluxContext

__all__ = [
    "ConsumeInterceptor",
    "Handler",
    "HandlerLink",
    "Inbound",
    "Incoming",
    "Outcome",
    "Settler",
    "chain",
]


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message as it arrived, in terms common to every transport.

    `carrier` is the headers in the transport's own shape, read through `getter`; None
    when they could not be read at all (`header_error` says why). `position` names where
    the message sits (`topic:partition:offset`, or a digest for a queue) and is its
    identity when it carries no event id. `attempt` counts agentflux's attempts (1 for
    the first), never the broker's redeliveries."""

    transport: str  # "kafka" or "amqp": the column of CONTEXT_KEYS
    destination: str
    body: bytes | None
    carrier: Any
    getter: Getter[Any]
    position: str
    raw: Any
    header_error: str = ""
    type_hint: str = ""  # the AMQP `type` property, when the ce_type header is absent
    content_type: str = ""  # the AMQP property; Kafka carries it as a header
    attempt: int = 1
    sent_at: float | None = None  # epoch seconds the broker or producer stamped
    attributes: Mapping[str, Any] = field(default_factory=dict)  # messaging.* of the span


@dataclass(frozen=True, slots=True)
class Incoming:
    """A decoded message being handled: what a handler and every link receive."""

    event: Message
    context: FluxContext
    inbound: Inbound
    dedupe_key: str

    @property
    def attempt(self) -> int:
        """Which attempt this is (1 for the first)."""
        return self.inbound.attempt


Handler = Callable[[Incoming], Awaitable[bytes | None]]
"""Handles one message; may return an outcome the idempotency guard keeps."""


class HandlerLink:
    """One link of the handling chain. Subclass it, override `handle`, and call
    `self.next.handle(incoming)` to go on (or raise to fail the message)."""

    def __init__(self, next: HandlerLink | None = None) -> None:
        self.next = next

    async def handle(self, incoming: Incoming) -> bytes | None:
        """Passes `incoming` down the chain."""
        if self.next is None:
            raise RuntimeError(f"{type(self).__name__} is the last link and has no handler")
        return await self.next.handle(incoming)


class ConsumeInterceptor:
    """Adds a link to a consumer's chain: return a `HandlerLink` wrapping `next`."""

    def intercept(self, next: HandlerLink) -> HandlerLink:
        """The link to call instead of `next` (which it calls to go on)."""
        return next


class _Terminal(HandlerLink):
    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self._handler = handler

    async def handle(self, incoming: Incoming) -> bytes | None:
        return await self._handler(incoming)


def chain(handler: Handler, interceptors: Sequence[ConsumeInterceptor]) -> HandlerLink:
    """The handler wrapped by `interceptors`, the first one outermost."""
    link: HandlerLink = _Terminal(handler)
    for interceptor in reversed(interceptors):
        link = interceptor.intercept(link)
    return link


class Outcome(enum.Enum):
    """What became of a message."""

    HANDLED = "handled"
    DUPLICATE = "duplicate"
    RETRYING = "retrying"  # sent to a delay tier, to be handled again
    DEAD_LETTERED = "dead_lettered"
    HANDED_BACK = "handed_back"  # back to the broker undecided, no attempt used


class Settler(Protocol):
    """How a transport settles a message; each call returns once the broker agreed."""

    async def ack(self, inbound: Inbound) -> None:
        """The message is finished (handled or a duplicate)."""

    async def retry(self, inbound: Inbound, error: str) -> bool:
        """Schedules another attempt; False when none is left (or the transport retries
        in place), and the message is then dead-lettered."""

    async def dead_letter(self, inbound: Inbound, reason: str, error: str) -> None:
        """Moves the message to the dead-letter topic or queue with why, then finishes it."""

    async def hand_back(self, inbound: Inbound) -> None:
        """Returns the message undecided (shutdown, a claim still held elsewhere)."""
