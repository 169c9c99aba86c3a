"""A dead output channel (all weights ~0, a real bias) on a float-scale target: its per-channel
weight scale is widened so the int32 bias and accumulator stay in range: the bias is not
saturated, and ONNX Runtime's integer kernels (int32 accumulators that wrap) and ``numerics``
(exact sums) agree."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper, TensorProto

import npuflow
from tests.compile_check import compare_layerwise_with_ort
from tests.unit.quant_nets import model_from, samples


def _dead_channel_net():
    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.3, (6, 16, 3, 3)).astype(np.float32)
    w[2] = 1e-12  # dead after BN folding, as in PP-OCRv4 det
    b = rng.normal(0, 0.2, 6).astype(np.float32)
    b[2] = 3.0
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    return model_from(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8, 8])])


def test_dead_channel_bias_and_accumulator_fit_int32():
    q = npuflow.quantize(_dead_channel_net(), samples([1, 16, 8, 8], n=4, low=0, high=2), target="cpu-int8")
    tensors = q.info["tensors"]
    ws = np.asarray(tensors["w"]["scale"], np.float64)
    inits = {t.name: numpy_helper.to_array(t) for t in q.model.graph.initializer}
    bias = next(v for k, v in inits.items() if k.startswith("b") and v.dtype == np.int32).astype(np.int64)
    assert ws[2] > 1e5 * 1e-12 / 127  # widened from its weights' own step (1e-12 / 127)
    room = 2 ** 31 - 1 - 255 * 127 * 16 * 9  # no input can carry the accumulator out of int32
    assert np.abs(bias).max() <= room and abs(bias[2]) > 0
    assert q.report.outputs["y"] > 0.999  # a saturated bias code made the channel's output wrong (cosine 0.91)
    feeds = {"x": samples([1, 16, 8, 8], n=1, seed=5, low=0, high=2)[0]}
    diffs = compare_layerwise_with_ort(q.model, feeds, "cpu-int8", levels=("all",))
    assert max(diffs.values()) == 0, diffs  # ONNX Runtime's QLinearConv and the runtime agree
