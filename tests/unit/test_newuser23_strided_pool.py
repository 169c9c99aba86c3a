"""Round 23a of new-user flows: an average pool whose stride the target rejects runs on the accelerator.

Fast-SCNN's pyramid pooling (as PSPNet's) averages its 6 x 6 map into bins of 1, 2, 3 and 6 with
``adaptive_avg_pool2d``, exported as ``AveragePool`` whose stride equals its window: the 2-bin pool is
3 x 3 stride 3, which bernoulli2's pool (stride 1 or 2) rejects, so it ran in float on the CPU.  The
target rewrites now write it as the stride-1 pool (every window's average) and a 1 x 1 ``MaxPool`` with
the original stride (keeping the windows the strided pool computes): the same values, on the BPU.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.optimize import optimize_float
from npuflow.targets import load_target
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run, samples

SHAPE = [1, 3, 6, 6]


def _conv_pool_conv(kernel: int, stride: int, pads: int = 0) -> onnx.ModelProto:
    """Conv 3x3 -> ReLU -> AveragePool(kernel, stride) -> Conv 1x1: a pyramid-pooling bin's branch."""
    rng = np.random.default_rng(23)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("AveragePool", ["r"], ["p"], name="pool", kernel_shape=[kernel, kernel],
                              strides=[stride, stride], pads=[pads] * 4),
             helper.make_node("Conv", ["p", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "ppm_bin", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("kernel, stride", [(3, 3), (2, 3), (3, 4), (6, 6)])
def test_a_strided_pool_is_a_stride_1_pool_and_a_subsampling_with_the_same_values(kernel, stride):
    model = _conv_pool_conv(kernel, stride)
    done: list = []
    optimized = optimize_float(model, load_target("bernoulli2"), done)
    assert [r.applied for r in done if r.rewrite == "avg_pool_stride_as_subsample"] == [True]
    x = samples(SHAPE, n=1, seed=2)[0]
    np.testing.assert_allclose(run(optimized, {"x": x})[0], run(model, {"x": x})[0], rtol=0, atol=1e-6)


def test_bernoulli2_runs_a_pyramid_bin_pool_on_the_bpu_equal_to_ort():
    """The 3 x 3 stride-3 bin: check places it (and its parts) on the BPU, one BPU subgraph, 0 LSB."""
    model = _conv_pool_conv(3, 3)
    report = npuflow.check(model, "bernoulli2")
    assert report.node("pool").device == "NPU" and report.node("pool/stride1").device == "NPU"
    assert report.summary["npu_subgraphs"] == 1
    assert_one_subgraph_equal_to_ort(model, SHAPE, "bernoulli2", "BPU")


def test_a_pool_the_target_accepts_or_a_padded_one_is_left():
    """Stride 2 runs as it is; a padded stride-3 pool is not rewritten (it stays on the CPU)."""
    target = load_target("bernoulli2")
    done: list = []
    optimize_float(_conv_pool_conv(2, 2), target, done)
    assert not [r for r in done if r.rewrite == "avg_pool_stride_as_subsample"]
    padded = _conv_pool_conv(3, 3, pads=1)
    assert npuflow.check(padded, "bernoulli2").node("pool").device == "CPU"
