"""GELU: one activation however it is exported, and one lookup table on int8.

torch exports ``nn.GELU`` below opset 20 as ``Div(x, 1.4142) -> Erf -> Add(1) -> Mul(x) ->
Mul(0.5)`` (others write ``Mul(x, 0.7071)`` first, or the ``0.5`` multiply before), its tanh
approximation as ``x * 0.5 * (1 + tanh(0.79788 * (x + 0.044715 x^3)))`` (``Pow(x, 3)`` or
``x * x * x``), and from opset 20 as one ``Gelu`` node.  :func:`gelu` recognises every form from
its last node, in one place for the checker (which places it as one ``gelu`` activation), the
quantizer's plan (no quantize step inside it) and the compiler (one table); on an int8 input
with one output scale it is a function of the input code alone, so it lowers exactly as a
256-entry table, computed by ONNX Runtime on the chain itself (``compiler/fragments.py``).

:func:`canonical_gelus` (a float pass) writes every decomposed form as the chain whose first
node leads through all the others (``Div -> Erf -> Add -> Mul(x) -> Mul(0.5)``;
``Mul(x, k c) -> Mul(x) -> Add(k) -> Mul(x) -> Tanh -> Add(1) -> Mul(x) -> Mul(0.5)`` with
``k = sqrt(2/pi)``, ``c = 0.044715``: 8 nodes, the longest chain ``check/lowerable.py`` walks, no
``Pow``), so the compiler's table walk from that first node (a product with a float constant: a
table op, ``check/lowerable.py``'s ``table_lowered``) covers the whole GELU.  In a quantized model
only a canonical GELU is one activation (:func:`is_canonical`): another form is judged node by
node, as the compiler lowers it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..graph import GraphView, remove_unused_initializers, set_array, unique_name
from ..activation_patterns import PatternView
from ..operators import STANDARD_DOMAINS, TABLE_OPS, close, node_attr
from .activations import FloatView

#: The constants of the two forms (float32 storage is within :data:`npuflow.operators.PATTERN_TOL`).
SQRT2 = math.sqrt(2.0)
TANH_SCALE = math.sqrt(2.0 / math.pi)
TANH_CUBIC = 0.044715
#: What a GELU's table walks through: the table ops and ``Erf``, which has no table of its own (a
#: lone ``Erf`` stays in float on the CPU, as no target file lists ``erf``).
GELU_CHAIN_OPS = TABLE_OPS | {"Erf"}
#: Nodes of the longest canonical GELU (the tanh form).
_MAX_NODES = 8


@dataclass(frozen=True)
class Gelu:
    """A GELU whose last node (``nodes[-1]``) computes the result from ``x``."""

    x: str
    nodes: tuple[onnx.NodeProto, ...]  # computation order
    approximate: str  # none (erf) | tanh


def gelu(end: onnx.NodeProto, g: PatternView) -> Gelu | None:
    """The GELU whose last node is ``end`` (module docstring), or ``None``.  Every tensor made
    inside is read only inside (``g.only_reader``) and none is a graph output; constants must be
    the GELU's (a ``Div`` by 2.0 is not one)."""
    if end.domain not in STANDARD_DOMAINS:
        return None
    if end.op_type == "Gelu":
        approximate = str(node_attr(end, "approximate", "none"))
        return Gelu(g.source(end.input[0]), (end,), approximate) if approximate in ("none", "tanh") else None
    if end.op_type != "Mul":
        return None
    factors, muls = _product(end, g)
    scalars = [g.scalar(t) for t in factors]
    tensors = [g.source(t) for t, s in zip(factors, scalars) if s is None]
    scale = math.prod(s for s in scalars if s is not None)
    if len(tensors) != 2 or not close(scale, 0.5):
        return None
    for x, y in ((tensors[0], tensors[1]), (tensors[1], tensors[0])):
        inner = _one_plus(y, x, g)
        if inner is not None:
            nodes, approximate = inner
            return Gelu(x, (*nodes, *muls), approximate)
    return None


def _product(end: onnx.NodeProto, g: PatternView) -> tuple[list[str], list[onnx.NodeProto]]:
    """The factors of the product ``end`` computes through ``Mul`` nodes read only by the next
    (``x * 0.5 * (1 + f)`` in any association), and those ``Mul`` nodes, ``end`` last."""
    factors: list[str] = []
    muls: list[onnx.NodeProto] = []

    def walk(mul: onnx.NodeProto) -> None:
        for t in mul.input:
            p = g.producer(g.source(t)) if g.scalar(t) is None else None
            if p is not None and p.op_type == "Mul" and _same(g.only_reader(g.source(t)), mul):
                walk(p)
            else:
                factors.append(t)
        muls.append(mul)

    walk(end)
    return factors, muls


def _one_plus(y: str, x: str, g: PatternView) -> tuple[list[onnx.NodeProto], str] | None:
    """``y = 1 + erf(x / sqrt 2)`` or ``1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))``: its nodes and form."""
    add = g.producer(y)
    if add is None or add.op_type != "Add" or g.only_reader(y) is None:
        return None
    t = _other(add, 1.0, g)
    f = g.producer(t) if t is not None else None
    if f is None or f.op_type not in ("Erf", "Tanh") or not _same(g.only_reader(t), add):
        return None
    arg = g.source(f.input[0])
    scaled = g.producer(arg)
    if scaled is None or not _same(g.only_reader(arg), f):
        return None
    if f.op_type == "Erf":
        if scaled.op_type == "Div" and g.source(scaled.input[0]) == x and close(g.scalar(scaled.input[1]), SQRT2) or \
                scaled.op_type == "Mul" and _other(scaled, 1.0 / SQRT2, g) == x:
            return [scaled, f, add], "none"
        return None
    if scaled.op_type != "Mul":
        return None
    u = _other(scaled, TANH_SCALE, g)
    inner = _cubic(u, x, g) if u is not None else _scaled_quadratic(scaled, x, g)
    return ([*inner, scaled, f, add], "tanh") if inner is not None else None


def _scaled_quadratic(mul: onnx.NodeProto, x: str, g: PatternView) -> list[onnx.NodeProto] | None:
    """``mul = x * (x (k c x) + k)`` (``k = sqrt(2/pi)``, ``c = 0.044715``: the canonical tanh
    form, :func:`canonical_gelus`): the nodes before ``mul`` in order."""
    s = _times_x(mul, x, g)
    add = g.producer(s) if s is not None else None
    q = _other(add, TANH_SCALE, g) if add is not None and add.op_type == "Add" and _single_reader(s, g) else None
    square = g.producer(q) if q is not None and _single_reader(q, g) else None
    a = _times_x(square, x, g) if square is not None else None
    first = g.producer(a) if a is not None and _single_reader(a, g) else None
    if first is None or first.op_type != "Mul" or _other(first, TANH_SCALE * TANH_CUBIC, g) != x:
        return None
    return [first, square, add]


def _times_x(mul: onnx.NodeProto, x: str, g: PatternView) -> str | None:
    """The other factor of ``mul = x * t`` (``t`` not ``x``), or ``None``."""
    ins = [g.source(i) for i in mul.input]
    if mul.op_type != "Mul" or len(ins) != 2 or ins.count(x) != 1:
        return None
    return ins[1] if ins[0] == x else ins[0]


def _cubic(u: str, x: str, g: PatternView) -> list[onnx.NodeProto] | None:
    """``u = x + 0.044715 * x^3`` (``Pow(x, 3)``, ``x * x * x``, or tf2onnx's ``x * (x * (0.044715 x))``):
    its nodes in order."""
    add = g.producer(u)
    if add is None or add.op_type != "Add" or not _single_reader(u, g):
        return None
    ins = [g.source(i) for i in add.input]
    if len(ins) != 2 or x not in ins:
        return None
    v = ins[1] if ins[0] == x else ins[0]
    mul = g.producer(v)
    c = _other(mul, TANH_CUBIC, g) if mul is not None and mul.op_type == "Mul" and _single_reader(v, g) else None
    if c is None and mul is not None and _single_reader(v, g):  # x * (x * (0.044715 x)): tf2onnx's order
        inner = _times_x(mul, x, g)
        inner_node = g.producer(inner) if inner is not None and _single_reader(inner, g) else None
        first_t = _times_x(inner_node, x, g) if inner_node is not None else None
        first = g.producer(first_t) if first_t is not None and _single_reader(first_t, g) else None
        if first is not None and first.op_type == "Mul" and _other(first, TANH_CUBIC, g) == x:
            return [first, inner_node, mul, add]
        return None
    cube = g.producer(c) if c is not None else None
    if cube is None or not _single_reader(c, g):
        return None
    if cube.op_type == "Pow" and g.source(cube.input[0]) == x and close(g.scalar(cube.input[1]), 3.0):
        return [cube, mul, add]
    if cube.op_type == "Mul":
        a, b = (g.source(i) for i in cube.input)
        sq = b if a == x else a if b == x else None
        sq_node = g.producer(sq) if sq is not None else None
        if sq_node is not None and sq_node.op_type == "Mul" and _single_reader(sq, g) and \
                [g.source(i) for i in sq_node.input] == [x, x]:
            return [sq_node, cube, mul, add]
    return None


def _other(node: onnx.NodeProto, constant: float, g: PatternView) -> str | None:
    """The tensor a binary ``node`` combines with a scalar equal to ``constant`` (either side)."""
    if len(node.input) != 2:
        return None
    for t, k in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        if g.scalar(t) is None and close(g.scalar(k), constant):
            return g.source(t)
    return None


def _single_reader(t: str, g: PatternView) -> bool:
    return g.only_reader(t) is not None


def _same(a: onnx.NodeProto | None, b: onnx.NodeProto) -> bool:
    """Node identity by output names (protobuf wrappers are not stable Python objects)."""
    return a is not None and list(a.output) == list(b.output)


_CANONICAL = {"none": 5, "tanh": 8}


def is_canonical(found: Gelu) -> bool:
    """A single ``Gelu`` node, or the decomposed chain :func:`canonical_gelus` writes: each node
    reads the one before it (the first reads ``x`` and a float constant)."""
    nodes = found.nodes
    if len(nodes) == 1:
        return True
    if len(nodes) != _CANONICAL[found.approximate] or nodes[0].op_type not in ("Div", "Mul") or \
            (found.approximate == "tanh" and nodes[4].op_type != "Tanh"):
        return False
    return all(nodes[k - 1].output[0] in nodes[k].input for k in range(1, len(nodes)))


def table_ops(node: onnx.NodeProto, g: PatternView) -> frozenset[str]:
    """The ops a lookup table that starts or ends at ``node`` may walk through (``check/lowerable.py``'s
    chain walks, the compiler's ``lower_unary``): :data:`GELU_CHAIN_OPS` when ``node`` is the first
    or the last node of a canonical GELU (:func:`is_canonical`), else the table ops."""
    found = gelu(node, g)
    if found is not None and is_canonical(found):
        return GELU_CHAIN_OPS
    t = node
    for _ in range(_MAX_NODES - 1):
        t = g.only_reader(t.output[0]) if t.output else None
        if t is None:
            break
        found = gelu(t, g)
        if found is not None:
            return GELU_CHAIN_OPS if is_canonical(found) and _same(found.nodes[0], node) else TABLE_OPS
    return TABLE_OPS


def float_gelus(graph: onnx.GraphProto, idx: GraphView | None = None) -> list[Gelu]:
    """Every GELU of a float graph (:func:`gelu`), in graph order of their last nodes."""
    view = FloatView(idx or GraphView(graph))
    return [found for node in graph.node if (found := gelu(node, view)) is not None]


def canonical_gelus(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model whose decomposed GELUs are the canonical chains (:func:`is_canonical`) with
    constants of their own (:func:`_own_constants`); the last node keeps its name and output,
    results agree within float rounding."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    changed = True
    while changed:
        changed = False
        for found in float_gelus(graph):
            if not is_canonical(found):
                _rewrite(graph, found)
                changed = True
                break
    _own_constants(graph)
    remove_unused_initializers(graph)
    return out


def _own_constants(graph: onnx.GraphProto) -> None:
    """Give each canonical GELU a copy of every constant it shares with a node outside it.

    Why: torch's dynamo exporter writes one ``1.0`` for a BERT's ``1 - attention_mask`` and both
    GELUs' ``1 + erf``; the quantizer quantizes the ``Sub``'s constant, the export hands every
    quantized reader its dequantized copy, and the compiler's GELU match (a float scalar ``1``)
    then failed: on bernoulli2 and cpu-int8 the GELUs ran in float on the CPU, with two more
    accelerator subgraphs than ``check`` said (new-user round 26, TinyBERT: 7 -> 9 BPU)."""
    view = GraphView(graph)
    for found in float_gelus(graph, view):
        inside = {o for n in found.nodes for o in n.output}
        for node in found.nodes:
            for k, t in enumerate(node.input):
                if t not in view.inits or all(set(r.output) <= inside for r in view.consumer_nodes(t)):
                    continue
                copy = unique_name(graph, f"{node.name or node.output[0]}/gelu_const")
                set_array(graph, copy, view.const(t).copy(), add=True)
                node.input[k] = copy


def _rewrite(graph: onnx.GraphProto, found: Gelu) -> None:
    """Replace ``found``'s nodes by the canonical chain at the position of its last node."""
    from .activations import _splice  # the activation patterns' splice (same package)

    end = found.nodes[-1]
    base = end.name or end.output[0]
    x = found.x

    def const(tag: str, value: float) -> str:
        name = unique_name(graph, f"{base}/gelu_{tag}")
        set_array(graph, name, np.array(value, dtype=np.float32), add=True)
        return name

    def tensor(tag: str) -> str:
        return unique_name(graph, f"{base}/gelu_{tag}_output")

    if found.approximate == "none":
        steps = [("Div", [x, const("sqrt2", SQRT2)]), ("Erf", []), ("Add", [const("one", 1.0)]),
                 ("Mul", [x])]
    else:
        steps = [("Mul", [x, const("cubic", TANH_SCALE * TANH_CUBIC)]), ("Mul", [x]),
                 ("Add", [const("scale", TANH_SCALE)]), ("Mul", [x]), ("Tanh", []), ("Add", [const("one", 1.0)]),
                 ("Mul", [x])]
    names = _source_names(found, [op for op, _ in steps], base)
    new: list[onnx.NodeProto] = []
    prev: str | None = None
    for k, (op, extra) in enumerate(steps):
        ins = extra if prev is None else [prev, *extra]
        prev = tensor(f"{k}_{op.lower()}")
        new.append(helper.make_node(op, ins, [prev], name=names[k]))
    new.append(helper.make_node("Mul", [prev, const("half", 0.5)], [end.output[0]], name=end.name))
    _splice(graph, list(found.nodes), new)


def _source_names(found: Gelu, ops: list[str], base: str) -> list[str]:
    """Names for the canonical chain's steps (``ops``, all but the last node): the name of the
    replaced node at the same distance from the GELU's last node where that node has the same op
    type and a name, else ``{base}/gelu_{k}_{op}``.

    Why: ``check`` judges the user's model and names its nodes; ``compile`` the rewritten one.  With
    made-up names (``/Mul_6/gelu_0_mul``) the two could not be matched (new-user round 28b, T5 on
    B4096: 8 source nodes per GELU in check, 7 unmatched names in compile).  Aligned from the end,
    torch's 9-node ``x * x * x`` form keeps 8 of its names; only its first ``x * x`` has none."""
    inner = list(found.nodes[:-1])
    offset = len(inner) - len(ops)
    names = []
    for k, op in enumerate(ops):
        src = inner[k + offset] if k + offset >= 0 else None
        same = src is not None and src.op_type == op and src.name
        names.append(src.name if same else f"{base}/gelu_{k}_{op.lower()}")
    return names
