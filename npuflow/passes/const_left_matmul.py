"""A MatMul whose first operand is a 2-D constant (``W @ x``) as ``(x^T @ W^T)^T``.

Linformer projects keys and values along the sequence, ``k' = E @ k`` with a learned ``E`` of
k x n and ``k`` of B x n x D (round 24); the integer programs take a MatMul's constant as the
second operand only, so check said "MatMul's first operand is a constant (W @ x); only x @ W is
lowered" and both projections ran in float on the CPU, each a round trip out of the accelerator
subgraph.  ``W @ x = (x^T @ W^T)^T`` with the last two axes of ``x`` and of the product swapped:
``Transpose -> MatMul(x^T, W^T) -> Transpose``, the same products summed over the same axis (a
float sum may round in its last bit differently).  Only where the target runs a transpose (cpu-int8,
the DPUs; not bernoulli2, where the two transposes would run on the CPU in its place) and ``x``'s
rank is known and at least 2.  A constant of one matrix per head (``1 x h x m x K``: a Set Transformer's
learned inducing-point queries against each head's keys, round 25) transposes each head's matrix; the
per-head pass after this one (:mod:`.head_matmul`) writes the product as 2-D ones, so it is taken only
where that pass takes the result.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import GraphView, remove_unused_initializers
from ..targets import Target
from ..value_info import dims_of
from .activations import _splice
from .head_matmul import head_axis, runs_per_head


def const_left_matmuls_as_right(model: onnx.ModelProto, target: Target | None) -> onnx.ModelProto:
    """A new model with each ``W @ x`` (W a 2-D or per-head constant) written as ``(x^T @ W^T)^T`` where ``target``
    runs a transpose (the model itself when nothing changes)."""
    if target is None or target.rule("transpose") is None:
        return model
    if not any(n.op_type == "MatMul" and not n.domain for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = GraphView(out.graph)
    dims = dims_of(out, [n.input[1] for n in out.graph.node if n.op_type == "MatMul" and not n.domain
                         and (w := view.value(n.input[0])) is not None and w.ndim >= 2])
    changed = False
    for node in list(out.graph.node):
        if node.op_type != "MatMul" or node.domain:
            continue
        w = view.value(node.input[0])
        x_dims = dims.get(node.input[1]) or ()
        rank = len(x_dims)
        if w is None or view.value(node.input[1]) is not None or rank < 2:
            continue
        if w.ndim != 2 and not (runs_per_head(target) and head_axis(w.shape, x_dims) is not None):
            continue
        perm = [*range(rank - 2), rank - 1, rank - 2]
        name = node.name or node.output[0]
        w_t = np.swapaxes(w, -1, -2)
        out.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w_t), f"{name}/weight_t"))
        xt, yt = f"{node.output[0]}/x_t", f"{node.output[0]}/y_t"
        _splice(out.graph, [node], [
            helper.make_node("Transpose", [node.input[1]], [xt], name=f"{name}/x_t", perm=perm),
            helper.make_node("MatMul", [xt, f"{name}/weight_t"], [yt], name=name),
            helper.make_node("Transpose", [yt], [node.output[0]], name=f"{name}/y_t", perm=perm)])
        changed = True
    if not changed:
        return model
    remove_unused_initializers(out.graph)
    return out
