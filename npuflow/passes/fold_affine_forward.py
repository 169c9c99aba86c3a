"""Fold a constant scale/shift (``Mul`` then ``Add`` by constants) forward into the layer reading it.

PP-LCNetV3's learnable affine blocks sit after an activation (``HardSwish -> Mul(s) -> Add(b) ->
Conv``), so :mod:`.fold_affine` cannot fold them back into a producing layer; quantized as they
are, each is its own requantisation on a power-of-two DPU (the activation's grid, then the scale's,
then the shift's).  The next layer can take them instead, exactly in float:

- the scale always: a zero-padded convolution of ``s * x`` is the convolution of ``x`` with
  ``W * s`` (padding zeros stay zero), and ``(s * x) @ W = x @ (s[:, None] * W)``;
- the shift only where every output reads real input: a convolution without padding, a ``Gemm``,
  or a ``MatMul`` whose output's only reader is its constant bias ``Add`` (``B' = B + W @ b``).
  A padded convolution sees ``b`` inside the image and ``0`` in its border, so its shift stays,
  moved in front of the scale (``s * x + b = s * (x + b / s)``): one ``Add`` instead of two ops.

Only a chain whose output has no other reader than the layer is folded (never a GELU's own nodes),
``Shape``/``Size`` nodes excepted: they read the source instead, whose shape the chain keeps.  A
model exported with dynamic axes reads its attention's reshape target from the LayerNorm's output
(``Shape``), where a fixed-size load has folded that into a constant; both must fold alike.  Only
constants that broadcast per input channel of the layer (axis 1 of a convolution's input, the last
axis of a ``MatMul``/``Gemm`` input) fold, decided from what is known without static sizes: the
constants' shapes, the input's rank (symbolic dimensions count; unknown, only constants of rank 0
or 1, which cannot add an axis) and its size on that axis where known (it must be the layer's
channel count: a size-1 axis the constant broadcasts up is refused).  The layer keeps its name; new
weights are written under new names (a shared weight stays).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..graph import GraphView, attr, rewrite_until_done, set_array, unique_name
from ..operators import SHAPE_OPS
from .gelu import float_gelus
from ..value_info import inferred_dims


@dataclass
class _Chain:
    """``x -> [Mul(s)] -> [Add(b)] -> layer``: the affine nodes in order and their constants."""

    nodes: list[onnx.NodeProto]
    source: str
    scale: np.ndarray | float
    shift: np.ndarray | float
    layer: onnx.NodeProto
    shape_readers: list[onnx.NodeProto] = field(default_factory=list)


#: Per tensor, its dimensions as far as known (``None``: unknown or symbolic); absent: rank unknown.
Dims = Mapping[str, tuple[int | None, ...]]

def fold_affine_forward(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with constant scale/shift chains folded into the layer after them where exact."""
    dims = _known_dims(model)
    return rewrite_until_done(model, lambda graph: _fold_one(graph, dims))


def _known_dims(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Ranks and known sizes of the model's tensors (``value_info.inferred_dims``; a symbolic
    dimension counts for the rank).  Computed once: a fold only removes the chain's tensors, so
    the sources' shapes it asks for stay valid while the graph is rewritten."""
    return {name: tuple(d if isinstance(d, int) else None for d in dims) for name, dims in inferred_dims(model).items()}


def _const_operand(idx: GraphView, node: onnx.NodeProto) -> tuple[str, np.ndarray] | None:
    """``(data input, constant)`` of a binary Mul/Add with exactly one constant input."""
    if len(node.input) != 2:
        return None
    consts = [k for k in (0, 1) if idx.const(node.input[k]) is not None]
    if len(consts) != 1:
        return None
    return node.input[1 - consts[0]], idx.const(node.input[consts[0]]).astype(np.float64)


def _single_reader(idx: GraphView, tensor: str) -> onnx.NodeProto | None:
    return None if idx.is_graph_output(tensor) else idx.only_consumer(tensor)


def _layer_and_shape_readers(idx: GraphView, tensor: str) -> tuple[onnx.NodeProto | None, list[onnx.NodeProto]]:
    """The one reader of ``tensor`` that takes its values and the ``Shape``/``Size`` nodes beside
    it, or ``(None, [])`` when it is a graph output or more than one node reads its values."""
    if idx.is_graph_output(tensor):
        return None, []
    readers = [idx.nodes[k] for k in idx.consumers.get(tensor, ())]
    values = [n for n in readers if n.op_type not in SHAPE_OPS]
    if len(values) != 1:
        return None, []
    return values[0], [n for n in readers if n.op_type in SHAPE_OPS]


def _chain(idx: GraphView, node: onnx.NodeProto) -> _Chain | None:
    """The chain starting at ``node`` (a Mul, or an Add not after a constant Mul) and its layer."""
    if node.op_type not in ("Mul", "Add") or (operand := _const_operand(idx, node)) is None:
        return None
    source, c = operand
    if node.op_type == "Add":
        before = idx.producer_node(source)
        if before is not None and before.op_type == "Mul" and _const_operand(idx, before) is not None \
                and _single_reader(idx, source) is node:
            return None  # the chain starts at that Mul
        nodes, scale, shift = [node], 1.0, c
    else:
        nodes, scale, shift = [node], c, 0.0
        nxt = _single_reader(idx, node.output[0])
        if nxt is not None and nxt.op_type == "Add" and (add := _const_operand(idx, nxt)) is not None:
            nodes.append(nxt)
            shift = add[1]
    layer, shape_readers = _layer_and_shape_readers(idx, nodes[-1].output[0])
    if layer is None or layer.op_type not in ("Conv", "Gemm", "MatMul") or layer.input[0] != nodes[-1].output[0]:
        return None
    return _Chain(nodes, source, scale, shift, layer, shape_readers)


def _per_channel(c: np.ndarray | float, channels: int, rank: int | None, axis: int) -> np.ndarray | None:
    """``c`` as one value per channel on ``axis`` (counted from the end when negative) of an input
    of rank ``rank`` (``None``: unknown, then only a constant of rank 0 or 1, which cannot add an
    axis to an input a layer reads), or ``None`` when it broadcasts any other way."""
    c = np.asarray(c, np.float64)
    if c.ndim > (1 if rank is None else rank):
        return None
    if c.size == 1:
        return np.full(channels, float(c.reshape(())))
    if axis >= 0 and rank is None:
        return None
    shape = (1,) * ((c.ndim if rank is None else rank) - c.ndim) + c.shape
    if shape[axis] != channels or c.size != channels:
        return None
    return c.reshape(channels)


def _source_dims(idx: GraphView, dims: Dims, chain: _Chain) -> tuple[int | None, ...] | None:
    """The chain's source's dimensions as far as known (its static shape, else inferred), or
    ``None`` when even its rank is unknown."""
    static = idx.shape(chain.source)
    return tuple(static) if static is not None else dims.get(chain.source)


def _keeps_shape(known: tuple[int | None, ...] | None, chain: _Chain, channels: int, axis: int) -> bool:
    """Whether the chain's output has its source's shape (``known``): a per-channel constant on a
    source whose size on ``axis`` is known to differ from ``channels`` (a size-1 axis broadcast
    up) has not."""
    if all(np.asarray(c).size == 1 for c in (chain.scale, chain.shift)):
        return True
    if known is None or not -len(known) <= axis < len(known):
        return True
    return known[axis] is None or known[axis] == channels


def _fold_one(graph: onnx.GraphProto, dims: Dims) -> bool:
    idx = GraphView(graph)
    # a GELU's ``Mul(0.5)`` is part of the one table the compiler lowers, not a scale to move
    in_gelu = {n.output[0] for found in float_gelus(graph, idx) for n in found.nodes}
    for node in graph.node:
        if node.output and node.output[0] in in_gelu:
            continue
        chain = _chain(idx, node)
        if chain is not None and _fold(graph, idx, dims, chain):
            return True
    return False


def _fold(graph: onnx.GraphProto, idx: GraphView, dims: Dims, chain: _Chain) -> bool:
    layer = chain.layer
    w = idx.const(layer.input[1])
    if w is None:
        return False
    w = w.astype(np.float64)
    if layer.op_type == "Conv":
        return _fold_conv(graph, idx, dims, chain, w)
    if layer.op_type == "Gemm" and (attr(layer, "transA", 0) or attr(layer, "alpha", 1.0) != 1.0
                                    or attr(layer, "beta", 1.0) != 1.0):
        return False
    if w.ndim != 2:
        return False
    trans = layer.op_type == "Gemm" and bool(attr(layer, "transB", 0))
    wk = w.T if trans else w  # (K, N)
    known = _source_dims(idx, dims, chain)
    rank = len(known) if known is not None else 2 if layer.op_type == "Gemm" else None  # a Gemm reads a matrix
    s = _per_channel(chain.scale, wk.shape[0], rank, -1)
    b = _per_channel(chain.shift, wk.shape[0], rank, -1)
    if s is None or b is None or not _keeps_shape(known, chain, wk.shape[0], -1):
        return False
    bias_node, bias_name = _bias_of(idx, layer, wk.shape[1])
    folded = s[:, None] * wk
    if bias_name is None and np.any(b):
        return _keep_shift(graph, chain, s, b, (len(s),), lambda: _set(graph, layer, 1, folded.T if trans else folded))
    _set(graph, layer, 1, folded.T if trans else folded)
    if bias_name is not None:
        bias = idx.const(bias_name).astype(np.float64).reshape(-1) + b @ wk
        _set(graph, bias_node, list(bias_node.input).index(bias_name), bias)
    _bypass(graph, chain)
    return True


def _bias_of(idx: GraphView, layer: onnx.NodeProto, n: int) -> tuple[onnx.NodeProto | None, str | None]:
    """The node and constant holding ``layer``'s per-output bias (a Gemm's ``C``, a MatMul's
    bias ``Add`` when it is the MatMul's only reader), or ``(None, None)``."""
    if layer.op_type == "Gemm":
        has = len(layer.input) > 2 and bool(layer.input[2])
        if not has:
            return None, None
        c = idx.const(layer.input[2])
        return (layer, layer.input[2]) if c is not None and c.size == n else (None, None)
    add = _single_reader(idx, layer.output[0])
    if add is None or add.op_type != "Add" or (operand := _const_operand(idx, add)) is None:
        return None, None
    name = add.input[1] if add.input[0] == layer.output[0] else add.input[0]
    return (add, name) if operand[1].size == n and operand[1].ndim == 1 else (None, None)


def _fold_conv(graph: onnx.GraphProto, idx: GraphView, dims: Dims, chain: _Chain, w: np.ndarray) -> bool:
    layer = chain.layer
    group = attr(layer, "group", 1)
    per_group_in, out_ch = w.shape[1], w.shape[0]
    s = _per_channel(chain.scale, per_group_in * group, w.ndim, 1)
    b = _per_channel(chain.shift, per_group_in * group, w.ndim, 1)
    if s is None or b is None or not _keeps_shape(_source_dims(idx, dims, chain), chain, per_group_in * group, 1):
        return False
    # input channel read by weight (o, i): group of o times channels per group, plus i
    in_ch = (np.arange(out_ch)[:, None] // (out_ch // group)) * per_group_in + np.arange(per_group_in)[None, :]
    extra = (1,) * (w.ndim - 2)
    folded = w * s[in_ch].reshape(in_ch.shape + extra)
    pads = attr(layer, "pads", None)
    auto_pad = attr(layer, "auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    unpadded = auto_pad == "VALID" or (auto_pad == "NOTSET" and not any(pads or []))
    if not unpadded and np.any(b):
        return _keep_shift(graph, chain, s, b, (len(s),) + extra, lambda: _set(graph, layer, 1, folded))
    has_bias = len(layer.input) > 2 and bool(layer.input[2])
    bias = idx.const(layer.input[2]).astype(np.float64) if has_bias else np.zeros(out_ch)
    bias = bias + (w * b[in_ch].reshape(in_ch.shape + extra)).reshape(out_ch, -1).sum(axis=1)
    _set(graph, layer, 1, folded)
    if has_bias:
        _set(graph, layer, 2, bias)
    elif np.any(b):
        layer.input.append("")
        _set(graph, layer, 2, bias)
    _bypass(graph, chain)
    return True


def _keep_shift(graph: onnx.GraphProto, chain: _Chain, s: np.ndarray, b: np.ndarray, channel_shape: tuple[int, ...],
                fold_scale: Callable[[], None]) -> bool:
    """The shift cannot fold: ``s * x + b`` becomes ``Add(x, b / s)`` in front of the scaled layer
    (exact while no scale is zero), its constant a scalar when both were, else shaped
    ``channel_shape``; nothing to gain when the chain has no scale."""
    if chain.nodes[0].op_type != "Mul" or len(chain.nodes) != 2 or not np.all(s):
        return False
    mul, add = chain.nodes
    fold_scale()
    const_index = 1 if add.input[0] == mul.output[0] else 0
    name = unique_name(graph, add.input[const_index] + "_unscaled")
    scalar = np.asarray(chain.scale).size == 1 and np.asarray(chain.shift).size == 1
    shape = () if scalar else channel_shape
    set_array(graph, name, (b / s)[:1 if scalar else None].reshape(shape).astype(np.float32), add=True)
    add.input[const_index] = name
    add.input[1 - const_index] = chain.source
    graph.node.remove(mul)
    return True


def _set(graph: onnx.GraphProto, node: onnx.NodeProto, k: int, value: np.ndarray) -> None:
    """``node.input[k]`` becomes a new initializer holding ``value`` (float32); the old one is left
    to its other readers or removed as unused."""
    base = node.input[k] or (node.name or node.output[0]) + "_bias"
    name = unique_name(graph, base + "_affine")
    set_array(graph, name, value.astype(np.float32), add=True)
    node.input[k] = name


def _bypass(graph: onnx.GraphProto, chain: _Chain) -> None:
    """The layer and the shape readers read the chain's input; the chain's nodes go."""
    chain.layer.input[0] = chain.source
    for reader in chain.shape_readers:
        reader.input[0] = chain.source
    for n in chain.nodes:
        graph.node.remove(n)
