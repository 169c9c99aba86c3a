"""Constant folding: evaluate every node whose inputs are all known, once, at build time.

Exporters often compute padding or reshape targets at run time from ``Shape`` of a static
tensor (EfficientNet's "same" padding, PP-OCR's reshapes).  Accelerators need those values as
constants, and the checker needs them to judge limits.  ``onnxscript``'s optimizer folds most of
it; what remains (chains through ``ConstantOfShape``/``Slice`` on shapes) is evaluated here with
ONNX's reference evaluator, node by node.  ``Shape`` of a tensor with a static shape is a
constant too.  Large results are not folded (they would bloat the file), nor random ops.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper
from onnxscript import optimizer

from ..graph import fold_node, is_qdq
from ..graph import node_reads
from ..operators import NONDETERMINISTIC_OPS
from ..model import control_flow_nodes, default_opset, graph_inputs, infer_static_shapes, tensor_shapes

#: Folded results above this many elements stay as nodes (they are data, not shape arithmetic).
MAX_FOLDED_ELEMENTS = 1 << 16
#: Most folding rounds (each after control flow was inlined).
MAX_ROUNDS = 4
#: onnxscript's folder warns of each multi-output node it leaves (``Split`` of a constant), which
#: :func:`_fold_remaining` then folds: not the user's concern, so only its errors are shown.
_ONNXSCRIPT_FOLDER_LOG = logging.getLogger("onnxscript.optimizer._constant_folding")


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with constant subgraphs replaced by initializers and dead nodes removed.

    Folding an ``If`` whose condition became constant inlines its branch, whose shape arithmetic
    (a nested ``If`` on the same length) only the next round, after shape inference, can fold:
    rounds repeat while they remove control flow (silero-vad at a fixed length: 5 ``If`` left
    after one round, none after two).  Stopping earlier left ``check`` and ``quantize`` with
    different graphs, and ONNX Runtime aborted on a CPU subgraph holding the nested ``If``.
    """
    if not _has_foldable(model):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    folded = _fold_round(model)
    for _ in range(MAX_ROUNDS - 1):
        before = len(control_flow_nodes(folded))
        if not before or before == len(control_flow_nodes(model)):
            break
        model, folded = folded, _fold_round(_with_shapes(folded))
        if len(control_flow_nodes(folded)) == before:
            break
    return folded


def _fold_round(model: onnx.ModelProto) -> onnx.ModelProto:
    irm = ir.serde.deserialize_model(model)
    level = _ONNXSCRIPT_FOLDER_LOG.level
    _ONNXSCRIPT_FOLDER_LOG.setLevel(logging.ERROR)
    try:
        optimizer.fold_constants(irm, onnx_shape_inference=True)
    finally:
        _ONNXSCRIPT_FOLDER_LOG.setLevel(level)
    optimizer.remove_unused_nodes(irm)
    folded = ir.serde.serialize_model(irm)
    _fold_remaining(folded)
    return folded


def _with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes for the next round: static ones where the inputs are static (the shape probe
    follows what ONNX inference cannot), ONNX's inference otherwise."""
    if all(_static(i) for i in graph_inputs(model)):
        return infer_static_shapes(model)
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001  (no shapes: the round folds what it can without them)
        return model


def _static(vi: onnx.ValueInfoProto) -> bool:
    dims = vi.type.tensor_type.shape.dim
    return vi.type.HasField("tensor_type") and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims)


def fold_static_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with only the node-by-node folding (no onnxscript rewrites).

    For a model already optimised with dynamic dimensions whose inputs have since been frozen:
    what becomes constant is shape arithmetic (``Shape`` of now-static tensors and its chains),
    and the full optimizer pass would cost seconds for nothing else.  Quantize/dequantize steps
    are never folded: in a quantized model frozen this way (the quantizer's view of its one
    dynamic graph) a weight's ``DequantizeLinear`` reads constants only, and folding it would
    turn the integer weight back into a float one.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _fold_remaining(out, keep=is_qdq)
    return out


def frozen_view(model: onnx.ModelProto, static_inputs: dict[str, list[int]]) -> onnx.ModelProto:
    """A view of ``model`` at one input shape (``static_inputs``: input name -> dims): inputs frozen,
    static shapes inferred, the shape arithmetic that became constant folded (quantize and dequantize
    steps never).

    The quantizer works on one graph with the source's dynamic dimensions; the stages that need
    static shapes read this view: ``check``, the report and ``compile`` (``QuantizedModel.model``),
    and the target rewrites, which judge a node of the dynamic graph at the size compile will see."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    for inp in graph_inputs(proto):
        dims = inp.type.tensor_type.shape.dim
        for k, value in enumerate(static_inputs[inp.name]):
            dims[k].Clear()
            dims[k].dim_value = int(value)
    return infer_static_shapes(fold_static_shapes(infer_static_shapes(proto)))


def _has_foldable(model: onnx.ModelProto) -> bool:
    """Whether any node computes from constants only (or is a ``Shape``/``Size`` of a tensor)."""
    known = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("Shape", "Size", "Constant", "ConstantOfShape"):
            return True
        if node.domain in ("", "ai.onnx") and node.op_type not in NONDETERMINISTIC_OPS \
                and all(i in known for i in node.input if i):
            return True
    return False


def _fold_remaining(model: onnx.ModelProto, keep: Callable[[onnx.NodeProto], bool] | None = None) -> None:
    """Fold every node computing from constants only, in place; ``keep``: nodes never folded."""
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    shapes = tensor_shapes(model)
    opset = default_opset(model)
    kept: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    for node in graph.node:
        value = None if keep is not None and keep(node) else fold_node(node, consts, shapes, opset, MAX_FOLDED_ELEMENTS)
        if value is None:
            kept.append(node)
            continue
        for name, arr in zip(node.output, value):
            consts[name] = arr
            new_inits.append(numpy_helper.from_array(np.asarray(arr), name))
    if not new_inits:
        return
    used = {i for n in kept for i in node_reads(n)} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(t for t in new_inits if t.name in used)
    names = {t.name for t in graph.initializer}
    keep_vi = [vi for vi in graph.value_info if vi.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(keep_vi)
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)


def shape_independent_dims(model: onnx.ModelProto, static_inputs: dict[str, list[int]]) -> dict[str, tuple]:
    """The static shapes of :func:`frozen_view` at ``static_inputs`` with each size that differs in the view
    at another input shape (every dimension the graph leaves open one larger) replaced by ``None``.

    Why: a TorchScript export with a dynamic batch computes ``x.flatten(2)``'s target from ``Shape`` at run
    time, so ONNX (and ONNX Runtime's symbolic inference) leave the token count unknown, while check reads it
    in the frozen graph (CoAtNet's ``t.mean(1)``, round 27).  A float pass may rewrite a node by a size that
    holds at both shapes: the graph derives it from no open dimension."""
    inputs = {i.name: i for i in graph_inputs(model)}
    other = {name: [d + 1 if not inputs[name].type.tensor_type.shape.dim[k].HasField("dim_value") else d
                    for k, d in enumerate(dims)] for name, dims in static_inputs.items() if name in inputs}
    first, second = tensor_shapes(frozen_view(model, static_inputs)), tensor_shapes(frozen_view(model, other))
    same = lambda dims, again: tuple(a if again is not None and len(again) == len(dims) and a == b else None
                                     for a, b in zip(dims, again or dims))
    return {name: same(dims, second.get(name)) for name, dims in first.items()}
