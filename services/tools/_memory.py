"""`memory`: a conversation's short-lived notes, in Redis.

One list per tenant and conversation (`Keys.memory`), newest first, capped at
`MAX_ITEMS` and expiring `memory_ttl_s` after the last write, so a conversation left
alone forgets on its own. The planner reads the same list to give the model context.

Writes are side effects and tools run at least once: a remember retried after a crash
must not store its note twice. Each write claims a marker for the call's idempotency key
(`SET NX`) in the same Lua script as the write, so the claim and the effect happen
together or not at all, and a repeated call changes nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import redis.exceptions

from services.runtime.config import Settings
from services.runtime.keys import Keys
from services.tools._spec import JSON, ToolContext, ToolError, ToolSpec

__all__ = ["MAX_ITEMS", "MAX_TEXT", "Memory", "once_key"]

MAX_ITEMS = 50
"""Notes kept per conversation; the oldest go first."""

MAX_TEXT = 1000
"""Longest note, in characters."""

# KEYS: list, marker. ARGV: text, cap, ttl. Returns {stored (0/1), items now}. The
# marker lives memory_ttl_s, far longer than a call is retried (the delay tiers).
_REMEMBER = """
local stored = 0
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  redis.call('LPUSH', KEYS[1], ARGV[1])
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
  stored = 1
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {stored, redis.call('LLEN', KEYS[1])}
"""

# KEYS: list, marker. ARGV: ttl, mode ('all' or 'some'), the notes to remove.
# Returns the count removed, or -1 when this call already ran.
_FORGET = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then return -1 end
if ARGV[2] == 'all' then
  local n = redis.call('LLEN', KEYS[1])
  redis.call('DEL', KEYS[1])
  return n
end
local removed = 0
for i = 3, #ARGV do removed = removed + redis.call('LREM', KEYS[1], 0, ARGV[i]) end
return removed
"""


def once_key(memory_key: str, idempotency_key: str) -> str:
    """The marker of one call's write, beside the conversation's list. The idempotency
    key is hashed: it may be long or hold any character."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    return f"{memory_key}:once:{digest}"


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.casefold()))


def _matching(items: Sequence[str], text: str | None) -> list[str]:
    """The items holding every word of `text` (case-insensitive); all when no text."""
    wanted = _words(text) if text else set()
    return [item for item in items if wanted <= _words(item)]


def _decode(raw: Sequence[bytes | str]) -> list[str]:
    return [r.decode("utf-8", "replace") if isinstance(r, bytes) else r for r in raw]


class Memory:
    """The `memory` tool: remember, recall and forget notes of this conversation."""

    def __init__(self, settings: Settings) -> None:
        self._ttl_s = settings.memory_ttl_s
        self.spec = ToolSpec(
            name="memory",
            description=(
                "Short-lived notes of this conversation. `remember` stores `text`; "
                "`recall` returns the notes, newest first (only those containing every "
                "word of `text` when given); `forget` removes the notes containing every "
                f"word of `text`, or all of them. At most {MAX_ITEMS} notes are kept."
            ),
            schema={
                "type": "object",
                "properties": {
                    "action": {"enum": ["remember", "recall", "forget"]},
                    "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
                },
                "required": ["action"],
                "additionalProperties": False,
                # A note to remember is the point of remembering.
                "if": {"properties": {"action": {"const": "remember"}}},
                "then": {"required": ["text"]},
            },
            timeout_s=settings.tool_timeout_s,
            side_effects=True,
        )

    async def __call__(self, args: Mapping[str, Any], ctx: ToolContext) -> JSON:
        action, text = args.get("action"), args.get("text")
        if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
            raise ToolError(f"text must be a string of at most {MAX_TEXT} characters")
        if not ctx.conversation_id:
            raise ToolError("memory belongs to a conversation, and this call has none")
        key = Keys(ctx.namespace).memory(ctx.tenant_id, ctx.conversation_id)
        try:
            if action == "remember":
                if not text:
                    raise ToolError("remember needs the `text` to remember")
                return await self._remember(ctx, key, text)
            if action == "recall":
                items = _decode(await ctx.redis.lrange(key, 0, MAX_ITEMS - 1))
                found = _matching(items, text)
                return {"items": found, "count": len(found), "total": len(items)}
            if action == "forget":
                return await self._forget(ctx, key, text)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise ToolError(f"the memory store is not reachable: {exc}", retryable=True) from exc
        raise ToolError(f"action must be remember, recall or forget, not {action!r}")

    async def _remember(self, ctx: ToolContext, key: str, text: str) -> JSON:
        script = ctx.redis.register_script(_REMEMBER)
        marker = once_key(key, ctx.idempotency_key)
        stored, count = await script(keys=[key, marker], args=[text, MAX_ITEMS, self._ttl_s])
        # repeated: a retry of a call that already stored the note, which stays stored once.
        return {"remembered": text, "repeated": not stored, "count": int(count)}

    async def _forget(self, ctx: ToolContext, key: str, text: str | None) -> JSON:
        if text:
            items = _decode(await ctx.redis.lrange(key, 0, MAX_ITEMS - 1))
            targets = sorted(set(_matching(items, text)))
            mode = "some"
        else:
            targets, mode = [], "all"
        script = ctx.redis.register_script(_FORGET)
        marker = once_key(key, ctx.idempotency_key)
        removed = int(await script(keys=[key, marker], args=[self._ttl_s, mode, *targets]))
        # -1: a retry of a call that already forgot; what it removed then is not known.
        return {"forgotten": max(removed, 0), "repeated": removed < 0}
