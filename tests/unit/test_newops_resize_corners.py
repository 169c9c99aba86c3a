"""A linear Resize with align_corners and no fixed kernel as products with its interpolation matrices
(session 33, newops item 3).

Fast-SCNN's pyramid bins, x4 fusion and x8 head (``F.interpolate(..., align_corners=True)`` from n to
m values, ``m - 1`` not a multiple of ``n - 1``) stayed float Resizes on the CPU on every target (round
23a).  ``passes/resize_matmul.py`` writes each as ``MatMul`` by the ``m x n`` interpolation matrix over
W, and over H between two Transposes, where the target runs those nodes (not bernoulli2's 2-D case: no
transpose there; a 1-D resize needs none).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.resize_matmul import corner_matrix
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run, samples


def _resize_net(shape: list[int], out: list[int], opset: int = 13) -> onnx.ModelProto:
    """Conv (k 3, 8 channels) -> Resize(linear, align_corners, sizes ``out``) -> Conv; 1-D for a 3-D ``shape``."""
    rng = np.random.default_rng(3)
    k = [3] * (len(shape) - 2)
    pads = [1] * (2 * len(k))
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, shape[1], *k)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, *k)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([shape[0], 8, *out], np.int64), "sizes")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=pads),
             helper.make_node("Resize", ["c", "", "", "sizes"], ["r"], name="resize", mode="linear",
                              coordinate_transformation_mode="align_corners"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", pads=pads)]
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize(("n", "m"), [(2, 6), (3, 6), (4, 16), (6, 24), (7, 3)])
def test_the_matrix_is_onnx_runtimes_align_corners_resize(n, m):
    x = np.random.default_rng(n * m).normal(size=(1, 1, 1, n)).astype(np.float32)
    sizes = numpy_helper.from_array(np.array([1, 1, 1, m], np.int64), "s")
    node = helper.make_node("Resize", ["x", "", "", "s"], ["y"], mode="linear", coordinate_transformation_mode="align_corners")
    graph = helper.make_graph([node], "r", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 1, n])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [sizes])
    want = run(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), {"x": x})[0]
    np.testing.assert_allclose(x @ corner_matrix(n, m).T, want, atol=1e-6)


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "cpu-int8"])
def test_a_2d_resize_runs_as_matmuls_where_the_target_has_transposes(target):
    report = npuflow.check(_resize_net([1, 3, 4, 4], [16, 16]), target)
    assert all(n.device == "NPU" for n in report.nodes)
    assert "MatMul by its interpolation matrix" in " ".join(report.node("resize").messages)
    model = npuflow.quantize(_resize_net([1, 3, 4, 4], [16, 16]), samples([1, 3, 4, 4], n=8), target=target).model
    assert [n.op_type for n in model.graph.node if n.op_type in ("Resize", "MatMul", "Transpose")] == \
        ["MatMul", "Transpose", "MatMul", "Transpose"]


def test_bernoulli2_keeps_a_2d_resize_and_says_why():
    node = npuflow.check(_resize_net([1, 3, 4, 4], [16, 16]), "bernoulli2").node("resize")
    assert node.device == "CPU" and node.op_type == "Resize"
    assert node.messages[-1].endswith("its MatMul form: Transpose (transpose) has no BPU implementation on bernoulli2")


@pytest.mark.parametrize(("target", "device", "shape", "out"), [
    ("DPUCZDX8G_ISA1_B4096", "DPU", [1, 3, 4, 4], [16, 16]),
    ("cpu-int8", "CPU-INT8", [1, 3, 3, 5], [8, 12]),
    ("bernoulli2", "BPU", [1, 3, 6], [16]),  # 1-D: the W product alone, no transpose
])
def test_one_subgraph_equal_to_ort_at_every_layer(target, device, shape, out):
    assert_one_subgraph_equal_to_ort(_resize_net(shape, out), shape, target, device)


def test_a_one_value_resize_after_a_rewritten_one_is_written_as_nearest_too():
    """The pass took its Resize nodes before rewriting any: a length-1 resize after a ConvTranspose-written
    one was reported as made nearest but stayed linear (a stale node), so it ran on the CPU."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "x2"),
             numpy_helper.from_array(np.array([1, 8, 16, 16], np.int64), "full")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "", "x2"], ["u"], name="up", mode="linear",
                              coordinate_transformation_mode="half_pixel"),
             helper.make_node("GlobalAveragePool", ["u"], ["g"], name="gap"),
             helper.make_node("Resize", ["g", "", "", "full"], ["b"], name="broadcast", mode="linear",
                              coordinate_transformation_mode="align_corners"),
             helper.make_node("Add", ["u", "b"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    node = npuflow.check(model, "cpu-int8").node("broadcast")
    assert node.device == "NPU" and node.attributes.get("mode") == "nearest"
