"""An LSTM step unrolled by hand from a zero state whose shape follows a dynamic batch (new-user
round 17: captcha-whisperer's CRNN, ``torch.zeros(seq.shape[1], hidden)``): the state is
``ConstantOfShape(Shape(x)...)``, which constant folding cannot fold while the batch is open, and
the first step's ``h @ W_hh`` a bias-free ``Gemm`` of it.  quantize warned
``NPF_QUANT_CALIB_ALL_ZERO`` on six such tensors on every target and told the user to calibrate
on samples that exercise the whole model, which no sample can."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.passes.optimize import optimize_float
from npuflow.passes.zero_terms import drop_zero_terms


def _lstm_step() -> onnx.ModelProto:
    """x [batch, 8] -> one LSTM-like step from h0 = c0 = zeros [batch, 16]:
    a = x W1 + b1 + h0 W2, c1 = sigmoid(a) * c0 + sigmoid(a) * tanh(a), y = tanh(c1)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, (16,)).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (16, 16)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([0], np.int64), "zero_i"),
             numpy_helper.from_array(np.array([16], np.int64), "hidden")]
    nodes = [helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Gather", ["xs", "zero_i"], ["batch"], axis=0),
             helper.make_node("Concat", ["batch", "hidden"], ["state_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["state_shape"], ["h0"]),
             helper.make_node("ConstantOfShape", ["state_shape"], ["c0"],
                              value=numpy_helper.from_array(np.zeros(1, np.float32))),
             helper.make_node("Gemm", ["x", "w1", "b1"], ["ax"]),
             helper.make_node("Gemm", ["h0", "w2"], ["ah"]),
             helper.make_node("Add", ["ax", "ah"], ["a"]),
             helper.make_node("Sigmoid", ["a"], ["gate"]),
             helper.make_node("Tanh", ["a"], ["cand"]),
             helper.make_node("Mul", ["gate", "c0"], ["keep"]),
             helper.make_node("Mul", ["gate", "cand"], ["new"]),
             helper.make_node("Add", ["keep", "new"], ["c1"]),
             helper.make_node("Tanh", ["c1"], ["y"])]
    graph = helper.make_graph(nodes, "step", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_dynamic_zero_state_terms_are_dropped_and_outputs_stay_equal():
    model = _lstm_step()
    dropped = drop_zero_terms(model)
    ops = [n.op_type for n in dropped.graph.node]
    assert "ConstantOfShape" not in ops and ops.count("Gemm") == 1 and ops.count("Mul") == 1
    for batch in (1, 3):
        feed = {"x": np.random.default_rng(batch).uniform(-1, 1, (batch, 8)).astype(np.float32)}
        want = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
        got = ort.InferenceSession(dropped.SerializeToString()).run(None, feed)[0]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert len(optimize_float(model).graph.node) < len(model.graph.node)


def test_a_biased_zero_product_is_kept():
    model = _lstm_step()
    gemm = next(n for n in model.graph.node if n.output[0] == "ah")
    gemm.input.append("b1")                               # h0 W2 + b1 is not zero
    ops = [n.op_type for n in drop_zero_terms(model).graph.node]
    assert ops.count("Gemm") == 2 and ops.count("ConstantOfShape") == 1


def test_quantize_no_longer_warns_about_the_zero_state():
    rng = np.random.default_rng(2)
    calib = [{"x": rng.uniform(-1, 1, (1, 8)).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(_lstm_step(), calib, "cpu-int8", warn=False)
    assert "NPF_QUANT_CALIB_ALL_ZERO" not in [w.code for w in q.calibration_warnings]
    assert min(q.report.calibration_outputs.values()) > 0.99


def _broadcast_by_zeros() -> onnx.ModelProto:
    """x [batch, 8] -> Relu, Unsqueeze to [batch, 1, 8], + zeros [batch, 4, 8] (a broadcast, so the
    Add stays: atspm-detector's function head repeats a tensor this way), * 2 -> y [batch, 4, 8]."""
    inits = [numpy_helper.from_array(np.array([0], np.int64), "zero_i"),
             numpy_helper.from_array(np.array([1], np.int64), "one_i"),
             numpy_helper.from_array(np.array([4, 8], np.int64), "tail"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    nodes = [helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Gather", ["xs", "zero_i"], ["batch"], axis=0),
             helper.make_node("Concat", ["batch", "tail"], ["zs"], axis=0),
             helper.make_node("ConstantOfShape", ["zs"], ["zeros"],
                              value=numpy_helper.from_array(np.zeros(1, np.float32))),
             helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "one_i"], ["u"]),
             helper.make_node("Add", ["u", "zeros"], ["rep"]),
             helper.make_node("Mul", ["rep", "two"], ["y"])]
    graph = helper.make_graph(nodes, "rep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_broadcast_by_zeros_is_not_reported_as_uncalibrated():
    rng = np.random.default_rng(3)
    calib = [{"x": rng.uniform(-1, 1, (1, 8)).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(_broadcast_by_zeros(), calib, "cpu-int8", warn=False)
    assert "Add" in [n.op_type for n in q.model.graph.node]
    assert "NPF_QUANT_CALIB_ALL_ZERO" not in [w.code for w in q.calibration_warnings]
    assert min(q.report.calibration_outputs.values()) > 0.99
