"""``check`` reads a weight quantized at run time (``DequantizeLinear(QuantizeLinear(W))`` of a float
constant, as NNCF's and Brevitas' exports may write it) as the integers ``compile``'s legalisation
folds it into (``compiler/foreign.py``): both ask :func:`npuflow.check.quant_facts.folded_weight`.
Before, check said "Conv with weights computed at run time is not lowered" and put the Conv/Gemm,
its Relu and Q/DQ steps on the CPU while compile folded the step and lowered the layer (4 nodes
differed per model on cpu-int8, bernoulli2 and power-of-two B4096)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check.quant_facts import folded_weight
from npuflow.check.report import CPU, NPU
from npuflow.compiler import foreign
from npuflow.graph import GraphView, is_qdq
from npuflow.targets import load_target
from tests.qdq_builder import ort_values
from tests.unit.test_placement_agreement import compiled_devices
from tests.unit.test_foreign_bias_check import check_announces_compile_refusal

DPU = "DPUCZDX8G_ISA1_B4096"
SHAPES = {"Conv": ([1, 4, 8, 8], (8, 4, 3, 3)), "Gemm": ([1, 16], (8, 16)), "MatMul": ([1, 4, 16], (16, 8))}


def _scale(v: float, pow2: bool) -> np.float32:
    return np.float32(2.0 ** np.round(np.log2(v))) if pow2 else np.float32(v)


def _model(layer: str, pow2: bool = False, per_channel: bool = False, float_bias: bool = False) -> onnx.ModelProto:
    """``x -> Q -> DQ -> layer(DQ(Q(float W))) -> Relu -> Q -> DQ``: the weight's quantize step reads a
    float initializer (per channel along axis 0 when asked; Conv/Gemm with NNCF's float bias)."""
    rng = np.random.default_rng(7)
    x_shape, w_shape = SHAPES[layer]
    w = (rng.standard_normal(w_shape) * 0.3).astype(np.float32)
    if per_channel:
        ws = (np.abs(w).reshape(w.shape[0], -1).max(1) / 127).astype(np.float32)
        ws = (2.0 ** np.round(np.log2(ws))).astype(np.float32) if pow2 else ws
        wz, axis = np.zeros(w.shape[0], np.int8), {"axis": 0}
    else:
        ws, wz, axis = _scale(float(np.abs(w).max()) / 127, pow2), np.int8(0), {}
    inits = {"w_f": w, "w_s": ws, "w_z": wz, "x_s": _scale(0.03, pow2), "o_s": _scale(0.05, pow2), "z": np.int8(0)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "z"], ["x_q"], name="x_Q"),
             helper.make_node("DequantizeLinear", ["x_q", "x_s", "z"], ["x_dq"], name="x_DQ"),
             helper.make_node("QuantizeLinear", ["w_f", "w_s", "w_z"], ["w_q"], name="w_Q", **axis),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_dq"], name="w_DQ", **axis)]
    ins = ["x_dq", "w_dq"]
    if float_bias:
        inits["bias"] = (rng.standard_normal(w_shape[0]) * 0.1).astype(np.float32)
        ins.append("bias")
    attrs = {"Conv": {"pads": [1, 1, 1, 1]}, "Gemm": {"transB": 1}, "MatMul": {}}[layer]
    nodes += [helper.make_node(layer, ins, ["y"], name="layer", **attrs),
              helper.make_node("Relu", ["y"], ["r"], name="relu"),
              helper.make_node("QuantizeLinear", ["r", "o_s", "z"], ["r_q"], name="out_Q"),
              helper.make_node("DequantizeLinear", ["r_q", "o_s", "z"], ["out"], name="out_DQ")]
    out_shape = {"Conv": [1, 8, 8, 8], "Gemm": [1, 8], "MatMul": [1, 4, 8]}[layer]
    return checked_model(nodes, f"foreign_{layer}", x_shape, out_shape, inits)


def checked_model(nodes: list, name: str, x_shape: list, out_shape: list, inits: dict) -> onnx.ModelProto:
    """One input ``x``, one output ``out``, opset 17 / IR 9, passing ONNX's full check."""
    graph = helper.make_graph(nodes, name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def _agree(model: onnx.ModelProto, target: str) -> dict[str, str]:
    """Check's devices; asserts that compile puts every node both name on the same side and that the
    ``.npuf`` equals ONNX Runtime on the legalised model."""
    report = npuflow.check(model, target)
    checked = {n.name: ("CPU" if n.device == CPU else "ACC") for n in report.nodes}
    compiled = npuflow.compile(model, target)
    sides = compiled_devices(compiled)
    assert {k: (v, sides[k]) for k, v in checked.items() if k in sides and sides[k] != v} == {}
    assert {"layer", "relu"} <= sides.keys()
    legal = copy.deepcopy(model)
    foreign.legalize(legal, load_target(target))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    got = npuflow.Session(compiled).run({"x": x})["out"]
    np.testing.assert_array_equal(got, ort_values(legal, {"x": x}, ["out"])["out"])
    return {n.name: n.device for n in report.nodes}


@pytest.mark.parametrize("layer", ["Conv", "Gemm", "MatMul"])
@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2", DPU])
def test_check_places_a_layer_whose_weight_is_quantized_at_run_time_where_compile_lowers_it(layer, target):
    devices = _agree(_model(layer, pow2=target == DPU), target)
    assert devices["layer"] == NPU and devices["relu"] == NPU, devices


@pytest.mark.parametrize("layer", ["Conv", "Gemm"])
def test_per_channel_weight_quantize_steps_on_cpu_int8(layer):
    devices = _agree(_model(layer, per_channel=True), "cpu-int8")
    assert devices["layer"] == NPU


@pytest.mark.parametrize("layer", ["Conv", "Gemm"])
def test_a_float_bias_beside_a_weight_quantized_at_run_time(layer):
    """NNCF's float bias with a run-time weight: the int32 bias at ``sx * sw`` uses the weight's
    scale, which ``float_bias_limit`` reads off the same dequantize step."""
    devices = _agree(_model(layer, float_bias=True), "cpu-int8")
    assert devices["layer"] == NPU


def test_float_scales_on_b4096_are_refused_by_compile_and_announced_by_check(cli, tmp_path):
    """Non-power-of-two scales on B4096: check places the layer as it would run and warns with
    compile's own NPF_COMPILE_SCALES_UNSUPPORTED message; compile refuses the model."""
    model = _model("Conv")
    devices = {n.name: n.device for n in npuflow.check(model, DPU).nodes}
    assert devices["layer"] == NPU
    check_announces_compile_refusal(model, cli, tmp_path)


def test_folded_weight_is_what_compile_stores_and_only_for_integer_steps():
    """The legalisation stores exactly :func:`folded_weight`'s integers; an int32 step (a bias
    quantized at run time) is no folded weight, so both sides leave it a step."""
    model = _model("Conv", per_channel=True)
    view = GraphView(model)
    q = next(n for n in model.graph.node if n.name == "w_Q")
    want = folded_weight(q, view)
    assert want.dtype == np.int8 and want.shape == (8, 4, 3, 3)
    legal = copy.deepcopy(model)
    notes = foreign.legalize(legal, load_target("cpu-int8"))
    assert any("folded 1 quantize step" in n for n in notes)
    stored = {t.name: numpy_helper.to_array(t) for t in legal.graph.initializer}
    np.testing.assert_array_equal(stored["w_q"], want)
    q32 = helper.make_node("QuantizeLinear", ["w_f", "s32", "z32"], ["b_q"], name="b_Q")
    model.graph.initializer.extend([numpy_helper.from_array(np.float32(0.001), "s32"),
                                    numpy_helper.from_array(np.int32(0), "z32")])
    assert folded_weight(q32, GraphView(model)) is None
    assert not [n for n in legal.graph.node if is_qdq(n) and n.input[0] == "w_f"]
