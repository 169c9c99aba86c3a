"""Activation patterns: recognising decomposed activations and what a target fuses into an op.

Exporters often write hard-sigmoid as ``Clip(x + 3, 0, 6) / 6`` and hard-swish as
``x * that``; :func:`fuse_activation_patterns` rewrites those (as the registry's
:func:`~npuflow.activation_patterns.hard_activation` finds them, the checker's answer too) into one ``HardSigmoid`` /
``HardSwish`` node (the last node of the pattern keeps its name and output) so the quantizer and
the checker see one form.  :func:`op_kind` names the op an activation may fuse into in the
vocabulary of target files (``conv2d``, ``fc`` ...); what the ops are, which activations exist and
whether a target fuses one into an op are the registry's (:mod:`npuflow.operators`).
"""

from __future__ import annotations

import onnx
from onnx import helper

from ..model import default_opset
from ..activation_patterns import hard_activation, is_standard_hard_sigmoid
from ..operators import HSIGMOID_ALPHA, HSIGMOID_BETA, conv_in_channels, conv_kind, is_depthwise, op_def
from ..graph import GraphView, attr, remove_unused_initializers


def op_kind(node: onnx.NodeProto, idx: GraphView) -> str:
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


class FloatView:
    """A float graph as the registry's :class:`~npuflow.activation_patterns.PatternView` (the activation and
    GELU patterns of :mod:`.gelu` read it)."""

    def __init__(self, idx: GraphView) -> None:
        self.idx = idx

    def source(self, tensor: str) -> str:
        return tensor

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return self.idx.producer_node(tensor)

    def only_reader(self, tensor: str) -> onnx.NodeProto | None:
        return self.idx.only_consumer(tensor)

    def scalar(self, tensor: str) -> float | None:
        return self.idx.scalar(tensor)


def _rewrite_one(graph: onnx.GraphProto, opset: int) -> bool:
    """Rewrite the first decomposed activation (:func:`npuflow.activation_patterns.hard_activation`) in
    graph order; ``x * HardSigmoid(x)`` becomes ``HardSwish`` only where the opset has it."""
    g = FloatView(GraphView(graph))
    for node in graph.node:
        found = hard_activation(node, g)
        if found is None or found.times_six:
            continue
        first = found.nodes[0]
        if first.op_type == "HardSigmoid" and (opset < 14 or not is_standard_hard_sigmoid(first)):
            continue
        x, name = found.x, node.name
        if found.kind == "hard_sigmoid":
            new = [helper.make_node("HardSigmoid", [x], [node.output[0]], name=name, alpha=HSIGMOID_ALPHA,
                                    beta=HSIGMOID_BETA)]
        elif opset >= 14:
            new = [helper.make_node("HardSwish", [x], [node.output[0]], name=name)]
        else:  # HardSwish needs opset 14: the equivalent Mul(x, HardSigmoid(x))
            hsig = f"{name or node.output[0]}/hsig"
            new = [helper.make_node("HardSigmoid", [x], [hsig], name=hsig, alpha=HSIGMOID_ALPHA, beta=HSIGMOID_BETA),
                   helper.make_node("Mul", [x, hsig], [node.output[0]], name=name)]
        _splice(graph, list(found.nodes), new)
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
