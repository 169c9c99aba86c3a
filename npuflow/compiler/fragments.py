"""Compile-time evaluation of small pieces of the quantized model with ONNX Runtime.

Two things are cheapest and safest to get from the reference itself rather than re-derive:

* the lookup table of an elementwise step ``DQ -> f -> Q`` (a standalone activation, a
  requantisation, a pass-through op's scale change): run exactly those ONNX nodes on every input
  code once, and the table equals the reference on every value by construction;
* the source index of every output element of a nearest-neighbour ``Resize`` (coordinate
  transformation and rounding rules): run the node on an ``int32`` tensor of flat indices.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..graph import node_reads
from ..model import MAX_IR_VERSION
from ..numerics import qrange
from ..ort_session import open_session
from .qgraph import QGraph, QParams


def _run(g: QGraph, nodes: list[onnx.NodeProto], feeds: dict[str, np.ndarray], outputs: list[str]) -> list:
    used = {i for n in nodes for i in node_reads(n)}
    inits = [g.inits[name] for name in sorted(used) if name in g.inits]
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for k, v in feeds.items()]
    outs = [helper.make_empty_tensor_value_info(o) for o in outputs]
    graph = helper.make_graph(nodes, "fragment", inputs, outs, inits)
    model = helper.make_model(graph, opset_imports=list(g.model.opset_import))
    model.functions.extend(g.model.functions)
    model.ir_version = min(g.model.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)  # what ORT loads
    return open_session(model, level="disable").run(outputs, feeds)


def codes(p: QParams) -> np.ndarray:
    """Every code of an integer tensor type, ascending."""
    lo, hi = qrange(p.bits, p.signed)
    return np.arange(lo, hi + 1).astype(p.dtype)


def lookup_table(
    g: QGraph, dq_node: onnx.NodeProto, x_params: QParams, t0: str, chain: list[onnx.NodeProto],
    q_node: onnx.NodeProto,
) -> np.ndarray:
    """``table[q - qmin] = Q(chain(DQ(q)))`` for every input code ``q``, computed by ORT.

    ``t0`` is the float tensor the chain reads (the op's output for a pass-through op, whose
    values are the dequantized input codes themselves).
    """
    dq = onnx.NodeProto()
    dq.CopyFrom(dq_node)
    dq.input[0] = "__codes__"
    dq.output[0] = t0
    q = onnx.NodeProto()
    q.CopyFrom(q_node)
    if not chain:
        q.input[0] = t0
    (table,) = _run(g, [dq, *chain, q], {"__codes__": codes(x_params)}, [q_node.output[0]])
    # a chain constant of shape 1x1x1x1 (TensorFlow exports) broadcasts the codes to that rank;
    # the constants are single elements (check/lowerable.py), so the values are one per code
    return np.asarray(table).reshape(-1)


def channel_tables(
    g: QGraph, dq_node: onnx.NodeProto, x_params: QParams, nodes: list[onnx.NodeProto], chain: list[onnx.NodeProto],
    q_node: onnx.NodeProto, shape: list[int],
) -> np.ndarray:
    """``table[k, q - qmin] = Q(chain(op(DQ(q))))`` for every input code ``q`` at each element
    ``k`` of ``shape`` (the broadcast shape of the op's constant operands, a PReLU's slopes, at
    the input's rank), computed by ORT: the codes go in along a new leading axis.  ``nodes``: the
    op last, after what computes its constant operands (a slope's dequantize step)."""
    dq = onnx.NodeProto()
    dq.CopyFrom(dq_node)
    dq.input[0] = "__codes__"
    dq.output[0] = nodes[-1].input[0]
    c = codes(x_params)
    feed = np.ascontiguousarray(np.broadcast_to(c.reshape([c.size] + [1] * len(shape)), [c.size, *shape]))
    (table,) = _run(g, [dq, *nodes, *chain, q_node], {"__codes__": feed}, [q_node.output[0]])
    return np.asarray(table).reshape(c.size, -1).T.copy()


def resize_indices(g: QGraph, node: onnx.NodeProto, in_shape: list[int]) -> list[list[int]] | None:
    """Per-axis source indices of a nearest ``Resize``; ``None`` when not separable."""
    r = onnx.NodeProto()
    r.CopyFrom(node)
    r.input[0] = "__idx__"
    r.output[0] = "__out__"
    flat = np.arange(int(np.prod(in_shape)), dtype=np.int32).reshape(in_shape)
    (out,) = _run(g, [r], {"__idx__": flat}, ["__out__"])
    coords = np.unravel_index(np.asarray(out).astype(np.int64), in_shape)
    per_axis = []
    for axis, c in enumerate(coords):
        idx = [slice(None) if a == axis else 0 for a in range(len(in_shape))]
        per_axis.append(c[tuple(idx)].reshape(-1))
    mesh = np.ix_(*per_axis)
    if not np.array_equal(flat[mesh], out):
        return None
    return [p.astype(np.int64).tolist() for p in per_axis]
