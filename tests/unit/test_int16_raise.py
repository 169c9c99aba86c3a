"""Raising a layer to int16 must not keep the clipping of its int8 weight scale.

A power-of-two mse search picks an int8 weight scale that clips outliers for finer steps; a
16-bit scale derived from it (256x finer) kept the same clipped range, so raising every point
of EfficientNet-Lite0 to int16 on B4096 stayed at 92 % FP32 agreement.  An int16 override is a
plan override: the weights are assigned again at 16 bits from the float values.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.quant.algorithms.qdq_weights import dequantized_weight, quantized_layers, read_bias


def _conv_with_an_outlier():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (16, 16, 3, 3)).astype(np.float32)
    w[0, 0, 1, 1] = 0.26  # just above 0.248 (127 steps of 2**-9): the mse search clips it
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    g = helper.make_graph([node], "one_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
                          initializer=[numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), w


def test_int16_weights_cover_the_float_range_with_a_power_of_two_scale():
    model, w = _conv_with_an_outlier()
    rng = np.random.default_rng(1)
    calib = [{"x": rng.normal(size=(1, 16, 8, 8)).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(model, calib, target="DPUCZDX8G_ISA1_B4096",
                         config={"report_samples": 0, "include_bias_corr": False, "weight": {"method": "mse"}})
    int8 = dequantized_weight(q.model, next(l for l in quantized_layers(q.model) if l.name == "conv"))
    assert int8.max() < 0.25  # the premise: int8 clipped the outlier
    raised = q.requantizer.export({"conv": "int16"})
    layer = next(l for l in quantized_layers(raised) if l.name == "conv")
    assert layer.bits == 16
    w16 = dequantized_weight(raised, layer)
    step = 2.0 ** -16  # the finest power of two that covers 0.26 with 32767 codes
    assert np.all(layer.scale == step)
    assert np.abs(w16 - w).max() <= step / 2 + 1e-9


def test_int16_raise_restores_the_float_bias_that_bias_correction_moved():
    """Bias correction cancels the int8 weights' mean error; 16-bit weights no longer make it, so a
    raised layer keeps the float bias (PP-OCRv4 rec on B4096, every point raised: 0.7 % -> 92.3 %
    lines)."""
    model, w = _conv_with_an_outlier()
    bias = np.linspace(-0.5, 0.5, 16).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(bias, "b"))
    model.graph.node[0].input.append("b")
    rng = np.random.default_rng(1)
    calib = [{"x": rng.normal(0.5, 1.0, size=(1, 16, 8, 8)).astype(np.float32)} for _ in range(8)]
    q = npuflow.quantize(model, calib, target="DPUCZDX8G_ISA1_B4096",
                         config={"report_samples": 0, "include_bias_corr": True, "weight": {"method": "mse"}})
    layer = next(l for l in quantized_layers(q.model) if l.name == "conv")
    corrected = read_bias(q.model, layer, 16)
    step = float(layer.bias_scale.max())
    assert np.abs(corrected - bias).max() > 4 * step  # the premise: bias correction moved it
    raised = q.requantizer.export({"conv": "int16"})
    layer16 = next(l for l in quantized_layers(raised) if l.name == "conv")
    fine = float(layer16.bias_scale.max())
    assert fine < step and np.abs(read_bias(raised, layer16, 16) - bias).max() <= fine / 2 + 1e-7
    assert np.abs(read_bias(q.model, layer, 16) - corrected).max() == 0  # the source model is untouched
