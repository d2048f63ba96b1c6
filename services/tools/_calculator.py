"""`calculator`: arithmetic on numbers, without eval.

The expression comes from a model, which may have copied it from a user or a web page,
so it is hostile until proven otherwise. It is parsed with `ast` and only an allow-list
of nodes is walked: numbers, + - * / // % **, unary signs, parentheses, and a few named
functions and constants. Nothing else (names, attributes, subscripts, strings, calls of
anything but the listed functions) is ever evaluated.

Python integers are unbounded, so `9**9**9` would compute a number of 370 million digits
and pin a worker for minutes: a power is refused before it is computed when its result
would be too large, and every intermediate value is bounded too.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from typing import Any

from services.runtime.config import Settings
from services.tools._spec import JSON, ToolContext, ToolError, ToolSpec

__all__ = ["MAX_EXPRESSION", "MAX_INT_BITS", "Calculator", "evaluate"]

MAX_EXPRESSION = 200
"""Longest expression accepted, in characters."""

MAX_INT_BITS = 1024
"""Largest integer kept, in bits (about 308 decimal digits, the float range)."""

_MAX_FLOAT = 1.0e308
_MAX_DIGITS = 308  # round(x, digits): past the float range digits change nothing

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}

_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}

_FUNCTIONS = ("sqrt", "abs", "round", "min", "max")

_HELP = (
    "use numbers, + - * / // % **, parentheses, "
    f"the functions {', '.join(_FUNCTIONS)} and the constants {', '.join(_CONSTANTS)}"
)

# What a refused node is called in the error message, so the model can fix its call.
_REFUSED = {
    ast.Attribute: "attribute access",
    ast.Subscript: "indexing",
    ast.Compare: "comparisons",
    ast.BoolOp: "and/or",
    ast.IfExp: "if/else",
    ast.Lambda: "lambda",
    ast.Tuple: "tuples",
    ast.List: "lists",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.JoinedStr: "strings",
    ast.Starred: "unpacking",
    ast.NamedExpr: "assignment",
    ast.Await: "await",
}


def _fail(message: str) -> ToolError:
    return ToolError(message, retryable=False)


def _bounded(value: Number) -> Number:
    if isinstance(value, complex):  # a negative number to a fractional power
        raise _fail("the result is not a real number")
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise _fail(f"a number in the calculation exceeds {MAX_INT_BITS} bits")
    elif not math.isfinite(value) or abs(value) > _MAX_FLOAT:
        raise _fail("a number in the calculation is too large (or not finite)")
    return value


def _power(base: Number, exponent: Number) -> Number:
    # Estimated before computing: the work of an integer power grows with its size.
    if base not in (0, 1, -1) and exponent > 0:
        size = float(exponent) * math.log2(abs(base))
        if size > MAX_INT_BITS:
            raise _fail(f"{base} ** {exponent} is too large (more than {MAX_INT_BITS} bits)")
    if base == 0 and exponent < 0:
        raise _fail("division by zero (0 to a negative power)")
    try:
        result: Number = base**exponent
    except OverflowError:
        raise _fail(f"{base} ** {exponent} is too large") from None
    return result


def _call(name: str, args: list[Number]) -> Number:
    if name == "sqrt":
        if len(args) != 1:
            raise _fail("sqrt takes one argument")
        if args[0] < 0:
            raise _fail("sqrt of a negative number")
        return math.sqrt(args[0])
    if name == "abs":
        if len(args) != 1:
            raise _fail("abs takes one argument")
        return abs(args[0])
    if name == "round":
        if len(args) not in (1, 2):
            raise _fail("round takes a number and, optionally, a count of digits")
        if len(args) == 1:
            return round(args[0])
        digits = args[1]
        if not isinstance(digits, int) or not -_MAX_DIGITS <= digits <= _MAX_DIGITS:
            raise _fail(f"round's digits must be an integer from -{_MAX_DIGITS} to {_MAX_DIGITS}")
        return round(args[0], digits)
    if not args:  # min, max
        raise _fail(f"{name} takes at least one argument")
    return min(args) if name == "min" else max(args)


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        # bool is an int to Python, but `True + 1` is no arithmetic a user meant.
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise _fail(f"{node.value!r} is not a number; {_HELP}")
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _eval(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _bounded(_power(left, right))
        operation = _BINARY.get(type(node.op))
        if operation is None:
            raise _fail(f"the operator {type(node.op).__name__} is not supported; {_HELP}")
        try:
            return _bounded(operation(left, right))
        except ZeroDivisionError:
            raise _fail("division by zero") from None
        except OverflowError:
            raise _fail("a number in the calculation is too large") from None
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise _fail(f"unknown name {node.id!r}; {_HELP}")
    if isinstance(node, ast.Call):
        func = node.func
        if not isinstance(func, ast.Name) or func.id not in _FUNCTIONS:
            called = func.id if isinstance(func, ast.Name) else ast.unparse(func)[:40]
            raise _fail(f"{called!r} is not an allowed function; {_HELP}")
        if node.keywords:
            raise _fail(f"{func.id} takes no keyword arguments")
        try:
            return _bounded(_call(func.id, [_eval(arg) for arg in node.args]))
        except OverflowError:
            raise _fail("a number in the calculation is too large") from None
    what = _REFUSED.get(type(node), type(node).__name__)
    raise _fail(f"{what} is not allowed; {_HELP}")


def evaluate(expression: str) -> Number:
    """The value of `expression` (an int when integral and exact), or `ToolError`."""
    if len(expression) > MAX_EXPRESSION:
        raise _fail(f"the expression is longer than {MAX_EXPRESSION} characters")
    if not expression.strip():
        raise _fail("the expression is empty")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        detail = exc.msg if isinstance(exc, SyntaxError) else str(exc) or type(exc).__name__
        raise _fail(f"the expression is not valid arithmetic: {detail}") from None
    try:
        value = _eval(tree)
    except RecursionError:
        raise _fail("the expression is nested too deeply") from None
    # An integral float becomes an int only while floats are exact integers (2**53):
    # int(1e300) would print 300 made-up digits.
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


class Calculator:
    """The `calculator` tool: the value of an arithmetic expression."""

    def __init__(self, settings: Settings) -> None:
        self.spec = ToolSpec(
            name="calculator",
            description=(
                "Evaluate an arithmetic expression exactly: numbers, + - * / // % **, "
                "parentheses, unary minus, sqrt(x), abs(x), round(x[, digits]), "
                "min(a, b, ...), max(a, b, ...), pi and e. Returns the number."
            ),
            schema={
                "type": "object",
                "properties": {
                    "expression": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_EXPRESSION,
                        "description": "For example `(2 + 3) * sqrt(16) / 4`.",
                    }
                },
                "required": ["expression"],
                "additionalProperties": False,
            },
            timeout_s=settings.tool_timeout_s,
            # Same expression, same number: the worker may serve it from the artifact cache.
            cacheable=True,
        )

    async def __call__(self, args: Mapping[str, Any], ctx: ToolContext) -> JSON:
        expression = args.get("expression")
        if not isinstance(expression, str):
            raise _fail('give the expression as a string: {"expression": "1 + 2"}')
        return evaluate(expression)
