"""Model providers: what plans a run's steps and composes its answer.

`provider(settings)` returns the provider `settings.model_provider` names. Built in:

- `scripted` (`ScriptedProvider`): deterministic and offline, the default, so everything
  runs with no model service. It reads prompts by a small grammar (see
  `services.models.scripted`).
- `openai` (`OpenAIProvider`): any OpenAI-compatible /v1/chat/completions endpoint, set
  by the `model_*` settings (see `services.models.openai`). Its client is imported only
  when it is used.

A provider that cannot plan or answer raises `ModelError`; its `retryable` says whether
asking again may succeed.

`TEMPLATES` holds the built-in prompt templates by name (`str.format` texts). The
composer reads its `compose` template through Memcached; these are the source of truth.
`COMPOSE_PLACEHOLDERS` documents the placeholders of `compose`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from services.models._provider import (
    ComposeRequest,
    Composition,
    ModelError,
    ModelProvider,
    Plan,
    PlannedCall,
    PlanRequest,
    ToolOffer,
    uses_history,
)
from services.models._templates import COMPOSE_PLACEHOLDERS, TEMPLATES
from services.models.scripted import ScriptedProvider

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from services.models.openai import OpenAIProvider
    from services.runtime.config import Settings

__all__ = [
    "COMPOSE_PLACEHOLDERS",
    "PROVIDERS",
    "TEMPLATES",
    "ComposeRequest",
    "Composition",
    "ModelError",
    "ModelProvider",
    "OpenAIProvider",
    "Plan",
    "PlanRequest",
    "PlannedCall",
    "ScriptedProvider",
    "ToolOffer",
    "provider",
    "uses_history",
]


def _openai(settings: Settings, tracer_provider: TracerProvider | None) -> ModelProvider:
    from services.models.openai import OpenAIProvider

    return OpenAIProvider(settings, tracer_provider=tracer_provider)


PROVIDERS: dict[str, Callable[[Settings, TracerProvider | None], ModelProvider]] = {
    "scripted": lambda settings, tracer_provider: ScriptedProvider(),
    "openai": _openai,
}
"""Each provider by the name `settings.model_provider` gives, and how it is built (with
the tracer provider of the service it works for: its model calls are that service's
spans)."""


def __getattr__(name: str) -> Any:
    # The openai client takes a while to import; a process on the scripted model never does.
    if name == "OpenAIProvider":
        from services.models.openai import OpenAIProvider

        return OpenAIProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def provider(settings: Settings, *, tracer_provider: TracerProvider | None = None) -> ModelProvider:
    """The model provider `settings.model_provider` names (case and spaces ignored),
    tracing its calls with `tracer_provider` (the global one when None).

    Raises ValueError, listing the known names, for a name that is not one of them."""
    name = settings.model_provider.strip().lower()
    build = PROVIDERS.get(name)
    if build is None:
        known = ", ".join(PROVIDERS)  # the default first
        raise ValueError(f"unknown model provider {settings.model_provider!r}; known: {known}")
    return build(settings, tracer_provider)
