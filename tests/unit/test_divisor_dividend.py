"""A ratio of two sums of one exponential (newuser_flows25, Open 1: RWKV's WKV ``sum(w exp(k) v) / sum(w exp(k))``).

Before: ``keep_divisors_float`` kept the divisor's chain float (the decayed sum and the ``Exp``: its
calibrated range 3e-5 .. 1e8 rounds to 0 on an 8-bit grid) but quantized the dividend ``sum(w exp(k) v)``,
which spans the same range: its small terms became 0 and the ratio lost them (Session vs the float model:
cosine 0.34, -0.12, 0.18, 0.13 on four held-out inputs on cpu-int8).  Now the nodes between the float divisor
chain and the dividend stay float too, with the warning naming them (cosine >= 0.996)."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import npuflow

T, C = 16, 8


def _wkv_model() -> onnx.ModelProto:
    """x (1, T, C) -> k, v; e = Exp(k); num = D @ (e * v), den = D @ e (D: a lower-triangular decay); y = (num / den) @ wo."""
    rng = np.random.default_rng(0)
    decay = np.tril(np.exp(-0.3 * (np.arange(T)[:, None] - np.arange(T)[None, :]))).astype(np.float32)
    inits = [numpy_helper.from_array((rng.standard_normal((C, C)) * 2.0).astype(np.float32), "wk"),
             numpy_helper.from_array((rng.standard_normal((C, C)) * 0.5).astype(np.float32), "wv"),
             numpy_helper.from_array(decay, "decay"),
             numpy_helper.from_array((rng.standard_normal((C, 4)) * 0.5).astype(np.float32), "wo")]
    nodes = [helper.make_node("MatMul", ["x", "wk"], ["k"], name="key"),
             helper.make_node("MatMul", ["x", "wv"], ["v"], name="value"),
             helper.make_node("Exp", ["k"], ["ek"], name="exp"),
             helper.make_node("Mul", ["ek", "v"], ["ekv"], name="ekv"),
             helper.make_node("MatMul", ["decay", "ekv"], ["num"], name="num_sum"),
             helper.make_node("MatMul", ["decay", "ek"], ["den"], name="den_sum"),
             helper.make_node("Div", ["num", "den"], ["wkv"], name="ratio"),
             helper.make_node("MatMul", ["wkv", "wo"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "wkv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, C])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_the_dividend_of_a_float_exponential_divisor_stays_float(caplog):
    model = _wkv_model()
    rng = np.random.default_rng(0)
    frames = [{"x": rng.standard_normal((1, T, C)).astype(np.float32)} for _ in range(12)]
    with caplog.at_level(logging.WARNING, logger="npuflow.quant.divisors"):
        q = npuflow.quantize(model, frames[:8], target="cpu-int8", warn=False)
    kept = set(q.config.keep_float)
    assert {"exp", "den_sum", "ekv", "num_sum"} <= kept, kept
    assert not {"key", "value", "out"} & kept, kept  # only the ratio's two cones
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "ratio divides by den" in warned and "ekv" in warned and "num_sum" in warned
    session = npuflow.Session(npuflow.compile(q.model, "cpu-int8"))
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for x in frames[8:]:
        a, b = ref.run(None, x)[0].ravel().astype(np.float64), session.run(x)["y"].ravel().astype(np.float64)
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99
