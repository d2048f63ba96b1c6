"""`python -m tests.golden <version>`: writes the golden records of the current
contracts under tests/golden/<version>/ (see the package doc)."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from services.runtime.contracts import registry

HERE = Path(__file__).resolve().parent
_MAX_DEPTH = 4


def filled(message: Message, depth: int = 0) -> Message:
    """`message` with every field set to a deterministic, non-default value (the first
    member of each oneof, one element in each list and map), so a record exercises every
    field of its version."""
    seen_oneofs: set[str] = set()
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_"):
            if oneof.name in seen_oneofs:
                continue
            seen_oneofs.add(oneof.name)
        _fill(message, field, depth)
    return message


def _value(field: FieldDescriptor, n: int) -> Any:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-{n}"
    if t == FieldDescriptor.TYPE_BYTES:
        return f"{field.name}-{n}".encode()
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.5 + n
    if t == FieldDescriptor.TYPE_ENUM:
        values = field.enum_type.values
        return values[1].number if len(values) > 1 else values[0].number
    return 7 + n  # the integer types


def _fill(message: Message, field: FieldDescriptor, depth: int) -> None:
    is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
    repeated = field.is_repeated
    if field.message_type is not None and not is_map:
        if depth >= _MAX_DEPTH:
            return
        name = field.message_type.full_name
        if name == "google.protobuf.Struct":
            target = (
                getattr(message, field.name).add() if repeated else getattr(message, field.name)
            )
            target.update({"key": "value", "n": 1})
            return
        if name == "google.protobuf.Value":
            target = (
                getattr(message, field.name).add() if repeated else getattr(message, field.name)
            )
            target.string_value = "value"
            return
        if repeated:
            filled(getattr(message, field.name).add(), depth + 1)
        else:
            filled(getattr(message, field.name), depth + 1)
        return
    if is_map:
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        target = getattr(message, field.name)
        key = _value(key_field, 0)
        if value_field.message_type is not None:
            filled(target[key], depth + 1)
        else:
            target[key] = _value(value_field, 0)
        return
    if repeated:
        getattr(message, field.name).append(_value(field, 0))
    else:
        setattr(message, field.name, _value(field, 0))


def records() -> dict[str, dict[str, Any]]:
    """One record per event and task type of the current contracts."""
    contracts = registry()
    out: dict[str, dict[str, Any]] = {}
    kinds: list[tuple[Any, dict[str, str]]] = [
        (e, {"topic": e.topic, "key_field": e.key_field}) for e in contracts.events.values()
    ]
    kinds += [(t, {"queue": t.queue}) for t in contracts.tasks.values()]
    for contract, where in kinds:
        message = filled(contract.message_class())
        headers = [
            ["ce_specversion", "1.0"],
            ["ce_type", contract.type_name],
            ["ce_source", "/golden"],
            ["ce_id", f"golden/{contract.type_name}"],
            ["ce_time", "2026-11-27T00:00:00.000000Z"],
            ["content-type", "application/protobuf"],
            ["ce_correlationid", "golden-correlation"],
            ["traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],
        ]
        key_field = where.get("key_field")
        out[contract.type_name] = {
            **where,
            "type": contract.type_name,
            "key": getattr(message, key_field) if key_field else "",
            "headers": headers,
            "value_base64": base64.b64encode(message.SerializeToString()).decode(),
            "fields": json_format.MessageToDict(message),
        }
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.golden <version>  (e.g. v1)", file=sys.stderr)
        return 2
    folder = HERE / argv[0]
    if folder.exists():
        print(f"{folder} exists: golden records are never rewritten", file=sys.stderr)
        return 1
    folder.mkdir()
    for type_name, record in records().items():
        path = folder / f"{type_name}.json"
        path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path.relative_to(HERE.parents[1])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
