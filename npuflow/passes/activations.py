"""Activation patterns: recognising decomposed activations and what a target fuses into an op.

Exporters often write hard-sigmoid as ``Clip(x + 3, 0, 6) / 6`` and hard-swish as
``x * that``; :func:`fuse_activation_patterns` rewrites those into one ``HardSigmoid`` /
``HardSwish`` node (the last node of the pattern keeps its name and output) so the quantizer and
the checker see one form.  :func:`op_kind` names the op an activation may fuse into in the
vocabulary of target files (``conv2d``, ``fc`` ...); what the ops are, which activations exist and
whether a target fuses one into an op are the registry's (:mod:`npuflow.operators`).
"""

from __future__ import annotations

import onnx
from onnx import helper

from ..model import default_opset
from ..operators import (HSIGMOID_ALPHA, HSIGMOID_BETA, HSIGMOID_OFFSET, activation_kind, close, conv_in_channels,
                         conv_kind, divides_by_six, is_depthwise, is_standard_hard_sigmoid, op_def)
from .graph import GraphIndex, attr, remove_unused_initializers


def _same(a: onnx.NodeProto | None, b: onnx.NodeProto) -> bool:
    """Node identity by output names (protobuf wrappers are not stable Python objects)."""
    return a is not None and list(a.output) == list(b.output)


def op_kind(node: onnx.NodeProto, idx: GraphIndex) -> str:
    """Target kind of a node that may absorb an activation (the registry's, with depthwise and
    constant-weight matrix products told apart as the checker tells them)."""
    d = op_def(node.op_type, node.domain)
    if d.kind in ("conv2d", "transposed_conv2d"):
        w = idx.const(node.input[d.weight])
        ic = conv_in_channels(node, None, w.shape if w is not None else None)
        return conv_kind(d.kind == "transposed_conv2d", is_depthwise(int(attr(node, "group", 1)), ic))
    if d.kind == "matmul":
        w = idx.const(node.input[d.weight])
        return "fc" if w is not None and w.ndim == 2 else "matmul"
    if d.kind == "fc" and attr(node, "transA", 0):
        return "matmul"
    return d.kind


def fuse_activation_patterns(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with decomposed hard-sigmoid / hard-swish patterns as single nodes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    while _rewrite_one(graph, default_opset(out)):
        pass
    remove_unused_initializers(graph)
    return out


def _sixth_of(end: onnx.NodeProto, idx: GraphIndex) -> str | None:
    """The tensor ``end`` divides by 6 (``Div(t, 6)`` or ``Mul(t, 1/6)``), else ``None``."""
    if end.op_type == "Div" and divides_by_six(end.op_type, idx.scalar(end.input[1])):
        return end.input[0]
    if end.op_type == "Mul":
        for a, b in ((0, 1), (1, 0)):
            if divides_by_six(end.op_type, idx.scalar(end.input[b])):
                return end.input[a]
    return None


def _relu6_of_x_plus_3(t: str, user: onnx.NodeProto, idx: GraphIndex) -> tuple[str, list[onnx.NodeProto]] | None:
    """``t = Clip(Add(x, 3), 0, 6)`` read only by ``user``: (x, [add, clip])."""
    clip = idx.producer.get(t)
    if clip is None or clip.op_type != "Clip" or activation_kind(clip, idx.scalar) != "relu6" \
            or not _same(idx.only_consumer(t), user):
        return None
    add = idx.producer.get(clip.input[0])
    if add is None or add.op_type != "Add" or not _same(idx.only_consumer(clip.input[0]), clip):
        return None
    for a, b in ((0, 1), (1, 0)):
        if close(idx.scalar(add.input[b]), HSIGMOID_OFFSET):
            return add.input[a], [add, clip]
    return None


def _hard_activation_pattern(end: onnx.NodeProto, idx: GraphIndex) -> tuple[str, str, list[onnx.NodeProto]] | None:
    """A decomposed hard-sigmoid / hard-swish ending at ``end``: (op type, x, nodes)."""
    t = _sixth_of(end, idx)
    if t is None:
        return None
    found = _relu6_of_x_plus_3(t, end, idx)
    if found is not None:
        return "HardSigmoid", found[0], [*found[1], end]
    mul = idx.producer.get(t)
    if mul is None or mul.op_type != "Mul" or not _same(idx.only_consumer(t), end):
        return None
    for a, b in ((0, 1), (1, 0)):
        found = _relu6_of_x_plus_3(mul.input[b], mul, idx)
        if found is not None and found[0] == mul.input[a]:
            return "HardSwish", found[0], [*found[1], mul, end]
    return None


def _rewrite_one(graph: onnx.GraphProto, opset: int) -> bool:
    idx = GraphIndex(graph)
    for node in graph.node:
        found = _hard_activation_pattern(node, idx)
        if found is not None:
            op, x, nodes = found
            if op == "HardSigmoid":
                new = [helper.make_node(op, [x], [node.output[0]], name=node.name, alpha=HSIGMOID_ALPHA, beta=HSIGMOID_BETA)]
            elif opset >= 14:
                new = [helper.make_node(op, [x], [node.output[0]], name=node.name)]
            else:  # HardSwish needs opset 14: the equivalent Mul(x, HardSigmoid(x))
                hsig = f"{node.name or node.output[0]}/hsig"
                new = [helper.make_node("HardSigmoid", [x], [hsig], name=hsig, alpha=HSIGMOID_ALPHA, beta=HSIGMOID_BETA),
                       helper.make_node("Mul", [x, hsig], [node.output[0]], name=node.name)]
            _splice(graph, nodes, new)
            return True
        if opset >= 14 and node.op_type == "Mul" and len(node.input) == 2:
            for a, b in ((0, 1), (1, 0)):
                hs = idx.producer.get(node.input[b])
                if hs is not None and is_standard_hard_sigmoid(hs) and hs.input[0] == node.input[a] and _same(idx.only_consumer(hs.output[0]), node):
                    new = helper.make_node("HardSwish", [node.input[a]], [node.output[0]], name=node.name)
                    _splice(graph, [hs, node], [new])
                    return True
    return False


def _splice(graph: onnx.GraphProto, old: list[onnx.NodeProto], new: list[onnx.NodeProto]) -> None:
    """Replace ``old`` nodes by ``new`` at the position of the last one (topological order holds)."""
    nodes = list(graph.node)
    old_ids = {tuple(n.output) for n in old}
    at = max(i for i, n in enumerate(nodes) if tuple(n.output) in old_ids)
    kept = [n for i, n in enumerate(nodes[:at]) if tuple(n.output) not in old_ids]
    kept += new + nodes[at + 1:]
    del graph.node[:]
    graph.node.extend(kept)
    dead = {o for n in old for o in n.output} - {o for n in new for o in n.output}
    keep_vi = [vi for vi in graph.value_info if vi.name not in dead]
    del graph.value_info[:]
    graph.value_info.extend(keep_vi)
