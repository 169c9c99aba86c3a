"""A tiny, safe arithmetic language for limits written in target files.

Vendor tables state limits as formulas over layer parameters and hardware parameters, e.g.
``kernel_w * kernel_h * ceil(input_channel / channel_parallel) <= bank_depth``.  Target files keep
those formulas verbatim; this module evaluates them with Python's ``ast`` restricted to numbers,
names, arithmetic, comparisons, ``and``/``or``/``not`` and a few functions.  Nothing else is
accepted, so a target file can never run code.
"""

from __future__ import annotations

import ast
import math
import operator
from functools import lru_cache
from typing import Callable, Mapping

from ..errors import NpuflowError

_BINOPS: dict[type, Callable] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS: dict[type, Callable] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_FUNCS: dict[str, Callable] = {
    "ceil": math.ceil, "floor": math.floor, "min": min, "max": max, "abs": abs,
}


#: Largest value a formula may compute, in bits: limits compare layer and hardware sizes, and
#: without a bound ``9**9**9**9`` keeps the checker busy for ever.
MAX_BITS = 4096


class ExprError(ValueError):
    """A formula that does not parse, uses something not allowed, or names an unknown value."""


class ExprBoundError(ExprError):
    """A formula whose value would exceed :data:`MAX_BITS` (or repeat a string): refused before
    the arithmetic runs, because Python's integers would grow without limit."""


@lru_cache(maxsize=4096)
def compile_expr(text: str) -> ast.Expression:
    """Parse once and validate that only allowed syntax is used."""
    try:
        tree = ast.parse(str(text), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"cannot parse {text!r}: {exc.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _FUNCS) or node.keywords:
                raise ExprError(f"{text!r}: only {sorted(_FUNCS)} may be called")
        elif not isinstance(node, (
            ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Name,
            ast.Constant, ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
        )):
            raise ExprError(f"{text!r}: {type(node).__name__} is not allowed in a limit formula")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, bool, str)):
            raise ExprError(f"{text!r}: only numbers and strings may appear as constants")
    _check_constant_parts(tree, str(text))
    return tree


def _check_constant_parts(tree: ast.Expression, text: str) -> None:
    """Evaluate every part without names now, so a target file whose constants break
    :data:`MAX_BITS` is refused when it is loaded (other failures surface where they did)."""
    for node in ast.walk(tree.body):
        if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Call)) and not any(
                isinstance(n, ast.Name) and not (isinstance(node, ast.Call) and n is node.func) for n in ast.walk(node)):
            try:
                _eval(node, {}, text)
            except ExprBoundError:
                raise
            except (ExprError, ArithmeticError, TypeError, ValueError):
                pass


def evaluate(text: str | int | float, names: Mapping[str, float]) -> float | bool:
    """Value of a formula (numbers pass through unchanged)."""
    if isinstance(text, (int, float)):
        return text
    try:
        return _eval(compile_expr(text).body, names, str(text))
    except ExprBoundError as exc:
        reason = str(exc).removeprefix(f"{str(text)!r}: ")
        raise NpuflowError("NPF_TARGET_FORMULA_BOUND", expr=str(text), reason=reason) from None


def names_in(text: str | int | float) -> set[str]:
    """Names a formula refers to (functions excluded)."""
    if isinstance(text, (int, float)):
        return set()
    tree = compile_expr(text)
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - called


def _eval(node: ast.AST, names: Mapping[str, float], text: str):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ExprError(f"{text!r}: unknown name {node.id!r}")
        return names[node.id]
    if isinstance(node, ast.BinOp):
        return _arith(node.op, _eval(node.left, names, text), _eval(node.right, names, text), text)
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, names, text)
        if isinstance(node.op, ast.USub):
            return -value
        if isinstance(node.op, ast.UAdd):
            return value
        return not value
    if isinstance(node, ast.BoolOp):
        values = [_eval(v, names, text) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, names, text)
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, names, text)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call):
        try:
            return _FUNCS[node.func.id](*[_eval(a, names, text) for a in node.args])
        except OverflowError:
            raise ExprBoundError(f"{text!r}: {node.func.id}() of a value out of range") from None
    raise ExprError(f"{text!r}: unsupported expression")


def _arith(op: ast.operator, a, b, text: str):
    """``a op b`` within :data:`MAX_BITS`, checked before computing where Python would not stop."""
    if isinstance(a, str) or isinstance(b, str):
        raise ExprBoundError(f"{text!r}: strings cannot take part in arithmetic")
    if isinstance(op, ast.Pow) and abs(a) > 1 and b > 0 and b * math.log2(abs(a)) > MAX_BITS:
        raise ExprBoundError(f"{text!r}: {a} ** {b} exceeds {MAX_BITS} bits")
    try:
        value = _BINOPS[type(op)](a, b)
    except OverflowError:
        raise ExprBoundError(f"{text!r}: a value exceeds the float range") from None
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise ExprBoundError(f"{text!r}: a value exceeds {MAX_BITS} bits")
    return value
