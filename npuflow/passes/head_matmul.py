"""A MatMul with a constant of one matrix per head (``x @ W``, W: 1 x h x K x N) as h 2-D products.

BoTNet's relative-position logits ``q^T @ (rel_h + rel_w)`` multiply each head's queries by that
head's own constant K x N matrix: the exporter writes one ``MatMul`` with a rank-4 constant, and the
integer programs take a 2-D constant only, so check said "MatMul constant must be 2-D" and cpu-int8
ran it in float on the CPU, cut out of the attention's integer subgraph (round 24).  Along the head
axis the product is h independent ones: ``Slice`` each head of ``x`` (width 1), multiply it by its
2-D matrix, ``Concat`` the results on that axis: the same products and sums, exact.  Only where the
constant's leading axes are 1 but one (the heads, equal to ``x``'s size there, at most
:data:`MAX_HEADS`), ``x``'s rank equals the constant's, and the target runs slices, concats,
matrix products with a constant and transposes: on bernoulli2, which has no transpose, the
attention's ``q^T`` already runs on the CPU, and the heads' slices and products followed it there
(BoTNet: 12 -> 15 CPU nodes, the same 3 BPU subgraphs); cpu-int8: 3 -> 2 CPU nodes, 3 -> 2 subgraphs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import GraphView, remove_unused_initializers
from ..targets import Target
from ..value_info import dims_of
from .activations import _splice

#: more heads than this stay one node (each head is a node of its own after the rewrite)
MAX_HEADS = 16


def head_matmuls_as_2d(model: onnx.ModelProto, target: Target | None) -> onnx.ModelProto:
    """A new model with each ``x @ W`` of a per-head constant ``W`` written as per-head 2-D products
    (the model itself when nothing changes)."""
    if not runs_per_head(target):
        return model
    if not any(n.op_type == "MatMul" and not n.domain for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = GraphView(out.graph)
    dims = dims_of(out, [n.input[0] for n in out.graph.node if n.op_type == "MatMul" and not n.domain
                         and (w := view.value(n.input[1])) is not None and w.ndim >= 3])
    changed = False
    for node in list(out.graph.node):
        if node.op_type != "MatMul" or node.domain:
            continue
        w = view.value(node.input[1])
        x_dims = dims.get(node.input[0]) or ()
        if w is None or view.value(node.input[0]) is not None:
            continue
        axis = head_axis(w.shape, x_dims)
        if axis is None:
            continue
        name = node.name or node.output[0]
        _splice(out.graph, [node], _per_head(out.graph, node, w, axis, name))
        changed = True
    if not changed:
        return model
    remove_unused_initializers(out.graph)
    return out


def runs_per_head(target: Target | None) -> bool:
    """Whether ``target`` runs what the per-head rewrite writes: slices, a concat, matrix products with a
    constant and transposes (``q^T`` beside it)."""
    return target is not None and all(target.rule(op) is not None for op in ("strided_slice", "concat", "fc", "transpose"))


def head_axis(w_shape: tuple[int, ...], x_dims: tuple | list) -> int | None:
    """The head axis of a per-head constant of shape ``w_shape`` multiplying an operand of dims ``x_dims``:
    the one leading axis not 1, of the operand's size there and at most :data:`MAX_HEADS`, the ranks equal;
    None when the constant is not one matrix per head."""
    if len(w_shape) < 3 or len(x_dims) != len(w_shape):
        return None
    heads = [a for a, size in enumerate(w_shape[:-2]) if size != 1]
    if len(heads) != 1 or x_dims[heads[0]] != w_shape[heads[0]] or w_shape[heads[0]] > MAX_HEADS:
        return None
    return heads[0]


def _per_head(graph: onnx.GraphProto, node: onnx.NodeProto, w: np.ndarray, axis: int, name: str) -> list:
    """The nodes of ``node``'s product head by head: a width-1 ``Slice`` of the input, its 2-D product,
    and the ``Concat`` of the products (named as ``node``, its output kept); the constants go to ``graph``."""
    nodes, parts = [], []
    graph.initializer.append(numpy_helper.from_array(np.array([axis], np.int64), f"{name}/axes"))
    lead = tuple(0 for _ in range(w.ndim - 2))
    for i in range(w.shape[axis]):
        at = list(lead)
        at[axis] = i
        for key, value in (("starts", i), ("ends", i + 1)):
            graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), f"{name}/head{i}/{key}"))
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w[tuple(at)]), f"{name}/head{i}/weight"))
        x_i, y_i = f"{node.output[0]}/head{i}/x", f"{node.output[0]}/head{i}"
        nodes += [helper.make_node("Slice", [node.input[0], f"{name}/head{i}/starts", f"{name}/head{i}/ends",
                                             f"{name}/axes"], [x_i], name=f"{name}/head{i}/slice"),
                  helper.make_node("MatMul", [x_i, f"{name}/head{i}/weight"], [y_i], name=f"{name}/head{i}")]
        parts.append(y_i)
    return [*nodes, helper.make_node("Concat", parts, [node.output[0]], name=name, axis=axis)]
