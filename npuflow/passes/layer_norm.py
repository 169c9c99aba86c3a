"""A LayerNorm written out node by node as one ``LayerNormalization``.

ConvNeXt and EdgeNeXt write their channels-first LayerNorm by hand (``u = x.mean(1)``,
``(x - u) / sqrt(((x - u) ** 2).mean(1) + eps)``, then a per-channel scale and shift), and torch
exports ``nn.LayerNorm`` below opset 17 the same way over the last axis.  Judged node by node,
such a chain alternates: the ``Sub``, the ``+ eps`` and the scale and shift are element-wise
integer ops a target runs, the means, ``Pow``, ``Sqrt`` and ``Div`` are float CPU ops, so one
LayerNorm becomes four or five boundaries between integer programs and CPU subgraphs, each with a
quantize step whose rounding the float LayerNorm never had (EdgeNeXt: 45-55 compiled subgraphs,
``benchmarks/results/newuser_flows21.md``).  Vendor converters recognise the pattern as one layer
norm unit; :func:`layer_norms` (a float pass) does the same:

* a normalisation over the trailing axes becomes ``LayerNormalization(x, scale, bias, axis)``;
* one over axis 1 of an N x C x H x W map (channels-first) becomes
  ``Transpose(0, 2, 3, 1) -> LayerNormalization(axis=-1) -> Transpose(0, 3, 1, 2)``, the form
  torch exports for ``nn.LayerNorm`` on a permuted map.

The per-channel ``Mul`` by a constant (then ``Add`` of a constant) that follows is the unit's
scale and bias; without them the scale is ones.  Every intermediate tensor must be read only
inside the pattern.  ``LayerNormalization`` is an opset-17 operator: a model of an older opset is
declared opset 17 where no node it holds changes meaning between the two (every schema the same),
else converted by onnx's version converter; where that fails the chain is left as it is.  In
float the unit computes the same function (up to float rounding: ONNX Runtime's kernel
accumulates the mean and variance in one pass).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import defs, helper

from ..graph import GraphView, remove_unused_initializers, unique_name
from ..model import converted, default_opset, sort_nodes
from ..operators import STANDARD_DOMAINS
from ..value_info import named_dims, ranked_dims
from .activations import FloatView
from .variance import _mean, _squared

log = logging.getLogger(__name__)

#: the opset that defines ``LayerNormalization``
LAYER_NORM_OPSET = 17
#: the IR version opset 17 belongs to
LAYER_NORM_IR = 8
#: channels-first map to channels-last and back
TO_LAST, TO_FIRST = (0, 2, 3, 1), (0, 3, 1, 2)


@dataclass(frozen=True)
class WrittenLayerNorm:
    """One written-out LayerNorm: its input and the input's dimensions, normalised axes (sorted,
    non-negative), epsilon, the scale and bias over the normalised shape, the tensor it ends in and
    the nodes it replaces."""

    x: str
    x_dims: tuple[int | str, ...]
    axes: tuple[int, ...]
    epsilon: float
    scale: np.ndarray
    bias: np.ndarray | None
    output: str
    nodes: tuple[onnx.NodeProto, ...]


def _const_operand(node: onnx.NodeProto, data: str, g: FloatView) -> np.ndarray | None:
    """The constant ``node`` (a binary op) combines with ``data``, else ``None``."""
    if len(node.input) != 2 or data not in node.input:
        return None
    other = node.input[1] if node.input[0] == data else node.input[0]
    return g.idx.const(other)


def _per_axis(value: np.ndarray, dims: tuple[int | str, ...], axes: tuple[int, ...]) -> np.ndarray | None:
    """``value`` (broadcasting against a tensor of ``dims``) as an array over the normalised axes,
    where it varies along no other axis and does not grow the tensor, else ``None``."""
    rank = len(dims)
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(s != 1 and (a not in axes or s != dims[a]) for a, s in enumerate(shape)):
        return None
    full = np.broadcast_to(value.reshape(shape), tuple(dims[a] if a in axes else 1 for a in range(rank)))
    return np.ascontiguousarray(full.reshape([dims[a] for a in axes])).astype(np.float32)


def _affine(out: str, dims: tuple[int | str, ...], axes: tuple[int, ...], g: FloatView
            ) -> tuple[np.ndarray | None, np.ndarray | None, str, list[onnx.NodeProto]]:
    """The scale and shift after the normalised tensor ``out``: (scale, bias, end tensor, nodes)."""
    scale = bias = None
    nodes: list[onnx.NodeProto] = []
    reader = g.only_reader(out)
    if reader is not None and reader.op_type == "Mul" and reader.domain in STANDARD_DOMAINS:
        value = _const_operand(reader, out, g)
        scale = None if value is None else _per_axis(value, dims, axes)
        if scale is not None:
            out, nodes = reader.output[0], [reader]
            reader = g.only_reader(out)
    if reader is not None and reader.op_type == "Add" and reader.domain in STANDARD_DOMAINS:
        value = _const_operand(reader, out, g)
        bias = None if value is None else _per_axis(value, dims, axes)
        if bias is not None:
            out, nodes = reader.output[0], [*nodes, reader]
    return scale, bias, out, nodes


def _normalised(div: onnx.NodeProto, g: FloatView, dims: dict[str, tuple[int | str, ...]]
                ) -> tuple[str, tuple[int, ...], float, list[onnx.NodeProto]] | None:
    """``div = (x - mean(x)) / sqrt(mean((x - mean(x)) ** 2) + eps)``: (x, axes, eps, nodes), else None."""
    if div.op_type != "Div" or div.domain not in STANDARD_DOMAINS or len(div.input) != 2:
        return None
    deviation, root = div.input
    sqrt = g.producer(root)
    sub = g.producer(deviation)
    if sqrt is None or sqrt.op_type != "Sqrt" or sub is None or sub.op_type != "Sub" or g.only_reader(root) is None:
        return None
    add = g.producer(sqrt.input[0])
    if add is None or add.op_type != "Add" or g.only_reader(add.output[0]) is None:
        return None
    variance, eps = (add.input[0], g.scalar(add.input[1])) if g.scalar(add.input[1]) is not None \
        else (add.input[1], g.scalar(add.input[0]))
    outer = None if eps is None or g.only_reader(variance) is None else _mean(variance, g, dims)
    if outer is None or not outer[2]:
        return None
    square = g.producer(outer[0])
    if _squared(square, g) != deviation or g.only_reader(outer[0]) is None:
        return None
    x, mean = sub.input
    inner = _mean(mean, g, dims)
    if inner is None or inner[0] != x or inner[1:] != outer[1:] or g.only_reader(mean) is None:
        return None
    readers = g.idx.consumer_nodes(deviation)
    if g.idx.is_graph_output(deviation) or {id(square), id(div)} != {id(n) for n in readers}:
        return None
    nodes = [g.producer(mean), sub, square, g.producer(variance), add, sqrt, div]
    return x, outer[1], float(eps), nodes


def _dims(model: onnx.ModelProto, divs: list[onnx.NodeProto], g: FloatView) -> dict[str, tuple[int | str, ...]]:
    """The tensors' dimensions the chains ending in ``divs`` are judged on: ONNX's
    (:func:`~npuflow.value_info.named_dims`), or where one's input ``x`` has no rank there,
    :func:`~npuflow.value_info.ranked_dims` (ONNX Runtime's symbolic inference fills it in).

    The fold needs the rank and the normalised axes' sizes, not only the ``ReduceMean`` axes: the
    rank tells trailing axes from axis 1 of a map and says where the scale's constant broadcasts,
    and the sizes say that it varies along the normalised axes only and does not grow the tensor
    (a ``[C]`` scale on an axis of size 1 broadcasts in the written-out chain, where
    ``LayerNormalization`` requires the scale's shape to be the normalised one).  Reading
    ``axes=[-1]`` alone would have to take both on trust.  PP-OCRv4 rec loaded with its dynamic
    width has none of its 5 LayerNorms' ranks from ONNX (its neck's ``Reshape`` at opset 13)."""
    if not divs:
        return {}
    dims = named_dims(model)
    subs = [g.producer(div.input[0]) for div in divs]
    if all(sub is None or sub.op_type != "Sub" or sub.input[0] in dims for sub in subs):
        return dims
    return ranked_dims(model)


def written_layer_norms(model: onnx.ModelProto) -> list[WrittenLayerNorm]:
    """Every written-out LayerNorm of a float model over its trailing axes, or over axis 1 of a
    rank-4 map, whose intermediate tensors only the pattern reads."""
    idx = GraphView(model.graph)
    g = FloatView(idx)
    divs = [n for n in model.graph.node if n.op_type == "Div" and g.producer(n.input[1]) is not None
            and g.producer(n.input[1]).op_type == "Sqrt"]
    dims = _dims(model, divs, g)
    found = []
    for div in divs:
        core = _normalised(div, g, dims)
        if core is None:
            continue
        x, axes, eps, nodes = core
        x_dims = dims[x]
        rank = len(x_dims)
        trailing = axes == tuple(range(axes[0], rank))
        if not (trailing or (axes == (1,) and rank == 4)):
            continue
        scale, bias, out, affine = _affine(div.output[0], x_dims, axes, g)
        if scale is None:
            scale = np.ones([x_dims[a] for a in axes], np.float32)
        found.append(WrittenLayerNorm(x, x_dims, axes, eps, scale, bias, out, (*nodes, *affine)))
    return found


def _same_meaning(model: onnx.ModelProto, opset: int) -> bool:
    """Whether every default-domain node of ``model`` has the same schema at ``opset`` as now."""
    now = default_opset(model)
    for node in model.graph.node:
        if node.domain not in STANDARD_DOMAINS:
            continue
        try:
            if defs.get_schema(node.op_type, now).since_version != defs.get_schema(node.op_type, opset).since_version:
                return False
        except defs.SchemaError:
            return False
    return True


def _at_layer_norm_opset(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """``model`` at an opset with ``LayerNormalization`` (itself where it has one), else ``None``."""
    if default_opset(model) >= LAYER_NORM_OPSET:
        return model
    if not _same_meaning(model, LAYER_NORM_OPSET):
        try:
            return converted(model, LAYER_NORM_OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors on ops it cannot convert
            log.info("LayerNorm chains left written out: opset %d -> %d failed: %s", default_opset(model),
                     LAYER_NORM_OPSET, exc)
            return None
    for o in model.opset_import:
        if o.domain in STANDARD_DOMAINS:
            o.version = LAYER_NORM_OPSET
    # declared, not converted: the IR version too (opset 17 is IR 8; a TorchScript opset-14 export is IR 7)
    model.ir_version = max(model.ir_version, LAYER_NORM_IR)
    return model


def _typed(graph: onnx.GraphProto, name: str, dims: list[int | str]) -> None:
    graph.value_info.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims))


def _replace(graph: onnx.GraphProto, ln: WrittenLayerNorm, reserved: set[str]) -> None:
    """Write ``ln`` as one unit whose last node writes ``ln.output``, in place of its nodes."""
    base = ln.nodes[-1].name or ln.output
    scale = unique_name(graph, f"{base}_ln_scale", reserved)
    graph.initializer.append(onnx.numpy_helper.from_array(ln.scale, scale))
    inputs = [ln.x, scale]
    if ln.bias is not None:
        inputs.append(unique_name(graph, f"{base}_ln_bias", reserved))
        graph.initializer.append(onnx.numpy_helper.from_array(ln.bias, inputs[-1]))
    if ln.axes == tuple(range(ln.axes[0], len(ln.x_dims))):  # trailing axes
        graph.node.append(helper.make_node("LayerNormalization", inputs, [ln.output], name=f"{base}_ln",
                                           axis=ln.axes[0], epsilon=ln.epsilon))
        return
    last = [ln.x_dims[k] for k in TO_LAST]
    to_last, normed = unique_name(graph, f"{base}_ln_nhwc", reserved), unique_name(graph, f"{base}_ln_out", reserved)
    graph.node.extend([
        helper.make_node("Transpose", [ln.x], [to_last], name=f"{base}_ln_to_last", perm=list(TO_LAST)),
        helper.make_node("LayerNormalization", [to_last, *inputs[1:]], [normed], name=f"{base}_ln",
                         axis=-1, epsilon=ln.epsilon),
        helper.make_node("Transpose", [normed], [ln.output], name=f"{base}_ln_to_first", perm=list(TO_FIRST)),
    ])
    _typed(graph, to_last, last)
    _typed(graph, normed, last)


def layer_norms(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model whose written-out LayerNorms (:func:`written_layer_norms`) are one
    ``LayerNormalization`` each (channels-first ones between two ``Transpose``)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    found = written_layer_norms(out)
    if not found:
        return out
    upgraded = _at_layer_norm_opset(out)
    if upgraded is None:
        return out
    if upgraded is not out:  # the converter rewrote the graph: find the chains in its copy
        out, found = upgraded, written_layer_norms(upgraded)
    graph = out.graph
    dead = {o for ln in found for n in ln.nodes for o in n.output}
    kept = [n for n in graph.node if not dead.intersection(n.output)]
    reserved: set[str] = set()
    del graph.node[:]
    graph.node.extend(kept)
    for ln in found:
        dead.discard(ln.output)
        _replace(graph, ln, reserved)
    vi = [t for t in graph.value_info if t.name not in dead]
    del graph.value_info[:]
    graph.value_info.extend(vi)
    sort_nodes(graph)
    remove_unused_initializers(graph)
    return out
