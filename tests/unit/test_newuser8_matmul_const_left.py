"""A MatMul whose *first* operand is the constant (``W @ x``, a torch ``self.w @ x``): on cpu-int8,
which lowers activation x activation MatMuls, compile lowered it as one with the weight's integer
initializer as a run-time input, and the ``.npuf`` it wrote was refused by its own loader
(NPF_COMPILE_CORRUPT "'w_quantized' is made by no model input or earlier subgraph"; new-user round
8).  Only ``x @ W`` is lowered; on a target with a transpose ``W @ x`` runs as ``(x^T W^T)^T``
(``passes/const_left_matmul.py``, new-user round 24), elsewhere (bernoulli2) on the CPU with a reason in check; the ``.npuf`` equals ONNX Runtime on the quantized model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow

rng = np.random.default_rng(0)


def _model():
    w = numpy_helper.from_array(rng.normal(0, 0.3, (6, 10)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (6, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["w", "x"], ["m"], "wx"),
             helper.make_node("Relu", ["m"], ["r"], "relu"),
             helper.make_node("Transpose", ["r"], ["rt"], "tr", perm=[1, 0]),
             helper.make_node("MatMul", ["rt", "w2"], ["y"], "fc")]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [10, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7, 3])], [w, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096", "bernoulli2"])
def test_constant_first_matmul_compiles_loads_and_runs(target, tmp_path):
    model = _model()
    calib = [rng.normal(0, 1, (10, 7)).astype(np.float32) for _ in range(4)]
    q = npuflow.quantize(model, calib, target, warn=False)
    compiled = npuflow.compile(q.model, target)
    path = compiled.save(tmp_path / "m.npuf")
    x = rng.normal(0, 1, (10, 7)).astype(np.float32)
    got = npuflow.Session(path).run({"x": x})["y"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(q.model.SerializeToString(), opts).run(None, {"x": x})[0]
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_check_places_constant_first_matmul_as_compile_does(quantized, target):
    model = _model()
    if quantized:
        calib = [rng.normal(0, 1, (10, 7)).astype(np.float32) for _ in range(4)]
        model = npuflow.quantize(model, calib, target, warn=False).model
    report = npuflow.check(model, target)
    node = report.node("wx")
    if target == "bernoulli2":  # no MatMul and no transpose on the BPU: W @ x stays on the CPU, with a reason
        assert report.device_name(node) == "CPU" and node.reasons
    else:
        assert report.device_name(node) != "CPU", node.reasons
