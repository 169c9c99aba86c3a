"""Round 20 of new-user flows: a mean over one spatial axis runs on the accelerator.

BC-ResNet (a broadcasted-residual keyword spotter) averages its N x C x F x T feature map over
frequency, ``x.mean(2, keepdim=True)``, before each block's temporal depthwise convolution: an
exported ``ReduceMean(axes=[2])`` that had "no integer lowering" on every target, six float CPU
round trips (DPUCZDX8G 25 compiled subgraphs, cpu-int8 14).  The float passes (and ``check``) now
write a mean over axis 2 alone, or 3 alone, of a map of known size as ``AveragePool`` whose window
is that whole axis (``-> Squeeze`` for ``keepdims`` 0): the same mean, judged by the target's
``avg_pool`` rule (bernoulli2's window is at most 7: the reason names the kernel).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.ops_1d import ops_1d_as_2d
from npuflow.passes.optimize import optimize_float
from npuflow.targets import load_target
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run, samples

SHAPE = [1, 2, 10, 12]


def _conv_axis_mean_conv(axis: int, keepdims: int, opset: int = 17) -> onnx.ModelProto:
    """Conv 3x3 -> ReLU -> ReduceMean(axis) -> Conv 1x1 (or, keepdims 0, MatMul over the kept axis):
    BC-ResNet's frequency average feeding its temporal branch."""
    rng = np.random.default_rng(20)
    kept = SHAPE[5 - axis]
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (8, 2, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.3, (kept, 5)).astype(np.float32), "w3")]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([axis], np.int64), "axes"))
        mean = helper.make_node("ReduceMean", ["r", "axes"], ["m"], name="mean", keepdims=keepdims)
    else:
        mean = helper.make_node("ReduceMean", ["r"], ["m"], name="mean", axes=[axis], keepdims=keepdims)
    head = (helper.make_node("Conv", ["m", "w2"], ["y"], name="conv2") if keepdims
            else helper.make_node("MatMul", ["m", "w3"], ["y"], name="fc"))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), mean, head]
    graph = helper.make_graph(nodes, "axis_mean", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("axis", [2, 3, -2, -1])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [11, 17, 18])
def test_a_mean_over_one_spatial_axis_is_an_average_pool_over_that_axis(opset, keepdims, axis):
    model = _conv_axis_mean_conv(axis % 4, keepdims, opset)
    if opset >= 18:
        model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.array([axis], np.int64), "axes"))
    else:
        model.graph.node[2].attribute[0].ints[:] = [axis]
    rewritten = ops_1d_as_2d(model)
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops == ["Conv", "Relu", "AveragePool", *([] if keepdims else ["Squeeze"]), ops[-1]]
    pool = rewritten.graph.node[2]
    size = SHAPE[axis % 4]
    assert list(pool.attribute[0].ints) == ([size, 1] if axis % 4 == 2 else [1, size])
    x = samples(SHAPE, n=1, seed=2)[0]
    np.testing.assert_allclose(run(rewritten, {"x": x})[0], run(model, {"x": x})[0], rtol=0, atol=1e-6)


def test_a_one_axis_mean_that_arithmetic_reads_back_is_left_alone():
    """``x - x.mean(2, keepdim=True)`` centres a map: a statistic, not a pooling."""
    model = _conv_axis_mean_conv(2, 1)
    model.graph.node.insert(3, helper.make_node("Sub", ["r", "m"], ["centred"], name="centre"))
    model.graph.output.append(helper.make_tensor_value_info("centred", onnx.TensorProto.FLOAT, None))
    assert "ReduceMean" in [n.op_type for n in ops_1d_as_2d(model).graph.node]


def test_a_one_axis_mean_of_unknown_size_is_left_alone():
    model = _conv_axis_mean_conv(2, 1)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "F"
    assert "ReduceMean" in [n.op_type for n in ops_1d_as_2d(model).graph.node]


def test_a_mean_of_a_tensor_of_unknown_rank_is_left_alone():
    """PP-OCRv4 rec's graph has ReduceMeans whose input rank shape inference does not give: the pass
    read their axes modulo rank 0 (a ZeroDivisionError in every quantize of rec, bbe2332)."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)
    node = helper.make_node("ReduceMean", ["x"], ["y"], name="mean", axes=[-1])
    graph = helper.make_graph([node], "unknown_rank", [x], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert [n.op_type for n in ops_1d_as_2d(model).graph.node] == ["ReduceMean"]


@pytest.mark.parametrize("target, device", [("DPUCZDX8G_ISA1_B4096", "DPU"), ("cpu-int8", "CPU-INT8")])
@pytest.mark.parametrize("axis", [2, 3])
def test_the_frequency_average_is_on_the_accelerator_and_equal_to_ort(target, device, axis):
    model = _conv_axis_mean_conv(axis, 1)
    assert npuflow.check(model, target).node("mean").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, SHAPE, target, device)


def test_bernoulli2_names_the_window_it_cannot_run():
    """bernoulli2 pools over at most 7 x 7: ``check`` reports an 11-row average (no cascade: 11 is prime)
    on the CPU with the kernel in the reason; a 10-row one it judges as the cascade compile lowers (below)."""
    model = _conv_axis_mean_conv(2, 1)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 11
    report = npuflow.check(model, "bernoulli2")
    assert report.node("mean").device == "CPU"
    assert "kernel 11x1 outside [1,7]x[1,7]" in " ".join(report.node("mean").reasons)


@pytest.mark.parametrize("axis", [2, 3])
def test_bernoulli2_runs_a_wide_axis_mean_as_a_cascade_of_pools_equal_to_ort(axis):
    """Round 20's BC-ResNet on bernoulli2 (kernel <= 7, stride 1 or 2): a mean over 10 rows is an
    ``AveragePool`` 2 x 1 stride 2, then one over the 5 left (12 columns: 1 x 2, then 6); one BPU
    subgraph, 0 LSB from ONNX Runtime (BC-ResNet: 14 -> 2 compiled subgraphs)."""
    model = _conv_axis_mean_conv(axis, 1)
    report = npuflow.check(model, "bernoulli2")  # check judges the cascade: the mean and its stages on the BPU
    assert report.node("mean").device == "NPU" and report.node("mean/stage0").device == "NPU"
    assert report.summary["npu_subgraphs"] == 1
    done: list = []
    optimized = optimize_float(model, load_target("bernoulli2"), done)
    pools = [n for n in optimized.graph.node if n.op_type == "AveragePool"]
    assert [list(p.attribute[0].ints) for p in pools] == ([[2, 1], [5, 1]] if axis == 2 else [[1, 2], [1, 6]])
    assert [r.applied for r in done if r.rewrite == "axis_avg_pool_cascade"] == [True]
    x = samples(SHAPE, n=1, seed=2)[0]
    np.testing.assert_allclose(run(optimized, {"x": x})[0], run(model, {"x": x})[0], rtol=0, atol=1e-5)
    assert_one_subgraph_equal_to_ort(model, SHAPE, "bernoulli2", "BPU")


def test_a_wide_axis_mean_without_a_cascade_is_left_and_reported():
    """11 rows: no divisor to pool by first; the mean stays whole (on the CPU) and the rewrite says why."""
    model = _conv_axis_mean_conv(2, 1)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 11
    done: list = []
    optimized = optimize_float(model, load_target("bernoulli2"), done)
    assert [list(n.attribute[0].ints) for n in optimized.graph.node if n.op_type == "AveragePool"] == [[11, 1]]
    assert [(r.applied, r.rewrite) for r in done if r.rewrite == "axis_avg_pool_cascade"] == \
        [(False, "axis_avg_pool_cascade")]
