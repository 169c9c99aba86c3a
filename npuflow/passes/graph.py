"""Small read helpers over an ``onnx.GraphProto`` shared by the float passes and the quantizer.

Passes edit ModelProtos in place of a full IR because each rewrite here is local (one node and
its neighbours) and must keep node and tensor names exactly; these helpers answer the questions
every rewrite asks (who produces / consumes a tensor, is it a constant, what is an attribute).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..model import node_reads


class GraphIndex:
    """Producers, consumers and constants of a graph, computed once (rebuild after edits)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i in node_reads(node):  # If/Loop bodies read outer tensors without listing them
                self.consumers[i].append(node)
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}

    def const(self, name: str) -> np.ndarray | None:
        """Value of an initializer, or ``None`` when ``name`` is not a constant."""
        t = self.inits.get(name)
        return numpy_helper.to_array(t) if t is not None else None

    def scalar(self, name: str) -> float | None:
        v = self.const(name) if name else None
        if v is None or v.size != 1:
            return None
        return float(v.reshape(()))

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        """The single consumer of ``tensor`` when it has exactly one and is not a graph output."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.outputs:
            return None
        return users[0]


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def replace_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    """Set initializer ``name`` to ``value`` (added when missing)."""
    for i, t in enumerate(graph.initializer):
        if t.name == name:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
            return
    graph.initializer.append(numpy_helper.from_array(value, name))


def remove_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in node_reads(n)} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def unique_name(graph: onnx.GraphProto, base: str) -> str:
    """``base`` or ``base_<k>``: a tensor name not used anywhere in ``graph``."""
    taken = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {
        o for n in graph.node for o in n.output}
    name, k = base, 1
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    return name


def absorb_follower(graph: onnx.GraphProto, idx: "GraphIndex", layer: onnx.NodeProto, follower: onnx.NodeProto,
                    w: np.ndarray, b: np.ndarray, suffix: str) -> None:
    """``layer`` (Conv/ConvTranspose/Gemm) takes new weight ``w`` and bias ``b`` and replaces
    ``follower`` (a BatchNormalization or affine op folded into it), output name included.

    Weight and bias are rewritten in place when ``layer`` is their only reader, else under new
    names (``<weight><suffix>``, ``<layer>_bias``).
    """
    has_bias = len(layer.input) > 2 and bool(layer.input[2])
    w_name = layer.input[1] if len(idx.consumers[layer.input[1]]) == 1 else unique_name(graph, layer.input[1] + suffix)
    b_name = (layer.input[2] if has_bias and len(idx.consumers[layer.input[2]]) == 1
              else unique_name(graph, (layer.name or layer.output[0]) + "_bias"))
    replace_initializer(graph, w_name, w.astype(np.float32))
    replace_initializer(graph, b_name, b.astype(np.float32))
    layer.input[1] = w_name
    if has_bias:
        layer.input[2] = b_name
    else:
        layer.input.append(b_name)
    out, stale = follower.output[0], layer.output[0]
    # remove the follower before the layer takes over its output name (matched by outputs)
    graph.node.remove(next(n for n in graph.node if list(n.output) == list(follower.output)))
    layer.output[0] = out
    keep = [vi for vi in graph.value_info if vi.name != stale]
    del graph.value_info[:]
    graph.value_info.extend(keep)
