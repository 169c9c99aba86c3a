"""1-D pooling and transposed convolution as 2-D ones with H = 1, as 1-D convolutions already run.

A raw-waveform audio net (M5: ``Conv1d -> BN -> ReLU -> MaxPool1d`` four times, round 18) exports
``MaxPool`` on N x C x L tensors, and a Conv-TasNet decoder a ``ConvTranspose`` with rank-3
weights; the compiler lowers pooling and transposed convolutions on N x C x H x W only, so each ran
on the CPU in float and split the network into more accelerator subgraphs, though ``Conv1d`` runs
on the accelerator as a 2-D convolution with H = 1 (``compiler/lowering.py``).  Here a
``MaxPool``/``AveragePool``/``GlobalMaxPool``/``GlobalAveragePool`` of a rank-3 tensor, and a
``ConvTranspose`` with constant rank-3 weights, become ``Unsqueeze(axis 2) -> the 2-D op (1 x k,
weights C_in x C_out/g x 1 x k) -> Squeeze(axis 2)``: the same windows over the same values, exact;
the reshapes move no data.  A ``ReduceMean`` over the last axis of an N x C x L tensor (M5's closing
``x.mean(-1)``, round 19: it ran on the CPU in float on every target, after the last accelerator
subgraph) becomes ``Unsqueeze(axis 2) -> GlobalAveragePool -> Squeeze``: the same mean; a mean that
element-wise arithmetic reads (a LayerNorm's statistic over a B x T x D tensor's features) stays.  A
``ReduceMean`` over axes 2 and 3 of an N x C x H x W map (a torch classifier's ``x.mean((2, 3))``,
round 19b: "no integer lowering" on every target, its own CPU subgraph before the head) becomes
``GlobalAveragePool`` (``-> Squeeze`` for ``keepdims`` 0), with the same exception.  A ``ReduceMean``
over axis 2 alone (or 3 alone) of an N x C x H x W map of known size (BC-ResNet's frequency average
``x.mean(2, keepdim=True)`` before its temporal convolution, round 20: "no integer lowering", six CPU
round trips on every target) becomes ``AveragePool`` with the whole axis as its window (kernel
H x 1, or 1 x W) ``[-> Squeeze]``: the same mean, which the target's ``avg_pool`` rule then judges
(DPUCZDX8G and cpu-int8 run it; bernoulli2's window is at most 7).  A ``ReduceMean`` over axis 1
of an N x T x C tensor of known T (the token average before a ViT / MLP-Mixer / ResMLP / EfficientFormer
head, ``x.mean(1)``, round 21: "no integer lowering", a CPU subgraph of its own on every target) becomes
``Unsqueeze(axis 1) -> AveragePool (T x 1) -> Squeeze`` on the N x 1 x T x C view: the same mean; a
mean over a 1-D convolution's channels (N x C x L) stays.  A ``ReduceMax`` over the same axes becomes
the same pooling with ``MaxPool``/``GlobalMaxPool``, exact (round 23b: a PointNet's max over points
``torch.amax(x, 2)`` of N x C x P, a TextCNN's max over time, a sound-event detector's clip-level
``frame.max(1)`` of N x T x C read "ReduceMax has no integer lowering" and ran in float on the CPU
between two accelerator subgraphs on every target).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import GraphView, attr_values, remove_unused_initializers, unique_name
from ..model import default_opset
from ..operators import ELEMENTWISE_OPS, REDUCTION_POOLS, SIZE_JOINING_OPS, Engine, Role, op_def
from ..value_info import inferred_dims
from .activations import _splice
from .fold_constants import shape_independent_dims

#: readers that make a mean a normalisation statistic (see ``is_statistic``): element-wise ops that broadcast
_ELEMENTWISE = ELEMENTWISE_OPS & SIZE_JOINING_OPS
#: per-axis attributes: one value per spatial axis gains a leading H value
_H_VALUE = {"kernel_shape": 1, "strides": 1, "dilations": 1, "output_padding": 0, "output_shape": 1}


def ops_1d_as_2d(model: onnx.ModelProto, static_inputs: dict[str, list[int]] | None = None) -> onnx.ModelProto:
    """A new model with each 1-D pooling / transposed convolution written as a 2-D one on an H = 1 view.

    ``static_inputs``: the shape a dynamic graph is frozen at for check and compile; a reduction's input whose
    rank or token count ONNX leaves unknown there takes the sizes that hold at every input shape
    (:func:`.fold_constants.shape_independent_dims`: CoAtNet's ``t.mean(1)`` after ``x.flatten(2)``, round 27)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    view = GraphView(graph)
    candidates = [n for n in graph.node if not n.domain and (
        (_lowered_pool(n) and not (len(n.output) > 1 and n.output[1]))
        or (n.op_type == "ConvTranspose" and (w := view.const(n.input[1])) is not None and w.ndim == 3)
        or n.op_type in REDUCTION_POOLS)]
    if not candidates:
        return out
    dims = inferred_dims(out)
    reduced = [n.input[0] for n in candidates if n.op_type in REDUCTION_POOLS]
    if static_inputs and any(not all(isinstance(d, int) for d in dims.get(t, (None,))) for t in reduced):
        fixed = shape_independent_dims(out, static_inputs)
        dims = {**dims, **{t: fixed[t] for t in reduced if t in fixed}}
    opset = default_opset(out)
    weights: dict[str, str] = {}
    for node in candidates:
        shape = dims.get(node.input[0], ())
        rank = len(shape)
        axes = _reduced_axes(node, view, rank) if node.op_type in REDUCTION_POOLS and rank in (3, 4) else None
        if axes == list(range(2, rank)) and rank in (3, 4) and not is_statistic(node, view):
            _mean_as_pool(graph, node, opset, rank)
        elif axes in ([2], [3]) and rank == 4 and isinstance(shape[axes[0]], int) and not is_statistic(node, view):
            _axis_mean_as_pool(graph, node, opset, axes[0], shape[axes[0]])
        elif (axes == [1] and rank == 3 and isinstance(shape[1], int) and not is_statistic(node, view)
              and not _channels_first(node.input[0], view)):
            _token_mean_as_pool(graph, node, opset, shape[1])
        elif node.op_type not in REDUCTION_POOLS and rank == 3:
            _rewrite(graph, node, opset, view, weights)
    remove_unused_initializers(graph)
    return out


def _lowered_pool(node: onnx.NodeProto) -> bool:
    """A pooling op the compiler lowers on 2-D maps (the registry's: max/average, windowed or global)."""
    d = op_def(node.op_type, node.domain)
    return d.lowered and d.engine in (Engine.POOL, Engine.GLOBAL_POOL)


def _reduced_axes(node: onnx.NodeProto, view: GraphView, rank: int) -> list[int] | None:
    """The sorted axes a ``ReduceMean``/``ReduceMax`` of a rank-``rank`` tensor reduces (an attribute before
    opset 18, a constant input from 18 on), or None where they are not known or are all axes."""
    axes = attr_values(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = view.const(node.input[1])
        axes = None if value is None else value.ravel().tolist()
    return None if axes is None else sorted(int(a) % rank for a in axes)


def is_statistic(node: onnx.NodeProto, view: GraphView) -> bool:
    """Whether a mean (or max) is a normalisation's statistic: read by element-wise arithmetic (a LayerNorm's
    ``x - mean``, ``mean(x*x) - mean**2`` on a B x T x D tensor, a decomposed softmax's ``x - max``), not by a layer.  It stays a
    ``ReduceMean``: ``passes/variance.py`` finds the LayerNorm by it, and a pool over tokens' features
    is no pooling the accelerator runs for it."""
    return any(c.op_type in _ELEMENTWISE for c in view.consumer_nodes(node.output[0]))


#: producers whose N x C x L output holds channels on axis 1 (a ``Conv1d``'s features, not tokens)
_CHANNEL_ENGINES = (Engine.CONV, Engine.POOL, Engine.GLOBAL_POOL)


def _channels_first(tensor: str, view: GraphView) -> bool:
    """Whether a rank-3 ``tensor`` is a 1-D convolution's N x C x L features: its first producer
    past activations and element-wise ops is a convolution, pooling or ``BatchNormalization``.

    Why: axis 1 is then the channels, and a mean over it is no token average; it stays (round 19).
    Tokens come from a ``MatMul``/``Gemm``, a ``LayerNormalization`` or a ``Transpose``/``Reshape``."""
    seen: set[str] = set()
    node = view.producer_node(tensor)
    while node is not None and node.output[0] not in seen:
        seen.add(node.output[0])
        d = op_def(node.op_type, node.domain)
        if d.engine in _CHANNEL_ENGINES or node.op_type == "BatchNormalization":
            return True
        if d.role is not Role.ACTIVATION and node.op_type not in ELEMENTWISE_OPS:
            return False
        node = view.producer_node(node.input[0])
    return False


def _mean_as_pool(graph: onnx.GraphProto, node: onnx.NodeProto, opset: int, rank: int) -> None:
    """``ReduceMean`` (``ReduceMax``) over the spatial axes as ``GlobalAveragePool`` (``GlobalMaxPool``): of N x C x L on the N x C x 1 x L
    view, the pooled N x C x 1 x 1 losing axes 2 and 3 (``keepdims`` 0) or axis 3 (N x C x 1); of
    N x C x H x W directly, losing axes 2 and 3 for ``keepdims`` 0."""
    name = node.name or node.output[0]
    keep = attr_values(node).get("keepdims", 1)
    if rank == 4:
        pooled = node.output[0] if keep else unique_name(graph, f"{name}/pooled")
        nodes = [helper.make_node(REDUCTION_POOLS[node.op_type][0], [node.input[0]], [pooled], name=name)]
        if not keep:
            nodes.append(_squeeze(graph, name, opset, pooled, node.output[0], [2, 3]))
        _splice(graph, [node], nodes)
        return
    x2d, y2d = unique_name(graph, f"{name}/h1_in"), unique_name(graph, f"{name}/h1_out")
    pool = helper.make_node(REDUCTION_POOLS[node.op_type][0], [x2d], [y2d], name=name)
    unsq, sq = _h1_view(graph, name, opset, node.input[0], x2d, y2d, node.output[0], [3] if keep else [2, 3])
    _splice(graph, [node], [unsq, pool, sq])


def _axis_mean_as_pool(graph: onnx.GraphProto, node: onnx.NodeProto, opset: int, axis: int, size: int) -> None:
    """``ReduceMean`` (``ReduceMax``) over axis 2 (or 3) of N x C x H x W as ``AveragePool`` (``MaxPool``) whose window is that
    whole axis (``size`` values, stride 1, no padding), losing the axis for ``keepdims`` 0."""
    name = node.name or node.output[0]
    keep = attr_values(node).get("keepdims", 1)
    pooled = node.output[0] if keep else unique_name(graph, f"{name}/pooled")
    kernel = [size, 1] if axis == 2 else [1, size]
    nodes = [helper.make_node(REDUCTION_POOLS[node.op_type][1], [node.input[0]], [pooled], name=name, kernel_shape=kernel)]
    if not keep:
        nodes.append(_squeeze(graph, name, opset, pooled, node.output[0], [axis]))
    _splice(graph, [node], nodes)


def _token_mean_as_pool(graph: onnx.GraphProto, node: onnx.NodeProto, opset: int, size: int) -> None:
    """``ReduceMean`` (``ReduceMax``) over axis 1 of N x T x C as ``AveragePool`` (``MaxPool``, kernel T x 1) on the N x 1 x T x C
    view, losing the pooled axes 1 and 2 (``keepdims`` 0) or axis 1 (N x 1 x C)."""
    name = node.name or node.output[0]
    keep = attr_values(node).get("keepdims", 1)
    x2d, y2d = unique_name(graph, f"{name}/h1_in"), unique_name(graph, f"{name}/h1_out")
    pool = helper.make_node(REDUCTION_POOLS[node.op_type][1], [x2d], [y2d], name=name, kernel_shape=[size, 1])
    unsq, sq = _h1_view(graph, name, opset, node.input[0], x2d, y2d, node.output[0], [1] if keep else [1, 2], axis=1)
    _splice(graph, [node], [unsq, pool, sq])


def _squeeze(graph: onnx.GraphProto, name: str, opset: int, x: str, y: str, axes: list[int]) -> onnx.NodeProto:
    """``Squeeze(axes)`` of ``x`` into ``y`` (axes as an input from opset 13 on)."""
    if opset < 13:
        return helper.make_node("Squeeze", [x], [y], name=f"{name}/squeeze", axes=axes)
    const = unique_name(graph, f"{name}/h_axes")
    graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), const))
    return helper.make_node("Squeeze", [x, const], [y], name=f"{name}/squeeze")


def _h1_view(graph: onnx.GraphProto, name: str, opset: int, x: str, x2d: str, y2d: str, y: str,
             squeeze: list[int], axis: int = 2) -> tuple[onnx.NodeProto, onnx.NodeProto]:
    """The ``Unsqueeze(axis)`` of ``x`` into ``x2d`` and the ``Squeeze(squeeze)`` of ``y2d`` into
    ``y`` around a 2-D op (axes as inputs from opset 13 on)."""
    return _unsqueeze(graph, name, opset, x, x2d, axis), _squeeze(graph, name, opset, y2d, y, squeeze)


def _unsqueeze(graph: onnx.GraphProto, name: str, opset: int, x: str, y: str, axis: int) -> onnx.NodeProto:
    """``Unsqueeze(axis)`` of ``x`` into ``y`` (axes as an input from opset 13 on)."""
    if opset < 13:
        return helper.make_node("Unsqueeze", [x], [y], name=f"{name}/unsqueeze", axes=[axis])
    axes = unique_name(graph, f"{name}/h_axis")
    graph.initializer.append(numpy_helper.from_array(np.array([axis], np.int64), axes))
    return helper.make_node("Unsqueeze", [x, axes], [y], name=f"{name}/unsqueeze")


def _h1_value(key: str, value: Any) -> Any:
    """A 1-D op's attribute value for the same op on the H = 1 view: a leading H value per spatial axis."""
    if key in _H_VALUE:
        return [_H_VALUE[key], *value]
    return [0, value[0], 0, value[1]] if key == "pads" else value


def _rewrite(graph: onnx.GraphProto, node: onnx.NodeProto, opset: int, view: GraphView,
             weights: dict[str, str]) -> None:
    weight = (lambda w: w[:, :, None, :]) if node.op_type == "ConvTranspose" else None
    in_view(graph, node, opset, view, weights, tag="h1", axis=2, added=True, attribute=_h1_value, weight=weight)


def in_view(graph: onnx.GraphProto, node: onnx.NodeProto, opset: int, view: GraphView, weights: dict[str, str], *,
            tag: str, axis: int, added: bool, attribute: Callable[[str, Any], Any] | None,
            weight: Callable[[np.ndarray], np.ndarray] | None) -> None:
    """``node`` as the same op on a view of its input with ``axis`` added (``added``: ``Unsqueeze`` before,
    ``Squeeze`` after) or dropped (the reverse), spliced in its place: the reshapes move no data.  ``attribute``
    maps each attribute value to the view's rank (None keeps them); ``weight`` maps the constant weight input,
    one copy per weight several layers share (``weights`` remembers them)."""
    name = node.name or node.output[0]
    x_view, y_view = unique_name(graph, f"{name}/{tag}_in"), unique_name(graph, f"{name}/{tag}_out")
    op = onnx.NodeProto()
    op.CopyFrom(node)
    op.input[0], op.output[0] = x_view, y_view
    if attribute is not None:
        del op.attribute[:]
        for key, value in attr_values(node).items():
            op.attribute.append(helper.make_attribute(key, attribute(key, value)))
    if weight is not None:
        if node.input[1] not in weights:
            weights[node.input[1]] = unique_name(graph, f"{node.input[1]}/{tag}")
            graph.initializer.append(numpy_helper.from_array(weight(view.const(node.input[1])),
                                                             weights[node.input[1]]))
        op.input[1] = weights[node.input[1]]
    if added:
        before = _unsqueeze(graph, name, opset, node.input[0], x_view, axis)
        after = _squeeze(graph, name, opset, y_view, node.output[0], [axis])
    else:
        before = _squeeze(graph, name, opset, node.input[0], x_view, [axis])
        after = _unsqueeze(graph, name, opset, y_view, node.output[0], axis)
    _splice(graph, [node], [before, op, after])
