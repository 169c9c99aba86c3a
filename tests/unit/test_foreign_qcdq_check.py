"""``check`` places Brevitas' QCDQ models (``QuantizeLinear -> Clip -> DequantizeLinear`` on weights
and activations) as ``compile`` lowers them: both run :func:`npuflow.check.qcdq.legalize_qcdq`.
Before, check judged each integer ``Clip`` as an op and read a weight behind one as computed at run
time: 0 of 9 nodes of ``test_foreign_legalize``'s Brevitas model on the accelerator, while compile
lowered the Conv and its Relu (4-5 nodes differed on cpu-int8 and bernoulli2)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import npuflow
from npuflow.check.report import CPU, NPU
from tests.unit.test_foreign_bias_check import check_announces_compile_refusal
from tests.unit.test_foreign_legalize import _brevitas_like
from tests.unit.test_foreign_weight_check import _agree, checked_model
from tests.unit.test_placement_agreement import compiled_devices

DPU = "DPUCZDX8G_ISA1_B4096"
SHAPES = {"Conv": ([1, 4, 8, 8], (8, 4, 3, 3), [1, 8, 8, 8]), "Gemm": ([1, 16], (8, 16), [1, 8])}


def _scale(v: float, pow2: bool) -> np.float32:
    return np.float32(2.0 ** np.round(np.log2(v))) if pow2 else np.float32(v)


def _qcdq(layer: str, act_lo: int, pow2: bool, float_weight: bool = True) -> onnx.ModelProto:
    """``x -> Q -> Clip(act_lo, 127) -> DQ -> layer(W) -> Relu -> Q -> Clip(0, 15) -> DQ``, the weight
    ``W = DQ(Clip(-127, 127)(Q(float W)))`` as Brevitas exports it (``float_weight``) or
    ``DQ(Clip(int8 W))``."""
    rng = np.random.default_rng(11)
    x_shape, w_shape, out_shape = SHAPES[layer]
    w = (rng.standard_normal(w_shape) * 0.3).astype(np.float32)
    ws = _scale(float(np.abs(w).max()) / 100, pow2)  # some weights beyond 127: the clip bites
    inits = {"x_s": _scale(0.03, pow2), "w_s": ws, "o_s": _scale(0.05, pow2), "z": np.int8(0),
             "a_lo": np.int8(act_lo), "a_hi": np.int8(127), "w_lo": np.int8(-127), "w_hi": np.int8(127),
             "o_lo": np.int8(0), "o_hi": np.int8(15)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "z"], ["x_q"], name="x_Q"),
             helper.make_node("Clip", ["x_q", "a_lo", "a_hi"], ["x_c"], name="x_clip"),
             helper.make_node("DequantizeLinear", ["x_c", "x_s", "z"], ["x_dq"], name="x_DQ")]
    if float_weight:
        inits["w_f"] = w
        nodes.append(helper.make_node("QuantizeLinear", ["w_f", "w_s", "z"], ["w_q"], name="w_Q"))
    else:
        inits["w_q"] = np.clip(np.round(w / ws), -128, 127).astype(np.int8)
    attrs = {"Conv": {"pads": [1, 1, 1, 1]}, "Gemm": {"transB": 1}}[layer]
    nodes += [helper.make_node("Clip", ["w_q", "w_lo", "w_hi"], ["w_c"], name="w_clip"),
              helper.make_node("DequantizeLinear", ["w_c", "w_s", "z"], ["w_dq"], name="w_DQ"),
              helper.make_node(layer, ["x_dq", "w_dq"], ["y"], name="layer", **attrs),
              helper.make_node("Relu", ["y"], ["r"], name="relu"),
              helper.make_node("QuantizeLinear", ["r", "o_s", "z"], ["r_q"], name="out_Q"),
              helper.make_node("Clip", ["r_q", "o_lo", "o_hi"], ["r_c"], name="out_clip"),
              helper.make_node("DequantizeLinear", ["r_c", "o_s", "z"], ["out"], name="out_DQ")]
    return checked_model(nodes, f"qcdq_{layer}", x_shape, out_shape, inits)


@pytest.mark.parametrize("act_lo", [-128, -100])
@pytest.mark.parametrize("layer", ["Conv", "Gemm"])
@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2", DPU])
def test_check_places_a_qcdq_layer_where_compile_lowers_it(target, layer, act_lo):
    """Per node, check's side equals compile's, and the ``.npuf`` equals ONNX Runtime on the
    legalised model (``_agree``); the layer and its Relu are on the accelerator in both."""
    devices = _agree(_qcdq(layer, act_lo, pow2=target == DPU), target)
    assert devices["layer"] == NPU and devices["relu"] == NPU, devices
    assert not {"x_clip", "w_clip", "out_clip", "w_Q"} & devices.keys()  # folded, as in compile


def test_an_integer_weight_behind_a_clip_is_a_constant_weight():
    devices = _agree(_qcdq("Conv", -100, pow2=False, float_weight=False), "cpu-int8")
    assert devices["layer"] == NPU


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_the_legalise_tests_brevitas_model_agrees(target):
    """The model of ``test_foreign_legalize``: before, 0 of 9 nodes on the accelerator in check."""
    model = _brevitas_like(-100)
    report = npuflow.check(model, target)
    devices = {n.name: n.device for n in report.nodes}
    assert devices["conv"] == NPU and devices["relu"] == NPU
    assert devices["x_q_Clip"] == CPU  # the float Clip before the first quantize step, on the CPU in compile too
    sides = compiled_devices(npuflow.compile(model, target))
    checked = {k: ("CPU" if v == CPU else "ACC") for k, v in devices.items()}
    assert {k: (v, sides[k]) for k, v in checked.items() if k in sides and sides[k] != v} == {}
    assert len(set(checked) & set(sides)) >= 6


def test_float_scales_on_b4096_are_placed_and_refused_with_compiles_code(cli, tmp_path):
    """B4096 with float scales: check places the layer as it would run and warns with compile's own
    NPF_COMPILE_SCALES_UNSUPPORTED message; compile refuses the model with that code."""
    model = _qcdq("Conv", -100, pow2=False)
    devices = {n.name: n.device for n in npuflow.check(model, DPU).nodes}
    assert devices["layer"] == NPU and devices["relu"] == NPU
    check_announces_compile_refusal(model, cli, tmp_path)
