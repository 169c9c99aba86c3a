"""ONNX Runtime sessions on quantized models see the model's arithmetic on every CPU
(``npuflow/ort_kernels.py``): where MLAS' uint8 x int8 kernels saturate (x86-64 without VNNI),
int8 weights go in as uint8 ``w + 128`` with zero point 128 -- the same real values, on its exact
uint8 x uint8 kernels."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from npuflow import ort_kernels
from tests.unit.test_foreign_legalize import _qlinear_conv
from tests.unit.test_runtime_qlinear import _uint8_block


def _weights(model) -> dict[str, int]:
    return {t.name: t.data_type for t in model.graph.initializer}


def _run_plain(model, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # DQ in float: the reference
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _qoperator():  # its own generator: the module's draws stay the other tests'
    return _qlinear_conv(np.random.default_rng(8))


@pytest.mark.parametrize("build", [lambda: _uint8_block().model(), _qoperator])  # QDQ, QOperator
def test_uint8_form_keeps_the_values_and_computes_exactly(monkeypatch, build):
    monkeypatch.setattr(ort_kernels, "weight_form", lambda: "u8")
    model = build()
    form = ort_kernels.exact_weights(model)
    int8 = [n for n, t in _weights(model).items() if t == TensorProto.INT8]
    assert int8 and not [n for n, t in _weights(form).items() if t == TensorProto.INT8 and n in
                         {i for node in form.graph.node for i in node.input}]
    x = np.random.default_rng(3).normal(0, 2, [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim])
    x = x.astype(np.float32)
    if build is _qoperator:  # the QOperator node reads the uint8 weights and zero point 128
        node = next(n for n in form.graph.node if n.op_type == "QLinearConv")
        inits = {t.name: numpy_helper.to_array(t) for t in form.graph.initializer}
        assert inits[node.input[3]].dtype == np.uint8 and np.all(inits[node.input[5]] == 128)
    else:  # unfused (float DequantizeLinear) the two forms are the same model
        assert np.array_equal(_run_plain(model, x), _run_plain(form, x))


def test_int8_form_leaves_the_model_alone(monkeypatch):
    monkeypatch.setattr(ort_kernels, "weight_form", lambda: "s8")
    model = _uint8_block().model()
    assert ort_kernels.exact_weights(model) is model
