"""Round 24 of new-user flows: a sum over a short axis (ResNeSt's radix sum) runs on the accelerator.

ResNeSt's split attention sums its radix branches, ``x.view(b, r, c, h, w).sum(1)``: a ``ReduceSum``,
which no target lowers, so each ran in float on the CPU (7 accelerator subgraphs for two blocks on
every target).  The float passes (and check) now write a sum of 2..8 terms as width-1 slices added
left to right; longer axes and integer data stay.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.reduce_sum import short_sums_as_adds
from npuflow.targets import load_target
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run, samples

SHAPE = [1, 8, 6, 6]


def _radix_sum(radix: int = 2, keepdims: int = 0) -> onnx.ModelProto:
    """Conv 1x1 (8 -> 8) -> ReLU -> view N x r x 8/r x H x W -> sum over r -> Conv 1x1: ResNeSt's radix sum."""
    rng = np.random.default_rng(24)
    c = 8 // radix
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (8, 8, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.array([1, radix, c, 6, 6], np.int64), "split_shape"),
             numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(rng.normal(0, 0.4, (4, c, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "split_shape"], ["s"], name="view"),
             helper.make_node("ReduceSum", ["s", "axes"], ["t"], name="radix_sum", keepdims=keepdims)]
    if keepdims:
        inits.append(numpy_helper.from_array(np.array([1, c, 6, 6], np.int64), "map_shape"))
        nodes.append(helper.make_node("Reshape", ["t", "map_shape"], ["m"], name="unview"))
    nodes.append(helper.make_node("Conv", ["m" if keepdims else "t", "w2"], ["y"], name="conv2"))
    graph = helper.make_graph(nodes, "radix_sum", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("radix, keepdims", [(2, 0), (4, 0), (2, 1)])
def test_a_short_sum_is_slices_and_adds_with_the_same_values(radix, keepdims):
    model = _radix_sum(radix, keepdims)
    rewritten = short_sums_as_adds(model, load_target("cpu-int8"))
    ops = [n.op_type for n in rewritten.graph.node]
    assert "ReduceSum" not in ops and ops.count("Slice") == radix and ops.count("Add") == radix - 1
    x = samples(SHAPE, n=1, seed=2)[0]
    np.testing.assert_allclose(run(rewritten, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-6, atol=1e-6)


def test_a_long_axis_and_integer_data_are_left():
    long = _radix_sum(radix=1)  # a sum over one term is not rewritten either
    assert short_sums_as_adds(long, load_target("cpu-int8")) is long
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Reshape", ["s", "two"], ["p"], name="pairs"),
             helper.make_node("ReduceSum", ["p", "axes"], ["y"], name="n", keepdims=0)]
    graph = helper.make_graph(nodes, "int_sum", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.INT64, None)],
                              [numpy_helper.from_array(np.array([2, 2], np.int64), "two"),
                               numpy_helper.from_array(np.array([1], np.int64), "axes")])
    shape_sum = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert short_sums_as_adds(shape_sum, load_target("cpu-int8")) is shape_sum


def test_cpu_int8_runs_the_radix_sum_in_one_integer_subgraph_equal_to_ort():
    model = _radix_sum()
    assert npuflow.check(model, "cpu-int8").node("radix_sum").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, SHAPE, "cpu-int8", "CPU-INT8")


def test_vote_counts_stay_one_sum():
    """A sum of votes (``Cast`` of an ``Equal`` to float, as skl2onnx's nearest-neighbour classifiers count
    the neighbours' labels, then concatenated and summed again) is counting, not a feature map: it stays
    one ``ReduceSum`` (quantized adds of votes could change which class wins)."""
    labels = numpy_helper.from_array(np.array([[0.0, 1.0, 1.0]], np.float32), "labels")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("Equal", ["x", "labels"], ["eq"], name="eq"),
             helper.make_node("Cast", ["eq"], ["votes"], name="cast", to=onnx.TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["votes", "axes"], ["count"], name="count", keepdims=1),
             helper.make_node("Concat", ["count", "count"], ["both"], name="both", axis=1),
             helper.make_node("ReduceSum", ["both", "axes"], ["total"], name="total", keepdims=1)]
    graph = helper.make_graph(nodes, "votes", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("total", onnx.TensorProto.FLOAT, [1, 1])],
                              [labels, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out = short_sums_as_adds(model, load_target("cpu-int8"))
    assert [n.op_type for n in out.graph.node].count("ReduceSum") == 2
