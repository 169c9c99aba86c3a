"""Round 12: Magika's file-type model (tf2onnx, in the ``magika`` wheel) writes a ``value_info``
entry for every initializer; the float pass that writes a linear layer's ``[1, 1, 64]`` bias as
``[64]`` left its entry behind, so every ``quantize`` (all three targets) was refused with
``NPF_MODEL_INVALID`` "shape inference failed: ... differ in rank: (1) vs (2)" although
``check`` of the same model passed.  ``set_array`` now drops the entry when the shape changes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.graph import set_array


def _tf2onnx_style_linear() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal((1, 1, 6)).astype(np.float32), "Dense/Reshape:0")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"], name="Dense/MatMul"),
             helper.make_node("Add", ["mm", "Dense/Reshape:0"], ["y"], name="Dense/AddV2")]
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6])], [w, b],
                              value_info=[helper.make_tensor_value_info("Dense/Reshape:0", TensorProto.FLOAT, [1, 1, 6]),
                                          helper.make_tensor_value_info("mm", TensorProto.FLOAT, [1, 4, 6])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def test_quantize_a_model_with_value_info_on_a_reshaped_bias():
    samples = [np.random.default_rng(k).standard_normal((1, 4, 8)).astype(np.float32) for k in range(4)]
    q = npuflow.quantize(_tf2onnx_style_linear(), samples, "cpu-int8")
    assert any(n.op_type == "QuantizeLinear" for n in q.model.graph.node)


def test_set_array_keeps_value_info_when_the_shape_stays():
    model = _tf2onnx_style_linear()
    set_array(model, "Dense/Reshape:0", np.ones((1, 1, 6), np.float32))
    assert [vi.name for vi in model.graph.value_info] == ["Dense/Reshape:0", "mm"]
    set_array(model, "Dense/Reshape:0", np.ones(6, np.float32))
    assert [vi.name for vi in model.graph.value_info] == ["mm"]
