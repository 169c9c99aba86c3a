"""Activations written out as several nodes, recognised once for every stage.

A hard-sigmoid or hard-swish reaches npuflow as one node, as PaddlePaddle's and Keras's
``x * Clip(x + 3, 0, 6) / 6``, as the DPU's legalised ``Add -> Clip -> Mul(2731/16384)``, or as
``x * HardSigmoid(x)``.  The checker places such a chain as one activation, the float passes rewrite
it as one node, the quantizer and the compiler read an epilogue chain as one unit: all of them ask
the functions here, so the stages cannot disagree on what counts as one activation.  The constants
and the single-node facts (:func:`~npuflow.operators.activation_kind`) stay in
:mod:`npuflow.operators`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import onnx

from .operators import (DPU_HSIGMOID_SCALE, HSIGMOID_ALPHA, HSIGMOID_BETA, HSIGMOID_DIVISOR, HSIGMOID_OFFSET,
                        activation_kind, close, node_attr)


def is_standard_hard_sigmoid(node: onnx.NodeProto) -> bool:
    """``HardSigmoid(alpha=1/6, beta=1/2)``: the hard-sigmoid of hard-swish (PyTorch's, ONNX's)."""
    return (node.op_type == "HardSigmoid" and close(node_attr(node, "alpha", 0.2), HSIGMOID_ALPHA)
            and close(node_attr(node, "beta", 0.5), HSIGMOID_BETA))


def divides_by_six(op_type: str, constant: float | None) -> bool:
    """``Div(t, 6)`` or ``Mul(t, 1/6)`` (the constant being the other operand)."""
    return (op_type == "Div" and close(constant, HSIGMOID_DIVISOR)) or (op_type == "Mul" and close(constant, HSIGMOID_ALPHA))


def is_dpu_hard_sigmoid_scale(constant: float | None) -> bool:
    """The last ``Mul`` of the legalised DPU hard-sigmoid (exactly :data:`DPU_HSIGMOID_SCALE`)."""
    return constant == DPU_HSIGMOID_SCALE


def unit_kind(nodes: Sequence[onnx.NodeProto], scalar: Callable[[str], float | None]) -> str | None:
    """Target kind of an activation unit written as ``nodes`` in graph order (the chain a layer's
    epilogue or a lookup table computes), or ``None`` when it is not one unit.

    Units: one activation node; the DPU hard-sigmoid ``Add(x, 3) -> Clip(0, 6) -> Mul(2731/16384)``
    (or ``/ 6``); hard-swish as ``x * HardSigmoid(x)`` or ``x * relu6(x + 3) [/ 6]``.
    """
    types = [n.op_type for n in nodes]
    if len(nodes) == 1:
        return activation_kind(nodes[0], scalar)
    if types[:3] == ["Add", "Clip", "Mul"] or types[:3] == ["Add", "Clip", "Div"]:
        add, clip, scale = nodes[:3]
        if not (_has_scalar(add, HSIGMOID_OFFSET, scalar) and activation_kind(clip, scalar) == "relu6"):
            return None
        k = _other_scalar(scale, scalar)
        if not (divides_by_six(scale.op_type, k) or is_dpu_hard_sigmoid_scale(k)):
            return None
        if len(nodes) == 3:
            return "hard_sigmoid"
        return "hard_swish" if types[3:] == ["Mul"] and len(nodes) == 4 else None
    if types == ["HardSigmoid", "Mul"]:
        return "hard_swish"
    return None


def _other_scalar(node: onnx.NodeProto, scalar: Callable[[str], float | None]) -> float | None:
    values = [v for v in (scalar(t) for t in node.input if t) if v is not None]
    return values[0] if len(values) == 1 else None


def _has_scalar(node: onnx.NodeProto, expected: float, scalar: Callable[[str], float | None]) -> bool:
    return close(_other_scalar(node, scalar), expected)


class PatternView(Protocol):
    """The graph questions :func:`hard_activation` asks (the checker's view looks through Q/DQ steps)."""

    def source(self, tensor: str) -> str:
        """The tensor before any quantize/dequantize steps (itself in a float graph)."""

    def producer(self, tensor: str) -> onnx.NodeProto | None: ...

    def only_reader(self, tensor: str) -> onnx.NodeProto | None:
        """The one node reading ``tensor`` (through Q/DQ steps), ``None`` when it has several or is an output."""

    def scalar(self, tensor: str) -> float | None:
        """The value of a one-element constant, else ``None``."""


@dataclass(frozen=True)
class HardActivation:
    """A hard-sigmoid or hard-swish written as several nodes; ``nodes[-1]`` computes the result."""

    kind: str  # hard_sigmoid | hard_swish
    x: str
    nodes: tuple[onnx.NodeProto, ...]
    alpha: float = HSIGMOID_ALPHA  # 1.0 for ``x * relu6(x + 3)`` (hard-swish times 6)
    beta: float = HSIGMOID_BETA

    @property
    def times_six(self) -> bool:
        """``x * relu6(x + 3)``: six times a hard-swish (a ``/ 6`` after it completes one)."""
        return self.kind == "hard_swish" and self.nodes[-2].op_type == "Clip"


def _same(a: onnx.NodeProto | None, b: onnx.NodeProto) -> bool:
    """Node identity by output names (protobuf wrappers are not stable Python objects)."""
    return a is not None and list(a.output) == list(b.output)


def _scalar_operand(node: onnx.NodeProto, data: str, g: PatternView) -> float | None:
    """The one scalar constant a binary ``node`` combines with tensor ``data``."""
    others = [t for t in node.input if t and g.source(t) != data]
    return g.scalar(others[0]) if len(others) == 1 else None


def relu6_of_x_plus_3(t: str, g: PatternView) -> tuple[str, list[onnx.NodeProto]] | None:
    """``t = Clip(Add(x, 3), 0, 6)`` (exact ReLU6 bounds, the Add read by the Clip only): ``(x, [add, clip])``."""
    clip = g.producer(g.source(t))
    if clip is None or activation_kind(clip, g.scalar) != "relu6":
        return None
    add = g.producer(g.source(clip.input[0]))
    if add is None or add.op_type != "Add" or not _same(g.only_reader(add.output[0]), clip):
        return None
    for i in add.input:
        x = g.source(i)
        if x and g.scalar(x) is None and close(_scalar_operand(add, x, g), HSIGMOID_OFFSET):
            return x, [add, clip]
    return None


def divided_by_six(t: str, g: PatternView) -> onnx.NodeProto | None:
    """The one reader of ``t`` that divides it by 6 (``Div(t, 6)`` or ``Mul(t, 1/6)``), if any."""
    n = g.only_reader(t)
    if n is None or (n.op_type == "Div" and g.source(n.input[0]) != g.source(t)):
        return None
    return n if divides_by_six(n.op_type, _scalar_operand(n, g.source(t), g)) else None


def hard_activation(end: onnx.NodeProto, g: PatternView) -> HardActivation | None:
    """The decomposed hard-sigmoid / hard-swish whose last node is ``end``, in one place for the
    checker (which places it as one activation) and the float passes (which rewrite it as one node):

    * ``Clip(x + 3, 0, 6) / 6`` -> ``hard_sigmoid``;
    * ``x * Clip(x + 3, 0, 6) / 6`` (PaddlePaddle, Keras) -> ``hard_swish``;
    * ``x * h(x)``, ``h`` a ``HardSigmoid`` node or the first pattern -> ``hard_swish`` (alpha/beta: h's);
    * ``x * Clip(x + 3, 0, 6)`` that nothing divides by 6 -> ``hard_swish`` with alpha 1 (six times one:
      the checker judges its parameters; the float passes leave it).
    """
    if end.op_type in ("Div", "Mul"):
        t = next((i for i in end.input if i and g.scalar(i) is None), None)
        if t is not None and _same(divided_by_six(t, g), end):
            found = relu6_of_x_plus_3(t, g)
            if found is not None:
                return HardActivation("hard_sigmoid", found[0], (*found[1], end))
            mul = g.producer(g.source(t))
            if mul is not None and mul.op_type == "Mul" and (swish := _x_times(mul, g)) is not None \
                    and swish.times_six:
                return HardActivation("hard_swish", swish.x, (*swish.nodes, end))
    if end.op_type == "Mul":
        swish = _x_times(end, g)
        if swish is not None and (not swish.times_six or divided_by_six(end.output[0], g) is None):
            return swish
    return None


def _x_times(mul: onnx.NodeProto, g: PatternView) -> HardActivation | None:
    """``mul = x * h`` with ``h`` a hard-sigmoid of ``x`` read only by ``mul``, or ``relu6(x + 3)``."""
    ins = [g.source(i) for i in mul.input if i]
    if len(ins) != 2:
        return None
    for x, y in ((ins[0], ins[1]), (ins[1], ins[0])):
        h = g.producer(y)
        if h is None or not _same(g.only_reader(y), mul):
            continue
        if h.op_type == "HardSigmoid" and g.source(h.input[0]) == x:
            return HardActivation("hard_swish", x, (h, mul), float(node_attr(h, "alpha", 0.2)),
                                  float(node_attr(h, "beta", 0.5)))
        sig = hard_activation(h, g) if h.op_type in ("Div", "Mul") else None
        if sig is not None and sig.kind == "hard_sigmoid" and sig.x == x:
            return HardActivation("hard_swish", x, (*sig.nodes, mul))
        found = relu6_of_x_plus_3(y, g)
        if found is not None and found[0] == x:
            return HardActivation("hard_swish", x, (*found[1], mul), alpha=1.0)
    return None
