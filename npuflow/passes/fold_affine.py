"""Fold per-channel affine ops (``Mul``/``Div``/``Add``/``Sub`` by a constant) into the producing Conv/Gemm.

Some exporters leave a scale and shift after a convolution (PP-LCNetV3's "learnable affine
blocks": ``Conv -> Mul(s) -> Add(b)``).  Accelerators compute them as part of the convolution,
and quantizing them separately costs accuracy twice (a rounded scalar, then a requantisation).
Like BatchNorm folding: ``W' = W * s``, ``B' = B * s + b``; the producer keeps its node name and
takes over the folded node's output tensor.  Only constants that broadcast per output channel
(a scalar, or one value per channel) are folded, and only when the producer's output has no
other reader.

:func:`fold_linear_affine` does the same after a linear layer written ``MatMul(x, W) [-> Add(B)]``
(torch's ``nn.Linear`` on tokens): the layer scales ``gamma * x`` of ConvNeXt, CaiT, DeiT-III and
ResMLP, and ResMLP's ``Affine``, constants per output channel (the last axis) that no target runs on
N x T x C tokens ("mul_const has no DPU implementation"): ``W' = W * s`` per column, ``B' = B * s + b``.
It is a pass of its own (check runs it too): the layer is two nodes, the ``MatMul`` and its bias
``Add`` (:func:`~.linear_bias.linear_bias`), not one node with weight and bias inputs.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..operators import FOLDS_INTO  # the ops a scale/shift folds into; ``check`` absorbs it into no other
from ..graph import GraphView, attr, rewrite_until_done, set_array, unique_name
from .absorb import absorb_follower
from .gelu import float_gelus
from .linear_bias import linear_bias


def fold_affine(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with foldable constant Mul/Div/Add/Sub merged into their producers."""
    return rewrite_until_done(model, _fold_one)


def _channel_values(c: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``c`` as one value per output channel (axis 1 of the producer's output), or ``None``."""
    if c.size == 1:
        return np.full(channels, float(c.reshape(())), np.float64)
    if c.size != channels or c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if shape[1] != channels:
        return None
    return c.astype(np.float64).reshape(channels)


def _const_index(idx: GraphView, node: onnx.NodeProto) -> int | None:
    """Which input of a binary Mul/Div/Add/Sub is its one constant (a divisor or subtrahend only), else ``None``."""
    if node.op_type not in ("Mul", "Div", "Add", "Sub") or len(node.input) != 2:
        return None
    consts = [k for k in (0, 1) if idx.const(node.input[k]) is not None]
    if len(consts) != 1 or (node.op_type in ("Div", "Sub") and consts[0] != 1):
        return None
    return consts[0]


def _scale_and_shift(op_type: str, c: np.ndarray) -> tuple[np.ndarray | float, np.ndarray | float]:
    """``(s, t)`` such that the op applied to ``y`` is ``s * y + t`` (a divisor without zeros: callers
    leave a division by zero where it is, its infinities are not a scale)."""
    if op_type == "Mul":
        return c, 0.0
    if op_type == "Div":
        return 1.0 / c, 0.0
    return 1.0, (c if op_type == "Add" else -c)


def _fold_one(graph: onnx.GraphProto) -> bool:
    idx = GraphView(graph)
    for node in graph.node:
        k = _const_index(idx, node)
        if k is None:
            continue
        t = node.input[1 - k]
        prod = idx.producer_node(t)
        if prod is None or idx.only_consumer(t) is None:
            continue
        params = layer_params(idx, prod)
        if params is None:
            continue
        w, b, axis = params
        rank = 2 if prod.op_type == "Gemm" else w.ndim
        c = _channel_values(idx.const(node.input[k]), w.shape[axis], rank)
        if c is None or (node.op_type == "Div" and not np.all(c)):
            continue
        w, b = scale_shift(w, b, axis, *_scale_and_shift(node.op_type, c))
        absorb_follower(graph, idx, prod, node, w, b, "_affine")
        return True
    return False


def layer_params(idx: GraphView, prod: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, int] | None:
    """``(weight, bias, output-channel axis of the weight)`` (float64) of a layer whose output a
    per-channel scale/shift folds into, or ``None`` when it cannot take one (weights computed at
    run time, a grouped ConvTranspose, a Gemm with alpha/beta, an op not in :data:`FOLDS_INTO`)."""
    if prod.op_type not in FOLDS_INTO:
        return None
    w = idx.const(prod.input[1])
    has_bias = len(prod.input) > 2 and bool(prod.input[2])
    if w is None or (has_bias and idx.const(prod.input[2]) is None):
        return None
    if prod.op_type == "ConvTranspose" and attr(prod, "group", 1) != 1:
        return None
    if prod.op_type == "Gemm" and (attr(prod, "alpha", 1.0) != 1.0 or attr(prod, "beta", 1.0) != 1.0):
        return None
    axis = {"Conv": 0, "ConvTranspose": 1}.get(prod.op_type, 0 if attr(prod, "transB", 0) else 1)
    channels = w.shape[axis]
    b = idx.const(prod.input[2]).astype(np.float64) if has_bias else np.zeros(channels)
    return w.astype(np.float64), b, axis


def scale_shift(w: np.ndarray, b: np.ndarray, axis: int, s, t) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias of ``s * layer(x) + t`` (``s``, ``t``: scalars or one value per output channel)."""
    shape = [1] * w.ndim
    shape[axis] = -1
    s = np.broadcast_to(np.asarray(s, np.float64), b.shape)
    return w * s.reshape(shape), b * s + t


def fold_linear_affine(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with constant per-output-channel Mul/Div (and, after a bias, Add/Sub) merged into
    the ``MatMul`` by a constant (and its bias ``Add``) whose result only they read."""
    return rewrite_until_done(model, _fold_linear_one)


def _fold_linear_one(graph: onnx.GraphProto) -> bool:
    idx = GraphView(graph)
    # a GELU's ``Mul(0.5)`` is part of the one table the compiler lowers (as in ``fold_affine_forward``)
    in_gelu = {n.output[0] for found in float_gelus(graph, idx) for n in found.nodes}
    for node in graph.node:
        k = _const_index(idx, node)
        if k is None or node.output[0] in in_gelu:
            continue
        t = node.input[1 - k]
        last = idx.producer_node(t)
        if last is None or idx.only_consumer(t) is None:
            continue
        layer = _linear_layer(idx, last, node.op_type)
        if layer is None:
            continue
        matmul, bias = layer
        w = idx.const(matmul.input[1]).astype(np.float64)
        c = _last_axis_values(idx.const(node.input[k]), w.shape[1], idx.shape(matmul.input[0]))
        if c is None or (node.op_type == "Div" and not np.all(c)):
            continue
        s, shift = _scale_and_shift(node.op_type, c)
        _set_input(graph, matmul, 1, w * np.broadcast_to(s, c.shape)[None, :])
        if bias is not None:
            k_bias = list(last.input).index(bias)
            b = idx.const(bias).astype(np.float64)
            _set_input(graph, last, k_bias, (b.reshape(-1) * s + shift).reshape(b.shape))
        graph.node.remove(node)
        stale, last.output[0] = last.output[0], node.output[0]
        keep = [vi for vi in graph.value_info if vi.name != stale]
        del graph.value_info[:]
        graph.value_info.extend(keep)
        return True
    return False


def _linear_layer(idx: GraphView, last: onnx.NodeProto, op_type: str) -> tuple[onnx.NodeProto, str | None] | None:
    """``(MatMul, its bias constant or None)`` of the linear layer ending at ``last`` (the MatMul or
    its bias ``Add``, :func:`~.linear_bias.linear_bias`), or ``None``.  A constant ``Add``/``Sub``
    right after a MatMul is left: it is that layer's bias, which the float passes keep as one."""
    if last.op_type == "MatMul":
        w = idx.const(last.input[1])
        if op_type in ("Add", "Sub") or w is None or w.ndim != 2 or idx.const(last.input[0]) is not None:
            return None
        return last, None
    if last.op_type != "Add":
        return None
    for t in last.input:
        matmul = idx.producer_node(t)
        found = linear_bias(matmul, idx) if matmul is not None else None
        if found is not None and found.add is last:
            return matmul, found.bias
    return None


def _last_axis_values(c: np.ndarray, channels: int, input_shape: list[int] | None) -> np.ndarray | None:
    """``c`` as one value per output channel (the last axis) of a ``MatMul`` reading an input of
    ``input_shape``, or ``None`` when it broadcasts any other way.  A constant of rank 2 or more
    must not outrank the input (it would add an axis), so it needs the input's rank."""
    if c.ndim > 1 and (input_shape is None or c.ndim > len(input_shape)):
        return None
    if c.size == 1:
        return np.full(channels, float(c.reshape(())), np.float64)
    if c.size != channels or c.shape[-1] != channels:
        return None
    return c.astype(np.float64).reshape(channels)


def _set_input(graph: onnx.GraphProto, node: onnx.NodeProto, k: int, value: np.ndarray) -> None:
    """``node.input[k]`` becomes a new initializer holding ``value`` (float32): a weight or bias
    other layers read stays theirs; one nobody reads any more is dropped when the pass ends."""
    name = unique_name(graph, node.input[k] + "_affine")
    set_array(graph, name, value.astype(np.float32), add=True)
    node.input[k] = name
