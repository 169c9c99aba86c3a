"""A float16 model (onnxconverter-common's ``convert_float_to_float16``) is quantized (newuser
round 4).  Before, ``check`` placed its Conv on the accelerator while the quantizer, which plans
float32 tensors only, quantized nothing ("no node of the model runs on the accelerator") and
``compile`` refused the result (NPF_COMPILE_NOT_QUANTIZED).  Now it computes in float32 inside,
float16 input and output kept at the edges."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.graph import quantize_mode

rng = np.random.default_rng(0)


def _fp16_conv() -> onnx.ModelProto:
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float16), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float16), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], "relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4, 6, 6])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def test_float16_model_is_quantized_compiled_and_keeps_its_interface(target):
    model = _fp16_conv()
    calib = [rng.normal(0, 1, (1, 2, 6, 6)).astype(np.float16) for _ in range(8)]
    q = npuflow.quantize(model, calib, target)
    assert any(quantize_mode(n) is not None for n in q.model.graph.node)
    assert q.model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert q.model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    x = calib[0]
    got = npuflow.Session(npuflow.compile(q.model, target)).run({"x": x})["y"]
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float32)
    b = numpy_helper.to_array(model.graph.initializer[1]).astype(np.float32)
    xp = np.pad(x.astype(np.float32), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.maximum(np.einsum("nchwij,ocij->nohw", np.lib.stride_tricks.sliding_window_view(
        xp, (3, 3), axis=(2, 3)), w) + b[None, :, None, None], 0)
    assert got.dtype == np.float16 and got.shape == ref.shape
    cos = float(got.astype(np.float64).ravel() @ ref.ravel() / np.linalg.norm(got.astype(np.float64)) / np.linalg.norm(ref))
    assert cos > 0.99, cos


def test_float32_model_casting_to_float16_is_left_as_it_is():
    from npuflow.quant.pipeline import _float32_compute

    nodes = [helper.make_node("Cast", ["x"], ["h"], "to16", to=TensorProto.FLOAT16),
             helper.make_node("Cast", ["h"], ["y"], "to32", to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph)
    assert _float32_compute(model) is model
