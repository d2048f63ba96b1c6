"""Tool arguments checked against the tool's JSON schema (Draft 2020-12).

Arguments come from a model, so a wrong call is ordinary: the error names every field at
fault, with a path a model (or a person) can act on, and is not retryable (the same
arguments fail the same way). `FieldViolation` mirrors `google.rpc.BadRequest`'s, so a
service can return the list as INVALID_ARGUMENT details unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from services.tools._spec import ToolError

__all__ = ["FieldViolation", "ToolArgumentsError", "check_arguments", "compile_schema"]

_MAX_VIOLATIONS = 20
_MAX_DESCRIPTION = 200  # a message quotes the value: never echo a huge argument back


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One field at fault: its path (`a.b[0]`, empty for the arguments object itself)
    and what is wrong with it."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field or '(arguments)'}: {self.description}"


class ToolArgumentsError(ToolError):
    """The arguments of a call do not match the tool's schema. Never retryable."""

    def __init__(self, tool: str, violations: Sequence[FieldViolation]) -> None:
        self.tool = tool
        self.violations = tuple(violations)
        listed = "; ".join(str(v) for v in self.violations)
        super().__init__(f"invalid arguments for tool {tool!r}: {listed}", retryable=False)


def compile_schema(schema: Mapping[str, Any]) -> Draft202012Validator:
    """A validator for `schema`; `jsonschema.SchemaError` when the schema is not valid."""
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _path(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _short(text: str) -> str:
    return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 3] + "..."


def _violations(error: ValidationError) -> list[FieldViolation]:
    where = list(error.absolute_path)
    instance, schema = error.instance, error.schema
    # `required` and `additionalProperties` are about a field, not the object that
    # holds it: name the field itself.
    if error.validator == "required" and isinstance(instance, dict):
        required = error.validator_value if isinstance(error.validator_value, list) else []
        return [
            FieldViolation(_path([*where, name]), "is required")
            for name in required
            if isinstance(name, str) and name not in instance
        ]
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = schema.get("properties", {}) if isinstance(schema, dict) else {}
        patterns = schema.get("patternProperties", {}) if isinstance(schema, dict) else {}
        extra = [
            name
            for name in instance
            if name not in known and not any(re.search(p, name) for p in patterns)
        ]
        allowed = ", ".join(sorted(known)) or "none"
        return [
            FieldViolation(_path([*where, name]), f"is not allowed (known fields: {allowed})")
            for name in extra
        ]
    return [FieldViolation(_path(where), _short(error.message))]


def check_arguments(tool: str, validator: Draft202012Validator, args: object) -> None:
    """Raises `ToolArgumentsError` naming every field of `args` at fault."""
    found: dict[FieldViolation, None] = {}  # ordered, without repeats
    errors = sorted(validator.iter_errors(args), key=lambda e: [str(p) for p in e.path])
    for error in errors:
        for violation in _violations(error):
            found.setdefault(violation)
    if found:
        violations = list(found)
        if len(violations) > _MAX_VIOLATIONS:
            more = len(violations) - _MAX_VIOLATIONS
            violations = [
                *violations[:_MAX_VIOLATIONS],
                FieldViolation("", f"and {more} more problems"),
            ]
        raise ToolArgumentsError(tool, violations)
