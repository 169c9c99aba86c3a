"""Round 23a of new-user flows: ECA-Net's swaps of size-1 axes are reshapes, on the accelerator.

ECA's channel attention pools to ``(N, C, 1, 1)``, squeezes to ``(N, C, 1)``, transposes to
``(N, 1, C)`` for a ``Conv1d`` across channels and back: on bernoulli2 (no transpose) both
transposes and everything between ran in float on the CPU (a Triplet-attention + ECA net: 5 BPU
subgraphs).  A transpose that keeps the order of the axes larger than 1 moves no data: the float
passes (and check) now write it as a ``Reshape``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.unit_transpose import unit_axis_transposes_as_reshape
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run, samples

SHAPE = [1, 3, 8, 8]


def _eca(batch: int | str = 1) -> onnx.ModelProto:
    """Conv 3x3 -> ReLU -> GAP -> Squeeze -> Transpose -> Conv1d(k=3) -> Transpose -> Unsqueeze -> Sigmoid -> Mul."""
    rng = np.random.default_rng(23)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (1, 1, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([3], np.int64), "ax")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Squeeze", ["g", "ax"], ["s"], name="squeeze"),
             helper.make_node("Transpose", ["s"], ["t"], name="t1", perm=[0, 2, 1]),
             helper.make_node("Conv", ["t", "w2"], ["e"], name="eca", pads=[1, 1]),
             helper.make_node("Transpose", ["e"], ["u"], name="t2", perm=[0, 2, 1]),
             helper.make_node("Unsqueeze", ["u", "ax"], ["v"], name="unsqueeze"),
             helper.make_node("Sigmoid", ["v"], ["a"], name="gate"),
             helper.make_node("Mul", ["r", "a"], ["y"], name="scale")]
    graph = helper.make_graph(nodes, "eca", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, *SHAPE[1:]])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("batch", [1, "N"])
def test_a_transpose_of_size_1_axes_is_a_reshape_with_the_same_values(batch):
    model = _eca(batch)
    rewritten = unit_axis_transposes_as_reshape(model)
    assert [n.op_type for n in rewritten.graph.node if n.name in ("t1", "t2")] == ["Reshape", "Reshape"]
    x = samples([2, *SHAPE[1:]] if batch == "N" else SHAPE, n=1, seed=2)[0]
    np.testing.assert_array_equal(run(rewritten, {"x": x})[0], run(model, {"x": x})[0])


def test_a_transpose_that_moves_data_is_left():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 5])
    node = helper.make_node("Transpose", ["x"], ["y"], name="t", perm=[0, 2, 1])
    graph = helper.make_graph([node], "t", [x], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert [n.op_type for n in unit_axis_transposes_as_reshape(model).graph.node] == ["Transpose"]


def test_bernoulli2_runs_eca_on_the_bpu_equal_to_ort():
    model = _eca()
    report = npuflow.check(model, "bernoulli2")
    assert report.node("t1").device == "NPU" and report.node("t2").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, SHAPE, "bernoulli2", "BPU")
