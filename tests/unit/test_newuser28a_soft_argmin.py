"""Round 28a of new-user flows: a stereo network's soft-argmin, ``(softmax(-cost, 1) * arange(D)).sum(1)``.

The float passes write a sum over a short axis as width-1 slices added left to right (round 24).  The
soft-argmin's first slice is the probabilities times the disparity 0: zero on every input, so quantize
warned ``NPF_QUANT_CALIB_ALL_ZERO`` on ``/ReduceSum_output_0/term0`` (a tensor the user never wrote)
and told them to calibrate on samples that exercise the whole model, which no sample can; the add of
that zero also cost a requantisation.  A term whose constant factor is all zero is now left out.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.reduce_sum import short_sums_as_adds
from npuflow.targets import load_target
from tests.unit.quant_nets import run, samples

D = 4
SHAPE = [1, 3, 6, 6]


def _soft_argmin(disparities: np.ndarray, keepdims: int = 1) -> onnx.ModelProto:
    """Conv (3 -> D cost channels) -> Neg -> Softmax over D -> Mul by the disparity values -> ReduceSum over D."""
    rng = np.random.default_rng(28)
    inits = [numpy_helper.from_array(rng.normal(0, 0.6, (D, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(disparities.astype(np.float32).reshape(1, D, 1, 1), "disp"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["cost"], name="cost", pads=[1, 1, 1, 1]),
             helper.make_node("Neg", ["cost"], ["neg"], name="neg"),
             helper.make_node("Softmax", ["neg"], ["p"], name="softmax", axis=1),
             helper.make_node("Mul", ["p", "disp"], ["weighted"], name="weighted"),
             helper.make_node("ReduceSum", ["weighted", "axes"], ["y"], name="soft_argmin", keepdims=keepdims)]
    graph = helper.make_graph(nodes, "soft_argmin", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("keepdims", [1, 0])
def test_the_zero_disparity_term_is_left_out_and_values_stay(keepdims):
    model = _soft_argmin(np.arange(D), keepdims)
    rewritten = short_sums_as_adds(model, load_target("cpu-int8"))
    slices = [n for n in rewritten.graph.node if n.op_type == "Slice"]
    assert len(slices) == D - 1 and [n.op_type for n in rewritten.graph.node].count("Add") == D - 2
    assert not any(n.output[0].endswith("/term0") for n in slices)
    x = samples(SHAPE, n=1, seed=3)[0]
    np.testing.assert_allclose(run(rewritten, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-6, atol=1e-6)


def test_one_nonzero_term_is_one_slice_writing_the_sum():
    model = _soft_argmin(np.array([0.0, 0.0, 2.0, 0.0]))
    rewritten = short_sums_as_adds(model, load_target("cpu-int8"))
    assert [n.op_type for n in rewritten.graph.node][-1] == "Slice" and rewritten.graph.node[-1].output[0] == "y"
    x = samples(SHAPE, n=1, seed=4)[0]
    np.testing.assert_allclose(run(rewritten, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-6, atol=1e-6)


def test_an_all_zero_or_nonzero_factor_keeps_every_term():
    for disparities in (np.zeros(D), np.arange(1, D + 1)):
        rewritten = short_sums_as_adds(_soft_argmin(disparities), load_target("cpu-int8"))
        assert [n.op_type for n in rewritten.graph.node].count("Slice") == D


def test_quantize_no_longer_warns_about_the_zero_disparity():
    calib = [{"x": x} for x in samples(SHAPE, n=4, seed=5)]
    q = npuflow.quantize(_soft_argmin(np.arange(D)), calib, "cpu-int8", warn=False)
    assert "NPF_QUANT_CALIB_ALL_ZERO" not in [w.code for w in q.calibration_warnings]
    assert min(q.report.calibration_outputs.values()) > 0.99
