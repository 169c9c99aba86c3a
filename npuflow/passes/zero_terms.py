"""Drop terms that are zero by construction: ``y + x * 0`` is ``y``.

A recurrence written from a zero state (a selective-scan / Mamba block's ``h = exp(dt * A) * h +
...`` with ``h = torch.zeros(...)``, a GRU-style update unrolled from a zero hidden state) exports
its first step as a ``Mul`` by an all-zero constant added to the real term.  Left in, that product
is a quantized tensor that holds only zeros on every input, so quantize warned
``NPF_QUANT_CALIB_ALL_ZERO`` and told the user to calibrate on samples that "exercise the whole
model", which no sample can.  Here such a product (and a product of it) is known to be zero, and an
``Add`` of it (or a ``Sub`` of it as the subtrahend) is replaced by its other input where that input
already has the sum's shape and type (no broadcast is lost); the nodes left without a reader go.
``x * 0`` is 0 for every finite ``x``: results stay equal wherever the float model's are finite.

With a dynamic batch the zero state is ``ConstantOfShape(Shape(x)...)`` that constant folding
cannot fold (captcha-whisperer's LSTM unrolled by hand, round 17), and the first step's
``h @ W_hh`` a ``Gemm``/``MatMul`` of it: both count as zero, and shapes are compared as ONNX's
data propagation names them (a symbolic batch equals itself).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import GraphView, initializers, node_reads, remove_unused_initializers
from ..value_info import named_dims, tensor_elem_types


def drop_zero_terms(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model without additions of products by an all-zero constant (unchanged when none)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    zero = zero_by_construction(graph)
    if not zero:
        return out
    shapes, types = named_dims(out), tensor_elem_types(graph)
    view = GraphView(graph)
    dropped = []
    for node in graph.node:
        kept = _kept_operand(node, zero)
        result = node.output[0] if node.output else ""
        if kept is None or view.is_graph_output(result) or kept not in shapes or result not in shapes:
            continue
        if shapes[kept] != shapes[result] or types.get(kept) != types.get(result):
            continue
        for user in view.consumer_nodes(result):
            for k, name in enumerate(user.input):
                if name == result:
                    user.input[k] = kept
        dropped.append(node)
    if not dropped:
        return out
    for node in dropped:
        graph.node.remove(node)
    _remove_unread_nodes(graph)
    remove_unused_initializers(graph)
    return out


def zero_by_construction(graph: onnx.GraphProto) -> set[str]:
    """Names of float tensors that are zero by construction: all-zero float initializers, the
    outputs of a ``ConstantOfShape`` of a zero float value, and (in graph order, so a product of a
    product counts) the products of a ``Mul``, ``MatMul`` or bias-free ``Gemm`` with one of them."""
    zero = {name for name, t in initializers(graph).items() if _is_zero_float(t)}
    zero |= {n.output[0] for n in graph.node if n.op_type == "ConstantOfShape" and not n.domain
             and all(_is_zero_float(a.t) for a in n.attribute if a.name == "value")}
    if not zero:
        return zero
    for node in graph.node:
        if node.domain or not node.output:
            continue
        factors = node.input[:2] if node.op_type in ("Mul", "MatMul", "Gemm") else ()
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
        if any(i in zero for i in factors) and (not bias or bias in zero):
            zero.add(node.output[0])
    return zero


def _is_zero_float(t: onnx.TensorProto) -> bool:
    return t.data_type in _FLOATS and not np.any(numpy_helper.to_array(t))


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def _kept_operand(node: onnx.NodeProto, zero: set[str]) -> str | None:
    """The input an ``Add`` with a zero operand (or a ``Sub`` of a zero) equals, else None."""
    if node.domain or len(node.input) != 2:
        return None
    a, b = node.input
    if node.op_type == "Add" and (a in zero) != (b in zero):
        return b if a in zero else a
    if node.op_type == "Sub" and b in zero and a not in zero:
        return a
    return None


def _remove_unread_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes none of whose outputs is read or a graph output, until none is left."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for n in graph.node for name in node_reads(n)} | outputs
        unread = [n for n in graph.node if not any(o in read for o in n.output if o)]
        if not unread:
            return
        for n in unread:
            graph.node.remove(n)
