"""A linear layer written as ``MatMul(x, W) -> Add(B)``: the bias of a fully connected layer.

torch exports ``nn.Linear`` on an input of rank > 2 (every transformer, every sequence model) as
``MatMul(x, W[K, N]) -> Add(., B[N])``; ONNX Runtime's, Quark's and NNCF's quantizers read ``B``
as the layer's bias, and the DPU's and BPU's fully connected layer adds it in its accumulator.
:func:`linear_bias` is the one test every stage asks (the checker fuses the ``Add`` into the
``MatMul``, the quantizer gives ``B`` the int32 bias role, the compiler lowers the pair as one
``fc`` with ``bias_in``), so they cannot disagree on which ``Add`` is a bias.

:func:`canonical_linear_biases` (a float pass) writes every such bias as a 1-D ``[N]`` second
input of the ``Add``, so the quantized model's int32 bias has the one layout a ``Conv``'s has
(per-channel axis 0).  The pair is kept for every input rank (no rank-2 ``Gemm`` rewrite): one
form for all ranks is one path through the quantizer and the compiler.

:func:`untie_shared_biases` (a float pass) gives every layer that reads a bias another layer reads
too its own copy: an int32 bias has the scale ``s_in * s_w`` of the one layer it was quantized for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..graph import GraphView, is_dequantize, set_array, unique_name
from ..operators import op_def

_ONNX_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class LinearBias:
    """The ``Add`` that adds a constant per-output-channel vector to a ``MatMul`` by a constant."""

    add: onnx.NodeProto
    bias: str  # the Add's constant input (in a quantized model the dequantize step's output)
    output: str  # the Add's output: the layer's result


def linear_bias(node: onnx.NodeProto, view: GraphView) -> LinearBias | None:
    """The bias ``Add`` of ``node`` when ``node`` is ``MatMul(activation, constant 2-D W[K, N])``
    whose result only that ``Add`` reads (directly: a quantize step between makes two ops), with a
    constant of ``N`` values that broadcasts along the last axis only (``[N]``, ``[1, N]``,
    ``[1, 1, N]``, as either input), so the ``Add`` keeps the ``MatMul``'s shape.

    Not a bias: a constant with more than ``N`` values (a ``[T, N]`` position embedding), an
    ``Add`` after a product of two activations (attention scores + mask), and in a quantized
    model a float vector (NNCF leaves a bias in float after a quantized ``MatMul``; only an int32
    constant behind a dequantize step is the quantizer's bias).
    """
    if node.op_type != "MatMul" or node.domain not in _ONNX_DOMAINS or len(node.input) != 2 or not node.output:
        return None
    w = view.value(node.input[1])
    if w is None or w.ndim != 2 or view.is_const(node.input[0]):
        return None
    add = view.only_consumer(node.output[0])
    if add is None or add.op_type != "Add" or add.domain not in _ONNX_DOMAINS or len(add.input) != 2:
        return None
    others = [t for t in add.input if t != node.output[0]]
    if len(others) != 1 or not view.is_const(others[0]):
        return None
    b = others[0]
    v = view.value(b)
    n = int(w.shape[1])
    if v is None or v.ndim < 1 or v.size != n or v.shape[-1] != n:
        return None
    if v.ndim > 1 and v.ndim > (_rank(view, node.input[0]) or 0):  # [1, 1, N] on a rank-2 input adds an axis
        return None
    producer = view.producer_node(b)
    quantized_bias = producer is not None and is_dequantize(producer)
    if any(view.qdq) != quantized_bias or (quantized_bias and v.dtype != np.int32) or \
            (not quantized_bias and v.dtype.kind != "f"):
        return None
    return LinearBias(add, b, add.output[0])


def _rank(view: GraphView, tensor: str) -> int | None:
    """The declared rank of ``tensor`` (symbolic dimensions count: a dynamic batch axis)."""
    if tensor in view.shapes:
        return len(view.shapes[tensor])
    g = view.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.name == tensor and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def canonical_linear_biases(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model whose linear-layer biases (:func:`linear_bias`) are 1-D ``[N]`` initializers
    read as the ``Add``'s second input (``Add(B, x @ W)`` and ``[1, 1, N]`` rewritten); values and
    shapes of every tensor are unchanged."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    view = GraphView(out)
    for node in view.nodes:
        found = linear_bias(node, view)
        if found is None:
            continue
        add, b = found.add, found.bias
        values = view.const(b)
        if values is None:  # a Constant node: fold_constants runs first, so only an odd graph gets here
            continue
        if values.ndim != 1:
            own = len(view.consumers.get(b, ())) == 1 and b not in {i.name for i in graph.input}
            name = b if own else unique_name(graph, b + "_vector")
            set_array(graph, name, values.reshape(-1), add=True)
            b = name
        if list(add.input) != [node.output[0], b]:
            del add.input[:]
            add.input.extend([node.output[0], b])
    return out


def untie_shared_biases(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model in which no bias initializer (a ``Conv``/``Gemm``-style op's bias input, a linear
    layer's bias ``Add`` operand: :func:`linear_bias`) is read by more than one layer: each layer
    after the first gets a copy under a new name.

    Why: a head shared across levels (RetinaNet's and FCOS's class subnet, one ``nn.Conv2d`` called
    on three FPN levels) exports three ``Conv`` nodes reading one bias; the int32 bias was quantized
    once with the first level's input scale, so the other levels added it at the wrong scale for
    ONNX Runtime's fused ``QLinearConv`` (optimisation level "extended": scores cosine 0.677, and
    quantize warned ``NPF_QUANT_LOW_SIMILARITY`` about a model that is 0.99995 as written).
    Weights stay shared: their scale does not depend on the layer's input."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    view = GraphView(out)
    seen: set[str] = set()
    for node in view.nodes:
        d = op_def(node.op_type, node.domain)
        found = linear_bias(node, view)
        if found is not None:
            reader, k = found.add, list(found.add.input).index(found.bias)
        elif d.bias is not None and d.weight is not None and len(node.input) > d.bias and node.input[d.bias]:
            reader, k = node, d.bias
        else:
            continue
        name = reader.input[k]
        values = view.const(name)
        if values is None or name not in view.inits:
            continue
        if name in seen:
            copy = unique_name(graph, name)
            set_array(graph, copy, values, add=True)
            reader.input[k] = copy
        seen.add(name)
    return out
