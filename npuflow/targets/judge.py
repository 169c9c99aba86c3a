"""Judging one operation against a target rule, with reasons a user can act on (``check`` places
nodes with it; the quantizer's target rewrites ask it whether a rewritten node would fit).

A reason names the limit, the actual value and the allowed range, the way vendor checkers do
(``kernel 9x9 outside [1,7]x[1,7]``); a failed formula is printed with the values substituted
(``In Size: kernel_w * kernel_h * ceil(input_channel / channel_parallel) <= bank_depth is false
(3*3*ceil(4097/16)=2313 > 2048)``).
"""

from __future__ import annotations

import ast
import logging
from typing import Mapping

from .expr import ExprError, compile_expr, evaluate
from .spec import Constraint, OpRule, ParamLimit

log = logging.getLogger(__name__)

#: Parameters reported together as ``H x W`` (the order vendor tables print kernels in).
PAIRED = ("kernel", "stride", "dilation")
_NEGATE = {ast.Lt: ">=", ast.LtE: ">", ast.Gt: "<=", ast.GtE: "<", ast.Eq: "!=", ast.NotEq: "=="}
_SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}


def fmt(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _bounds(limit: ParamLimit, names: Mapping) -> tuple[float, float]:
    lo, hi = limit.range
    return evaluate(lo, names), evaluate(hi, names)


def _range_text(lo, hi) -> str:
    return f"[{fmt(lo)},{fmt(hi)}]"


def _values_text(values) -> str:
    return "{" + ", ".join(fmt(v) for v in values) + "}"


def _ok(limit: ParamLimit, value, names) -> bool:
    if limit.range is not None:
        lo, hi = _bounds(limit, names)
        if not (lo <= value <= hi):
            return False
    if limit.values is not None and value not in limit.values:
        return False
    return True


def _allowed_text(limit: ParamLimit, names) -> str:
    if limit.range is not None:
        return _range_text(*_bounds(limit, names))
    return _values_text(limit.values or ())


def param_reasons(rule: OpRule, params: Mapping, names: Mapping) -> list[str]:
    """Reasons for every parameter outside its limit (H/W pairs reported together)."""
    reasons: list[str] = []
    done: set[str] = set()
    for pname, limit in rule.params.items():
        if pname in done:
            continue
        if pname not in params:
            log.debug("parameter %s not known for this node; limit not applicable", pname)
            continue
        stem = pname.rsplit("_", 1)[0]
        if stem in PAIRED and pname.endswith(("_w", "_h")):
            h, w = f"{stem}_h", f"{stem}_w"
            done.update((h, w))
            lh, lw = rule.params.get(h), rule.params.get(w)
            bad = [(n, lim) for n, lim in ((h, lh), (w, lw)) if lim is not None and n in params and not _ok(lim, params[n], names)]
            if not bad:
                continue
            value = f"{fmt(params.get(h, '?'))}x{fmt(params.get(w, '?'))}"
            if all(lim is not None and lim.range is not None for lim in (lh, lw)):
                reasons.append(f"{stem} {value} outside {_allowed_text(lh, names)}x{_allowed_text(lw, names)}")
            else:
                reasons.append(f"{stem} {value}: " + ", ".join(
                    f"{n} {fmt(params[n])} not in {_allowed_text(lim, names)}" for n, lim in bad))
            continue
        done.add(pname)
        value = params[pname]
        if _ok(limit, value, names):
            continue
        if limit.range is not None:
            text = f"{pname} {fmt(value)} outside {_allowed_text(limit, names)}"
            formulas = [b for b in limit.range if isinstance(b, str)]
            if formulas:
                text += " (" + ", ".join(f"{b} = {fmt(evaluate(b, names))}" for b in formulas) + ")"
        else:
            shown = f"{value!r}" if isinstance(value, str) else fmt(value)
            text = f"{pname} {shown} not in {_allowed_text(limit, names)}"
        reasons.append(text)
    return reasons


class _Subst(ast.NodeTransformer):
    def __init__(self, names):
        self.names = names

    def visit_Name(self, node):
        if node.id in self.names:
            v = self.names[node.id]
            if isinstance(v, float):
                v = int(v) if v.is_integer() else float(f"{v:.6g}")
            return ast.copy_location(ast.Constant(v), node)
        return node


def _text(node: ast.AST, names) -> str:
    """Sub-expression with values substituted, plus ``=value`` when it is not a bare number."""
    sub = ast.unparse(_Subst(names).visit(ast.parse(ast.unparse(node), mode="eval")))
    sub = sub.replace(" * ", "*").replace(" / ", "/").replace(" + ", "+").replace(" - ", "-")
    value = evaluate(ast.unparse(node), names)
    return sub if isinstance(node, ast.Constant) or sub == fmt(value) or sub == repr(value) else f"{sub}={fmt(value)}"


def _explain(node: ast.AST, names) -> str:
    """Why ``node`` (a false boolean expression) is false, with values."""
    if isinstance(node, ast.BoolOp):
        parts = node.values
        if isinstance(node.op, ast.And):
            for part in parts:
                if not evaluate(ast.unparse(part), names):
                    return _explain(part, names)
        return _explain(parts[-1], names)
    if isinstance(node, ast.Compare):
        if len(node.ops) == 1:
            return f"{_text(node.left, names)} {_NEGATE[type(node.ops[0])]} {_text(node.comparators[0], names)}"
        items = [_text(node.left, names)]
        for op, comp in zip(node.ops, node.comparators):
            items += [_SYMBOL[type(op)], _text(comp, names)]
        return " ".join(items) + " fails"
    return f"{_text(node, names)}"


def constraint_reason(c: Constraint, names: Mapping) -> str | None:
    """``None`` when the formula holds, else the reason text."""
    try:
        if evaluate(c.expr, names):
            return None
    except ExprError as exc:
        log.debug("constraint %r not applicable: %s", c.expr, exc)
        return None
    label = f"{c.label}: " if c.label else ""
    detail = _explain(compile_expr(c.expr).body, names)
    return f"{label}{c.expr} is false ({detail})"


def rule_reasons(rule: OpRule, params: Mapping, hardware: Mapping) -> list[str]:
    """Every limit of ``rule`` the parameters break (empty: the op fits the target)."""
    names = {**hardware, **params}
    reasons = param_reasons(rule, params, names)
    for c in rule.constraints:
        r = constraint_reason(c, names)
        if r:
            reasons.append(r)
    return reasons
