"""AdaQuant's default learning rate moves weights by whole steps (issue 18).

The quantized model feeds a layer inputs that differ from the float ones (coarse power-of-two
activation codes); AdaQuant is there to move weights and bias so that the layer compensates.
With the former default (1e-4 steps per iteration) a weight moved ~0.03 step in a whole run and
PP-OCRv4 rec on B4096 stayed at ~6 % lines; 3e-3 gave 30 %.  A large rate must still never
return a worse rounding than the best iterate it met (on exact inputs, nearest rounding).
"""

from __future__ import annotations

import numpy as np
import pytest

from npuflow import numerics
from npuflow.quant.algorithms.adaquant import DEFAULT_LR, adaquant
from npuflow.quant.algorithms.layer_problem import LayerProblem


def _problem(seed: int, input_step: float | None) -> LayerProblem:
    """A 27-tap layer whose quantized-model inputs are ``x`` floored to ``input_step`` (an
    activation quantized with truncation and a coarse power-of-two scale), or exact."""
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(1, 16, 27)) * 0.2).astype(np.float32)
    x = np.maximum(rng.normal(size=(1, 27, 1024)), 0).astype(np.float32)
    xq = x if input_step is None else (np.floor(x / input_step) * input_step).astype(np.float32)
    b = (rng.normal(size=(1, 16, 1)) * 0.1).astype(np.float32)
    s = np.full((1, 16, 1), numerics.pow2_scale(numerics.pow2_fix_pos(np.abs(w).max())), np.float32)
    return LayerProblem(w, s, b, xq, np.matmul(w, x) + b, -127, 127, "std_round")


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("seed", [0, 1])
def test_default_rate_compensates_quantized_inputs(seed, backend):
    p = _problem(seed, 2.0 ** -4)
    nearest = p.error(p.nearest_codes())
    codes, bias = adaquant(p, iters=150, backend=backend)
    slow_codes, slow_bias = adaquant(p, iters=150, lr=1e-4, backend=backend)
    assert DEFAULT_LR >= 1e-3
    assert p.error(codes, bias) < 0.75 * nearest                 # measured 0.65-0.70
    assert p.error(slow_codes, slow_bias) > 0.8 * nearest       # the former default: 0.85-0.90
    assert np.mean(codes != p.nearest_codes()) > 0.05            # roundings really change
    assert np.all(np.abs(codes - p.nearest_codes()) <= 3)


@pytest.mark.parametrize("lr", [DEFAULT_LR, 1e-2])
def test_large_rate_returns_the_best_iterate(lr):
    """Exact inputs: nothing to compensate, the straight-through walk only adds rounding noise."""
    p = _problem(0, None)
    codes, bias = adaquant(p, iters=200, lr=lr)
    assert p.error(codes, bias) <= p.error(p.nearest_codes())


def _net(seed: int = 0):
    """3x3 conv + ReLU, 3x3 depthwise + ReLU, 1x1 conv: small enough for a unit test."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "x"
    for name, cin, cout, k, group, relu in (("a", 3, 8, 3, 1, True), ("dw", 8, 8, 3, 8, True), ("p", 8, 4, 1, 1, False)):
        w = rng.normal(0, 1.0 / np.sqrt(cin // group * k * k), (cout, cin // group, k, k)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"{name}.w"),
                  numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"{name}.b")]
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"], name=name, group=group,
                                      kernel_shape=[k, k], pads=[k // 2] * 4))
        x = f"{name}.y"
        if relu:
            nodes.append(helper.make_node("Relu", [x], [f"{name}.r"], name=f"{name}.relu"))
            x = f"{name}.r"
    g = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10, 10])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 4, 10, 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_adaquant_model_compiles_bit_exact_with_onnx_runtime(tmp_path, monkeypatch):
    """Moved weights and biases stay on the target's integer grid: compiled == ONNX Runtime."""
    import npuflow
    from tests.compile_check import compare_with_ort

    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.normal(0, 1, (1, 3, 10, 10)).astype(np.float32)} for _ in range(8)]
    q = npuflow.quantize(_net(), feeds, target="DPUCZDX8G_ISA1_B4096",
                         config={"include_bias_corr": False, "fast_finetune": {"method": "adaquant", "iters": 60}})
    assert q.info["algorithms"]["fast_finetune"]["lr"] == DEFAULT_LR
    diffs = compare_with_ort(q.model, feeds[0], "DPUCZDX8G_ISA1_B4096")
    assert max(diffs.values()) == 0, diffs


def test_forced_bias_correction_after_adaquant_warns(tmp_path, monkeypatch, caplog):
    """Correcting the biases AdaQuant fitted undoes part of its fit (PP-OCRv4 rec on B4096: 77.0 -> 45.3 %
    lines); ``include_bias_corr: true`` still applies it, as asked, but says so."""
    import logging

    import npuflow

    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.normal(0, 1, (1, 3, 10, 10)).astype(np.float32)} for _ in range(4)]
    with caplog.at_level(logging.WARNING, logger="npuflow.quant.algorithms.apply"):
        q = npuflow.quantize(_net(), feeds, target="DPUCZDX8G_ISA1_B4096",
                             config={"include_bias_corr": True, "fast_finetune": {"method": "adaquant", "iters": 20}})
    assert "shifts the biases AdaQuant fitted" in caplog.text
    assert q.info["algorithms"]["bias_correction"]["kept"]
