"""Decomposed PReLU / leaky ReLU: ``Relu(x) + c * Relu(-x)`` as one ``PRelu`` or ``LeakyRelu`` node.

TensorFlow's Keras ``PReLU`` is ``relu(x) - alpha * relu(-x)``, and tf2onnx writes it as
``Relu``, ``Neg``, ``Relu``, ``Mul`` by the constant ``-alpha`` and ``Add`` (or ``Sub`` by
``alpha * Relu(-x)``); in an NHWC model it sits between ``Transpose`` nodes (MEGnet, round 17c:
16 such blocks, per-element slopes of shape HxWxC).  Left as it is, each block is five nodes the
accelerator does not take (``Neg`` has no kernel), so a target that runs PReLU (bernoulli2) or
LeakyReLU never sees one.  Here each block becomes ``PRelu(x, slope)`` (``LeakyRelu`` when every
slope is the same), followed by the transpose the positive branch applied.  A block with more
distinct slopes than :data:`~npuflow.operators.PRELU_MAX_SLOPES` is left as it is: such a PReLU
is not lowered (one code table per slope) and would run in float, where the five nodes run quantized
(MEGnet's per-element slopes, 120x120x25: on cpu-int8 one integer subgraph would become nine).

Exact in float: ``relu(x) + c * relu(-x)`` is ``x`` for ``x >= 0`` and ``-c * x`` otherwise, and
transposes commute with element-wise ops (the slope is transposed into ``x``'s layout).  The slope
is stored with every axis along which it does not vary reduced to 1 (fewer tables to lower).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import GraphView, attr, unique_name
from ..operators import PRELU_MAX_SLOPES
from .one_at_a_time import rewrite_all
from .activations import _splice


def fold_prelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with each decomposed PReLU as one node (unchanged when none is found)."""
    return rewrite_all(model, "Neg", _match, _apply)


def _apply(graph: onnx.GraphProto, idx: GraphView, node: onnx.NodeProto, found) -> None:
    """The block ``node`` closes as one ``PRelu``/``LeakyRelu`` (and the transpose its positive branch applied)."""
    x, slope, perm, old = found
    end = node.output[0]
    name = node.name or end
    flat = slope.reshape(-1)
    prelu_out = end if perm is None else unique_name(graph, f"{name}/prelu")
    if np.all(flat == flat[0]):
        new = [helper.make_node("LeakyRelu", [x], [prelu_out], name=name, alpha=float(flat[0]))]
    else:
        slope_name = unique_name(graph, f"{name}/slope")
        graph.initializer.append(numpy_helper.from_array(slope.astype(np.float32), slope_name))
        new = [helper.make_node("PRelu", [x, slope_name], [prelu_out], name=name)]
    if perm is not None:
        new.append(helper.make_node("Transpose", [prelu_out], [end], name=f"{name}/transpose", perm=perm))
    _splice(graph, old, new)


def _match(end: onnx.NodeProto, idx: GraphView, dims: dict):
    """``(x, slope in x's layout, perm after the PReLU or None, nodes replaced)`` when ``end`` (an
    ``Add``/``Sub``) closes ``T_p(Relu(x)) (+|-) T_b(T_a(Relu(Neg(x))) * c)``, ``T`` chains of
    ``Transpose`` with ``T_p = T_b after T_a``; else ``None``."""
    if end.domain or end.op_type not in ("Add", "Sub") or len(end.input) != 2:
        return None
    orders = [(0, 1), (1, 0)] if end.op_type == "Add" else [(0, 1)]
    for pos_i, neg_i in orders:
        pos = _through_transposes(end.input[pos_i], idx)
        neg = _through_transposes(end.input[neg_i], idx)
        if pos is None or neg is None:
            continue
        relu, p_perm, p_nodes = pos
        mul, b_perm, b_nodes = neg
        if relu.op_type != "Relu" or mul.op_type != "Mul" or mul.domain or relu.domain:
            continue
        for k in (0, 1):
            c = idx.const(mul.input[1 - k])
            inner = _through_transposes(mul.input[k], idx)
            if c is None or c.dtype.kind != "f" or inner is None:
                continue
            relu_n, a_perm, a_nodes = inner
            neg_node = idx.producer_node(relu_n.input[0]) if relu_n.op_type == "Relu" else None
            if neg_node is None or neg_node.op_type != "Neg" or neg_node.domain \
                    or neg_node.input[0] != relu.input[0] or idx.only_consumer(neg_node.output[0]) is not relu_n:
                continue
            x = relu.input[0]
            rank = _rank(x, dims, a_perm, b_perm, p_perm)
            if rank is None or _compose(a_perm, b_perm, rank) != _compose(p_perm, None, rank):
                continue
            slope = _slope(c, rank, a_perm, dims.get(x))
            if slope is None or (slope.size > PRELU_MAX_SLOPES and np.any(slope != slope.flat[0])):
                continue
            if end.op_type == "Add":
                slope = -slope
            perm = _compose(p_perm, None, rank)
            old = [relu, *p_nodes, neg_node, relu_n, *a_nodes, mul, *b_nodes, end]
            return x, slope, None if perm == list(range(rank)) else perm, old
    return None


def _through_transposes(tensor: str, idx: GraphView):
    """Walking up from ``tensor`` through ``Transpose`` nodes each read only by the next: the
    first other producer, the composed permutation (``None``: no transpose) and the transposes;
    ``None`` when the producer is missing or one of these tensors has another reader."""
    perms: list[list[int]] = []
    nodes: list[onnx.NodeProto] = []
    while True:
        node = idx.producer_node(tensor)
        if node is None or idx.only_consumer(tensor) is None:
            return None
        if node.op_type != "Transpose" or node.domain:
            break
        perm = attr(node, "perm")
        if perm is None:
            return None
        perms.insert(0, perm)
        nodes.insert(0, node)
        tensor = node.input[0]
    composed = None
    for p in perms:
        composed = p if composed is None else [composed[j] for j in p]
    return node, composed, nodes


def _compose(first: list[int] | None, then: list[int] | None, rank: int) -> list[int]:
    """The permutation of ``transpose(transpose(y, first), then)`` (``None``: identity)."""
    a = first if first is not None else list(range(rank))
    return a if then is None else [a[j] for j in then]


def _rank(x: str, dims: dict, *perms: list[int] | None) -> int | None:
    ranks = {len(p) for p in perms if p is not None}
    if x in dims:
        ranks.add(len(dims[x]))
    return ranks.pop() if len(ranks) == 1 else None


def _slope(c: np.ndarray, rank: int, a_perm: list[int] | None, x_dims) -> np.ndarray | None:
    """``c`` (multiplying ``transpose(relu(-x), a_perm)``) in ``x``'s layout at ``x``'s rank, each
    axis along which it is constant reduced to 1; ``None`` when ``c`` would broadcast ``x`` to a
    larger shape (then the sum is not a PReLU of ``x``) or ``x``'s sizes are not known."""
    if c.ndim > rank:
        return None
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)
    if a_perm is not None:
        full = np.transpose(full, np.argsort(a_perm))
    if x_dims is None and full.size != 1:
        return None
    for axis, size in enumerate(full.shape):
        if size != 1 and (x_dims is None or x_dims[axis] != size):
            return None
    for axis in range(rank):
        if full.shape[axis] > 1 and np.all(full == np.take(full, [0], axis=axis)):
            full = np.take(full, [0], axis=axis)
    return np.ascontiguousarray(full)
