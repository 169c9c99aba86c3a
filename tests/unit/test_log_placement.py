"""Log of a wide-range input (a power spectrum spanning decades, openWakeWord's mel front end)
under 8-bit quantization: every value below half a step of the calibrated maximum reads 0, and
Log(0) is -inf.  npuflow does not yet keep a Log's input cone in float by itself (see
benchmarks/results/newuser_flows2.md, "Log on a wide-range input"); these tests pin what a user
sees today: the accuracy check flags the loss on cpu-int8, and ``keep_float`` on the ops that
feed Log (the documented workaround) makes the quantized model compute the float one's logs."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow

#: the ops between the graph input and Log (a selecting MatMul, then the floor clamp before Log)
CONE = ["mel", "floor"]


def _model() -> onnx.ModelProto:
    w = np.zeros((16, 8), np.float32)
    w[np.arange(0, 16, 2), np.arange(8)] = 1.0  # each output reads one input: the range survives
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["p"], name="mel"),
         helper.make_node("Clip", ["p", "lo"], ["c"], name="floor"),
         helper.make_node("Log", ["c"], ["y"], name="log")],
        "wide_log", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(1e-10, np.float32), "lo")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Powers spread evenly over six decades, as a spectrum's bins are."""
    rng = np.random.default_rng(seed)
    return [{"x": (10.0 ** rng.uniform(-6, 0, (1, 4, 16))).astype(np.float32)} for _ in range(n)]


def _max_log_error(quantized: onnx.ModelProto, reference: onnx.ModelProto) -> float:
    q = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"])
    f = ort.InferenceSession(reference.SerializeToString(), providers=["CPUExecutionProvider"])
    return max(float(np.abs(q.run(None, s)[0] - f.run(None, s)[0]).max()) for s in _samples(4, 1))


def test_int8_log_input_is_flagged_on_cpu_int8():
    qm = npuflow.quantize(_model(), _samples(8, 0), "cpu-int8", warn=False)
    assert qm.problem is not None and qm.problem.code == "NPF_QUANT_LOW_SIMILARITY"
    assert _max_log_error(qm.model, _model()) > 1.0  # -inf or whole decades off


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def test_keep_float_on_the_log_input_cone_keeps_the_logs(target):
    qm = npuflow.quantize(_model(), _samples(8, 0), target, {"keep_float": CONE}, warn=False)
    assert qm.problem is None
    assert [n.op_type for n in qm.model.graph.node] == ["MatMul", "Clip", "Log"]
    assert _max_log_error(qm.model, _model()) < 1e-4


def test_the_accuracy_check_names_the_op_that_turned_finite_values_infinite():
    """Log of a quantized 0 is -inf: the check reports cosine 0 (not NaN), says the output is
    infinite where the float model's is finite, and names the Log as the largest drop."""
    qm = npuflow.quantize(_model(), _samples(8, 0), "cpu-int8", warn=False)
    assert qm.report.calibration_outputs == {"y": 0.0} and qm.report.non_finite == ["y"]
    text = str(qm.problem)
    assert "cosine similarity 0.0000 (infinite or NaN where the float model's is finite)" in text
    assert "largest drops at log (Log, 0.000)" in text
