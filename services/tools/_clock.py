"""`clock`: the current time in a time zone, since a model has no clock of its own."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.runtime.config import Settings
from services.tools._spec import JSON, ToolContext, ToolError, ToolSpec

__all__ = ["Clock"]

# Not strftime("%A"): its names follow the process's locale.
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _zone(name: str) -> tzinfo:
    if name.upper() in ("UTC", "Z"):
        return UTC  # needs no time zone database
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolError(
            f"unknown time zone {name!r}: give an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from None


class Clock:
    """The `clock` tool: date, time, weekday and unix time, now."""

    def __init__(self, settings: Settings, *, now: Callable[[], datetime] | None = None) -> None:
        self._now = now or (lambda: datetime.now(UTC))
        self.spec = ToolSpec(
            name="clock",
            description=(
                "The current date and time in `timezone` (an IANA name such as "
                "'America/New_York'; default UTC): ISO-8601 time, date, weekday, unix time."
            ),
            schema={
                "type": "object",
                "properties": {
                    "timezone": {
                        "type": "string",
                        # IANA names: letters, digits, `_+-/`; no path tricks reach zoneinfo.
                        "pattern": "^[A-Za-z][A-Za-z0-9_+\\-/]{0,63}$",
                    }
                },
                "additionalProperties": False,
            },
            timeout_s=settings.tool_timeout_s,
            # Not cacheable: the answer changes every second.
        )

    async def __call__(self, args: Mapping[str, Any], ctx: ToolContext) -> JSON:
        name = args.get("timezone") or "UTC"
        if not isinstance(name, str):
            raise ToolError("timezone must be a string such as 'Europe/Paris'")
        now = self._now().astimezone(_zone(name))
        offset = now.strftime("%z")
        return {
            "timezone": name,
            "iso": now.isoformat(timespec="seconds"),
            "date": now.date().isoformat(),
            "time": now.strftime("%H:%M:%S"),
            "weekday": _WEEKDAYS[now.weekday()],
            "utc_offset": f"{offset[:3]}:{offset[3:]}",
            "unix": int(now.timestamp()),
        }
