"""A 3-D convolution with a depth-1 kernel on a depth-1 map as the 2-D convolution it is.

RivaGAN (invisible-watermark 0.2.0, round 26b) runs its frames as N x C x 1 x H x W through ``Conv3d``
layers with kernel 1 x 11 x 11: each is a 2-D convolution, but the compiler lowers convolutions on
N x C x H x W (and N x C x L) only, so check read "conv3d has no DPU implementation" and every one ran
in float on the CPU on every target (bernoulli2: 14 subgraphs for 8 accelerator nodes).  Here a
``Conv`` with constant rank-5 weights of depth 1 whose input has depth 1 and no depth padding becomes
``Squeeze(axis 2) -> Conv (weights C_out x C_in/g x kH x kW) -> Unsqueeze(axis 2)``: the same sums over
the same values, exact; the reshapes move no data.  A ``BatchNormalization`` of such a map (RivaGAN's,
after each ``Tanh``) becomes ``Squeeze -> BatchNormalization -> Unsqueeze`` likewise, else it alone kept
the frames on the CPU between the convolutions.  With one input plane and a 1-deep kernel the output
has depth 1 whatever the depth stride or dilation, so those are dropped.  A deeper input (depth folded
into the batch) would need a transpose either side; it stays a 3-D convolution, on the CPU.
"""

from __future__ import annotations

from typing import Any

import onnx

from ..graph import GraphView, attr_values, remove_unused_initializers
from ..model import default_opset
from ..value_info import inferred_dims
from .ops_1d import in_view

#: per-axis attributes of a 3-D convolution: the 2-D one keeps the H and W values (the depth value is moot)
_PER_AXIS = ("kernel_shape", "strides", "dilations")


def depth1_conv3d_as_2d(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with each depth-1 ``Conv`` (and each ``BatchNormalization``) on a depth-1 N x C x 1 x H x W
    map written as a 2-D one (the model itself when it has no candidate)."""
    if not _candidates(model.graph, GraphView(model.graph)):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    view = GraphView(graph)
    candidates = _candidates(graph, view)
    dims = inferred_dims(out)
    opset = default_opset(out)
    weights: dict[str, str] = {}
    for node in candidates:
        shape = dims.get(node.input[0], ())
        if len(shape) == 5 and shape[2] == 1:
            _rewrite(graph, node, opset, view, weights)
    remove_unused_initializers(graph)
    return out


def _candidates(graph: onnx.GraphProto, view: GraphView) -> list[onnx.NodeProto]:
    """The ``BatchNormalization`` nodes and the ``Conv`` nodes of constant rank-5 depth-1 weights without depth
    padding: rewritten where their input turns out to be N x C x 1 x H x W."""
    return [n for n in graph.node if not n.domain and ((n.op_type == "BatchNormalization" and len(n.output) == 1) or (
        n.op_type == "Conv" and (w := view.const(n.input[1])) is not None and w.ndim == 5 and w.shape[2] == 1
        and list(attr_values(n).get("pads", [0] * 6))[0::3] == [0, 0]))]


def _2d_value(key: str, value: Any) -> Any:
    """A 3-D convolution's attribute value for the 2-D one: the H and W values (the depth value is moot)."""
    if key in _PER_AXIS:
        return list(value[1:])
    return [value[1], value[2], value[4], value[5]] if key == "pads" else value


def _rewrite(graph: onnx.GraphProto, node: onnx.NodeProto, opset: int, view: GraphView,
             weights: dict[str, str]) -> None:
    """``Squeeze(2) -> 2-D op -> Unsqueeze(2)`` in place of ``node``; one 2-D copy of a weight several layers share.
    A ``BatchNormalization`` is per-channel: no attribute names an axis."""
    if node.op_type == "BatchNormalization":
        in_view(graph, node, opset, view, weights, tag="d1", axis=2, added=False, attribute=None, weight=None)
    else:
        in_view(graph, node, opset, view, weights, tag="d1", axis=2, added=False, attribute=_2d_value,
                weight=lambda w: w[:, :, 0])
