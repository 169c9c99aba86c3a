"""A model exported with a dynamic batch, calibrated and compiled at batch 1, then run at batch 4
(new-user round 8): NPF_RUNTIME_INPUT_SHAPE said only "the shape was frozen when the model was
quantized and compiled", while ``npuflow compile --input-shape x 4x...`` of the same
``quantized_model.onnx`` (which keeps the batch dynamic) runs batch 4, equal to ONNX Runtime.  The
hint now names that step."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.errors import NpuflowError

rng = np.random.default_rng(0)


def _model():
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
                               helper.make_node("Relu", ["c"], ["y"], "relu")], "t",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_batch_hint_names_compile_input_shape_and_it_works(tmp_path):
    q = npuflow.quantize(_model(), [rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32) for _ in range(4)],
                         "cpu-int8", warn=False)
    x4 = rng.normal(0, 1, (4, 3, 8, 8)).astype(np.float32)
    at1 = npuflow.Session(npuflow.compile(q.model, "cpu-int8").save(tmp_path / "b1.npuf"))
    with pytest.raises(NpuflowError) as exc:
        at1.run({"x": x4})
    assert exc.value.code == "NPF_RUNTIME_INPUT_SHAPE" and "npuflow compile --input-shape" in exc.value.hint
    q.save(tmp_path / "q")  # the saved quantized_model.onnx keeps the batch dynamic (q.model holds batch 1)
    at4 = npuflow.Session(npuflow.compile(tmp_path / "q" / "quantized_model.onnx", "cpu-int8",
                                          input_shapes={"x": [4, 3, 8, 8]}).save(tmp_path / "b4.npuf"))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(tmp_path / "q" / "quantized_model.onnx"), opts).run(None, {"x": x4})[0]
    assert np.array_equal(at4.run({"x": x4})["y"], ref)
