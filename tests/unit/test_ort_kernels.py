"""ONNX Runtime sessions on quantized models see the model's arithmetic on every CPU
(``npuflow/ort_kernels.py``): where MLAS' uint8 x int8 kernels saturate (x86-64 without VNNI),
int8 weights go in as uint8 ``w + 128`` with zero point 128 -- the same real values, on its exact
uint8 x uint8 kernels."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

import npuflow
from npuflow import ort_kernels
from tests.qdq_builder import Builder
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
    monkeypatch.setattr(ort_kernels, "pairing_confirmed", lambda: False)  # every weight moves (test_ort_kernels_pairs)
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


def test_int8_form_reads_no_graph_readers(monkeypatch):
    """Where the CPU's int8 kernels are exact, no reader map of the graph is built (issue 19: every
    session's creation of a joined graph paid its small objects in the load's peak memory)."""
    def readers(graph):
        raise AssertionError("the graph's readers were built")

    monkeypatch.setattr(ort_kernels, "weight_form", lambda: "s8")
    monkeypatch.setattr(ort_kernels, "_readers", readers)
    model = _uint8_block().model()
    assert ort_kernels.exact_weights(model) is model


# --- int8 constants that are not weights -----------------------------------------------------------

#: YOLOv8n cpu-int8, ``/model.22/Add_10``: int8 anchors (scale, zero point 0) plus uint8 box offsets
#: (scale, zero point 0) into uint8 (scale, zero point 0); anchor 18 plus offset 146 is 60.5000005
#: output steps, just above a tie.
_ANCHOR_ADD = (0.31102362, 0.029210764, 0.16302805)


def _constant_add(anchor: int = 18, code: int = 146):
    """``DQ(int8 constant) + DQ(uint8 x) -> Q(uint8)`` and a convolution (an int8 weight), with the
    scales of YOLOv8n's box-decoding add."""
    sa, sx, sy = _ANCHOR_ADD
    b = Builder("half_even")
    x = b.input("x", [1, 1, 1, 4], sx, 0, "uint8")
    b.const("anchor_quantized", np.array([anchor, 2, 64, 127], np.int8).reshape(1, 1, 1, 4))
    b.const("anchor_scale", np.float32(sa))
    b.const("anchor_zero_point", np.int8(0))
    anchors = b.node("DequantizeLinear", ["anchor_quantized", "anchor_scale", "anchor_zero_point"], "anchor_dq")
    b.output(b.quantize(b.node("Add", [anchors, b.dq(x)], "add"), sy, 0, "uint8"), "y")
    w = b.weight("w", np.full((1, 1, 1, 1), 0.5, np.float32), 2.0 ** -7)
    b.output(b.quantize(b.node("Conv", [b.dq(x), w], "conv"), 0.02, 0, "uint8"), "z")
    feeds = {"x": (np.array([code, 0, 100, 255], np.float32) * np.float32(sx)).reshape(1, 1, 1, 4)}
    return b.model(), feeds


def test_an_int8_constant_that_an_add_reads_keeps_its_type(monkeypatch):
    monkeypatch.setattr(ort_kernels, "weight_form", lambda: "u8")
    monkeypatch.setattr(ort_kernels, "pairing_confirmed", lambda: False)  # the weight moves, whatever its pairs
    model, _ = _constant_add()
    types = _weights(ort_kernels.exact_weights(model))
    used = {i for node in ort_kernels.exact_weights(model).graph.node for i in node.input}
    assert types["anchor_quantized"] == TensorProto.INT8 and "anchor_quantized" in used
    assert "w_quantized" not in used and types["w_quantized__u8"] == TensorProto.UINT8  # the weight still moves


def test_compiled_constant_add_equals_onnxruntime_on_the_model(monkeypatch):
    """The compiler computes a group that is not all uint8 as ONNX Runtime runs it on the model
    itself: a float ``Add`` between the Q/DQ steps (61).  Given the anchors as uint8 with zero
    point 128 (measured before the fix), ONNX Runtime fused a ``QLinearAdd``, which rounds this
    sum down (60): one output step on YOLOv8n's boxes."""
    monkeypatch.setattr(ort_kernels, "weight_form", lambda: "u8")
    model, feeds = _constant_add()
    out = npuflow.Session(npuflow.compile(model, "cpu-int8")).run(feeds)
    ref = ort.InferenceSession(ort_kernels.exact_weights(model).SerializeToString(), _quiet(),
                               providers=["CPUExecutionProvider"]).run(["y", "z"], feeds)
    assert np.array_equal(out["y"], ref[0]) and np.array_equal(out["z"], ref[1])
    step = np.float32(_ANCHOR_ADD[2])
    assert out["y"].reshape(-1)[0] == np.float32(61) * step  # the float sum, rounded: 60.5000005 -> 61


def _quiet() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return opts


def test_a_weight_read_through_a_transpose_still_moves(monkeypatch):
    # ONNX Runtime moves the DequantizeLinear across the Transpose onto the MatMul's weight input
    monkeypatch.setattr(ort_kernels, "weight_form", lambda: "u8")
    b = Builder("half_even")
    x = b.input("x", [1, 4, 8], 0.05, 128, "uint8")
    w = b.weight("w", np.random.default_rng(0).normal(0, 0.3, (6, 8)).astype(np.float32), 0.01)
    wt = b.node("Transpose", [w], "wt", perm=[1, 0])
    b.output(b.quantize(b.node("MatMul", [b.dq(x), wt], "mm"), 0.1, 128, "uint8"), "y")
    form = ort_kernels.exact_weights(b.model())
    used = {i for node in form.graph.node for i in node.input}
    assert "w_quantized" not in used and "w_quantized__u8" in used
