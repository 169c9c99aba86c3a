"""Round 23a of new-user flows: a token pick ``x[:, 0]`` (a Gather of one index) runs on the accelerator.

DeiT's class and distillation tokens (``x[:, 0]``, ``x[:, 1]``) and the dynamo exporter's q/k/v
``unbind(0)`` are ``Gather`` nodes with a 0-d constant index, which no target lowers (cpu-int8: "no
integer lowering", 8 float round trips in DeiT).  The float passes (and check) now write each as a
``Slice`` of width 1 and a ``Squeeze``: the same values.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.gather_slice import gathers_as_slices
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run, samples

SHAPE = [1, 5, 16]


def _token_head(index: int = 0, axis: int = 1, index_shape: tuple = ()) -> onnx.ModelProto:
    """MatMul 16x16 -> ReLU -> Gather(index, axis) -> MatMul 16x4: a ViT's class-token head."""
    rng = np.random.default_rng(23)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (16, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (16, 4)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(index, np.int64).reshape(index_shape), "i")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gather", ["r", "i"], ["t"], name="pick", axis=axis),
             helper.make_node("MatMul", ["t", "w2"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "token_head", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("index, axis", [(0, 1), (1, 1), (-1, 1), (4, -2), (0, 0)])
def test_a_gather_of_one_index_is_a_slice_and_squeeze_with_the_same_values(index, axis):
    model = _token_head(index, axis)
    rewritten = gathers_as_slices(model)
    assert [n.op_type for n in rewritten.graph.node] == ["MatMul", "Relu", "Slice", "Squeeze", "MatMul"]
    x = samples(SHAPE, n=1, seed=2)[0]
    np.testing.assert_array_equal(run(rewritten, {"x": x})[0], run(model, {"x": x})[0])


def test_a_gather_of_several_indices_is_left():
    model = _token_head(0, 1, index_shape=(1,))
    assert [n.op_type for n in gathers_as_slices(model).graph.node].count("Gather") == 1


def test_cpu_int8_runs_the_class_token_head_in_one_integer_subgraph_equal_to_ort():
    model = _token_head()
    assert npuflow.check(model, "cpu-int8").node("pick").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, SHAPE, "cpu-int8", "CPU-INT8")


def test_a_gather_of_shape_values_is_left():
    """``x.size(0)``: Shape -> Gather(0), integer shape arithmetic the shape passes read as it is."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "i"], ["y"], name="n", axis=0)]
    graph = helper.make_graph(nodes, "size0", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.INT64, None)],
                              [numpy_helper.from_array(np.array(0, np.int64), "i")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert [n.op_type for n in gathers_as_slices(model).graph.node] == ["Shape", "Gather"]
