"""A CPU subgraph's ``PRelu`` between a dequantize and a quantize step runs as ``Max``/``Mul`` (or ``Relu``,
``Min``, ``Mul``, ``Add``) kernels with the same codes (runtime/prelu_forms.py): MTCNN RNet on B4096."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.runtime import executors, joined
from npuflow.runtime.prelu_forms import prelu_forms
from tests import fixture_models
from tests.compile_check import assert_session_equals_qdq_and_op_by_op
from tests.corpus import registry

TARGET = "DPUCZDX8G_ISA1_B4096"
ENTRY = registry.BY_NAME["pypi/mtcnn_rnet"]


def _island(slope: np.ndarray, *, output_prelu: bool = False, from_dq: bool = True) -> onnx.ModelProto:
    """int8 codes -> DequantizeLinear -> PRelu(slope) -> MaxPool -> QuantizeLinear, 4 channels."""
    c = slope.shape[0]
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["x"]) if from_dq else
             helper.make_node("Cast", ["q"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("PRelu", ["x", "a"], ["p"]),
             helper.make_node("MaxPool", ["p"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("QuantizeLinear", ["m", "s2", "z"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.INT8, [1, c, 8, 8])]
    if output_prelu:
        outputs.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, c, 16, 16]))
    graph = helper.make_graph(nodes, "island", [helper.make_tensor_value_info("q", TensorProto.INT8, [1, c, 16, 16])],
                              outputs, [numpy_helper.from_array(np.float32(2.0 ** -3), "s"),
                                        numpy_helper.from_array(np.int8(0), "z"),
                                        numpy_helper.from_array(np.float32(2.0 ** -4), "s2"),
                                        numpy_helper.from_array(slope.reshape(c, 1, 1).astype(np.float32), "a")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, q: np.ndarray) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"q": q})


@pytest.mark.parametrize("slope,ops", [
    ([0.25, -0.7, 1.0, 1e-4], ["DequantizeLinear", "Mul", "Max", "MaxPool", "QuantizeLinear"]),  # every slope <= 1
    ([1.3, -0.13, 0.0, 0.83], ["DequantizeLinear", "Relu", "Min", "Mul", "Add", "MaxPool", "QuantizeLinear"])])
def test_prelu_between_quantize_steps_gives_the_same_codes_for_every_code(slope, ops):
    model = _island(np.array(slope, np.float32))
    q = np.tile(np.arange(-128, 128, dtype=np.int8).reshape(1, 1, 16, 16), (1, 4, 1, 1))  # each code, each channel
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(q.reshape(4, -1), axis=1).reshape(q.shape)
    out = prelu_forms(model)
    assert [n.op_type for n in out.graph.node] == ops
    onnx.checker.check_model(out)
    for x in (q, shuffled):
        (want,), (got,) = _run(model, x), _run(out, x)
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("kind", ["output", "not_dequantized"])
def test_prelu_whose_zeros_may_show_stays(kind):
    # a PRelu output that leaves the graph (a zero's sign would show), or one not fed by a dequantize step
    # (a NaN's Max differs): unchanged
    model = _island(np.array([0.25, 0.5, 1.0, 0.1], np.float32), output_prelu=kind == "output",
                    from_dq=kind != "not_dequantized")
    assert prelu_forms(model) is model


@pytest.fixture(scope="module")
def rnet():
    path = ENTRY.make(fixture_models.CACHE)
    calibration = registry.calibration_for(ENTRY, path, 8)
    quantized = npuflow.quantize(str(path), calibration, target=TARGET)
    return quantized, npuflow.compile(quantized.model, TARGET), calibration


def test_rnet_cpu_parts_run_no_prelu_and_give_the_qdq_models_outputs(rnet, monkeypatch):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")
    quantized, compiled, calibration = rnet
    session = npuflow.Session(compiled, threads=1)
    (step,) = session._live()[0].steps  # still one joined ONNX Runtime call a frame
    assert isinstance(step.executor, joined.Joined)
    cpu = [p.executor.model()[0] for p in step.executor.parts if isinstance(p.executor, executors.OnnxExecutor)]
    ops = [n.op_type for m in cpu for n in m.graph.node]
    assert len(cpu) >= 4 and "PRelu" not in ops and ops.count("Max") >= 3, ops
    # the quantizer's QDQ model (its PRelu) on ONNX Runtime's exact kernels, and the op-by-op Session
    assert_session_equals_qdq_and_op_by_op(session, quantized, compiled, calibration, 4, seed=2)
