"""A CPU subgraph's ``PRelu`` between a dequantize and a quantize step, as ONNX Runtime's fast elementwise kernels.

ONNX Runtime 1.32 runs ``PRelu`` with a per-channel slope through a generic broadcast loop: 64.5 us for a
``[1, 28, 22, 22]`` map on one thread, where ``Relu`` takes 7.2 us and a ``Mul`` by the same ``[28, 1, 1]``
slope 7.7 (benchmarks/results/runtime_small_s36.md).  MTCNN RNet on DPUCZDX8G_ISA1_B4096 (no PReLU on the
DPU) runs four of them in its CPU parts, about 30 % of its frame.  ``PRelu(x)`` is ``x * a`` for ``x < 0``
and ``x`` otherwise, so with every slope ``a <= 1`` it is ``Max(x, Mul(x, a))`` (``x > 0``: ``a * x <= x``;
``x < 0``: ``a * x >= x``; both rounded products are the one ``PRelu`` computes), else
``Add(Relu(x), Mul(Min(x, 0), a))`` (one term is the value, the other a zero).

Both forms give ``PRelu``'s values, but a zero's sign may differ (``-0.0`` for ``+0.0``), so a ``PRelu``
is rewritten only where its input is a ``DequantizeLinear`` (finite values: no NaN, whose ``Max``
would differ) and every value it computes reaches nothing but quantize steps, through ops that only
move or select values (``operators.VALUE_MOVING_OPS``: MTCNN's ``MaxPool``, ``Transpose``, ``Reshape``):
a quantize step rounds both zeros to the same code, so the codes the subgraph writes are the same.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import GraphView, unique_name, with_nodes
from ..operators import DEQUANTIZE_OPS, QUANTIZE_OPS, STANDARD_DOMAINS, VALUE_MOVING_OPS
from ..qdq import DOMAIN, parse_function_name


def prelu_forms(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each ``PRelu`` of a constant float32 slope that the module docstring allows written
    as ``Max(x, Mul(x, a))`` (every slope at most 1) or ``Add(Relu(x), Mul(Min(x, 0), a))``; ``model``
    itself where there is none."""
    view = GraphView(model)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    added: list[onnx.TensorProto] = []
    reserved: set[str] = set()
    for k, node in enumerate(view.nodes):
        slope = _slope(view, node)
        if slope is None:
            continue
        x, y = node.input[0], node.output[0]
        names = {s: unique_name(model.graph, f"{y}_prelu_{s}", reserved) for s in ("ax", "pos", "neg", "zero")}
        if np.all(slope <= 1):
            replaced[k] = [helper.make_node("Mul", [x, node.input[1]], [names["ax"]], name=f"{names['ax']}_mul"),
                           helper.make_node("Max", [x, names["ax"]], [y], name=f"{y}_prelu_max")]
            continue
        added.append(numpy_helper.from_array(np.array(0.0, np.float32), names["zero"]))
        replaced[k] = [helper.make_node("Relu", [x], [names["pos"]], name=f"{names['pos']}_relu"),
                       helper.make_node("Min", [x, names["zero"]], [names["neg"]], name=f"{names['neg']}_min"),
                       helper.make_node("Mul", [names["neg"], node.input[1]], [names["ax"]], name=f"{names['ax']}_mul"),
                       helper.make_node("Add", [names["pos"], names["ax"]], [y], name=f"{y}_prelu_add")]
    if not replaced:
        return model
    return with_nodes(model, (n for k, node in enumerate(view.nodes) for n in replaced.get(k, [node])), added)


def _slope(view: GraphView, node: onnx.NodeProto) -> np.ndarray | None:
    """The finite float32 constant slope of a ``PRelu`` that :func:`prelu_forms` rewrites, else None."""
    if node.op_type != "PRelu" or node.domain not in STANDARD_DOMAINS or len(node.input) != 2:
        return None
    source = view.producer_node(node.input[0])
    slope = view.const(node.input[1])
    if source is None or source.op_type not in DEQUANTIZE_OPS or slope is None or slope.dtype != np.float32 \
            or not np.all(np.isfinite(slope)):
        return None
    return slope if _only_quantized(view, node.output[0]) else None


def _only_quantized(view: GraphView, tensor: str) -> bool:
    """Whether every value of ``tensor`` reaches only quantize steps' inputs, through value-moving ops."""
    if view.is_graph_output(tensor) or not view.consumer_nodes(tensor):
        return False
    for reader in view.consumer_nodes(tensor):
        if reader.input[0] != tensor:
            return False
        if reader.op_type in QUANTIZE_OPS and reader.domain in STANDARD_DOMAINS \
                or reader.domain == DOMAIN and parse_function_name(reader.op_type) is not None:
            continue
        if reader.op_type not in VALUE_MOVING_OPS or reader.domain not in STANDARD_DOMAINS \
                or not all(_only_quantized(view, t) for t in reader.output):
            return False
    return True
