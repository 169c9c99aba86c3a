"""Fold inference-mode BatchNormalization into the preceding Conv / ConvTranspose / Gemm.

``BN(y) = g * (y - mean) / sqrt(var + eps) + b`` is a per-channel affine map, so it merges into
the producer's weights and bias: accelerators have no BN unit, and quantizing the folded weights
(not the unfolded ones) is what the hardware computes.  The producer keeps its node name and
takes over the BN's output tensor name, so names downstream do not change.  A BN is folded only
when its input feeds nothing else; other BNs stay (the checker places them).
"""

from __future__ import annotations

import numpy as np
import onnx

from .graph import GraphIndex, absorb_follower, attr, remove_unused_initializers

_FOLDABLE = ("Conv", "ConvTranspose", "Gemm")


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with every foldable BatchNormalization merged into its producer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    while True:
        idx = GraphIndex(graph)
        bn = next((n for n in graph.node if n.op_type == "BatchNormalization" and _foldable(n, idx)), None)
        if bn is None:
            break
        _fold(graph, idx, bn)
    remove_unused_initializers(graph)
    return out


def _same(a: onnx.NodeProto | None, b: onnx.NodeProto) -> bool:
    return a is not None and list(a.output) == list(b.output)


def _foldable(bn: onnx.NodeProto, idx: GraphIndex) -> bool:
    prod = idx.producer.get(bn.input[0])
    if prod is None or prod.op_type not in _FOLDABLE or not _same(idx.only_consumer(bn.input[0]), bn):
        return False
    if len([o for o in bn.output if o]) != 1 or any(idx.const(i) is None for i in bn.input[1:5]):
        return False
    if idx.const(prod.input[1]) is None or (len(prod.input) > 2 and prod.input[2] and idx.const(prod.input[2]) is None):
        return False
    if prod.op_type == "ConvTranspose" and attr(prod, "group", 1) != 1:
        return False
    return True


def _fold(graph: onnx.GraphProto, idx: GraphIndex, bn: onnx.NodeProto) -> None:
    prod = idx.producer[bn.input[0]]
    gamma, beta, mean, var = (idx.const(i).astype(np.float64) for i in bn.input[1:5])
    scale = gamma / np.sqrt(var + float(attr(bn, "epsilon", 1e-5)))
    w = idx.const(prod.input[1]).astype(np.float64)
    has_bias = len(prod.input) > 2 and bool(prod.input[2])
    if prod.op_type == "Gemm":
        axis = 0 if attr(prod, "transB", 0) else 1
        c = idx.const(prod.input[2]).astype(np.float64) * float(attr(prod, "beta", 1.0)) if has_bias else 0.0
        c = np.broadcast_to(c, (w.shape[axis],))
        for a in list(prod.attribute):
            if a.name == "beta":
                prod.attribute.remove(a)
    else:
        axis = 1 if prod.op_type == "ConvTranspose" else 0
        c = idx.const(prod.input[2]).astype(np.float64) if has_bias else np.zeros(w.shape[axis])
    shape = [1] * w.ndim
    shape[axis] = -1
    absorb_follower(graph, idx, prod, bn, w * scale.reshape(shape), (c - mean) * scale + beta, "_bn")
