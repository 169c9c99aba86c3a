"""Log of a wide-range input (a power spectrum spanning decades, openWakeWord's mel front end)
under 8-bit quantization: every value below half a step of the calibrated maximum reads 0, and
Log(0) is -inf.  The ops feeding a Log (its input cone, :mod:`npuflow.check.cone`) therefore stay
in float: on the CPU in ``check`` on accelerator targets, outside the quantizer's plan on
``cpu-int8``; a ``layers`` entry naming a member with a ``bit_width`` quantizes it anyway (see
benchmarks/results/newuser_flows2.md, "Log on a wide-range input")."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check.cone import relative_precision_cones
from npuflow.check.report import CPU, NPU
from npuflow.graph import GraphView

#: the ops between the graph input and Log (a selecting MatMul, then the floor clamp before Log)
CONE = ["mel", "floor"]
TARGETS = ["cpu-int8", "DPUCZDX8G_ISA1_B4096", "bernoulli2"]
#: the user's way back to integers: a bit width for a node named exactly
FORCE_INT8 = {"layers": [{"name": n, "activation": {"bit_width": 8}} for n in CONE]}


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


def _shared_model() -> onnx.ModelProto:
    """``x -> Conv stem -> p``; ``p`` feeds both ``Relu -> Conv head -> z`` (accelerator work) and
    ``Mul(p, p) -> Clip -> Log -> y``: the stem's output is shared, so the stem is no cone member."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(0, 0.5, (4, 2, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32)
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["p"], name="stem", **conv),
         helper.make_node("Relu", ["p"], ["r"], name="relu"),
         helper.make_node("Conv", ["r", "w2"], ["z"], name="head", **conv),
         helper.make_node("Mul", ["p", "p"], ["sq"], name="square"),
         helper.make_node("Clip", ["sq", "lo"], ["c"], name="floor"),
         helper.make_node("Log", ["c"], ["y"], name="log")],
        "shared_log", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(np.array(1e-10, np.float32), "lo")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Powers spread evenly over six decades, as a spectrum's bins are."""
    rng = np.random.default_rng(seed)
    return [{"x": (10.0 ** rng.uniform(-6, 0, (1, 4, 16))).astype(np.float32)} for _ in range(n)]


def _max_log_error(quantized: onnx.ModelProto, reference: onnx.ModelProto) -> float:
    q = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"])
    f = ort.InferenceSession(reference.SerializeToString(), providers=["CPUExecutionProvider"])
    return max(float(np.abs(q.run(None, s)[0] - f.run(None, s)[0]).max()) for s in _samples(4, 1))


def _quantized_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes whose output a quantize step reads (the quantized ones)."""
    q_reads = {n.input[0] for n in model.graph.node if n.op_type.startswith("Quantize")}
    return {n.name for n in model.graph.node if not n.op_type.startswith(("Quantize", "Dequantize"))
            and any(o in q_reads for o in n.output)}


def test_the_cone_is_walked_back_from_log_through_range_carrying_ops():
    view = GraphView(_model())
    assert {view.nodes[i].name: view.nodes[r].name for i, r in relative_precision_cones(view).items()} == \
        {"mel": "log", "floor": "log"}


def test_a_tensor_other_work_reads_is_not_pulled_into_the_cone():
    view = GraphView(_shared_model())
    assert sorted(view.nodes[i].name for i in relative_precision_cones(view)) == ["floor", "square"]


def test_a_graph_output_ends_the_cone():
    m = _model()
    m.graph.output.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 4, 8]))
    view = GraphView(m)
    assert [view.nodes[i].name for i in relative_precision_cones(view)] == ["floor"]


@pytest.mark.parametrize("target", TARGETS)
def test_check_places_the_cone_on_the_cpu_with_the_reason(target):
    r = npuflow.check(_model(), target)
    assert r.node("mel").device == CPU
    assert r.node("mel").reasons == [
        "feeds Log 'log', which needs its input's relative precision: an 8-bit input reads values below 1/255 of "
        "its maximum as 0, so the ops feeding it stay in float on the CPU"]
    assert "Kept in float on purpose" in r.node("mel").hint and "bit_width" in r.node("mel").hint


@pytest.mark.parametrize("target", TARGETS)
def test_the_cone_stays_float_and_computes_the_float_logs(target):
    qm = npuflow.quantize(_model(), _samples(8, 0), target, warn=False)
    assert qm.problem is None
    assert [n.op_type for n in qm.model.graph.node] == ["MatMul", "Clip", "Log"]
    assert _max_log_error(qm.model, _model()) < 1e-4


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def test_keep_float_on_the_cone_changes_nothing_more(target):
    """``keep_float`` on the cone (the workaround before the rule) gives the same model."""
    plain = npuflow.quantize(_model(), _samples(8, 0), target, warn=False)
    kept = npuflow.quantize(_model(), _samples(8, 0), target, {"keep_float": CONE}, warn=False)
    assert kept.model.SerializeToString() == plain.model.SerializeToString()


@pytest.mark.parametrize("target", TARGETS)
def test_a_bit_width_named_for_a_member_forces_it_back_to_integers(target):
    qm = npuflow.quantize(_model(), _samples(8, 0), target, FORCE_INT8, warn=False)
    assert {"mel", "floor"} <= _quantized_nodes(qm.model)
    assert qm.problem is not None and qm.problem.code == "NPF_QUANT_LOW_SIMILARITY"
    assert _max_log_error(qm.model, _model()) > 1.0  # -inf or whole decades off


def test_a_name_regex_does_not_force_the_cone_back():
    config = {"layers": [{"name_regex": ".*", "activation": {"bit_width": 8}}]}
    qm = npuflow.quantize(_model(), _samples(8, 0), "cpu-int8", config, warn=False)
    assert [n.op_type for n in qm.model.graph.node] == ["MatMul", "Clip", "Log"]


def test_shared_stem_stays_quantized_and_compile_agrees_with_check():
    """B4096: the stem and head run on the DPU, the cone (square, floor) in float on the CPU, in
    ``check`` and in the compiled model alike."""
    target = "DPUCZDX8G_ISA1_B4096"
    rng = np.random.default_rng(0)
    samples = [{"x": rng.normal(0, 1, (1, 2, 8, 8)).astype(np.float32)} for _ in range(8)]
    r = npuflow.check(_shared_model(), target)
    assert {n: r.node(n).device for n in ("stem", "head", "square", "floor", "log")} == \
        {"stem": NPU, "head": NPU, "square": CPU, "floor": CPU, "log": CPU}
    qm = npuflow.quantize(_shared_model(), samples, target, warn=False)
    assert {"stem", "head"} <= _quantized_nodes(qm.model)
    assert not {"square", "floor", "log"} & _quantized_nodes(qm.model)
    compiled = npuflow.compile(qm.model, target)
    on_cpu = {n for sg in compiled.subgraphs if not sg.on_accelerator for n in sg.nodes}
    assert {"square", "floor", "log"} <= on_cpu and not {"stem", "head"} & on_cpu


def test_the_accuracy_check_names_the_op_that_turned_finite_values_infinite():
    """Log of a quantized 0 is -inf: the check reports cosine 0 (not NaN), says the output is
    infinite where the float model's is finite, and names the Log as the largest drop."""
    qm = npuflow.quantize(_model(), _samples(8, 0), "cpu-int8", FORCE_INT8, warn=False)
    assert qm.report.calibration_outputs == {"y": 0.0} and qm.report.non_finite == ["y"]
    text = str(qm.problem)
    assert "cosine similarity 0.0000 (infinite or NaN where the float model's is finite)" in text
    assert "largest drops at log (Log, 0.000)" in text
