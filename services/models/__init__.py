"""Model providers: what plans a run's steps and composes its answer.

`provider(settings)` returns the provider `settings.model_provider` names. Built in:

- `scripted` (`ScriptedProvider`): deterministic and offline, the default, so everything
  runs with no model service. It reads prompts by a small grammar (see
  `services.models.scripted`).

`TEMPLATES` holds the built-in prompt templates by name (`str.format` texts). The
composer reads its `compose` template through Memcached; these are the source of truth.
`COMPOSE_PLACEHOLDERS` documents the placeholders of `compose`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from services.models._provider import (
    ComposeRequest,
    Composition,
    ModelProvider,
    Plan,
    PlannedCall,
    PlanRequest,
    ToolOffer,
)
from services.models._templates import COMPOSE_PLACEHOLDERS, TEMPLATES
from services.models.scripted import ScriptedProvider

if TYPE_CHECKING:
    from services.runtime.config import Settings

__all__ = [
    "COMPOSE_PLACEHOLDERS",
    "PROVIDERS",
    "TEMPLATES",
    "ComposeRequest",
    "Composition",
    "ModelProvider",
    "Plan",
    "PlanRequest",
    "PlannedCall",
    "ScriptedProvider",
    "ToolOffer",
    "provider",
]

PROVIDERS: dict[str, Callable[[Settings], ModelProvider]] = {
    "scripted": lambda settings: ScriptedProvider(),
}
"""Each provider by the name `settings.model_provider` gives, and how it is built."""


def provider(settings: Settings) -> ModelProvider:
    """The model provider `settings.model_provider` names (case and spaces ignored).

    Raises ValueError, listing the known names, for a name that is not one of them."""
    name = settings.model_provider.strip().lower()
    build = PROVIDERS.get(name)
    if build is None:
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"unknown model provider {settings.model_provider!r}; known: {known}")
    return build(settings)
