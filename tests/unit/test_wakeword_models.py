"""openWakeWord's wake-word classifiers (``alexa``, ``hey_jarvis``, ``hey_marvin``, ...): a small
MLP on 16x96 speech embeddings ending in ``Sigmoid`` (the wake-word probability).

Calibrated on speech without the wake word, as a user calibrates (the probability stays below
5e-4), the sigmoid's output range was the calibrated one: on bernoulli2 and cpu-int8 (sigmoid
quantized) every later detection clipped to 4.4e-4, and ``hey_jarvis``'s ``If(p >= 0.5)`` never
took its verifier branch.  A sigmoid's output now takes its own interval [0, 1], and its input's
range reaches past zero on both sides."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow import numerics
from tests.compile_check import compare_layerwise_with_ort
from tests.unit.quant_nets import run


def _classifier() -> onnx.ModelProto:
    """Flatten -> Gemm -> Sigmoid: the head of openWakeWord's classifiers (logit ``w.x - 8``)."""
    w = numpy_helper.from_array(_direction().reshape(1, 48) * np.float32(2.0), "w")
    b = numpy_helper.from_array(np.array([-8.0], np.float32), "b")  # silent on ordinary input
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w", "b"], ["logit"], name="fc", transB=1),
             helper.make_node("Sigmoid", ["logit"], ["p"], name="sigmoid")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 12])],
                              [helper.make_tensor_value_info("p", onnx.TensorProto.FLOAT, [1, 1])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _direction() -> np.ndarray:
    d = np.random.default_rng(0).normal(0, 1, 48).astype(np.float32)
    return d / np.linalg.norm(d)


def _calibration() -> list[np.ndarray]:
    """Inputs orthogonal to the weights (logit -8), and one strongly negative (logit -20), so
    the input and logit ranges cover the firing input below: only the sigmoid's range is at stake."""
    rng, d = np.random.default_rng(1), _direction()
    out = []
    for _ in range(7):
        x = rng.normal(0, 0.5, 48).astype(np.float32)
        out.append((x - (x @ d) * d).reshape(1, 4, 12))
    out.append((-6.0 * d).reshape(1, 4, 12))
    return out


@pytest.mark.parametrize("target", ["bernoulli2", "cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def test_a_sigmoid_calibrated_silent_still_reports_a_detection(target):
    model = _classifier()
    calib = _calibration()
    assert max(run(model, {"x": x})[0].item() for x in calib) < 0.01  # calibration never fires
    q = npuflow.quantize(model, calib, target=target)
    if target != "DPUCZDX8G_ISA1_B4096":  # p quantized: ~3e-4 in float reads 0, cosine 0, and that is no loss
        assert q.report.calibration_outputs["p"] < 0.5 and q.report.within_one_step == ["p"]
        assert q.problem is None  # no NPF_QUANT_LOW_SIMILARITY for an output as close as its grid allows
    hot = (5.5 * _direction()).reshape(1, 4, 12)  # logit +3
    want = run(model, {"x": hot})[0].item()
    assert want > 0.9
    compiled = npuflow.compile(q.model, target)
    got = npuflow.Session(compiled).run({"x": hot})["p"].item()
    # was 1e-2 or less on bernoulli2; on cpu-int8 (asymmetric) 0.5, the logit's range being the
    # calibrated [-20, 0] before it reached past zero (operators.SATURATION_INPUT)
    assert abs(got - want) < 0.05, (got, want)
    if any(sg.on_accelerator for sg in compiled.subgraphs):
        diffs = compare_layerwise_with_ort(q.model, {"x": hot}, target)
        assert max(diffs.values()) <= 1, diffs


def _sliced_between_cpu_ops() -> onnx.ModelProto:
    """hey_mycroft's pattern: a CPU op's output split by Slice, joined by Concat, read by a CPU op
    (there LSTM, here Atan: a Sin there would keep its input cone float, operators.PERIODIC_OPS),
    then DPU work (a Conv)."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w")
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              [("s0", [0]), ("e0", [2]), ("s1", [2]), ("e1", [4]), ("ax", [1])]]
    nodes = [helper.make_node("Sin", ["x"], ["s"], name="sin1"),
             helper.make_node("Slice", ["s", "s0", "e0", "ax"], ["a"], name="slice_a"),
             helper.make_node("Slice", ["s", "s1", "e1", "ax"], ["b"], name="slice_b"),
             helper.make_node("Concat", ["b", "a"], ["c"], name="concat", axis=1),
             helper.make_node("Atan", ["c"], ["d"], name="atan"),
             helper.make_node("Conv", ["d", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
                              [w, *consts])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "bernoulli2"])
def test_a_concat_of_slices_between_cpu_ops_stays_on_the_cpu_in_check_as_in_compile(target):
    model = _sliced_between_cpu_ops()
    report = npuflow.check(model, target)
    concat = report.node("concat")
    assert concat.device == "CPU" and "only moves data that comes from the CPU" in concat.reasons[0]
    rng = np.random.default_rng(2)
    q = npuflow.quantize(model, [rng.normal(0, 1, (1, 4, 8, 8)).astype(np.float32) for _ in range(4)], target=target)
    compiled = npuflow.compile(q.model, target)
    on_accel = {op["name"] for sg in compiled.subgraphs if sg.on_accelerator for op in sg.ops}
    assert "concat" not in on_accel and "conv" in on_accel


def _sigmoid_and_double() -> onnx.ModelProto:
    """``x -> Sigmoid`` and ``x -> Mul 2``: one tensor read by a sigmoid, one (``m``) not."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [helper.make_node("Sigmoid", ["x"], ["p"], name="sigmoid"),
             helper.make_node("Mul", ["x", "two"], ["m"], name="double")]
    vi = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 8]) for n in ("x", "p", "m")]
    return helper.make_model(helper.make_graph(nodes, "g", vi[:1], vi[1:], [two]),
                             opset_imports=[helper.make_opsetid("", 13)])


def _range(q) -> tuple[float, float]:
    lo, hi = numerics.qrange(q.bits, q.signed, q.narrow_range)
    return float(q.dequantize(np.array(lo))), float(q.dequantize(np.array(hi)))


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_a_sigmoid_input_range_reaches_past_zero_on_both_sides(sign):
    """Calibrated on one sign only, a sigmoid's uint8 input still reaches the other sign as far
    as an 8-bit probability can tell apart (ln(509): within half a step of 0 or 1)."""
    rng = np.random.default_rng(3)
    calib = [(sign * rng.uniform(3.0, 20.0, (1, 8))).astype(np.float32) for _ in range(8)]
    q = npuflow.quantize(_sigmoid_and_double(), calib, target="cpu-int8")
    x = q.quant_params["x"]
    lo, hi = _range(x)
    reach, step = np.log(2.0 ** 9 - 3), float(x.scale)
    widest = max(float(np.abs(v).max()) for v in calib)
    if sign < 0:
        assert hi >= reach - step and lo <= -widest + step, (lo, hi)
    else:
        assert lo <= -reach + step and hi >= widest - step, (lo, hi)
    p = run(_sigmoid_and_double(), {"x": np.full((1, 8), -sign * 4.0, np.float32)})[0]
    got = npuflow.Session(npuflow.compile(q.model, "cpu-int8")).run({"x": np.full((1, 8), -sign * 4.0, np.float32)})["p"]
    np.testing.assert_allclose(got, p, atol=0.02)  # the side calibration never saw
    m_lo, m_hi = _range(q.quant_params["m"])  # feeds no sigmoid: the calibrated range (0 on its other side)
    assert (m_hi if sign < 0 else -m_lo) <= float(q.quant_params["m"].scale), (m_lo, m_hi)


def _with_verifier(else_op: str) -> onnx.ModelProto:
    """hey_jarvis's tail: ``If(p >= 0.5)`` runs a verifier (here ``p * 0.9``) or returns ``p``
    (``else_op`` Identity), or something computed from it (``else_op`` Neg)."""
    model = _classifier()
    g = model.graph
    g.output.pop()
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    nine = numpy_helper.from_array(np.array(0.9, np.float32), "nine")
    out = helper.make_tensor_value_info("v", onnx.TensorProto.FLOAT, [1, 1])
    then_g = helper.make_graph([helper.make_node("Mul", ["p", "nine"], ["v1"])], "then", [],
                               [helper.make_tensor_value_info("v1", onnx.TensorProto.FLOAT, [1, 1])])
    else_g = helper.make_graph([helper.make_node(else_op, ["p"], ["v0"])], "else", [],
                               [helper.make_tensor_value_info("v0", onnx.TensorProto.FLOAT, [1, 1])])
    g.initializer.extend([half, nine])
    g.node.extend([helper.make_node("ReduceMax", ["p"], ["pm"], keepdims=0, name="pmax"),
                   helper.make_node("GreaterOrEqual", ["pm", "half"], ["fire"], name="fire"),
                   helper.make_node("If", ["fire"], ["v"], name="verify", then_branch=then_g, else_branch=else_g)])
    g.output.append(out)
    return model


@pytest.mark.parametrize("target", ["bernoulli2", "cpu-int8"])
def test_a_silent_probability_returned_through_if_passes_the_accuracy_check(target):
    q = npuflow.quantize(_with_verifier("Identity"), _calibration(), target=target)
    assert q.report.calibration_outputs["v"] < 0.5  # ~3e-4 in float, 0 quantized
    assert q.report.within_one_step == ["v"] and q.problem is None
    # a branch that computes from p (Neg) puts the output on no grid: plain cosine, warned
    q = npuflow.quantize(_with_verifier("Neg"), _calibration(), target=target)
    assert q.report.within_one_step == [] and q.problem is not None and q.problem.code == "NPF_QUANT_LOW_SIMILARITY"
