"""An average pool whose windows tile its map is part of the fused run (runtime/fused.py).

PP-OCRv4 rec's neck averages its 3-row map with a 3 x 2 window at stride (1, 2): on bernoulli2
(float mode) the fused runs held only the global pool, so this one ran as its numpy kernel
between two fused runs and a frame was three calls where one does.  Windows that tile the map
(stride = window, no padding) are the same exact sums on a reshaped view; overlapping or padded
windows (EfficientFormer's 3x3 stride-1 token mixer, ``count_include_pad=0``) a depthwise sum of
ones and the kernel's count map (session 33; they were the kernel).  All must equal the op-by-op
kernels bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.runtime import fused
from tests.unit.quant_nets import samples


def _conv_pool_conv(shape: list[int], kernel: list[int], strides: list[int], **pool: int) -> onnx.ModelProto:
    """Conv 3x3 -> ReLU -> AveragePool(kernel, strides) -> Conv 1x1."""
    rng = np.random.default_rng(32)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (8, shape[1], 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("AveragePool", ["r"], ["p"], name="pool", kernel_shape=kernel, strides=strides,
                              **pool),
             helper.make_node("Conv", ["p", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _plan_items(shape: list[int], kernel: list[int], strides: list[int], target: str = "bernoulli2",
                **pool: int) -> list:
    """The one accelerator subgraph's plan items; the fused Session's outputs equal the kernels'."""
    model = _conv_pool_conv(shape, kernel, strides, **pool)
    q = npuflow.quantize(model, samples(shape, n=4, seed=3), target=target)
    compiled = npuflow.compile(q.model, target)
    assert [s.on_accelerator for s in compiled.subgraphs] == [True]
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    for x in samples(shape, n=3, seed=5):
        a, b = fast.run({"x": x}), ref.run({"x": x})
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    (executor,) = [e for e in fast._executors if hasattr(e, "plan")]
    return executor.plan.items


@pytest.mark.parametrize("shape, kernel, strides", [
    ([1, 3, 3, 8], [3, 2], [1, 2]),  # PP-OCRv4 rec's pool: the whole height, pairs of columns
    ([1, 3, 6, 6], [2, 2], [2, 2]),
])
def test_a_pool_whose_windows_tile_the_map_is_one_fused_run(shape, kernel, strides):
    items = _plan_items(shape, kernel, strides)
    assert len(items) == 1 and isinstance(items[0], fused.FusedRun)


@pytest.mark.parametrize("target", ["bernoulli2", "DPUCZDX8G_ISA1_B4096"])
@pytest.mark.parametrize("kernel, strides, pool", [
    ([2, 2], [1, 1], {}),
    ([3, 3], [1, 1], {"pads": [1, 1, 1, 1], "count_include_pad": 0}),  # EfficientFormer's token mixer
    ([3, 3], [2, 2], {"pads": [1, 1, 1, 1], "count_include_pad": 1, "ceil_mode": 1}),
])
def test_overlapping_or_padded_windows_are_one_fused_run_and_equal(target, kernel, strides, pool, monkeypatch):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")  # the plan built here, not one stored before
    items = _plan_items([1, 3, 6, 6], kernel, strides, target, **pool)
    assert len(items) == 1 and isinstance(items[0], fused.FusedRun)
