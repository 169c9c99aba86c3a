"""Round 23b of new-user flows: a max over points or time on the accelerator, as a mean there already is.

A PointNet classifier closes its shared ``Conv1d`` stack with ``torch.amax(x, 2)``, a ``ReduceMax``
over the points of its N x C x P features (a TextCNN's max over time is the same node), and a
sound-event detector's clip score is ``frame.max(1)`` of N x T x C: each read "ReduceMax has no
integer lowering" and ran in float on the CPU between two accelerator subgraphs on every target.
The float passes now write them as ``GlobalMaxPool`` / ``MaxPool`` on an H = 1 view
(``passes/ops_1d.py``, as they write ``ReduceMean``), exact; a max that element-wise arithmetic
reads (a decomposed softmax's ``x - max``) and a max over channels stay.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.ops_1d import ops_1d_as_2d
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run

SHAPE = [1, 3, 32]


def _pointnet_head(axes: list[int], keepdims: int, opset: int = 17) -> onnx.ModelProto:
    """Conv1d (1x1, 3 -> 16) -> ReLU -> ReduceMax(``axes``) -> Flatten -> Gemm: PointNet's head."""
    rng = np.random.default_rng(23)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (16, 3, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 16 if axes == [-1] else 32)).astype(np.float32), "w2")]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        red = helper.make_node("ReduceMax", ["r", "axes"], ["m"], name="max", keepdims=keepdims)
    else:
        red = helper.make_node("ReduceMax", ["r"], ["m"], name="max", axes=axes, keepdims=keepdims)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), red,
             helper.make_node("Flatten", ["m"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "pointnet", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return out


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [11, 17, 18])
def test_a_max_over_points_is_a_global_max_pool_of_an_h1_view(opset, keepdims):
    model = _pointnet_head([-1], keepdims, opset)
    rewritten = ops_1d_as_2d(model)
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "Relu", "Unsqueeze", "GlobalMaxPool", "Squeeze",
                                                         "Flatten", "Gemm"]
    x = np.random.default_rng(1).normal(0, 1, SHAPE).astype(np.float32)
    before, after = (run(_with_output(g, "m"), {"x": x}) for g in (model, rewritten))
    assert before[1].shape == after[1].shape == ((1, 16, 1) if keepdims else (1, 16))
    np.testing.assert_array_equal(after[1], before[1])  # a max picks a value: exact


def _token_max(read_by_sub: bool) -> onnx.ModelProto:
    """x (1 x 8 x 6) -> MatMul (6 x 4) -> Sigmoid -> ReduceMax(axis 1) [-> Sub from the frames]."""
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (6, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t"], name="fc"),
             helper.make_node("Sigmoid", ["t"], ["p"], name="sig"),
             helper.make_node("ReduceMax", ["p"], ["m"], name="max", axes=[1], keepdims=int(read_by_sub))]
    out = "m"
    if read_by_sub:
        nodes.append(helper.make_node("Sub", ["p", "m"], ["y"], name="sub"))
        out = "y"
    graph = helper.make_graph(nodes, "sed", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 6])],
                              [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_clip_max_over_frames_is_a_max_pool_over_time():
    model = _token_max(read_by_sub=False)
    rewritten = ops_1d_as_2d(model)
    pool = next(n for n in rewritten.graph.node if n.op_type == "MaxPool")
    assert list(pool.attribute[0].ints) == [8, 1]
    x = np.random.default_rng(2).normal(0, 1, (1, 8, 6)).astype(np.float32)
    np.testing.assert_array_equal(run(rewritten, {"x": x})[0], run(model, {"x": x})[0])


def test_a_max_that_arithmetic_reads_and_a_max_over_channels_are_left_alone():
    assert "ReduceMax" in [n.op_type for n in ops_1d_as_2d(_token_max(read_by_sub=True)).graph.node]
    assert [n.op_type for n in ops_1d_as_2d(_pointnet_head([1], 0)).graph.node] == [
        "Conv", "Relu", "ReduceMax", "Flatten", "Gemm"]


@pytest.mark.parametrize(("target", "device"), [("DPUCZDX8G_ISA1_B4096", "DPU"), ("bernoulli2", "BPU"),
                                                ("cpu-int8", "CPU-INT8")])
def test_the_pointnet_head_is_one_accelerator_subgraph_equal_to_ort(target, device):
    model = _pointnet_head([-1], 0)
    assert npuflow.check(model, target).node("max").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, SHAPE, target, device)
