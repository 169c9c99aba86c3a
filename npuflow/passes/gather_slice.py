"""A ``Gather`` of one constant index is a ``Slice`` of width 1 and a ``Squeeze`` of that axis.

A ViT's class-token pick ``x[:, 0]`` and DeiT's distillation token ``x[:, 1]`` export as
``Gather(x, 0-d index, axis=1)``; torch's dynamo exporter writes attention's q/k/v ``unbind(0)`` the
same way.  No target lowers ``Gather`` (cpu-int8: "no integer lowering"; DeiT on cpu-int8: 8 float
round trips, round 23a), while every one moves data with slices and squeezes.  The same values, exact;
a non-constant or non-scalar index stays a ``Gather``, and so does one of integer data (shape
arithmetic, which the shape passes read as ``Shape -> Gather``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import GraphView, attr, remove_unused_initializers
from ..model import default_opset
from ..value_info import inferred_dims, tensor_elem_types
from .activations import _splice


_REAL = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


def gathers_as_slices(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with each ``Gather`` of one constant index a ``Slice`` + ``Squeeze`` (the model
    itself when none is)."""
    if not any(n.op_type == "Gather" and not n.domain for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = GraphView(out.graph)
    dims = inferred_dims(out)
    try:
        types = tensor_elem_types(onnx.shape_inference.infer_shapes(out))
    except (ValueError, onnx.shape_inference.InferenceError):
        types = tensor_elem_types(out)
    opset = default_opset(out)
    changed = False
    for node in list(out.graph.node):
        if node.op_type != "Gather" or node.domain or opset < 13:
            continue
        index = view.value(node.input[1])
        rank = len(dims.get(node.input[0]) or ())
        if index is None or np.ndim(index) != 0 or rank == 0 or types.get(node.input[0]) not in _REAL:
            continue
        axis, i = int(attr(node, "axis", 0)) % rank, int(index)
        name = node.name or node.output[0]
        consts = {"starts": i, "ends": i + 1 if i != -1 else np.iinfo(np.int64).max, "axes": axis}
        for key, value in consts.items():
            out.graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), f"{name}/{key}"))
        part = f"{node.output[0]}/slice"
        _splice(out.graph, [node], [
            helper.make_node("Slice", [node.input[0], f"{name}/starts", f"{name}/ends", f"{name}/axes"], [part],
                             name=f"{name}/slice"),
            helper.make_node("Squeeze", [part, f"{name}/axes"], [node.output[0]], name=name)])
        changed = True
    if not changed:
        return model
    remove_unused_initializers(out.graph)
    return out
