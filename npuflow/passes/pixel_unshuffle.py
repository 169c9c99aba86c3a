"""Target rewrite: PyTorch's ``PixelUnshuffle`` as ``SpaceToDepth`` on a target without a transpose.

torch exports ``nn.PixelUnshuffle(b)`` (opset 17) as ``Reshape [N, C, H/b, b, W/b, b] -> Transpose
[0, 1, 3, 5, 2, 4] -> Reshape [N, C*b*b, H/b, W/b]``: output channel ``c*b*b + dy*b + dx``.  The DPUs run
the three as reshape/transpose; bernoulli2 has no transpose (the three ran on the CPU) but runs
``SpaceToDepth`` with block 2 ("stack neighbor").  ONNX's ``SpaceToDepth`` puts the same value in channel
``(dy*b + dx)*C + c``: the same tensor with its channels permuted, so where every reader is a Conv with its
own constant weights, the Conv reads the permuted channels through its weights' input channels
(``W'[:, (dy*b + dx)*C + c] = W[:, c*b*b + dy*b + dx]``), exact in float and in the quantized model (a
permutation of the same weight codes under the same per-output-channel scales, and of the same input codes).
Only where the target rejects the ``Transpose`` and accepts the ``SpaceToDepth``; other readers: left (reported).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..graph import GraphView, attr, set_array
from ..targets import Target
from .wide_conv import node_reasons, shaped_view

_PERM = [0, 1, 3, 5, 2, 4]


def unshuffles_as_space_to_depth(model: onnx.ModelProto, target: Target) -> list[tuple[str, bool, str]]:
    """Rewrite in place each PixelUnshuffle chain the module docstring covers; ``(node, applied, detail)``."""
    done = []
    view = shaped_view(model)
    for out in [n.output[0] for n in model.graph.node if n.op_type == "Transpose" and list(attr(n, "perm") or []) == _PERM]:
        found = _chain(view, view.producer_node(out))
        if found is None or not node_reasons(found[1], view, target):
            continue  # not torch's PixelUnshuffle, or the target runs the transpose
        first, _, last, (n, c, h, w, b) = found
        name = last.name or last.output[0]
        readers = view.consumer_nodes(last.output[0])
        bad = [r.name or r.output[0] for r in readers if not _conv_reader(view, r, last.output[0])]
        why = _s2d_reasons(target, n, c, h, w, b)
        detail = why
        if view.is_graph_output(last.output[0]) or not readers:
            detail = "its output is a graph output"
        elif bad:
            detail = f"read by {', '.join(bad)}, not only Convs with weights of their own"
        if detail:
            done.append((name, False, f"PixelUnshuffle({b}) stays Reshape/Transpose/Reshape: {detail}"))
            continue
        old = np.arange(c * b * b).reshape(c, b, b)           # torch's channel of (c, dy, dx)
        new = np.arange(c * b * b).reshape(b, b, c).transpose(2, 0, 1)  # SpaceToDepth's
        for r in readers:
            wt = view.const(r.input[1])
            moved = np.empty_like(wt)
            moved[:, new.ravel()] = wt[:, old.ravel()]
            set_array(model.graph, r.input[1], moved)
        _replace(model.graph, first, last, b)
        done.append((name, True, f"Reshape/Transpose/Reshape (PixelUnshuffle({b})) -> SpaceToDepth({b}), the input "
                                 f"channels of {', '.join(r.name or r.output[0] for r in readers)} permuted to match"))
        view = shaped_view(model)
    return done


def _chain(view: GraphView, transpose: onnx.NodeProto) -> tuple | None:
    """``(first Reshape, Transpose, last Reshape, (N, C, H, W, b))`` of torch's PixelUnshuffle, or ``None``."""
    first = view.producer_node(transpose.input[0])
    last = view.only_consumer(transpose.output[0])
    if first is None or last is None or first.op_type != "Reshape" or last.op_type != "Reshape" or \
            view.only_consumer(first.output[0]) is None:
        return None
    xs, ts, ys = view.shape(first.input[0]), view.shape(first.output[0]), view.shape(last.output[0])
    if not xs or not ts or not ys or len(xs) != 4 or len(ts) != 6:
        return None
    n, c, h, w = xs
    b = ts[3]
    if b < 2 or ts != [n, c, h // b, b, w // b, b] or h % b or w % b or ys != [n, c * b * b, h // b, w // b]:
        return None
    return first, transpose, last, (n, c, h, w, b)


def _conv_reader(view: GraphView, node: onnx.NodeProto, tensor: str) -> bool:
    """A Conv reading ``tensor`` as its data, with constant weights no other node reads, one group."""
    return node.op_type == "Conv" and not node.domain and node.input[0] == tensor and \
        tensor not in node.input[1:] and view.const(node.input[1]) is not None and \
        len(view.consumers.get(node.input[1], [])) == 1 and attr(node, "group", 1) == 1


def _s2d_reasons(target: Target, n: int, c: int, h: int, w: int, b: int) -> str:
    """The target's objections to ``SpaceToDepth(b)`` of an ``N x C x H x W`` map, as check states them."""
    node = helper.make_node("SpaceToDepth", ["x"], ["y"], name="s2d", blocksize=b)
    graph = helper.make_graph([node], "s2d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, c * b * b, h // b, w // b])])
    part = GraphView(graph)
    return "; ".join(node_reasons(part.nodes[0], part, target))


def _replace(graph: onnx.GraphProto, first: onnx.NodeProto, last: onnx.NodeProto, b: int) -> None:
    """The three nodes become one ``SpaceToDepth`` with the last Reshape's name and output."""
    s2d = helper.make_node("SpaceToDepth", [first.input[0]], list(last.output), name=last.name, blocksize=b)
    gone = {first.output[0], last.input[0], last.output[0]}
    nodes = []
    for n in graph.node:
        if n.output and n.output[0] in gone:
            if n.output[0] == last.output[0]:
                nodes.append(s2d)
            continue
        nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
