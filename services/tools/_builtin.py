"""The tools every agentflux process has, configured from the settings."""

from __future__ import annotations

from services.runtime.config import Settings
from services.tools._calculator import Calculator
from services.tools._clock import Clock
from services.tools._http_get import HttpGet
from services.tools._memory import Memory
from services.tools._retrieve import Retrieve
from services.tools._spec import Tool

__all__ = ["builtin_tools"]


def builtin_tools(settings: Settings) -> list[Tool]:
    """calculator, clock, http_get, memory and retrieve, each timed out after
    `settings.tool_timeout_s` (the worker enforces it)."""
    return [
        Calculator(settings),
        Clock(settings),
        HttpGet(settings),
        Memory(settings),
        Retrieve(settings),
    ]
