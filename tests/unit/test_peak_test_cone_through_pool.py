"""The peak test's float cone walks back through a window op (a MaxPool) in ``t``'s chain to the
layer computing the values (:func:`npuflow.check.cone.peak_test_cones`).  Seed 692 of the
placement-agreement generator (``Conv -> MaxPool 2x2 -> Relu = t``, ``Less(t, MaxPool3x3(t))``,
``Flatten`` of the 2x2 pool -> ``Gemm``): the walk stopped at the 2x2 MaxPool, which check of the
float model placed on the CPU, while the quantizer left its input the Conv's 8-bit grid and
compile lowered it (max of integers) on the accelerator -- on cpu-int8, B4096 and bernoulli2.
A max of grid values is on the grid, so the Conv is the layer the cone must keep float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npuflow.check.cone import peak_test_cones
from npuflow.graph import GraphView
from tests.unit.test_placement_agreement import TARGETS, disagreements


def _model(head: bool) -> onnx.ModelProto:
    """``x -> Conv -> MaxPool 2x2 (p) -> Relu (t)``, ``Where(Less(t, MaxPool3x3(t)), t, 0)`` and,
    with ``head``, ``Flatten(p) -> Gemm``."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 4, 3, 3)) / 6).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(np.float32(0), "zero")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Relu", ["p"], ["t"], name="relu"),
             helper.make_node("MaxPool", ["t"], ["m"], name="window", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Less", ["t", "m"], ["mask"], name="less"),
             helper.make_node("Where", ["mask", "t", "zero"], ["y"], name="where")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])]
    if head:
        inits += [numpy_helper.from_array((rng.standard_normal((8, 64)) / 8).astype(np.float32), "fw"),
                  numpy_helper.from_array(np.zeros(8, np.float32), "fb")]
        nodes += [helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
                  helper.make_node("Gemm", ["f", "fw", "fb"], ["z"], name="gemm", transB=1)]
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8]))
    graph = helper.make_graph(nodes, "peak_through_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                         [1, 4, 8, 8])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def test_the_cone_reaches_the_conv_through_the_pool():
    view = GraphView(_model(head=True).graph)
    members = {view.nodes[i].name for i in peak_test_cones(view)}
    assert members == {"conv", "pool", "relu", "window"}


@pytest.mark.parametrize("head", [True, False])
@pytest.mark.parametrize("target", TARGETS)
def test_check_and_compile_agree_on_a_pool_inside_the_cone(target, head, tmp_path):
    assert disagreements(_model(head), target, str(tmp_path)) == []
