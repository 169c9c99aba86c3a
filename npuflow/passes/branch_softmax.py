"""A softmax over two branches as two sigmoids: selective-kernel attention (SKNet, ResNeSt radix 2).

SKNet writes its branch weights as ``Conv (2C) -> Reshape [N, 2, C, 1, 1] -> Softmax(axis 1) ->
Gather(axis 1, 0 | 1)``.  No target here has an integer Softmax, the Reshape reaches no single quantize
step and Gather has no integer lowering, so each such block was four float CPU nodes between
accelerator subgraphs (SKNet, round 22: 5 compiled subgraphs on bernoulli2 and cpu-int8).

Exact in float: over two logits ``softmax(a, b)[0] = 1 / (1 + exp(b - a)) = sigmoid(a - b)``, and the
Conv is linear, so ``a - b`` is one Conv of ``W_0 - W_1`` (bias ``b_0 - b_1``).  Each Gather's output
becomes ``Sigmoid(Conv(x; W_k - W_{1-k}))`` of shape ``[N, C, 1, 1]``, which targets with a sigmoid
table run (the DPUCZDX8G has no Sigmoid: there the two Sigmoids are CPU nodes where four were).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import GraphView, attr, unique_name
from .one_at_a_time import rewrite_all


def two_way_softmax_as_sigmoid(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with each two-branch softmax block as two Conv + Sigmoid pairs (unchanged when
    none is found)."""
    return rewrite_all(model, "Softmax", _match, _apply)


def _apply(graph: onnx.GraphProto, idx: GraphView, node: onnx.NodeProto, found) -> None:
    """Each ``Gather`` of the block as ``Sigmoid(Conv(x; W_k - W_{1-k}))``."""
    conv, gathers, old = found
    w = idx.const(conv.input[1])
    b = idx.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0], w.dtype)
    c = w.shape[0] // 2
    new = []
    for k, gather in gathers:
        name = gather.name or gather.output[0]
        wk = unique_name(graph, f"{name}/w_diff")
        bk = unique_name(graph, f"{name}/b_diff")
        graph.initializer.append(numpy_helper.from_array((w[k * c:(k + 1) * c] - w[(1 - k) * c:(2 - k) * c]), wk))
        graph.initializer.append(numpy_helper.from_array((b[k * c:(k + 1) * c] - b[(1 - k) * c:(2 - k) * c]), bk))
        logit = unique_name(graph, f"{name}/logit")
        conv_k = helper.make_node("Conv", [conv.input[0], wk, bk], [logit], name=f"{name}/conv")
        conv_k.attribute.extend(a for a in conv.attribute)
        new += [conv_k, helper.make_node("Sigmoid", [logit], [gather.output[0]], name=f"{name}/sigmoid")]
    _replace(graph, old, new)


def _replace(graph: onnx.GraphProto, old: list[onnx.NodeProto], new: list[onnx.NodeProto]) -> None:
    """``old`` out, ``new`` in at the first one's place (the Conv's): the new nodes read only what the
    Conv read, and a Gather's reader may come before the last Gather."""
    nodes = list(graph.node)
    gone = {id(n) for n in old}
    at = min(i for i, n in enumerate(nodes) if id(n) in gone)
    kept = [n for n in nodes if id(n) not in gone]
    del graph.node[:]
    graph.node.extend(kept[:at] + new + kept[at:])
    dead = {o for n in old for o in n.output} - {o for n in new for o in n.output}
    keep_vi = [vi for vi in graph.value_info if vi.name not in dead]
    del graph.value_info[:]
    graph.value_info.extend(keep_vi)


def _match(softmax: onnx.NodeProto, idx: GraphView, dims: dict):
    """``(conv, [(branch, gather)], nodes replaced)`` when ``softmax`` closes ``Conv -> Reshape ->
    Softmax`` over an axis of size 2 that splits the Conv's channels, read only by Gathers of one
    branch each; else ``None``."""
    if softmax.domain or softmax.op_type != "Softmax":
        return None
    reshape = idx.producer_node(softmax.input[0])
    if reshape is None or reshape.op_type != "Reshape" or idx.only_consumer(reshape.output[0]) is not softmax:
        return None
    conv = idx.producer_node(reshape.input[0])
    if (conv is None or conv.op_type != "Conv" or idx.only_consumer(conv.output[0]) is not reshape
            or attr(conv, "group", 1) != 1 or idx.const(conv.input[1]) is None
            or (len(conv.input) > 2 and conv.input[2] and idx.const(conv.input[2]) is None)):
        return None
    src, dst = dims.get(conv.output[0]), dims.get(softmax.input[0])
    axis = attr(softmax, "axis", -1)
    if src is None or dst is None or not all(isinstance(d, int) for d in (*src[1:], *dst[1:])):
        return None
    axis = axis % len(dst)
    # the reshape splits the channel axis into (2, C) and keeps the batch and the spatial axes
    if len(src) < 3 or axis != 1 or list(dst) != [src[0], 2, src[1] // 2, *src[2:]] or src[1] % 2:
        return None
    if any(idx.is_graph_output(t) for t in (conv.output[0], reshape.output[0], softmax.output[0])):
        return None
    gathers = []
    for g in idx.consumer_nodes(softmax.output[0]):
        index = idx.const(g.input[1]) if g.op_type == "Gather" and len(g.input) == 2 else None
        if index is None or index.ndim != 0 or attr(g, "axis", 0) % len(dst) != 1 or int(index) not in (0, 1, -1, -2):
            return None
        gathers.append((int(index) % 2, g))
    if not gathers:
        return None
    return conv, gathers, [conv, reshape, softmax, *(g for _, g in gathers)]
