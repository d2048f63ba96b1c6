"""The tools a process knows: the built-ins and those installed through entry points.

A package adds tools by declaring, in its own `pyproject.toml`:

    [project.entry-points."agentflux.tools"]
    weather = "acme_tools.weather:tools"

where `acme_tools.weather:tools` is a Tool object, or a callable (a function or a class)
taking the `Settings` and returning one Tool or an iterable of them. Every problem is
found when the registry is built (at a worker's start), never at the first call: a
plugin that does not import, a tool whose schema is not valid JSON Schema, and a name
registered twice (a plugin shadowing a built-in is refused, not silently preferred).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from services.runtime.config import Settings
from services.tools._builtin import builtin_tools
from services.tools._spec import Tool, ToolError, ToolSpec
from services.tools._validation import check_arguments, compile_schema

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "ToolRegistrationError",
    "ToolRegistry",
    "UnknownToolError",
]

ENTRY_POINT_GROUP = "agentflux.tools"
BUILTIN = "builtin"

# Names models can call: the function-name rule of the common tool-calling APIs.
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class ToolRegistrationError(ValueError):
    """A tool cannot be registered: a bad spec or schema, a name already taken, or an
    entry point that does not load."""


class UnknownToolError(ToolError, KeyError):
    """No tool has this name. A `ToolError` (a task naming it fails at once, since no
    retry will make it known) and a `KeyError` (a lookup that missed)."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        listed = ", ".join(self.known) or "none"
        super().__init__(f"unknown tool {name!r}; known tools: {listed}", retryable=False)

    def __str__(self) -> str:  # KeyError's would quote the message
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class _Entry:
    tool: Tool
    source: str
    validator: Draft202012Validator


class ToolRegistry:
    """Tools by name, each with its source and its compiled argument schema."""

    def __init__(self, tools: Iterable[Tool] = (), *, source: str = BUILTIN) -> None:
        self._entries: dict[str, _Entry] = {}
        for tool in tools:
            self.register(tool, source=source)

    @classmethod
    def load(
        cls, settings: Settings, *, entry_points: bool = True, group: str = ENTRY_POINT_GROUP
    ) -> ToolRegistry:
        """The built-in tools, then (unless `entry_points` is False) every tool of the
        installed entry points of `group`."""
        registry = cls(builtin_tools(settings))
        if entry_points:
            registry.load_entry_points(settings, group=group)
        return registry

    def register(self, tool: Tool, *, source: str = BUILTIN) -> None:
        """Adds `tool`; `ToolRegistrationError` when it is not a valid tool or its name
        is taken. `source` is what `source(name)` reports."""
        spec = _checked_spec(tool, source)
        taken = self._entries.get(spec.name)
        if taken is not None:
            raise ToolRegistrationError(
                f"tool {spec.name!r} from {source} is already registered by {taken.source}; "
                "a tool cannot replace another: give it another name"
            )
        try:
            validator = compile_schema(spec.schema)
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            raise ToolRegistrationError(
                f"tool {spec.name!r} from {source}: its argument schema is not valid "
                f"JSON Schema (Draft 2020-12) at {where}: {exc.message}"
            ) from None
        if spec.schema.get("type") != "object":
            raise ToolRegistrationError(
                f"tool {spec.name!r} from {source}: its argument schema must describe an "
                'object ("type": "object"), since arguments are passed by name'
            )
        self._entries[spec.name] = _Entry(tool, source, validator)

    def load_entry_points(self, settings: Settings, *, group: str = ENTRY_POINT_GROUP) -> None:
        """Registers the tools of every installed entry point of `group`, by name order."""
        for ep in sorted(metadata.entry_points(group=group), key=lambda e: (e.name, e.value)):
            source = ep.value  # `module:attr`, what `agentflux tools` shows
            dist = f" (distribution {ep.dist.name})" if ep.dist is not None else ""
            try:
                loaded = ep.load()
                tools = _tools_of(loaded, settings)
            except ToolRegistrationError:
                raise
            except Exception as exc:
                raise ToolRegistrationError(
                    f"entry point {ep.name} = {ep.value}{dist} in {group!r} did not give "
                    f"tools: {type(exc).__name__}: {exc}"
                ) from exc
            for tool in tools:
                self.register(tool, source=source)

    def get(self, name: str) -> Tool:
        """The tool called `name`; `UnknownToolError` naming the known ones if none is."""
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownToolError(name, self._entries)
        return entry.tool

    def source(self, name: str) -> str:
        """`"builtin"`, or the `module:attr` of the entry point that gave the tool."""
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownToolError(name, self._entries)
        return entry.source

    def names(self) -> list[str]:
        """Names of the registered tools, sorted."""
        return sorted(self._entries)

    def specs(self) -> list[ToolSpec]:
        """Specs of the registered tools, sorted by name (what a model is offered)."""
        return [self._entries[name].tool.spec for name in self.names()]

    def validate(self, name: str, args: object) -> Mapping[str, Any]:
        """`args` when they match the tool's schema; else `ToolArgumentsError` naming
        each field at fault (and `UnknownToolError` for an unknown tool)."""
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownToolError(name, self._entries)
        check_arguments(name, entry.validator, args)
        assert isinstance(args, Mapping)  # the schema's root is "type": "object"
        return args

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def _is_tool(candidate: Any) -> bool:
    return (
        not inspect.isclass(candidate)
        and isinstance(getattr(candidate, "spec", None), ToolSpec)
        and callable(candidate)
    )


def _tools_of(loaded: Any, settings: Settings) -> list[Tool]:
    # A class is a factory even when it has a class-level `spec`: its instances are
    # the tools, and calling the class itself would not run one.
    if _is_tool(loaded):
        return [loaded]
    if not callable(loaded):
        raise ToolRegistrationError(f"{loaded!r} is neither a tool nor a callable returning tools")
    made = loaded(settings)
    if _is_tool(made):
        return [made]
    if isinstance(made, Iterable) and not isinstance(made, str | bytes | Mapping):
        tools = list(made)
        for tool in tools:
            if not _is_tool(tool):
                raise ToolRegistrationError(f"{tool!r} is not a tool (no ToolSpec `spec`)")
        return tools
    raise ToolRegistrationError(f"it returned {made!r}, not a tool or an iterable of tools")


def _checked_spec(tool: Any, source: str) -> ToolSpec:
    spec = getattr(tool, "spec", None)
    if not isinstance(spec, ToolSpec) or not callable(tool):
        raise ToolRegistrationError(
            f"{tool!r} from {source} is not a tool: it needs a ToolSpec `spec` and an "
            "async `__call__(args, ctx)`"
        )
    call = tool.__call__
    if not (inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(tool)):
        raise ToolRegistrationError(
            f"tool {spec.name!r} from {source}: `__call__` must be a coroutine (async def)"
        )
    if not _NAME.match(spec.name):
        raise ToolRegistrationError(
            f"tool name {spec.name!r} from {source} is not valid: a letter, then up to 63 "
            "letters, digits, '_' or '-'"
        )
    if not spec.timeout_s > 0:
        raise ToolRegistrationError(f"tool {spec.name!r} from {source}: timeout_s must be > 0")
    if spec.side_effects and spec.cacheable:
        raise ToolRegistrationError(
            f"tool {spec.name!r} from {source}: a tool with side effects cannot be cacheable "
            "(a cached output would skip the effect)"
        )
    return spec
