"""The peak test's float cone walks back through grid-keeping ops (``operators.GRID_OPS``: a
MaxPool, a Transpose) in ``t``'s chain to the layer computing the values
(:func:`npuflow.check.cone.peak_test_cones`).  Seeds 692 (``Conv -> MaxPool 2x2 -> Relu = t``,
``Less(t, MaxPool3x3(t))``, ``Flatten`` of the 2x2 pool -> ``Gemm``) and 1238 (a ``Transpose``
in its place) of the placement-agreement generator: the walk stopped at the pool / Transpose,
which check of the float model placed on the CPU, while the quantizer left its input on the
Conv's 8-bit grid and compile lowered it on integers on the accelerator -- on cpu-int8, B4096
and bernoulli2.  Their outputs lie on the Conv's grid, so the Conv is the layer to keep float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npuflow.check.cone import peak_test_cones
from npuflow.graph import GraphView
from tests.unit.test_placement_agreement import TARGETS, disagreements


def _model(head: bool, mover: str = "MaxPool") -> onnx.ModelProto:
    """``x -> Conv -> mover (p) -> Relu (t)``, ``Where(Less(t, MaxPool3x3(t)), t, 0)`` and, with
    ``head``, ``Flatten(p) -> Gemm``; ``mover``: a 2x2 ``MaxPool`` or an HW ``Transpose``."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 4, 3, 3)) / 6).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(np.float32(0), "zero")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2])
             if mover == "MaxPool" else helper.make_node("Transpose", ["c"], ["p"], name="pool", perm=[0, 1, 3, 2]),
             helper.make_node("Relu", ["p"], ["t"], name="relu"),
             helper.make_node("MaxPool", ["t"], ["m"], name="window", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Less", ["t", "m"], ["mask"], name="less"),
             helper.make_node("Where", ["mask", "t", "zero"], ["y"], name="where")]
    side = 4 if mover == "MaxPool" else 8
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, side, side])]
    if head:
        inits += [numpy_helper.from_array((rng.standard_normal((8, 4 * side * side)) / 8).astype(np.float32), "fw"),
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


@pytest.mark.parametrize("mover", ["MaxPool", "Transpose"])
def test_the_cone_reaches_the_conv_through_a_grid_op(mover):
    view = GraphView(_model(True, mover).graph)
    assert {view.nodes[i].name for i in peak_test_cones(view)} == {"conv", "pool", "relu", "window"}


@pytest.mark.parametrize("mover", ["MaxPool", "Transpose"])
@pytest.mark.parametrize("head", [True, False])
@pytest.mark.parametrize("target", TARGETS)
def test_check_and_compile_agree_on_a_grid_op_inside_the_cone(target, head, mover, tmp_path):
    assert disagreements(_model(head, mover), target, str(tmp_path)) == []
