"""A divisor ``s + eps`` that an 8-bit grid rounds to 0 (newuser_flows26: EfficientViT's ReLU linear
attention divides by ``q @ (k^T 1) + 1e-6``).  Before: the quantize step after the ``Add`` made every
divisor below half a step exactly 0 and the CPU ``Div`` wrote infinities and NaN (1344 values on 24
held-out digits on cpu-int8, logits cosine min 0.834, the report's cosine 0.000000 for the ``Div``
and no warning); now the ``Add`` stays float, with a warning naming the divisor."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.quant.divisors import rounds_to_zero


def _ratio_model() -> onnx.ModelProto:
    """x (1, 4, 8, 8) -> q = Relu(Conv(x)); num = Conv(q), den = Conv(q, w >= 0) + 1e-6 -> num / den -> Conv -> y:
    the linear attention's ratio, 0 / eps = 0 where ``q`` is all 0, the divisor ``eps`` there."""
    rng = np.random.default_rng(0)
    w = lambda name, o, i, s=1.0: numpy_helper.from_array((rng.standard_normal((o, i, 1, 1)) * s).astype(np.float32), name)
    den = w("w_den", 1, 4)
    den = numpy_helper.from_array(np.abs(numpy_helper.to_array(den)), "w_den")
    inits = [w("w_q", 4, 4), w("w_num", 4, 4), den, w("w_out", 2, 4), numpy_helper.from_array(np.array(1e-6, np.float32), "eps")]
    nodes = [helper.make_node("Conv", ["x", "w_q"], ["q0"], name="q"),
             helper.make_node("Relu", ["q0"], ["q1"], name="q_relu"),
             helper.make_node("Conv", ["q1", "w_num"], ["num"], name="num"),
             helper.make_node("Conv", ["q1", "w_den"], ["den"], name="den"),
             helper.make_node("Add", ["den", "eps"], ["den_eps"], name="add_eps"),
             helper.make_node("Div", ["num", "den_eps"], ["ratio"], name="ratio"),
             helper.make_node("Conv", ["ratio", "w_out"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "ratio", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _samples(n: int = 8) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": (rng.standard_normal((1, 4, 8, 8)) ).astype(np.float32)} for _ in range(n)]


def test_rounds_to_zero_only_for_one_signed_ranges_below_half_a_step():
    assert rounds_to_zero(1e-6, 136.0)  # the eps-guarded divisor
    assert rounds_to_zero(-50.0, -0.01)  # negative divisors alike
    assert not rounds_to_zero(0.0, 136.0)  # a range holding 0: the float model divides by 0 too
    assert not rounds_to_zero(-1.0, 1.0)
    assert not rounds_to_zero(0.5, 3.0)  # every value keeps a non-zero code


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def test_eps_guarded_divisor_is_computed_in_float(target, caplog):
    model, samples = _ratio_model(), _samples()
    q = npuflow.quantize(model, samples, target, warn=False)
    div = next(n for n in q.model.graph.node if n.op_type == "Div")
    writer = next(n for n in q.model.graph.node if div.input[1] in n.output)
    assert writer.op_type != "DequantizeLinear"  # the divisor is float (the optimizer folded eps into the Conv's bias)
    assert "rounds to 0" in caplog.text and "den_eps" in caplog.text
    sess = ort.InferenceSession(q.model.SerializeToString(), providers=["CPUExecutionProvider"])
    fl = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for s in samples:
        got, ref = sess.run(None, s)[0], fl.run(None, s)[0]
        assert np.all(np.isfinite(got))
        cos = float(got.ravel() @ ref.ravel() / (np.linalg.norm(got) * np.linalg.norm(ref)))
        assert cos > 0.9, cos
    # the compiled model reads the float divisor too
    got = npuflow.Session(npuflow.compile(q.model, target)).run(samples[0])["y"]
    assert np.all(np.isfinite(got))
