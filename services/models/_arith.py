"""Arithmetic as the scripted model reads it: finding expressions in a sentence, and
writing the number a calculator gave back into the next expression.

An expression is numbers, `+ - * / // % ** ^` (`^` is read as `**`, as people mean a
power) and parentheses, with at least one binary operator: "what is 6*7" holds `6*7`,
"6*7 and 12/4" holds two, "what is 42" holds none (nothing to work out), and neither
does a date ("2024-01-05", "12/25/2024"). The scripted
model only recognises expressions; working them out is the calculator tool's job.
"""

from __future__ import annotations

import math
import re

__all__ = ["expressions", "is_expression", "number_text", "operand"]

# Runs of characters that can make up an expression; words end a run, so "6*7 and 12/4"
# yields two candidates.
_CANDIDATE = re.compile(r"[-+*/%^().\d\s]+")
_TOKEN = re.compile(r"\s*(\*\*|//|\d+(?:\.\d*)?|\.\d+|[-+*/%^()])")
# Dates are written with the same characters; "2024-01-05" is a day, not 2018.
_DATE = re.compile(r"^(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}/\d{1,2}/\d{2,4})$")


def _tokens(text: str) -> list[str] | None:
    """The tokens of `text`, or None when something else is in it."""
    tokens: list[str] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            return None
        lexeme = match.group(1)
        tokens.append("**" if lexeme == "^" else lexeme)
        position = match.end()
    return tokens


class _Grammar:
    """expr := term (('+'|'-') term)*; term := power (('*'|'/'|'//'|'%') power)*;
    power := unary ('**' power)?; unary := ('+'|'-') unary | number | '(' expr ')'."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.at = 0
        self.binary = 0  # binary operators seen: a lone number is not arithmetic

    def peek(self) -> str:
        return self.tokens[self.at] if self.at < len(self.tokens) else ""

    def take(self, *options: str) -> bool:
        if self.peek() in options:
            self.at += 1
            return True
        return False

    def expr(self) -> bool:
        if not self.term():
            return False
        while self.take("+", "-"):
            self.binary += 1
            if not self.term():
                return False
        return True

    def term(self) -> bool:
        if not self.power():
            return False
        while self.take("*", "/", "//", "%"):
            self.binary += 1
            if not self.power():
                return False
        return True

    def power(self) -> bool:
        if not self.unary():
            return False
        if self.take("**"):
            self.binary += 1
            return self.power()
        return True

    def unary(self) -> bool:
        if self.take("+", "-"):
            return self.unary()
        if self.take("("):
            return self.expr() and self.take(")")
        token = self.peek()
        if token and (token[0].isdigit() or token[0] == "."):
            self.at += 1
            return True
        return False


def is_expression(text: str, *, needs_operator: bool = True) -> bool:
    """Whether `text` is one well-formed expression (with a binary operator, unless
    `needs_operator` is false: then a lone number counts too)."""
    tokens = _tokens(text)
    if not tokens:
        return False
    grammar = _Grammar(tokens)
    return (
        grammar.expr() and grammar.at == len(tokens) and (grammar.binary > 0 or not needs_operator)
    )


def expressions(text: str) -> list[str]:
    """The expressions in a sentence, in order, as written (`^` becomes `**`)."""
    found: list[str] = []
    for match in _CANDIDATE.finditer(text):
        # Sentence punctuation around an expression ("what is (2+3)**2?", "6*7 -") is
        # not part of it: trim operators that cannot end or start one.
        candidate = match.group().strip().rstrip("+-*/%^(. ").lstrip("*/%^). ")
        if is_expression(candidate) and not _DATE.match(candidate):
            found.append(candidate.replace("^", "**"))
    return found


def number_text(value: float) -> str:
    """A number as the model writes it: 42 for 42.0, the shortest exact form otherwise."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def operand(value: float) -> str:
    """A previous result as the left operand of a new expression: parenthesised when
    negative, so that squaring -5 means (-5) ** 2 and not -(5 ** 2)."""
    text = number_text(value)
    return f"({text})" if text.startswith("-") else text
