"""How the scripted model reads a prompt: clauses, and what each clause asks for.

A prompt is split into clauses on the word "then" and on ";" (any case): step N of a run
plans clause N. Each clause is read as one kind of request (`Intent`), tried in this
order, the first that matches winning:

- remember: "remember [that] X", "note [that] X", "note: X", "make a note [that] X";
- recall: "what do/did you remember", "what did I ask/tell you to remember",
  "what have I asked you to remember", "do you remember", "recall ...", each optionally
  "about X" (only the notes with every word of X);
- forget: "forget X" ("forget everything", "forget it all": all of it);
- retrieve: "what did I/you say/ask/answer/write about X", "search [for] X", "look up X";
- fetch: "fetch/get/download/open URL" (a URL: http(s)://..., or a host name with a dot);
- clock: "what time is it", "what's the time/date/day", "what day is it/today",
  "today's date", "current time/date", each optionally "in ZONE" (an IANA name such as
  Europe/Paris, or UTC);
- follow-up arithmetic, on the previous step's number: "add X [to it]", "plus X",
  "subtract X [from it]", "minus X", "take away X", "multiply [it] by X", "times X",
  "divide [it] by X", "double/triple/halve/square/cube it" (X: a number or expression);
- arithmetic: every expression in the clause ("what is 6*7 and 12/4": two);
- chat: anything else, answered directly.

One kind per clause: "what time is it and what is 6*7" asks for the time only; join
the two with "then" to have both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from services.models._arith import expressions, is_expression

__all__ = ["Intent", "Kind", "read", "split"]

Kind = Literal[
    "remember", "recall", "forget", "retrieve", "fetch", "clock", "follow_up", "arithmetic",
    "chat",
]  # fmt: skip

# Which tool each kind needs (chat needs none).
TOOL_OF: dict[Kind, str] = {
    "remember": "memory",
    "recall": "memory",
    "forget": "memory",
    "retrieve": "retrieve",
    "fetch": "http_get",
    "clock": "clock",
    "follow_up": "calculator",
    "arithmetic": "calculator",
}


@dataclass(frozen=True, slots=True)
class Intent:
    """What one clause asks for."""

    kind: Kind
    text: str  # the clause, trimmed of joining words and end punctuation
    subject: str = ""  # remember/forget: the note; recall: the filter; retrieve: the
    # query; fetch: the URL
    expressions: tuple[str, ...] = ()  # arithmetic: the expressions, in order
    operator: str = ""  # follow_up: the operator applied to the previous number
    operand: str = ""  # follow_up: the right operand
    phrase: str = ""  # follow_up: how the model says it ("adding 8", "doubling")
    timezone: str = ""  # clock: the IANA zone named, if any
    zone_named: str = ""  # clock: what followed "in", even when it is not an IANA zone
    asks: str = ""  # clock: "time", "date" or "day"

    @property
    def tool(self) -> str:
        """The tool this intent needs, or "" for a direct answer."""
        return TOOL_OF.get(self.kind, "")


_SPLIT = re.compile(r"\bthen\b|;", re.IGNORECASE)
_TRIM_END = re.compile(r"(?:[\s,.!?:]|\band\b)+$", re.IGNORECASE)
_TRIM_START = re.compile(r"^(?:[\s,]|\band\b)+", re.IGNORECASE)


def split(prompt: str) -> list[str]:
    """The prompt's clauses, in order, without empty ones."""
    clauses = []
    for part in _SPLIT.split(prompt.replace("\u2019", "'")):
        clause = _TRIM_START.sub("", _TRIM_END.sub("", part))
        if clause:
            clauses.append(clause)
    return clauses


def _rule(pattern: str) -> re.Pattern[str]:
    return re.compile(r"^(?:(?:please|now|and|also|first|finally),?\s+)*" + pattern, re.I)


_REMEMBER = _rule(r"(?:remember|note|make a note)\b(?:\s+that\b|\s*:)?\s*(?P<x>.*)$")
_RECALL = re.compile(
    r"\bwhat (?:do|did) you remember\b|\bwhat (?:did|have) i (?:ask|asked|tell|told) you "
    r"to remember\b|\bdo you remember\b|^recall\b",
    re.IGNORECASE,
)
_ABOUT = re.compile(r"\babout\s+(?P<x>.+)$", re.IGNORECASE)
_FORGET = _rule(r"forget\b(?:\s+that\b|\s+about\b)?\s*(?P<x>.*)$")
_FORGET_ALL = re.compile(r"^(?:everything|it all|all(?: of it)?|all notes)?$", re.IGNORECASE)
_RETRIEVE = re.compile(
    r"\bwhat did (?:i|you) (?:say|ask|answer|write|tell me) about\s+(?P<x>.+)$"
    r"|^(?:(?:please|now|and)\s+)*(?:search(?:\s+for)?|look up)\s+(?P<y>.+)$",
    re.IGNORECASE,
)
_FETCH = _rule(r"(?:fetch|get|download|open)\s+(?P<x>\S+)$")
_URL = re.compile(
    r"^(?:https?://\S+|[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}(?::\d+)?(?:/\S*)?)$", re.I
)
_CLOCK = re.compile(
    r"\bwhat time is it\b|\bwhat(?:'s| is) the (?P<a>time|date|day)\b"
    r"|\bwhat (?P<b>day|date) is (?:it|today)\b|\btoday's (?P<c>date)\b"
    r"|\bcurrent (?P<d>time|date)\b|\bwhat(?:'s| is) (?P<e>today)\b",
    re.IGNORECASE,
)
_ZONE = re.compile(r"\bin\s+(?P<z>.+)$")
_IANA = re.compile(r"^(?:UTC|GMT|[A-Za-z][A-Za-z_\-]*(?:/[A-Za-z0-9][\w+\-]*)+)$")
_FOLLOW_BINARY = _rule(
    r"(?P<verb>add|plus|subtract|minus|take away|multiply(?: it| that| the result)? by|times"
    r"|divide(?: it| that| the result)? by)\s+(?P<x>.+?)"
    r"(?:\s+(?:to|from) (?:it|that|the result))?$"
)
_FOLLOW_UNARY = _rule(r"(?P<verb>double|triple|halve|square|cube) (?:it|that|the result)$")
_BINARY_VERBS = {
    "add": ("+", "adding {x}"),
    "plus": ("+", "adding {x}"),
    "subtract": ("-", "subtracting {x}"),
    "minus": ("-", "subtracting {x}"),
    "take away": ("-", "subtracting {x}"),
    "multiply": ("*", "multiplying by {x}"),
    "times": ("*", "multiplying by {x}"),
    "divide": ("/", "dividing by {x}"),
}
_UNARY_VERBS = {
    "double": ("*", "2", "doubling"),
    "triple": ("*", "3", "tripling"),
    "halve": ("/", "2", "halving"),
    "square": ("**", "2", "squaring"),
    "cube": ("**", "3", "cubing"),
}


def read(clause: str) -> Intent:
    """What `clause` asks for (see the module doc for the grammar)."""
    if match := _RECALL.search(clause):
        about = _ABOUT.search(clause, match.end())
        return Intent("recall", clause, subject=about["x"].strip(" \"'") if about else "")
    if match := _REMEMBER.match(clause):
        return Intent("remember", clause, subject=match["x"].strip())
    if match := _FORGET.match(clause):
        note = match["x"].strip()
        return Intent("forget", clause, subject="" if _FORGET_ALL.match(note) else note)
    if match := _RETRIEVE.search(clause):
        return Intent("retrieve", clause, subject=(match["x"] or match["y"]).strip(" \"'"))
    if (match := _FETCH.match(clause)) and _URL.match(url := match["x"].strip("<>\"'")):
        return Intent("fetch", clause, subject=url if "://" in url else f"https://{url}")
    if match := _CLOCK.search(clause):
        return _clock(clause, match)
    if follow_up := _follow_up(clause):
        return follow_up
    if found := expressions(clause):
        return Intent("arithmetic", clause, expressions=tuple(found))
    return Intent("chat", clause)


def _clock(clause: str, match: re.Match[str]) -> Intent:
    asked = next((group for group in match.groups() if group), "time").lower()
    zone = _ZONE.search(clause, match.end())
    named = zone["z"].strip() if zone else ""
    first = named.split()[0].strip(",.") if named else ""
    if first.upper() in ("UTC", "GMT"):
        first = first.upper()
    return Intent(
        "clock",
        clause,
        timezone=first if _IANA.match(first) else "",
        zone_named=named,
        asks="date" if asked == "today" else asked,
    )


def _follow_up(clause: str) -> Intent | None:
    if match := _FOLLOW_UNARY.match(clause):
        operator, operand, phrase = _UNARY_VERBS[match["verb"].lower()]
        return Intent("follow_up", clause, operator=operator, operand=operand, phrase=phrase)
    if (match := _FOLLOW_BINARY.match(clause)) and is_expression(
        value := match["x"].strip(), needs_operator=False
    ):
        verb = match["verb"].lower()
        operator, phrase = _BINARY_VERBS[verb if verb == "take away" else verb.split()[0]]
        operand = f"({value})" if is_expression(value) else value
        return Intent(
            "follow_up", clause, operator=operator, operand=operand, phrase=phrase.format(x=value)
        )
    return None
