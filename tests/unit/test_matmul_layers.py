"""MatMul weights are stored ``(Cin, Cout)``: every per-layer algorithm must read them that way.

``weight_layers`` once treated a MatMul weight as ``(Cout, Cin)`` while the QDQ side read it as
``(Cin, Cout)``; the shapes disagreed, so bias correction skipped MatMul layers and "keep in
float" (mixed precision, sensitivity) silently kept their int8 weights (PP-OCRv4 rec's neck).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.quant.algorithms.layers import layer_weight, weight_layers


def _mlp():
    rng = np.random.default_rng(0)
    w1 = (rng.normal(size=(16, 24)) * np.linspace(0.01, 1.0, 24)).astype(np.float32)  # (Cin, Cout)
    w2 = rng.normal(size=(24, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
                          initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), w1


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_matmul_weight_is_handed_out_as_cout_by_cin():
    model, w1 = _mlp()
    fc1 = next(l for l in weight_layers(model) if l.name == "fc1")
    np.testing.assert_array_equal(layer_weight(model, fc1), w1.T)


def test_matmul_kept_in_float_gets_its_float_weights_back():
    model, _ = _mlp()
    rng = np.random.default_rng(1)
    calib = [{"x": rng.normal(size=(4, 16)).astype(np.float32)} for _ in range(8)]
    q = npuflow.quantize(model, calib, target="DPUCZDX8G_ISA1_B4096", config={"report_samples": 0})
    everything = {name: "float" for name in q.requantizer.layers}
    assert {"fc1", "fc2"} <= set(everything)
    floated = q.requantizer.export(everything)
    assert not any("Quantize" in n.op_type for n in floated.graph.node)  # no integer layer: no quantize step
    x = calib[0]["x"]
    np.testing.assert_allclose(_run(floated, x), _run(model, x), rtol=1e-5, atol=1e-5)
