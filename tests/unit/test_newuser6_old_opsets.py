"""Old model files (newuser round 6): opset 9 and 10 models, and an IR version 3 / opset 8 file
whose weights are also listed as graph inputs, which ONNX Runtime runs.  They were refused with
NPF_MODEL_OPSET_UNSUPPORTED ("outside the supported range [11, 28]", hint: re-export) in check,
quantize and compile; onnx's version converter upgrades them to opset 13 as it upgrades 11 and 12."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow

rng = np.random.default_rng(0)


def _old_cnn(opset: int, ir_version: int):
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.normal(0, 0.3, (3, 4)).astype(np.float32), "fc")
    bias = numpy_helper.from_array(rng.normal(0, 0.1, (3,)).astype(np.float32), "bias")  # required before opset 11
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], "relu"),
             helper.make_node("MaxPool", ["r"], ["p"], "pool", **pool),
             helper.make_node("GlobalAveragePool", ["p"], ["g"], "gap"),
             helper.make_node("Flatten", ["g"], ["f"], "flat"),
             helper.make_node("Gemm", ["f", "fc", "bias"], ["y"], "gemm", transB=1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])]
    if ir_version < 4:  # IR 3: every initializer is a graph input too
        inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in (w, fc, bias)]
    graph = helper.make_graph(nodes, "old", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [w, fc, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


@pytest.mark.parametrize("opset, ir_version", [(9, 5), (10, 5), (8, 3)])
def test_old_model_checks_quantizes_compiles_and_equals_ort(opset, ir_version, tmp_path):
    model = _old_cnn(opset, ir_version)
    ort.InferenceSession(model.SerializeToString())  # ONNX Runtime runs the file as it is
    target = "DPUCZDX8G_ISA1_B4096"
    assert npuflow.check(model, target).summary["cpu_nodes"] == 0
    calib = [rng.normal(0, 1, (1, 1, 8, 8)).astype(np.float32) for _ in range(4)]
    q = npuflow.quantize(model, calib, target, warn=False)
    path = npuflow.compile(q.model, target).save(tmp_path / "m.npuf")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(q.model.SerializeToString(), opts).run(None, {"x": calib[0]})[0]
    assert np.array_equal(npuflow.Session(path).run({"x": calib[0]})["y"], ref)
