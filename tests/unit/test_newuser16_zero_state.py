"""A recurrence unrolled from a zero state (new-user round 16: a Mamba-style selective scan,
``h = exp(dt * A) * h + dt * B * u`` from ``h = torch.zeros(...)``): its first step exported as a
``Mul`` by an all-zero constant added to the real term.  quantize warned
``NPF_QUANT_CALIB_ALL_ZERO`` on that product and told the user to calibrate on samples that
exercise the whole model, which no sample can.  The float passes now drop the zero term."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.passes.optimize import optimize_float


def _scan(steps: int = 3) -> onnx.ModelProto:
    """x [1, steps, 8] -> h after ``steps`` updates ``h = exp(-x_t) * h + x_t * b`` from h = 0."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.zeros((1, 8), np.float32), "h0"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, (1, 8)).astype(np.float32), "b")]
    nodes, h = [], "h0"
    for t in range(steps):
        inits.append(numpy_helper.from_array(np.array([t], np.int64), f"i{t}"))
        nodes += [helper.make_node("Gather", ["x", f"i{t}"], [f"x{t}"], axis=1),
                  helper.make_node("Reshape", [f"x{t}", "shape"], [f"u{t}"]),
                  helper.make_node("Neg", [f"u{t}"], [f"n{t}"]),
                  helper.make_node("Exp", [f"n{t}"], [f"d{t}"]),
                  helper.make_node("Mul", [f"d{t}", h], [f"k{t}"]),
                  helper.make_node("Mul", [f"u{t}", "b"], [f"v{t}"]),
                  helper.make_node("Add", [f"k{t}", f"v{t}"], [f"h{t + 1}"])]
        h = f"h{t + 1}"
    inits.append(numpy_helper.from_array(np.array([1, 8], np.int64), "shape"))
    nodes.append(helper.make_node("Relu", [h], ["y"]))
    graph = helper.make_graph(nodes, "scan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, steps, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_zero_state_term_is_dropped_and_outputs_stay_equal():
    model = _scan()
    optimized = optimize_float(npuflow.load(model))
    muls = [n for n in optimized.graph.node if n.op_type == "Mul" and "h0" in n.input]
    assert not muls and "h0" not in {t.name for t in optimized.graph.initializer}
    assert len(optimized.graph.node) < len(npuflow.load(model).graph.node)
    x = {"x": np.random.default_rng(1).uniform(-1, 1, (1, 3, 8)).astype(np.float32)}
    want = ort.InferenceSession(model.SerializeToString()).run(None, x)[0]
    got = ort.InferenceSession(optimized.SerializeToString()).run(None, x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_quantize_no_longer_warns_about_a_zero_it_cannot_calibrate_away():
    rng = np.random.default_rng(2)
    calib = [{"x": rng.uniform(-1, 1, (1, 3, 8)).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(_scan(), calib, "cpu-int8", warn=False)
    assert "NPF_QUANT_CALIB_ALL_ZERO" not in [w.code for w in q.calibration_warnings]
    assert min(q.report.calibration_outputs.values()) > 0.99


def test_a_zero_product_that_is_a_model_output_or_broadcast_stays():
    """Only an Add whose other operand already has the sum's shape is replaced (no broadcast lost)."""
    zeros = numpy_helper.from_array(np.zeros((1, 8), np.float32), "z")
    nodes = [helper.make_node("Mul", ["x", "z"], ["p"]), helper.make_node("Add", ["p", "s"], ["y"])]
    graph = helper.make_graph(nodes, "bcast", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
                                               helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [zeros])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert [n.op_type for n in optimize_float(npuflow.load(model)).graph.node] == ["Mul", "Add"]
