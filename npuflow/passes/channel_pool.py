"""Target rewrite: a max or mean over the channels of a map as a pool on a reshaped view.

CBAM's spatial attention and Triplet attention's Z-pool concatenate ``x.max(1)`` and ``x.mean(1)``
of an N x C x H x W map (``ReduceMax`` / ``ReduceMean`` over axis 1) before a 7x7 convolution; the
compiler lowers no reduction, so both ran in float on the CPU on every target (round 23a: "no
integer lowering", "no BPU implementation"), a round trip in the middle of the network.

The channels of an N x C x H x W tensor are its rows once it is read as N x 1 x C x (H*W) (a
``Reshape``, no data moved in NCHW order): ``MaxPool`` / ``AveragePool`` with kernel C x 1 then
computes each pixel's max / mean over the channels, and a ``Reshape`` to N x 1 x H x W (N x H x W
for ``keepdims`` 0) gives the reduction's output.  The max is exact on integer codes (a max pool
follows its input's scale); the mean is the pooled window sum divided by C, as every average pool
the compiler lowers (``compiler/lowering.py:lower_avgpool``, ONNX Runtime's arithmetic), so the
compiled model equals ONNX Runtime on the quantized model.

Where it runs (judged as check judges every node, :func:`.wide_conv.node_reasons`): the target
runs both reshapes and the pool, and where its file has a rule for the reduction itself, that rule
accepts it too (the hardware's own limit: Vitis AI's ``reduction_max`` over the channels,
``input_channel < 2^12``; Horizon's Cross Channel Max, ``input_channel <= 64``).  A mean the target's
average pool rejects only by its window may still be taken when ``cascade`` says that window can
be split into pools it accepts (bernoulli2: windows up to 7; ``target_rewrites._axis_avg_pools``
splits it next).  A mean (or max) read by element-wise arithmetic is a normalisation statistic
(GRN's ``Gx / Gx.mean(-1)``, a written-out LayerNorm) and stays, as in :mod:`.ops_1d`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import GraphView, attr_values, unique_name
from ..node_kinds import classify
from ..operators import REDUCTION_POOLS
from ..targets import Target
from ..targets.judge import rule_reasons
from .activations import _splice
from .ops_1d import is_statistic
from .wide_conv import node_reasons, shaped_view

#: ``cascade(c, h, w)``: whether an average pool over the whole H axis of a C x H x W map that the
#: target's window rejects can be split into pools it accepts
Cascade = Callable[[int, int, int], bool]


def channel_reductions_as_pools(model: onnx.ModelProto, target: Target,
                                cascade: Cascade) -> list[tuple[str, bool, str]]:
    """Rewrite in place each channel ``ReduceMax`` / ``ReduceMean`` the module docstring covers;
    ``(node, applied, detail)`` for each one rewritten or left."""
    done = []
    view = shaped_view(model)
    for out in [n.output[0] for n in model.graph.node if n.op_type in REDUCTION_POOLS and not n.domain]:
        node = view.producer_node(out)
        xs = view.shape(node.input[0])
        if not _over_channels(node, view, xs) or is_statistic(node, view):
            continue
        name, (c, h, w) = node.name or out, xs[1:]
        native = _native_reasons(node, view, target)
        trial = onnx.ModelProto()
        trial.CopyFrom(model)
        new = _as_pool(trial.graph, next(n for n in trial.graph.node if n.output[0] == out), xs,
                       view.elem_type(node.input[0]) or onnx.TensorProto.FLOAT)
        tview = shaped_view(trial)
        objections = {n.name: node_reasons(tview.producer_node(n.output[0]), tview, target) for n in new}
        pool = new[1]
        if pool.op_type == "AveragePool" and objections[pool.name] and cascade(1, c, h * w):
            objections[pool.name] = []  # the axis cascade splits the C x 1 window next
        why = native + [f"{n.op_type} {r}" for n in new for r in objections[n.name]]
        form = f"Reshape to N x 1 x {c} x {h * w} -> {pool.op_type} {c}x1 -> Reshape"
        if why:
            done.append((name, False, f"{node.op_type} over {c} channels stays: {form}: {'; '.join(why)}"))
            continue
        model.CopyFrom(trial)
        done.append((name, True, f"{node.op_type} over {c} channels -> {form}"))
        view = shaped_view(model)
    return done


def _over_channels(node: onnx.NodeProto, view: GraphView, xs: list | None) -> bool:
    """A reduction over axis 1 alone of a 4-D map whose C, H, W are known."""
    if xs is None or len(xs) != 4 or not all(isinstance(d, int) and d > 0 for d in xs[1:]) or xs[1] < 2:
        return False
    axes = attr_values(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = view.const(node.input[1])
        axes = None if value is None else value.ravel().tolist()
    return axes is not None and sorted(int(a) % 4 for a in axes) == [1]


def _native_reasons(node: onnx.NodeProto, view: GraphView, target: Target) -> list[str]:
    """The target's own limits for the reduction (its file's rule for ``reduce_max`` / ``reduce_mean``),
    none where it has no such rule (then the pool form alone is judged)."""
    info = classify(node, view, view.position(node))
    rule = target.rule(info.kind)
    return [] if rule is None else [f"{node.op_type} {r}" for r in rule_reasons(rule, info.params, target.hardware_names())]


def _as_pool(graph: onnx.GraphProto, node: onnx.NodeProto, xs: list, elem: int) -> list[onnx.NodeProto]:
    """Replace ``node`` (input shape ``xs``) by ``Reshape -> pool (C x 1) -> Reshape`` (its name on the
    pool, its output kept), with the value infos of the tensors between them (check reads shapes)."""
    name = node.name or node.output[0]
    n, c, h, w = xs
    keep = attr_values(node).get("keepdims", 1)
    shapes = [unique_name(graph, f"{name}/{s}") for s in ("rows_shape", "out_shape")]
    graph.initializer.extend([numpy_helper.from_array(np.array([0, 1, c, h * w], np.int64), shapes[0]),
                              numpy_helper.from_array(np.array([0, 1, h, w] if keep else [0, h, w], np.int64),
                                                      shapes[1])])
    rows, pooled = unique_name(graph, f"{name}/rows"), unique_name(graph, f"{name}/pooled")
    new = [helper.make_node("Reshape", [node.input[0], shapes[0]], [rows], name=f"{name}/rows"),
           helper.make_node(REDUCTION_POOLS[node.op_type][1], [rows], [pooled], name=name, kernel_shape=[c, 1]),
           helper.make_node("Reshape", [pooled, shapes[1]], [node.output[0]], name=f"{name}/out")]
    _splice(graph, [node], new)
    graph.value_info.extend([helper.make_tensor_value_info(rows, elem, [n, 1, c, h * w]),
                             helper.make_tensor_value_info(pooled, elem, [n, 1, 1, h * w])])
    return new
