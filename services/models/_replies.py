"""What the scripted model says when it answers directly, without a tool."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from services.models._clauses import Intent

__all__ = ["chat", "leftover", "not_offered", "sentence"]

# In the order the model lists what it can do.
_CAN = {
    "calculator": 'work out arithmetic ("what is 6*7", "then add 8")',
    "memory": 'remember things ("remember ...", "what do you remember", "forget ...")',
    "retrieve": 'search earlier answers ("what did I say about ...")',
    "clock": 'tell the time or date ("what time is it in Europe/Paris")',
    "http_get": 'fetch a page ("fetch https://example.com")',
}
_GREETING = re.compile(r"^(?:hi|hello|hey|good (?:morning|afternoon|evening))\b", re.I)
_WORD = re.compile(r"[a-z0-9']+")
_STOP = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "can",
        "did",
        "do",
        "does",
        "for",
        "from",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "me",
        "my",
        "of",
        "on",
        "or",
        "so",
        "that",
        "the",
        "this",
        "to",
        "was",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    }
)


def sentence(phrases: Sequence[str]) -> str:
    """Phrases as one sentence: joined with "; ", capitalised, with a full stop."""
    text = "; ".join(phrase for phrase in phrases if phrase)
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.rstrip("\"')")[-1:] in (".", "?", "!") else text + "."


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower())) - _STOP


def chat(clause: str, memory: Sequence[str], offered: Collection[str]) -> str:
    """A direct answer: what the memory says about the clause, and what the model can do."""
    said = []
    if _GREETING.match(clause):
        said.append("Hello!")
    relevant = [note for note in memory if _words(note) & _words(clause)]
    if relevant:
        said.append(sentence(["from what you told me: " + "; ".join(relevant)]))
    elif clause and not said:
        said.append(
            f'I\'m the offline scripted model, and I found no request I know in "{clause}".'
        )
    can = [text for tool, text in _CAN.items() if tool in offered]
    if can:
        listed = ", ".join(can[:-1]) + (" and " if len(can) > 1 else "") + can[-1]
        said.append(f'I can {listed}; join several requests with "then".')
    else:
        said.append("I have no tools here, so I can only answer like this.")
    if memory and not relevant:
        notes = "one note" if len(memory) == 1 else f"{len(memory)} notes"
        said.append(f"I remember {notes} from this conversation.")
    return " ".join(said)


def not_offered(intent: Intent) -> str:
    """Why a clause that needs a tool the run does not offer gets no tool call."""
    purpose = {
        "arithmetic": "work out " + ", ".join(intent.expressions),
        "follow_up": f"go on with {intent.phrase}",
        "remember": "remember that",
        "recall": "look up what you asked me to remember",
        "forget": "forget that",
        "retrieve": f"search earlier answers for {intent.subject}",
        "fetch": f"fetch {intent.subject}",
        "clock": f"tell the {intent.asks}",
    }.get(intent.kind, "do that")
    return f"I would need the {intent.tool} tool to {purpose}, and it is not offered to me here."


def leftover(clauses: Sequence[str]) -> str:
    """The requests a run ends without doing, quoted."""
    return ", ".join(f'"{clause}"' for clause in clauses)
