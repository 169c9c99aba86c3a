"""A constant divisor with a zero stays a Div (its infinities are no scale to fold); a product or sum by a constant
with zeros folds without a division warning."""

import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from npuflow.passes.fold_affine import fold_affine


def _conv_then(op: str, c: np.ndarray) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    k = numpy_helper.from_array(c.reshape(1, 2, 1, 1).astype(np.float32), "k")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
             helper.make_node(op, ["y", "k"], ["z"], name="affine")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 2, 2])], [w, k])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_division_by_a_zero_constant_is_left():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fold_affine(_conv_then("Div", np.array([2.0, 0.0])))
    assert [n.op_type for n in out.graph.node] == ["Conv", "Div"]


def test_products_and_sums_with_zeros_fold_without_a_warning():
    for op in ("Mul", "Add", "Sub"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = fold_affine(_conv_then(op, np.array([2.0, 0.0])))
        assert [n.op_type for n in out.graph.node] == ["Conv"], op
