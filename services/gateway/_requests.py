"""Checks of the gateway's requests, and the values they resolve to.

Every check raises `InvalidArgument` naming the field at fault (its path in the request,
e.g. `limits.max_steps`), which the server interceptor turns into INVALID_ARGUMENT with
a `google.rpc.BadRequest` field violation."""

from __future__ import annotations

import base64
import binascii
import hashlib

from agentflux.v1 import gateway_pb2, types_pb2

from interceptors import ContextValueError, InvalidArgument, new_id
from interceptors._context import check_id
from services.runs import MAX_PROMPT_BYTES, is_event_id, resolve_limits
from services.runtime.config import Settings

__all__ = [
    "MAX_PROMPT_BYTES",
    "checked_after",
    "checked_id",
    "checked_status",
    "decode_page_token",
    "encode_page_token",
    "new_run",
    "page_size",
    "required_id",
    "required_text",
]

MAX_PAGE_SIZE = 100
_PRIORITIES = frozenset(types_pb2.Priority.values())
_STATUSES = frozenset(types_pb2.RunStatus.values())


def checked_id(field: str, value: str) -> str:
    """`value` when it is a well-formed id (the rules of context ids: they end up in
    Redis keys and headers), else INVALID_ARGUMENT naming `field`."""
    try:
        return check_id(field, value)
    except ContextValueError as bad:
        # Re-raised as a plain InvalidArgument: a request field, not a metadata key.
        raise InvalidArgument(field, bad.description) from None


def required_id(field: str, value: str) -> str:
    """A well-formed id that must be present."""
    if not value:
        raise InvalidArgument(field, "required")
    return checked_id(field, value)


def required_text(field: str, value: str, max_bytes: int) -> str:
    """Text that must have more than whitespace and fit in `max_bytes` (UTF-8)."""
    if not value.strip():
        raise InvalidArgument(field, "required")
    size = len(value.encode("utf-8"))
    if size > max_bytes:
        raise InvalidArgument(field, f"{size} bytes; at most {max_bytes} (UTF-8)")
    return value


def checked_after(event_id: str, sequence: int = 0) -> str:
    """A resume point as an event id: empty (from the start), `after_event_id`, or the
    id of `after_sequence` (one of the two, not both)."""
    if event_id and sequence:
        raise InvalidArgument("after_sequence", "give after_event_id or after_sequence, not both")
    if sequence < 0:
        raise InvalidArgument("after_sequence", "must not be negative")
    if sequence:
        return f"{sequence}-0"
    if event_id and not is_event_id(event_id):
        raise InvalidArgument("after_event_id", "not an event id (<sequence>-0)")
    return event_id


def digest(request: gateway_pb2.SubmitRequest) -> str:
    """What a request asks for, as a digest: the same `request_id` must come back with
    the same digest (a retry), or it is refused (a different request reusing the id)."""
    same = gateway_pb2.SubmitRequest()
    same.CopyFrom(request)
    same.ClearField("request_id")
    return hashlib.sha256(same.SerializeToString(deterministic=True)).hexdigest()[:32]


def request_id_of(request: gateway_pb2.SubmitRequest, idempotency_key: str) -> str:
    """The id that makes a `Submit` safe to retry: `request_id`, else the call's
    `idempotency-key` metadata, so a client that sends the standard header gets the same
    run back for the same key. Both present and different is a client bug: refused
    rather than one silently winning."""
    if request.request_id and idempotency_key and request.request_id != idempotency_key:
        raise InvalidArgument(
            "idempotency-key",
            f"differs from request_id {request.request_id!r}: send one of the two, or the "
            "same value in both",
        )
    return request.request_id or idempotency_key


def checked_status(value: int) -> int:
    """A known `RunStatus` (UNSPECIFIED: every status)."""
    if value not in _STATUSES:
        raise InvalidArgument("status", f"{value} is not a RunStatus")
    return value


def page_size(value: int, default: int) -> int:
    """A page size of 1..100; `default` when zero."""
    if value == 0:
        return default
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"{value}; give 1-{MAX_PAGE_SIZE} (0: {default})")
    return value


def encode_page_token(cursor: tuple[int, str] | None) -> str:
    """The opaque token of a `(create ms, run id)` cursor; empty for the last page."""
    if cursor is None:
        return ""
    raw = f"{cursor[0]}:{cursor[1]}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_page_token(token: str) -> tuple[int, str] | None:
    """The cursor of a token `encode_page_token` made; None for the first page."""
    if not token:
        return None
    bad = InvalidArgument("page_token", "not a token of this listing; pass next_page_token as is")
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        ms, sep, run_id = raw.decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    if not (sep and ms.isascii() and ms.isdigit() and len(ms) <= 16):
        raise bad
    try:
        check_id("page_token", run_id)
    except ContextValueError:
        raise bad from None
    return int(ms), run_id


def new_run(request: gateway_pb2.SubmitRequest, tenant: str, settings: Settings) -> types_pb2.Run:
    """The run a valid `Submit` starts (ids, resolved limits and priority), or
    INVALID_ARGUMENT naming the first field at fault."""
    prompt = required_text("prompt", request.prompt, MAX_PROMPT_BYTES)
    conversation = request.conversation_id
    if conversation:
        checked_id("conversation_id", conversation)
    if request.request_id:
        checked_id("request_id", request.request_id)
    if request.priority not in _PRIORITIES:
        raise InvalidArgument("priority", f"{request.priority} is not a Priority")
    return types_pb2.Run(
        run_id=new_id(),
        tenant_id=tenant,
        conversation_id=conversation or new_id(),
        prompt=prompt,
        # UNSPECIFIED is served as NORMAL: the run says how it is served.
        priority=request.priority or types_pb2.PRIORITY_NORMAL,
        limits=resolve_limits(request.limits, settings),
    )
