"""A sigmoid's fixed output interval [0, 1] on a power-of-two grid (issue 18's PP-OCRv4 rec PTQ start).

PP-OCRv4 rec's neck has seven swish activations, ``x * Sigmoid(x)``: on the DPUs the sigmoid runs
on the CPU and its output enters the accelerator's Mul quantized.  When a sigmoid's output took the
interval [0, 1] instead of its calibrated range (c0a2745), the power-of-two position covering 1.0
exactly was 2**-6 (127/128 < 1), one bit coarser than the calibrated 2**-7, and the rec PTQ start
(AdaRound 500, 32 lines, B4096) fell from 88.0 to 87.0 % lines.  The grid's top now need only be
within one step of 1 (as TFLite's int8 sigmoid, 255/256): 2**-7 whatever calibration saw, and the
rec start is bit for bit the one of before (docs/accuracy.md)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow import numerics
from npuflow.quant.assign import fixed_interval
from npuflow.quant.config import TensorSettings
from npuflow.value_info import with_outputs
from tests.unit.quant_nets import run

B4096 = "DPUCZDX8G_ISA1_B4096"


def _swish_net() -> onnx.ModelProto:
    """Conv -> swish (``c * Sigmoid(c)``, rec's neck) -> Conv; the sigmoid output is ``s``."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (8, 4, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"], name="sigmoid"),
             helper.make_node("Mul", ["c", "s"], ["sw"], name="swish"),
             helper.make_node("Conv", ["sw", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _calibration(gain: float) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [(gain * rng.normal(0, 1, (1, 4, 8, 8))).astype(np.float32) for _ in range(8)]


def _top(q) -> float:
    return float(q.dequantize(np.array(numerics.qrange(q.bits, q.signed, q.narrow_range)[1])))


@pytest.mark.parametrize("gain", [2.0, 0.02])
def test_a_swish_sigmoid_on_a_dpu_keeps_the_finest_step_that_reaches_one(gain):
    """Calibrated saturating (outputs up to ~1) or near 0.5 only, the sigmoid output feeding the
    DPU's Mul gets 2**-7 (top 127/128), not 2**-6 (which covered 1.0 exactly at twice the step)."""
    model, calib = _swish_net(), _calibration(gain)
    probe = with_outputs(model, ["s"])
    s_max = max(float(run(probe, {"x": x})[1].max()) for x in calib)
    assert (s_max > 127 / 128) if gain > 1 else (s_max < 0.6)  # calibrated above 127/128 and well below
    q = npuflow.quantize(model, calib, target=B4096)
    s = q.quant_params["s"]
    assert s.fix_pos == 7 and float(s.scale) == 2.0 ** -7, (s.fix_pos, s.scale)
    assert _top(s) == 127 / 128  # a probability above it saturates there: at most one step off


@pytest.mark.parametrize("target, top", [("bernoulli2", 1.0), ("cpu-int8", 1.0)])
def test_float_scale_targets_keep_the_whole_interval(target, top):
    """Float scales cover [0, 1] at no cost in resolution: their sigmoid output is unchanged."""
    q = npuflow.quantize(_swish_net(), _calibration(0.02), target=target)
    assert abs(_top(q.quant_params["s"]) - top) < 1e-6


@pytest.mark.parametrize("bits, fix", [(8, 7), (16, 15), (4, 3)])
def test_fixed_interval_on_power_of_two_grids(bits, fix):
    common = dict(bit_width=bits, method="minmax", per_channel=False, narrow_range=False, round_mode="half_even",
                  percentile=99.99)
    s = TensorSettings(scale_type="power_of_two", symmetric=True, signed=True, **common)
    lo, hi, pos = fixed_interval((0.0, 1.0), s)
    qmax = numerics.qrange(bits, True)[1]
    assert (lo, pos) == (0.0, fix) and hi == qmax * 2.0 ** -fix and 1.0 - hi == 2.0 ** -fix
    f = TensorSettings(scale_type="float", symmetric=False, signed=False, **common)
    assert fixed_interval((0.0, 1.0), f) == (0.0, 1.0, None)
