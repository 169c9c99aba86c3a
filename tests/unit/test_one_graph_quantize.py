"""Quantize works on one graph that keeps the source's dynamic dimensions (issue 17 item 5).

The frozen model (``QuantizedModel.model``, what ``compile`` reads) is a view of the dynamic one
(inputs frozen, shapes inferred), not a second quantization: both hold the same integers, and
the compiled frozen model equals ONNX Runtime bit for bit, also after precision overrides.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import npuflow
from npuflow.quant import requantize
from tests.compile_check import compare_with_ort

from .quant_nets import _init, model_from

DPU = "DPUCZDX8G_ISA1_B4096"


def _dynamic_head_net() -> onnx.ModelProto:
    """x[N,3,6,W] -> conv1+relu -> conv2+relu -> GAP -> Reshape to [N, -1] computed from Shape
    (shape arithmetic on the dynamic batch, as exporters write a flatten) -> MatMul -> y."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Shape", ["g"], ["s"], name="shape"),
        helper.make_node("Slice", ["s", "zero", "one"], ["n"], name="batch"),
        helper.make_node("Concat", ["n", "minus_one"], ["shp"], name="flat_shape", axis=0),
        helper.make_node("Reshape", ["g", "shp"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "w3"], ["y"], name="fc"),
    ]
    inits = [_init("w1", rng.normal(0, 0.5, (8, 3, 3, 3))), _init("b1", rng.normal(0, 0.1, 8)),
             _init("w2", rng.normal(0, 0.3, (8, 8, 3, 3))), _init("b2", rng.normal(0, 0.1, 8)),
             _init("w3", rng.normal(0, 0.5, (8, 4))),
             onnx.numpy_helper.from_array(np.array([0], np.int64), "zero"),
             onnx.numpy_helper.from_array(np.array([1], np.int64), "one"),
             onnx.numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, "W"])
    return model_from(nodes, inits, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])


@pytest.fixture(scope="module")
def quantized():
    rng = np.random.default_rng(1)
    calib = [{"x": rng.uniform(-1, 1, (1, 3, 6, w)).astype(np.float32)} for w in (16, 24, 16, 32)]
    return npuflow.quantize(_dynamic_head_net(), calib, DPU, config={"report_samples": 0})


def _dims(model: onnx.ModelProto) -> list:
    return [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]


def test_one_graph_with_a_frozen_view(quantized):
    assert quantized.saves_dynamic and _dims(quantized.dynamic_model) == ["N", 3, 6, "W"]
    assert _dims(quantized.model) == [1, 3, 6, 16]  # the first sample's shape
    # the view holds the one quantization: the same quantize steps and integers; only the shape
    # arithmetic on the batch became a constant (a weight's dequantize step is never folded)
    nodes = [{n.name: n for n in m.graph.node} for m in (quantized.dynamic_model, quantized.model)]
    assert set(nodes[0]) - set(nodes[1]) == {"shape", "batch", "flat_shape"}
    assert all(nodes[0][k] == n for k, n in nodes[1].items())
    inits = [{t.name: t.SerializeToString() for t in m.graph.initializer}
             for m in (quantized.dynamic_model, quantized.model)]
    assert {k: v for k, v in inits[0].items() if k in inits[1]} == {k: v for k, v in inits[1].items() if k in inits[0]}
    assert set(inits[1]) - set(inits[0]) == {"shp"}
    # the quantizer's statistics were taken on the dynamic graph, at every sample's width
    assert quantized.requantizer.model.graph.input[0].type.tensor_type.shape.dim[3].dim_param


def test_frozen_view_and_overrides_compile_bit_exact(quantized):
    x = np.random.default_rng(2).uniform(-1, 1, (1, 3, 6, 16)).astype(np.float32)
    assert set(compare_with_ort(quantized.model, {"x": x}, DPU).values()) == {0}
    edited = quantized.with_precisions({"conv2": "float"})
    assert _dims(edited.dynamic_model) == ["N", 3, 6, "W"] and _dims(edited.model) == [1, 3, 6, 16]
    assert edited.requantizer is quantized.requantizer
    compiled = npuflow.compile(edited.model, DPU)
    on_npu = {n for sg in compiled.subgraphs if sg.on_accelerator for op in sg.ops for n in op.get("nodes", [])}
    assert "conv1" in on_npu and "conv2" not in on_npu  # the float layer left the accelerator
    assert set(compare_with_ort(edited.model, {"x": x}, DPU).values()) == {0}


def test_carried_values_are_the_final_model_s(quantized):
    """The Requantizer's final assignment reads the integers quantize returned (bias
    correction's, when it ran), so an empty override is the returned model itself."""
    rq = quantized.requantizer
    again = requantize.final_assignment(quantized.dynamic_model, rq.base)
    assert all(np.array_equal(again.values[n], rq.final.values[n]) for n in rq.final.values)
    assert rq.export({}).SerializeToString() == quantized.dynamic_model.SerializeToString()


def test_a_minus_one_dimension_is_dynamic():
    """paddle2onnx writes a dynamic batch as ``dim_value: -1`` (PP-OCR cls: ``[-1, 3, ?, ?]``): it
    is left open like a named dimension, not required of every sample (NPF_QUANT_CALIB_MISMATCH,
    "the model wants -1x3x?x?", was the answer to 1x3x48x192 samples)."""
    m = _dynamic_head_net()
    m.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    calib = [{"x": np.random.default_rng(k).uniform(-1, 1, (1, 3, 6, 16)).astype(np.float32)} for k in range(2)]
    q = npuflow.quantize(m, calib, "cpu-int8", config={"report_samples": 0})
    assert _dims(q.model) == [1, 3, 6, 16] and q.saves_dynamic
