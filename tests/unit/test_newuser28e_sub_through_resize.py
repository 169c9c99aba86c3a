"""Round 28 of new-user flows: N-HiTS' residual ``x - backcast`` on targets that add but do not subtract.

N-HiTS' block computes one Gemm ``theta`` whose first channels are the backcast and the rest the
forecast; the backcast is interpolated (``Slice -> Unsqueeze -> Resize(linear) -> Squeeze``) and
subtracted from the block's input.  ``sub_as_add`` negated only a layer read by the Sub itself, so
the Sub (and 19 nodes on DPUCZDX8G, 35 on bernoulli2) ran on the CPU.  These ops commute with
negation: the Gemm's backcast channels are negated (the forecast's are not) and the Sub is an Add.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.optimize import optimize_float
from npuflow.passes.target_rewrites import target_rewrites
from npuflow.targets import load_target
from tests.unit.quant_nets import run, samples

N_IN, N_BACK, N_FORE = 16, 4, 6


def _block(fore_start: int = N_BACK) -> onnx.ModelProto:
    """x [1, 16] -> Gemm (16 -> 10) -> theta; backcast = theta[:, :4] interpolated to 16; y = x - backcast,
    forecast = theta[:, fore_start:10] (overlapping the backcast when ``fore_start`` < 4)."""
    rng = np.random.default_rng(28)
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (N_BACK + N_FORE, N_IN)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, (N_BACK + N_FORE,)).astype(np.float32), "b"),
             i64("b_start", [0]), i64("b_end", [N_BACK]), i64("f_start", [fore_start]),
             i64("f_end", [N_BACK + N_FORE]), i64("axis1", [1]), i64("sizes", [1, 1, N_IN])]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["theta"], name="gemm", transB=1),
             helper.make_node("Slice", ["theta", "b_start", "b_end", "axis1"], ["back"], name="back_slice"),
             helper.make_node("Slice", ["theta", "f_start", "f_end", "axis1"], ["forecast"], name="fore_slice"),
             helper.make_node("Unsqueeze", ["back", "axis1"], ["back3"], name="unsqueeze"),
             helper.make_node("Resize", ["back3", "", "", "sizes"], ["up"], name="resize", mode="linear"),
             helper.make_node("Squeeze", ["up", "axis1"], ["backcast"], name="squeeze"),
             helper.make_node("Sub", ["x", "backcast"], ["residual"], name="residual_sub")]
    graph = helper.make_graph(nodes, "nhits_block", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, N_IN])],
                              [helper.make_tensor_value_info("residual", onnx.TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("forecast", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "bernoulli2"])
def test_the_backcast_sub_is_an_add_of_the_gemms_negated_backcast_channels(target):
    model = _block()
    done: list = []
    optimized = optimize_float(model, load_target(target), done)
    assert "Sub" not in [n.op_type for n in optimized.graph.node]
    notes = [(r.node, r.applied, r.detail) for r in done if r.rewrite == "sub_as_add"]
    assert [(n, ok) for n, ok, _ in notes] == [("residual_sub", True)]
    x = samples([1, N_IN], n=1, seed=3)[0]
    for got, want in zip(run(optimized, {"x": x}), run(model, {"x": x})):  # the forecast keeps its sign
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_the_gemm_is_negated_through_slice_unsqueeze_resize_squeeze():
    """The target rewrite alone (bernoulli2 keeps the linear Resize, DPUCZDX8G's float passes make it a
    depthwise ConvTranspose, which is then the layer negated): only the backcast's four channels."""
    model = _block()
    out, done = target_rewrites(model, load_target("bernoulli2"))
    assert [r.detail for r in done] == ["Sub -> Add of gemm output channels 0-3 negated "
                                        "(through Slice -> Unsqueeze -> Resize -> Squeeze)"]
    x = samples([1, N_IN], n=1, seed=4)[0]
    for got, want in zip(run(out, {"x": x}), run(model, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_check_places_the_residual_on_the_accelerator():
    node = npuflow.check(_block(), "DPUCZDX8G_ISA1_B4096").node("residual_sub")
    assert node.device == "NPU"
    assert any("sub_as_add" in m for m in node.messages)


def test_a_forecast_slice_overlapping_the_backcast_keeps_the_sub():
    """Channel 3 read by both slices: negating it would flip the forecast's value."""
    model = _block(fore_start=N_BACK - 1)
    out, done = target_rewrites(model, load_target("bernoulli2"))
    assert "Sub" in [n.op_type for n in out.graph.node]
    assert not [r for r in done if r.rewrite == "sub_as_add"]
