"""The built-in prompt templates, and formatting one safely.

Templates are `str.format` texts. The composer reads them through Memcached (a copy that
an operator may change); the built-in ones here are the source of truth, and what the
model falls back to when a template cannot be used.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

__all__ = ["COMPOSE_PLACEHOLDERS", "TEMPLATES", "fill"]

COMPOSE_PLACEHOLDERS: Mapping[str, str] = {
    "results": "what the run's tool calls gave, in sentences: the earlier steps briefly, "
    "then this step (always present)",
    "unfinished": "empty, or a sentence naming the requests the step budget left undone",
    "prompt": "the caller's prompt, as submitted",
    "memory": "the conversation's short-lived memory, newest first, joined with '; '",
    "step": "how many steps the run has taken, this one included (1-based)",
    "max_steps": "the run's step budget",
}

TEMPLATES: Mapping[str, str] = {
    # The answer a run ends with, composed once its last step's results are in.
    # Placeholders: see COMPOSE_PLACEHOLDERS. `{results}` is required.
    "compose": "{results} {unfinished}",
}

_SPACES = re.compile(r"[ \t]{2,}")


def _usable(template: str, known: Mapping[str, object]) -> bool:
    """Whether every field of `template` is a known placeholder and `results` is one."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError:  # an unmatched brace
        return False
    return "results" in fields and fields <= set(known)


def fill(template: str, pieces: Mapping[str, object], fallback: str) -> tuple[str, bool]:
    """`template` formatted with `pieces`, and whether `template` itself was used.

    A template that is empty, malformed, names a placeholder that `pieces` does not have
    (`{answer}`, `{0}`, `{results.x}`), leaves out `{results}` (an answer without the
    results answers nothing) or fails to format (`{step:q}`) is not used: `fallback` is,
    and the second value says so. Runs of spaces left by empty pieces are collapsed."""
    for candidate, own in ((template, True), (fallback, False)):
        if candidate and _usable(candidate, pieces):
            try:
                text = candidate.format_map(pieces)
            except (ValueError, TypeError):
                continue
            return _SPACES.sub(" ", text).strip(), own
    raise ValueError(f"the fallback template {fallback!r} is not usable")
