"""Small deterministic tool experts, usable as ``kind: callable`` experts."""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction

from expertgraph.core.errors import CalculatorError

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_EXPRESSION = re.compile(r"[-+]?[\d.(][\d\s.+\-*/%()^×÷x]*[\d)]")
_WORDS = {
    "plus": "+",
    "minus": "-",
    "times": "*",
    "multiplied by": "*",
    "divided by": "/",
    "over": "/",
}


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return Fraction(str(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (right.denominator != 1 or abs(right) > 64):
            raise CalculatorError("only small integer powers are supported")
        return Fraction(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    raise CalculatorError(f"unsupported expression element: {type(node).__name__}")


def evaluate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly (no names, no calls) and format the result."""
    expression = expression.replace("^", "**").replace("×", "*").replace("÷", "/")
    expression = re.sub(r"(?<=\d)\s*x\s*(?=\d)", "*", expression)
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from exc
    try:
        value = _eval(tree)
    except ZeroDivisionError as exc:
        raise CalculatorError("division by zero") from exc
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.10g}"


def calculator(prompt: str) -> str:
    """Compute the last arithmetic expression in a prompt ("What is 17 + 25?", "12 times 3").

    The last one, because a plan step's prompt starts with earlier steps' results and ends
    with its own instruction.
    """
    text = prompt.lower()
    for word, symbol in _WORDS.items():
        text = re.sub(rf"\b{word}\b", f" {symbol} ", text)
    candidates = [m.group(0) for m in _EXPRESSION.finditer(text)]
    candidates = [c for c in candidates if re.search(r"\d\s*[-+*/%^×÷x]\s*[\d(]", c)]
    if not candidates:
        raise CalculatorError(f"no arithmetic expression in {prompt!r}")
    return evaluate(candidates[-1])
