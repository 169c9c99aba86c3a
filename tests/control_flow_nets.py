"""Small control-flow graphs shared by the graph-view and control-flow tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def loop_body_with_nested_if(else_output: str) -> onnx.GraphProto:
    """A Loop body whose nested If reads the outer ``bias`` (then: ``acc + bias``) and, in its else
    branch, the outer tensor ``else_output``; ``acc`` and ``c_in`` are the body's own inputs."""
    inner_then = helper.make_graph([helper.make_node("Add", ["acc", "bias"], ["t"])], "then", [],
                                   [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    inner_else = helper.make_graph([], "else", [], [helper.make_tensor_value_info(else_output, TensorProto.FLOAT, None)])
    return helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("If", ["c_in"], ["acc_out"], then_branch=inner_then, else_branch=inner_else)],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("acc", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None)])


def if_net() -> onnx.ModelProto:
    """Conv -> Relu -> If(mode == 1: r * two, else -r) -> Conv: the branches read the outer
    feature map ``r`` and the outer initializer ``two`` without listing them as inputs."""
    rng = np.random.default_rng(0)
    then_g = helper.make_graph([helper.make_node("Mul", ["r", "two"], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["r"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c"], ["r"], name="relu1"),
        helper.make_node("Equal", ["mode", "one"], ["cond"], name="eq"),
        helper.make_node("If", ["cond"], ["b"], then_branch=then_g, else_branch=else_g, name="branch"),
        helper.make_node("Conv", ["b", "w2"], ["y"], pads=[1, 1, 1, 1], auto_pad="NOTSET", name="conv2"),
    ]
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1, np.int64), "one")]
    g = helper.make_graph(nodes, "if_net",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                           helper.make_tensor_value_info("mode", TensorProto.INT64, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
