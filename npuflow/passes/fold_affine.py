"""Fold per-channel affine ops (``Mul``/``Div``/``Add``/``Sub`` by a constant) into the producing Conv/Gemm.

Some exporters leave a scale and shift after a convolution (PP-LCNetV3's "learnable affine
blocks": ``Conv -> Mul(s) -> Add(b)``).  Accelerators compute them as part of the convolution,
and quantizing them separately costs accuracy twice (a rounded scalar, then a requantisation).
Like BatchNorm folding: ``W' = W * s``, ``B' = B * s + b``; the producer keeps its node name and
takes over the folded node's output tensor.  Only constants that broadcast per output channel
(a scalar, or one value per channel) are folded, and only when the producer's output has no
other reader.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..operators import FOLDS_INTO  # the ops a scale/shift folds into; ``check`` absorbs it into no other
from ..graph import GraphView, attr, rewrite_until_done
from .absorb import absorb_follower


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


def _fold_one(graph: onnx.GraphProto) -> bool:
    idx = GraphView(graph)
    for node in graph.node:
        if node.op_type not in ("Mul", "Div", "Add", "Sub") or len(node.input) != 2:
            continue
        consts = [k for k in (0, 1) if idx.const(node.input[k]) is not None]
        if len(consts) != 1 or (node.op_type in ("Div", "Sub") and consts[0] != 1):
            continue
        t = node.input[1 - consts[0]]
        prod = idx.producer_node(t)
        if prod is None or idx.only_consumer(t) is None:
            continue
        params = layer_params(idx, prod)
        if params is None:
            continue
        w, b, axis = params
        rank = 2 if prod.op_type == "Gemm" else w.ndim
        c = _channel_values(idx.const(node.input[consts[0]]), w.shape[axis], rank)
        if c is None:
            continue
        if node.op_type in ("Mul", "Div"):
            w, b = scale_shift(w, b, axis, c if node.op_type == "Mul" else 1.0 / c, 0.0)
        else:
            w, b = scale_shift(w, b, axis, 1.0, c if node.op_type == "Add" else -c)
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
