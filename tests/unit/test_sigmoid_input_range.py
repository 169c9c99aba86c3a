"""A tensor read by sigmoids alone is quantized no wider than the sigmoid can tell apart.

Past +-ln(509) = 6.23 an 8-bit probability is within half a step of 0 or 1 (``operators.
SATURATION_INPUT``).  PP-OCRv3's DB head, calibrated on photos, had logits from -218 to 135: on
B4096 a step of 2.0 for the input of a map whose text edges live within a few units of 0.  A
tensor something else reads too (a swish's ``Mul``) keeps its calibrated range."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow import numerics
from tests.unit.quant_nets import run

REACH = float(np.log(2.0 ** 9 - 3))


def _head(swish: bool) -> onnx.ModelProto:
    """``x -> Conv(1x1, gain 30) -> Sigmoid`` (a map), or its swish ``x * Sigmoid(x)``."""
    w = numpy_helper.from_array(np.full((1, 2, 1, 1), 30.0, np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["logit"], name="conv"),
             helper.make_node("Sigmoid", ["logit"], ["p"], name="sigmoid")]
    out = "p"
    if swish:
        nodes.append(helper.make_node("Mul", ["logit", "p"], ["y"], name="swish"))
        out = "y"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, [1, 1, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _calibration() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(-3, 3, (1, 2, 8, 8)).astype(np.float32) for _ in range(8)]  # logits -180..180


def _range(q) -> tuple[float, float]:
    lo, hi = numerics.qrange(q.bits, q.signed, q.narrow_range)
    return float(q.dequantize(np.array(lo))), float(q.dequantize(np.array(hi)))


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "bernoulli2", "cpu-int8"])
def test_a_logit_read_by_a_sigmoid_alone_is_clipped_where_the_sigmoid_saturates(target):
    model, calib = _head(swish=False), _calibration()
    q = npuflow.quantize(model, calib, target=target)
    lo, hi = _range(q.quant_params["logit"])
    assert -2 * REACH <= lo <= -REACH + 0.1 and REACH - 0.1 <= hi <= 2 * REACH, (lo, hi)  # was about +-180
    # near the map's edges (logit within a few units of 0) the quantized map follows FP32 on the
    # quantized input closely (the step of the logit was 180/127 = 1.4 before)
    xq = q.quant_params["x"]
    x = np.zeros((1, 2, 8, 8), np.float32)
    x[0, :, :, :4] = np.linspace(-0.1, 0.1, 4)
    x = xq.dequantize(xq.quantize(x)).astype(np.float32)
    want = run(model, {"x": x})[0]
    got = npuflow.Session(npuflow.compile(q.model, target)).run({"x": x})["p"]
    assert np.abs(got - want).max() < 0.05, np.abs(got - want).max()


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "cpu-int8"])
def test_a_swish_input_keeps_its_calibrated_range(target):
    q = npuflow.quantize(_head(swish=True), _calibration(), target=target)
    lo, hi = _range(q.quant_params["logit"])
    assert hi > 100 and lo < -100, (lo, hi)  # the Mul reads the logit itself


def test_a_swish_input_that_crosses_zero_keeps_its_calibrated_range():
    """On cpu-int8 (uint8, range [min, max]) a logit calibrated on both signs is not widened to
    -ln(509): the probability already reaches both halves, and YOLOv8n's swish inputs (-3..60)
    lost precision to it (benchmark quant row, class rows 0.9576 -> 0.9662 without it)."""
    rng = np.random.default_rng(1)
    calib = [rng.uniform(-0.05, 1.0, (1, 2, 8, 8)).astype(np.float32) for _ in range(8)]  # logits -3..60
    q = npuflow.quantize(_head(swish=True), calib, target="cpu-int8")
    t = q.quant_params["logit"]
    lo, _ = (float(t.dequantize(np.array(v))) for v in numerics.qrange(t.bits, t.signed, t.narrow_range))
    assert -3.5 < lo < 0.0, lo  # its calibrated minimum (at most -3); was -ln(509) = -6.23
