"""On power-of-two targets the quantized model's ONNX Runtime result IS the integer program.

The QDQ model of a small conv net is run in plain ONNX Runtime and recomputed in numpy with
integer arithmetic only (``numerics.quantize`` for the input, int64 convolutions, int32 bias,
``numerics.shift_round`` + ``saturate`` for requantisation).  They agree bit for bit, which is
what lets the compiler's integer executor match the quantized model exactly.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

import npuflow
from npuflow import numerics

from .quant_nets import run, samples, two_conv_net


def _conv_int(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    x = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    out = np.zeros((n, o, oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", x[:, :, i:i + oh, j:j + ow], w[:, :, i, j].astype(np.int64))
    return out


def test_ort_result_equals_integer_recomputation():
    model = two_conv_net()
    q = npuflow.quantize(model, samples([1, 3, 6, 6], n=8), target="DPUCZDX8G_ISA1_B4096",
                         config={"report_samples": 0})
    inits = {t.name: numpy_helper.to_array(t) for t in q.model.graph.initializer}
    fix = {k[:-len("_scale")]: int(numerics.fix_pos_of(v)) for k, v in inits.items() if k.endswith("_scale")}
    for x in samples([1, 3, 6, 6], n=5, seed=11, low=-1.5, high=1.5):
        qx = numerics.quantize(x, numerics.pow2_scale(fix["x"]), round_mode="half_up")
        acc1 = _conv_int(qx, inits["w1_quantized"], 1) + inits["b1_quantized"].reshape(1, -1, 1, 1)
        acc1 = np.maximum(acc1, 0)  # Relu fused into conv1
        r1 = numerics.saturate(numerics.shift_round(acc1, fix["x"] + fix["w1"] - fix["r1"], "half_up"))
        acc2 = _conv_int(r1, inits["w2_quantized"], 0) + inits["b2_quantized"].reshape(1, -1, 1, 1)
        yq = numerics.saturate(numerics.shift_round(acc2, fix["r1"] + fix["w2"] - fix["y"], "half_up"))
        expected = numerics.dequantize(yq, numerics.pow2_scale(fix["y"]))
        for optimize in (False, True):
            got = run(q.model, {"x": x}, optimize=optimize)[0]
            np.testing.assert_array_equal(got, expected)


def test_weights_are_quantized_with_the_target_weight_rounding():
    model = two_conv_net()
    q = npuflow.quantize(model, samples([1, 3, 6, 6], n=4), target="DPUCZDX8G_ISA1_B4096",
                         config={"report_samples": 0})
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w1"))
    params = q.quant_params["w1"]
    expected = numerics.quantize(w, params.scale, round_mode="std_round")
    got = numpy_helper.to_array(next(t for t in q.model.graph.initializer if t.name == "w1_quantized"))
    np.testing.assert_array_equal(got, expected)
