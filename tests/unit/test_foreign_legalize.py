"""Legalisation of other tools' quantized forms (issue 16) on small synthetic models.

The real models (ONNX Runtime, NNCF, Brevitas) are in ``tests/models/test_foreign_models.py``;
these build each tool's pattern by hand so that CI covers it without NNCF or Brevitas installed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from tests.compile_check import integer_tensors
from tests.qdq_builder import Builder, ort_values

CPU = "cpu-int8"
DPU = "DPUCZDX8G_ISA1_B4096"
RNG = np.random.default_rng(16)


def _x(shape, seed):
    return np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)


def _lowered_convs(compiled) -> int:
    return sum(op["kind"] == "conv2d" for sg in compiled.subgraphs if sg.on_accelerator for op in sg.ops)


def _max_lsb(model: onnx.ModelProto, compiled, feeds) -> int:
    """Largest difference, in LSB, between the compiled integer tensors and ORT on the original model."""
    with tempfile.TemporaryDirectory() as d:
        npuflow.Session(compiled).run(feeds, dump_dir=d)
        index = json.loads((Path(d) / "index.json").read_text())
        have = {o for n in model.graph.node for o in n.output}
        names = [n for n in integer_tensors(compiled) if n in have]
        assert names
        ref = ort_values(model, feeds, names)
        return max(_lsb(np.load(Path(d) / index[n]), ref[n]) for n in names)


def _lsb(got: np.ndarray, ref: np.ndarray) -> int:
    """Max code difference; an int8 tensor legalised from uint8 with zero point 128 is shifted back."""
    shift = 128 if got.dtype == np.int8 and ref.dtype == np.uint8 else 0
    return int(np.abs(got.astype(np.int64) + shift - ref.astype(np.int64)).max())


def _nncf_like() -> onnx.ModelProto:
    """NNCF's form: float biases, a MaxPool read straight from a DQ by the next Conv."""
    b = Builder("half_even")
    x = b.dq(b.input("x", [1, 3, 12, 12], 0.031))
    w1 = b.weight("w1", RNG.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), 0.0071)
    y = b.node("Conv", [x, w1, b.const("b1", RNG.normal(0, 0.2, 8).astype(np.float32))], "conv1", pads=[1] * 4)
    y = b.dq(b.quantize(b.node("Relu", [y], "relu1"), 0.023))
    y = b.node("MaxPool", [y], "pool", kernel_shape=[2, 2], strides=[2, 2])
    w2 = b.weight("w2", RNG.normal(0, 0.2, (4, 8, 3, 3)).astype(np.float32), np.full(4, 0.0053, np.float32), axis=0)
    y = b.node("Conv", [y, w2, b.const("b2", RNG.normal(0, 0.2, 4).astype(np.float32))], "conv2")
    b.output(b.quantize(y, 0.043), "y")
    return b.model()


def test_nncf_float_bias_and_bare_maxpool_are_legalised():
    model = _nncf_like()
    compiled = npuflow.compile(model, CPU)
    assert _lowered_convs(compiled) == 2
    notes = " ".join(compiled.notes)
    assert "float bias of 2 Conv/Gemm" in notes and "propagated quantization through 1 MaxPool" in notes
    assert _max_lsb(model, compiled, {"x": _x([1, 3, 12, 12], 1)}) <= 1


def _brevitas_like(act_lo: int) -> onnx.ModelProto:
    """Brevitas' QCDQ form: int8 weights and activations through ``Clip`` before their DQ."""
    b = Builder("half_even")
    clip_lo, clip_hi = b.const("lo", np.int8(act_lo)), b.const("hi", np.int8(127))
    q = b.input("x", [1, 2, 6, 6], 0.05)
    clipped = b.node("Clip", [q, clip_lo, clip_hi], "x_clip")
    b.scales[clipped], b.zps[clipped] = 0.05, 0
    x = b.node("DequantizeLinear", [clipped, "x_scale", "x_zero_point"], "x_dq")
    w = np.clip(RNG.integers(-128, 128, (4, 2, 3, 3)), -128, 127).astype(np.int8)
    b.const("w_int", w)
    w_clip = b.node("Clip", ["w_int", b.const("wlo", np.int8(-127)), b.const("whi", np.int8(127))], "w_clip")
    b.const("w_scale", np.float32(0.004))
    b.const("w_zero_point", np.int8(0))
    wd = b.node("DequantizeLinear", [w_clip, "w_scale", "w_zero_point"], "w_dq")
    y = b.node("Conv", [x, wd], "conv")
    b.output(b.quantize(b.node("Relu", [y], "relu"), 0.01, 0, "uint8"), "y")
    return b.model()


@pytest.mark.parametrize("act_lo", [-128, -100])
def test_brevitas_qcdq_clips_are_legalised(act_lo):
    model = _brevitas_like(act_lo)
    compiled = npuflow.compile(model, CPU)
    assert _lowered_convs(compiled) == 1
    notes = " ".join(compiled.notes)
    assert "clipped integer weights" in notes
    assert ("narrowed integer range" in notes) == (act_lo > -128)
    feeds = {"x": _x([1, 2, 6, 6], 2) * 4}  # beyond the clip range
    assert _max_lsb(model, compiled, feeds) == 0


def test_dpu_refuses_float_scales_naming_the_tensor():
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.compile(_nncf_like(), DPU)
    assert err.value.code == "NPF_COMPILE_SCALES_UNSUPPORTED"
    assert "'x_q'" in str(err.value) and "power-of-two scales" in str(err.value)


def test_dpu_refuses_asymmetric_zero_points():
    b = Builder("half_up")
    x = b.dq(b.input("x", [1, 2, 4, 4], 2.0 ** -4, 3))
    w = b.weight("w", RNG.normal(0, 0.3, (2, 2, 1, 1)).astype(np.float32), 2.0 ** -6)
    b.output(b.quantize(b.node("Conv", [x, w], "conv"), 2.0 ** -3))
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.compile(b.model(), DPU)
    assert err.value.code == "NPF_COMPILE_SCALES_UNSUPPORTED" and "asymmetric zero point (3)" in str(err.value)


def test_uint8_zero_point_128_becomes_int8_on_a_symmetric_target():
    b = Builder("half_even")
    x = b.dq(b.input("x", [1, 2, 6, 6], 0.04, 128, "uint8"))
    w = b.weight("w", RNG.normal(0, 0.3, (3, 2, 3, 3)).astype(np.float32), np.full(3, 0.005, np.float32), axis=0)
    y = b.node("Conv", [x, w], "conv", pads=[1] * 4)
    b.output(b.quantize(y, 0.03, 128, "uint8"), "y")
    model = b.model()
    compiled = npuflow.compile(model, "bernoulli2")
    assert _lowered_convs(compiled) == 1
    assert any("2 uint8 activation(s) with zero point 128 to int8" in n for n in compiled.notes)
    assert compiled.manifest["inputs"][0]["quant"]["dtype"] == "int8"
    assert _max_lsb(model, compiled, {"x": _x([1, 2, 6, 6], 4)}) == 0
    assert not npuflow.compile(model, CPU).notes  # cpu-int8 (not symmetric) takes uint8 as it is


def _qlinear_conv(rng: np.random.Generator = RNG) -> onnx.ModelProto:
    """A QOperator model as ONNX Runtime writes it: QuantizeLinear -> QLinearConv -> MaxPool (on
    uint8) -> DequantizeLinear."""
    w = rng.integers(-127, 128, (4, 2, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "xs": np.float32(0.02), "xz": np.uint8(120), "w": w, "ws": np.float32(0.003), "wz": np.int8(0),
        "ys": np.float32(0.015), "yz": np.uint8(7), "b": rng.integers(-500, 500, 4).astype(np.int32)}.items()]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q"),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["yq"], name="qconv",
                         pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["yq"], ["pq"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("DequantizeLinear", ["pq", "ys", "yz"], ["y"], name="dq"),
    ]
    g = helper.make_graph(nodes, "qop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_qoperator_conv_is_rewritten_to_qdq_and_lowered():
    model = _qlinear_conv()
    compiled = npuflow.compile(model, CPU)
    assert _lowered_convs(compiled) == 1
    assert any("QLinearConv x1" in n for n in compiled.notes) and any("MaxPool x1" in n for n in compiled.notes)
    out = npuflow.Session(compiled).run({"x": _x([1, 2, 8, 8], 3)})["y"]
    ref = ort_values(model, {"x": _x([1, 2, 8, 8], 3)}, ["y"])["y"]
    assert np.abs(out - ref).max() <= 0.015 + 1e-6  # one LSB of the output
    assert _max_lsb(model, compiled, {"x": _x([1, 2, 8, 8], 3)}) <= 1


def test_compile_input_shape_freezes_dynamic_dims(cli, tmp_path):
    model = _qlinear_conv()
    for k in (2, 3):
        dim = model.graph.input[0].type.tensor_type.shape.dim[k]
        dim.Clear()
        dim.dim_param = "hw"
    src = tmp_path / "dyn.onnx"
    onnx.save(model, src)
    r = cli("compile", str(src), "-t", CPU, "-o", str(tmp_path / "a.npuf"))
    assert r.returncode == 2 and "NPF_MODEL_DYNAMIC_SHAPE" in r.stderr and "Traceback" not in r.stderr
    for spelling in (["x", "1x2x8x8"], ["x=1x2x8x8"]):
        r = cli("compile", str(src), "-t", CPU, "-o", str(tmp_path / "a.npuf"), "--input-shape", *spelling)
        assert r.returncode == 0, r.stderr
        assert "legalised ONNX Runtime QOperator ops" in " ".join(r.stdout.split())
    compiled = npuflow.compile(src, CPU, input_shapes={"x": [1, 2, 8, 8]})
    assert compiled.manifest["inputs"][0]["shape"] == [1, 2, 8, 8]


def test_info_describes_the_scales_the_model_holds(cli, tmp_path):
    npuf = tmp_path / "m.npuf"
    npuflow.compile(_qlinear_conv(), CPU).save(npuf)
    r = cli("info", str(npuf))
    assert r.returncode == 0
    out = " ".join(r.stdout.split())
    line = out[out.index("model scales"):][:160]
    assert "float" in line and "asymmetric" in line and "uint8" in line


def test_qoperator_op_without_a_float_form_is_a_coded_error():
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "s": np.float32(0.02), "z": np.uint8(128), "ys": np.float32(0.01), "yz": np.uint8(128)}.items()]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("QLinearGlobalAveragePool", ["xq", "s", "z", "ys", "yz"], ["pq"], name="gap",
                         domain="com.microsoft", channels_last=1),
        helper.make_node("DequantizeLinear", ["pq", "ys", "yz"], ["y"], name="dq"),
    ]
    g = helper.make_graph(nodes, "qop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 3])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.compile(model, CPU)
    assert err.value.code == "NPF_COMPILE_FOREIGN_UNSUPPORTED" and "'gap'" in str(err.value)
    assert "channels_last" in str(err.value)
