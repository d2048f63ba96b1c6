"""The gateway's requests checked against the rules their contracts declare.

The rules live in proto/ as protovalidate annotations (`(buf.validate.field)`), so every
client reads the same rules the gateway enforces. `validate` runs them all at once and
refuses a request with one INVALID_ARGUMENT naming every field at fault, which the server
interceptor sends as a `google.rpc.BadRequest` with one field violation each.

What depends on the deployment (the run limits' caps, for instance) is not in the
contract, which holds only the hard ceilings: those checks stay in `_requests.py`."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import protovalidate
from google.protobuf.message import Message

from interceptors import InvalidArgument

__all__ = ["validate"]


@cache
def _validator() -> protovalidate.Validator:
    # One for the process: a validator compiles each message type's rules once and keeps
    # them, so a fresh one per call would compile them again on every request.
    return protovalidate.Validator()


def validate(message: Message) -> None:
    """Returns when `message` keeps every rule of its contract; else raises
    `InvalidArgument` naming each field at fault (its path, e.g. `limits.max_steps`)."""
    found = _validator().collect_violations(message)
    if found:
        raise InvalidArgument.of([(_path(v.proto.field), v.proto.message) for v in found])


def _path(field: protovalidate.FieldPathPb | None) -> str:
    """A violation's field path in the form the gateway's errors use: field names
    joined by dots, with `[i]` or `[key]` where the path enters a list or a map."""
    return ".".join(_element(e) for e in _elements(field))


def _elements(
    field: protovalidate.FieldPathPb | None,
) -> Iterable[protovalidate.FieldPathElementPb]:
    return field.elements if field is not None else ()


def _element(element: protovalidate.FieldPathElementPb) -> str:
    subscript = element.subscript
    if subscript is None:
        return element.field_name
    key = subscript.value
    return f"{element.field_name}[{str(key).lower() if isinstance(key, bool) else key}]"
