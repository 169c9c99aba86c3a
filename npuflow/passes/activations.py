"""Activation patterns: recognising decomposed activations and what a target fuses into an op.

Exporters often write hard-sigmoid as ``Clip(x + 3, 0, 6) / 6`` and hard-swish as
``x * that``; :func:`fuse_activation_patterns` rewrites those into one ``HardSigmoid`` /
``HardSwish`` node (the last node of the pattern keeps its name and output) so the quantizer and
the checker see one form.  :func:`activation_kind` and :func:`op_kind` name nodes in the
vocabulary of target files (``relu``, ``relu6``, ``conv2d``, ``fc`` ...), and
:func:`fuses` asks the target whether an op absorbs an activation.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ..model import default_opset
from ..targets import Target
from .graph import GraphIndex, attr, remove_unused_initializers

_SIXTH = 1.0 / 6.0


def _same(a: onnx.NodeProto | None, b: onnx.NodeProto) -> bool:
    """Node identity by output names (protobuf wrappers are not stable Python objects)."""
    return a is not None and list(a.output) == list(b.output)


def _close(a: float | None, b: float, tol: float = 1e-6) -> bool:
    return a is not None and abs(a - b) <= tol * max(1.0, abs(b))


def activation_kind(node: onnx.NodeProto, idx: GraphIndex) -> str | None:
    """Target vocabulary name of an activation node, or ``None``."""
    op = node.op_type
    if op == "Relu":
        return "relu"
    if op == "LeakyRelu":
        return "leaky_relu"
    if op == "HardSwish":
        return "hard_swish"
    if op == "HardSigmoid":
        return "hard_sigmoid"
    if op == "Clip":
        lo = idx.scalar(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "min")
        hi = idx.scalar(node.input[2]) if len(node.input) > 2 and node.input[2] else attr(node, "max")
        if _close(lo, 0.0) and _close(hi, 6.0):
            return "relu6"
        if _close(lo, 0.0) and hi is None:
            return "relu"
        return None
    return None


def op_kind(node: onnx.NodeProto, idx: GraphIndex) -> str | None:
    """Target vocabulary name of a compute op that may absorb an activation."""
    op = node.op_type
    if op == "Conv":
        w = idx.const(node.input[1])
        group = attr(node, "group", 1)
        return "depthwise_conv2d" if group > 1 and w is not None and w.shape[1] == 1 else "conv2d"
    if op == "ConvTranspose":
        return "depthwise_transposed_conv2d" if attr(node, "group", 1) > 1 else "transposed_conv2d"
    if op == "Gemm" or (op == "MatMul" and idx.const(node.input[1]) is not None):
        return "fc"
    if op == "MatMul":
        return "matmul"
    if op == "Add":
        return "eltwise_add"
    if op == "Mul":
        return "eltwise_mul"
    return None


#: Activations fused into compute ops on targets whose op rules list none (ONNX Runtime's QDQ fusions).
DEFAULT_FUSED = ("relu", "relu6")


def fuses(target: Target, op: str | None, activation: str | None) -> bool:
    """Whether ``target`` runs ``activation`` inside op kind ``op`` (no quantize step between)."""
    if op is None or activation is None:
        return False
    rule = target.rule(op)
    if rule is not None and rule.activations:
        return activation in rule.activations
    return op in ("conv2d", "depthwise_conv2d", "transposed_conv2d", "depthwise_transposed_conv2d", "fc") and (
        activation in DEFAULT_FUSED)


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
    if end.op_type == "Div" and _close(idx.scalar(end.input[1]), 6.0):
        return end.input[0]
    if end.op_type == "Mul":
        if _close(idx.scalar(end.input[1]), _SIXTH):
            return end.input[0]
        if _close(idx.scalar(end.input[0]), _SIXTH):
            return end.input[1]
    return None


def _relu6_of_x_plus_3(t: str, user: onnx.NodeProto, idx: GraphIndex) -> tuple[str, list[onnx.NodeProto]] | None:
    """``t = Clip(Add(x, 3), 0, 6)`` read only by ``user``: (x, [add, clip])."""
    clip = idx.producer.get(t)
    if clip is None or clip.op_type != "Clip" or activation_kind(clip, idx) != "relu6" or not _same(idx.only_consumer(t), user):
        return None
    add = idx.producer.get(clip.input[0])
    if add is None or add.op_type != "Add" or not _same(idx.only_consumer(clip.input[0]), clip):
        return None
    for a, b in ((0, 1), (1, 0)):
        if _close(idx.scalar(add.input[b]), 3.0):
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


def _is_standard_hsigmoid(node: onnx.NodeProto) -> bool:
    return node.op_type == "HardSigmoid" and _close(attr(node, "alpha", 0.2), _SIXTH) and _close(attr(node, "beta", 0.5), 0.5)


def _rewrite_one(graph: onnx.GraphProto, opset: int) -> bool:
    idx = GraphIndex(graph)
    for node in graph.node:
        found = _hard_activation_pattern(node, idx)
        if found is not None:
            op, x, nodes = found
            if op == "HardSigmoid":
                new = [helper.make_node(op, [x], [node.output[0]], name=node.name, alpha=_SIXTH, beta=0.5)]
            elif opset >= 14:
                new = [helper.make_node(op, [x], [node.output[0]], name=node.name)]
            else:  # HardSwish needs opset 14: the equivalent Mul(x, HardSigmoid(x))
                hsig = f"{node.name or node.output[0]}/hsig"
                new = [helper.make_node("HardSigmoid", [x], [hsig], name=hsig, alpha=_SIXTH, beta=0.5),
                       helper.make_node("Mul", [x, hsig], [node.output[0]], name=node.name)]
            _splice(graph, nodes, new)
            return True
        if opset >= 14 and node.op_type == "Mul" and len(node.input) == 2:
            for a, b in ((0, 1), (1, 0)):
                hs = idx.producer.get(node.input[b])
                if hs is not None and _is_standard_hsigmoid(hs) and hs.input[0] == node.input[a] and _same(idx.only_consumer(hs.output[0]), node):
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
