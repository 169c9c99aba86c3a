"""A LayerNorm's variance as the mean of squared deviations, not ``E[x^2] - E[x]^2``.

Exporters from JAX and TensorFlow (tf2onnx) write a LayerNorm's variance in the one-pass form
``mean(x * x) - mean(x) ** 2``.  Quantized, each of the two terms gets a grid set by its own
range, which is the range of ``x^2`` and not that of their difference: when the mean is large
against the spread, the variance is a small difference of two large numbers and both rounding
errors land on it whole (catastrophic cancellation).  A power-of-two grid makes it worse, as the
step can only double.  The reciprocal square root after it then turns a variance rounded to
nearly zero into a huge factor (the ``Max(eps, .)`` that guards it keeps it finite, not right).

:func:`stable_variances` (a float pass) rewrites the one-pass form as the two-pass one
``mean((x - mean(x)) ** 2)``, reading the deviation ``x - mean(x)`` the LayerNorm computes anyway
for its output: the squares then span the variance's own range, and no difference is taken.  In
float the two forms agree up to rounding.  Nodes keep their names: the square node reads the
deviation instead of ``x``, the variance's ``Sub`` and the mean's square go.  Where the graph computes
no ``x - mean(x)`` from that mean, one ``Sub`` is added (a torch module that writes ``x.mean(-1,
keepdim=True)`` again for the normalisation, which the exporter does not merge, or TensorFlow's
``x * inv + (beta - mean * inv)``), when the mean keeps its reduced axes and so broadcasts over ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..graph import GraphView, attr, remove_unused_initializers
from ..model import sort_nodes
from ..operators import BROADCAST_BACK_OPS, STANDARD_DOMAINS, close
from .activations import FloatView
from ..value_info import named_dims


@dataclass(frozen=True)
class OnePassVariance:
    """``sub = mean(square(x)) - square(mean(x))`` and the deviation ``x - mean(x)`` it may read."""

    sub: onnx.NodeProto
    square_x: onnx.NodeProto  # x * x (or Pow(x, 2)): will square the deviation
    square_mean: onnx.NodeProto  # mean * mean (or Pow(mean, 2)): goes
    mean_of_squares: str  # the tensor the variance's readers read instead
    deviation: str
    new_deviation: tuple[str, str] | None = None  # (x, mean) of a Sub the graph lacks: deviation is its output


def _squared(node: onnx.NodeProto | None, g: FloatView) -> str | None:
    """What ``node`` squares (``Mul(t, t)`` or ``Pow(t, 2)``), else ``None``."""
    if node is None or node.domain not in STANDARD_DOMAINS:
        return None
    if node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1]:
        return node.input[0]
    if node.op_type == "Pow" and close(g.scalar(node.input[1]), 2.0):
        return node.input[0]
    return None


def _mean(tensor: str, g: FloatView, dims: dict[str, tuple[int | str, ...]]) -> tuple[str, tuple[int, ...], int] | None:
    """``tensor = mean(t)`` over some axes (``ReduceMean``, or ``ReduceSum`` times ``1/N`` or
    divided by ``N``, ``N`` the reduced size): ``(t, axes, keepdims)``, else ``None``."""
    node = g.producer(tensor)
    if node is None or node.domain not in STANDARD_DOMAINS:
        return None
    scale = 1.0
    if node.op_type in ("Mul", "Div") and len(node.input) == 2:
        data, k = node.input
        if node.op_type == "Mul" and g.scalar(k) is None:
            data, k = k, data
        value = g.scalar(k)
        if value is None or value == 0.0 or g.scalar(data) is not None:
            return None
        scale = 1.0 / value if node.op_type == "Div" else value
        node = g.producer(data)
        if node is None or node.op_type != "ReduceSum":
            return None
    elif node.op_type != "ReduceMean":
        return None
    rank_dims = dims.get(node.input[0])
    if rank_dims is None:
        return None
    axes = attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        const = g.idx.const(node.input[1])
        axes = None if const is None else [int(a) for a in np.ravel(const)]
    if not axes or any(not -len(rank_dims) <= a < len(rank_dims) for a in axes):
        return None
    axes = tuple(sorted(a % len(rank_dims) for a in axes))
    if any(isinstance(rank_dims[a], str) for a in axes):
        return None
    if node.op_type == "ReduceSum" and not close(scale * float(np.prod([rank_dims[a] for a in axes])), 1.0):
        return None
    return node.input[0], axes, int(attr(node, "keepdims", 1))


def _deviation(x: str, mean: str, axes: tuple[int, ...], idx: GraphView,
               dims: dict[str, tuple[int | str, ...]]) -> str | None:
    """A tensor ``x - mean`` the graph computes, ``mean`` broadcast back over the reduced axes
    through shape-only ops, else ``None``."""
    x_dims = dims.get(x)
    if x_dims is None:
        return None
    kept = tuple(1 if a in axes else d for a, d in enumerate(x_dims))
    frontier = [mean]
    while frontier:
        t = frontier.pop()
        for reader in idx.consumer_nodes(t):
            if reader.op_type in BROADCAST_BACK_OPS and reader.input[0] == t:
                frontier.append(reader.output[0])
            elif reader.op_type == "Sub" and list(reader.input) == [x, t] and _broadcast_back(t, mean, kept, idx, dims) \
                    and dims.get(reader.output[0]) == x_dims:
                return reader.output[0]
    return None


def _broadcast_back(t: str, mean: str, kept: tuple[int | str, ...], idx: GraphView,
                    dims: dict[str, tuple[int | str, ...]]) -> bool:
    """``t`` is ``mean`` with the reduced axes back as size 1, then possibly expanded: the last
    tensor before any ``Expand`` on the way from ``mean`` has the shape ``kept``."""
    while t != mean:
        node = idx.producer_node(t)
        if node is None or node.op_type not in BROADCAST_BACK_OPS:
            return False
        if node.op_type != "Expand":
            return dims.get(t) == kept
        t = node.input[0]
    return dims.get(mean) == kept


def _private(squares: str, sub: onnx.NodeProto, idx: GraphView) -> bool:
    """Each tensor from ``squares`` to the mean of them ``sub`` reads is read by the next node
    only, and none is a graph output: the rewrite changes their values."""
    t = squares
    for _ in range(3):
        reader = idx.only_consumer(t)
        if reader is None or idx.is_graph_output(t):
            return False
        if list(reader.output) == list(sub.output):
            return True
        t = reader.output[0]
    return False


def one_pass_variances(model: onnx.ModelProto) -> list[OnePassVariance]:
    """Every ``mean(x * x) - mean(x) ** 2`` of a float model whose deviation ``x - mean(x)`` the
    graph computes, or can compute from a mean that keeps its reduced axes, where the squares of
    ``x`` feed only that mean and the mean's square only the ``Sub``."""
    idx = GraphView(model.graph)
    g = FloatView(idx)
    subs = [n for n in model.graph.node if n.op_type == "Sub" and n.domain in STANDARD_DOMAINS and len(n.input) == 2
            and _squared(g.producer(n.input[1]), g) is not None and g.only_reader(n.input[1]) is not None]
    dims = named_dims(model) if subs else {}
    found = []
    for sub in subs:
        square_mean = g.producer(sub.input[1])
        mean = _squared(square_mean, g)
        outer = _mean(sub.input[0], g, dims)
        if outer is None:
            continue
        square_x = g.producer(outer[0])
        inner = _mean(mean, g, dims)
        x = _squared(square_x, g)
        if inner is None or x is None or inner[0] != x or inner[1:] != outer[1:] or not _private(outer[0], sub, idx):
            continue
        if any(idx.is_graph_output(t) for t in (sub.output[0], sub.input[1])):
            continue
        deviation = _deviation(x, mean, inner[1], idx, dims)
        if deviation is not None:
            found.append(OnePassVariance(sub, square_x, square_mean, sub.input[0], deviation))
        elif inner[2] and dims.get(x) is not None and \
                dims.get(mean) == tuple(1 if a in inner[1] else d for a, d in enumerate(dims[x])):
            found.append(OnePassVariance(sub, square_x, square_mean, sub.input[0], f"{sub.output[0]}_deviation",
                                         (x, mean)))
    return found


def stable_variances(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model whose one-pass variances (:func:`one_pass_variances`) are two-pass ones."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    found = one_pass_variances(out)
    if not found:
        return out
    gone = set()
    for v in found:
        if v.new_deviation is not None:
            graph.node.append(onnx.helper.make_node("Sub", list(v.new_deviation), [v.deviation],
                                                    name=f"{v.sub.name or v.sub.output[0]}_deviation"))
            typed = next((t for t in [*graph.input, *graph.value_info] if t.name == v.new_deviation[0]), None)
            if typed is not None:  # x's type, as the mean broadcasts over x: check reads static shapes
                graph.value_info.append(onnx.ValueInfoProto(name=v.deviation, type=typed.type))
        square = next(n for n in graph.node if list(n.output) == list(v.square_x.output))
        square.input[0] = v.deviation
        if square.op_type == "Mul":
            square.input[1] = v.deviation
        for node in graph.node:
            for k, t in enumerate(node.input):
                if t == v.sub.output[0]:
                    node.input[k] = v.mean_of_squares
        gone |= {tuple(v.sub.output), tuple(v.square_mean.output)}
    kept = [n for n in graph.node if tuple(n.output) not in gone]
    del graph.node[:]
    graph.node.extend(kept)
    dead = {o for outputs in gone for o in outputs}
    vi = [t for t in graph.value_info if t.name not in dead]
    del graph.value_info[:]
    graph.value_info.extend(vi)
    sort_nodes(graph)  # the squares now read the deviation, which may come later in the file
    remove_unused_initializers(graph)
    return out
