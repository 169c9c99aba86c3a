"""1-D pooling and transposed convolution as 2-D ones with H = 1, as 1-D convolutions already run.

A raw-waveform audio net (M5: ``Conv1d -> BN -> ReLU -> MaxPool1d`` four times, round 18) exports
``MaxPool`` on N x C x L tensors, and a Conv-TasNet decoder a ``ConvTranspose`` with rank-3
weights; the compiler lowers pooling and transposed convolutions on N x C x H x W only, so each ran
on the CPU in float and split the network into more accelerator subgraphs, though ``Conv1d`` runs
on the accelerator as a 2-D convolution with H = 1 (``compiler/lowering.py``).  Here a
``MaxPool``/``AveragePool``/``GlobalMaxPool``/``GlobalAveragePool`` of a rank-3 tensor, and a
``ConvTranspose`` with constant rank-3 weights, become ``Unsqueeze(axis 2) -> the 2-D op (1 x k,
weights C_in x C_out/g x 1 x k) -> Squeeze(axis 2)``: the same windows over the same values, exact;
the reshapes move no data.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import GraphView, attr_values, remove_unused_initializers, unique_name
from ..model import default_opset
from ..operators import Engine, op_def
from ..value_info import inferred_dims
from .activations import _splice

#: per-axis attributes: one value per spatial axis gains a leading H value
_H_VALUE = {"kernel_shape": 1, "strides": 1, "dilations": 1, "output_padding": 0, "output_shape": 1}


def ops_1d_as_2d(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with each 1-D pooling / transposed convolution written as a 2-D one on an H = 1 view."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    view = GraphView(graph)
    candidates = [n for n in graph.node if not n.domain and (
        (_lowered_pool(n) and not (len(n.output) > 1 and n.output[1]))
        or (n.op_type == "ConvTranspose" and (w := view.const(n.input[1])) is not None and w.ndim == 3))]
    if not candidates:
        return out
    dims = inferred_dims(out)
    opset = default_opset(out)
    weights: dict[str, str] = {}
    for node in candidates:
        if len(dims.get(node.input[0], ())) == 3:
            _rewrite(graph, node, opset, view, weights)
    remove_unused_initializers(graph)
    return out


def _lowered_pool(node: onnx.NodeProto) -> bool:
    """A pooling op the compiler lowers on 2-D maps (the registry's: max/average, windowed or global)."""
    d = op_def(node.op_type, node.domain)
    return d.lowered and d.engine in (Engine.POOL, Engine.GLOBAL_POOL)


def _rewrite(graph: onnx.GraphProto, node: onnx.NodeProto, opset: int, view: GraphView,
             weights: dict[str, str]) -> None:
    name = node.name or node.output[0]
    x2d, y2d = unique_name(graph, f"{name}/h1_in"), unique_name(graph, f"{name}/h1_out")
    op = onnx.NodeProto()
    op.CopyFrom(node)
    op.input[0], op.output[0] = x2d, y2d
    del op.attribute[:]
    for key, value in attr_values(node).items():
        if key in _H_VALUE:
            value = [_H_VALUE[key], *value]
        elif key == "pads":
            value = [0, value[0], 0, value[1]]
        op.attribute.append(helper.make_attribute(key, value))
    if node.op_type == "ConvTranspose":  # one H = 1 copy of a weight several layers share
        if node.input[1] not in weights:
            weights[node.input[1]] = unique_name(graph, f"{node.input[1]}/h1")
            graph.initializer.append(numpy_helper.from_array(view.const(node.input[1])[:, :, None, :],
                                                             weights[node.input[1]]))
        op.input[1] = weights[node.input[1]]
    if opset >= 13:
        axes = unique_name(graph, f"{name}/h_axis")
        graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), axes))
        unsq = helper.make_node("Unsqueeze", [node.input[0], axes], [x2d], name=f"{name}/unsqueeze")
        sq = helper.make_node("Squeeze", [y2d, axes], [node.output[0]], name=f"{name}/squeeze")
    else:
        unsq = helper.make_node("Unsqueeze", [node.input[0]], [x2d], name=f"{name}/unsqueeze", axes=[2])
        sq = helper.make_node("Squeeze", [y2d], [node.output[0]], name=f"{name}/squeeze", axes=[2])
    _splice(graph, [node], [unsq, op, sq])
