"""Every integer kernel against ONNX Runtime on hand-built QDQ models (docs/quantized-model-format.md).

Power-of-two scales: identical int8 values; float scales: within 1 LSB.
"""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from tests.compile_check import compare_with_ort
from tests.qdq_builder import Builder

DPU = "DPUCZDX8G_ISA1_B4096"
CPU = "cpu-int8"
MODES = ["half_up", "half_even", "half_down", "std_round"]


def _x(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).normal(0, scale, shape)).astype(np.float32)


def _conv_model(mode, act=None, group=1, strides=(1, 1), pads=(1, 1, 1, 1), pow2=True, bias_fix=12, dil=(1, 1),
                k=3, cin=8, cout=16, per_channel=False):
    rng = np.random.default_rng(1)
    b = Builder(mode)
    s = (lambda n: 2.0 ** -n) if pow2 else (lambda n: 0.83 * 2.0 ** -n)
    x = b.input("x", [1, cin, 13, 11], s(5))
    w = rng.normal(0, 0.3, (cout, cin // group, k, k)).astype(np.float32)
    wscale = np.full(cout, s(7), np.float32) * (np.linspace(0.5, 1.0, cout) if per_channel else 1) \
        if per_channel else s(7)
    wd = b.weight("w", w, wscale, axis=0 if per_channel else None)
    bd = b.bias("b", rng.normal(0, 0.5, cout), (2.0 ** -bias_fix) if pow2 else np.float32(s(5)) * np.asarray(wscale, np.float32))
    c = b.node("Conv", [b.dq(x), wd, bd], "conv", pads=list(pads), group=group, strides=list(strides),
               dilations=list(dil))
    if act == "relu":
        c = b.node("Relu", [c], "act")
    elif act == "relu6":
        c = b.node("Clip", [c, b.const("zero", np.float32(0)), b.const("six", np.float32(6))], "act")
    elif act == "leaky":
        c = b.node("LeakyRelu", [c], "act", alpha=26 / 256)
    elif act == "hsig":
        a = b.node("Add", [c, b.const("three", np.float32(3))], "hs/add")
        cl = b.node("Clip", [a, b.const("z", np.float32(0)), b.const("six", np.float32(6))], "hs/clip")
        c = b.node("Mul", [cl, b.const("sc", np.float32(2731 / 16384))], "hs")
    elif act == "hswish":
        a = b.node("Add", [c, b.const("three", np.float32(3))], "hw/add")
        cl = b.node("Clip", [a, b.const("z", np.float32(0)), b.const("six", np.float32(6))], "hw/clip")
        hs = b.node("Mul", [cl, b.const("sc", np.float32(2731 / 16384))], "hw/hsig")
        c = b.node("Mul", [c, hs], "hw")
    y = b.quantize(c, s(3))
    b.output(y, "y")
    return b.model()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("act", [None, "relu", "relu6", "leaky", "hsig", "hswish"])
def test_conv_with_fused_activation_is_bit_exact(mode, act):
    diffs = compare_with_ort(_conv_model(mode, act), {"x": _x([1, 8, 13, 11], 2)}, DPU)
    assert max(diffs.values()) == 0, diffs


@pytest.mark.parametrize("kw", [dict(group=8, cin=8, cout=8), dict(group=8, cin=8, cout=16),
                                dict(strides=(2, 2)), dict(dil=(2, 2), pads=(2, 2, 2, 2)),
                                dict(k=1, pads=(0, 0, 0, 0)), dict(group=2), dict(bias_fix=9),
                                dict(bias_fix=14)])
def test_conv_geometries_are_bit_exact(kw):
    cin = kw.pop("cin", 8)
    model = _conv_model("half_up", "relu", cin=cin, **kw)
    # Table 28: a DPU conv2d has group == 1 (depthwise aside), so a group-2 conv is checked onto the
    # CPU there; its integer kernel is exercised on the generic INT8 target instead.
    target = DPU if kw.get("group", 1) in (1, cin) else CPU
    diffs = compare_with_ort(model, {"x": _x([1, cin, 13, 11], 3)}, target)
    assert max(diffs.values()) == 0, diffs


def test_long_reduction_is_split_exactly():
    # 3x3x256 = 2304 products per output: longer than float32 can sum exactly in one go
    model = _conv_model("half_up", None, cin=256, cout=4)
    diffs = compare_with_ort(model, {"x": _x([1, 256, 13, 11], 4, 3.0)}, DPU)
    assert max(diffs.values()) == 0, diffs


@pytest.mark.parametrize("per_channel", [False, True])
def test_float_scale_conv_within_one_lsb(per_channel):
    model = _conv_model("half_even", "relu", pow2=False, per_channel=per_channel)
    diffs = compare_with_ort(model, {"x": _x([1, 8, 13, 11], 5)}, CPU)
    assert max(diffs.values()) <= 1, diffs


def _eltwise_model(mode, op, pow2=True, const=False, act=None):
    b = Builder(mode)
    s = (lambda n: 2.0 ** -n) if pow2 else (lambda n: 0.77 * 2.0 ** -n)
    a = b.input("a", [1, 4, 6, 6], s(5))
    if const:
        bq = b.weight("k", np.random.default_rng(2).normal(0, 1, (1, 4, 1, 1)).astype(np.float32), s(5))
    else:
        bq = b.dq(b.input("b", [1, 4, 6, 6], s(4) if op != "Add" or not pow2 else s(4)))
    y = b.node(op, [b.dq(a), bq], "elt")
    if act:
        y = b.node("Relu", [y], "elt_relu")
    b.output(b.quantize(y, s(3) if op != "Mul" else s(2)), "y")
    return b.model()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
def test_eltwise_is_bit_exact(mode, op):
    feeds = {"a": _x([1, 4, 6, 6], 6), "b": _x([1, 4, 6, 6], 7)}
    # Table 28: DPU eltwise types are sum and prod; Sub's integer kernel runs on the generic INT8 target
    diffs = compare_with_ort(_eltwise_model(mode, op, act="relu"), feeds, DPU if op != "Sub" else CPU)
    assert max(diffs.values()) == 0, diffs


def test_eltwise_with_constant_operand():
    diffs = compare_with_ort(_eltwise_model("half_up", "Add", const=True), {"a": _x([1, 4, 6, 6], 6)}, DPU)
    assert max(diffs.values()) == 0, diffs


@pytest.mark.parametrize("op", ["Add", "Mul"])
def test_float_scale_eltwise_within_one_lsb(op):
    feeds = {"a": _x([1, 4, 6, 6], 6), "b": _x([1, 4, 6, 6], 7)}
    diffs = compare_with_ort(_eltwise_model("half_even", op, pow2=False), feeds, CPU)
    assert max(diffs.values()) <= 1, diffs


def _single_op_model(mode, build, in_shape, in_fix=4, out_fix=4):
    b = Builder(mode)
    x = b.input("x", in_shape, 2.0 ** -in_fix)
    y = build(b, b.dq(x))
    outs = y if isinstance(y, list) else [y]
    for k, t in enumerate(outs):
        b.output(b.quantize(t, 2.0 ** -out_fix), f"y{k}")
    return b.model()


POOLS = {
    "maxpool": lambda b, x: b.node("MaxPool", [x], "p", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "maxpool_ceil": lambda b, x: b.node("MaxPool", [x], "p", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "avgpool": lambda b, x: b.node("AveragePool", [x], "p", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
    "avgpool_incl": lambda b, x: b.node("AveragePool", [x], "p", kernel_shape=[3, 3], strides=[2, 2],
                                        pads=[1, 1, 1, 1], count_include_pad=1),
    "avgpool_ceil": lambda b, x: b.node("AveragePool", [x], "p", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "gap": lambda b, x: b.node("GlobalAveragePool", [x], "p"),
    "gmp": lambda b, x: b.node("GlobalMaxPool", [x], "p"),
}


@pytest.mark.parametrize("mode", ["half_up", "half_even"])
@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("out_fix", [4, 6])
def test_pooling_is_bit_exact(mode, pool, out_fix):
    model = _single_op_model(mode, POOLS[pool], [1, 3, 7, 9], 4, out_fix)
    diffs = compare_with_ort(model, {"x": _x([1, 3, 7, 9], 8, 2.0)}, DPU)
    assert max(diffs.values()) == 0, diffs


MOVES = {
    "reshape": lambda b, x: b.node("Reshape", [x, b.const("shape", np.array([1, 3, 63], np.int64))], "m"),
    "flatten": lambda b, x: b.node("Flatten", [x], "m", axis=1),
    "transpose": lambda b, x: b.node("Transpose", [x], "m", perm=[0, 2, 3, 1]),
    "slice": lambda b, x: b.node("Slice", [x, b.const("st", np.array([1, 0], np.int64)),
                                           b.const("en", np.array([3, 9], np.int64)),
                                           b.const("ax", np.array([1, 3], np.int64)),
                                           b.const("sp", np.array([1, 2], np.int64))], "m"),
    "pad": lambda b, x: b.node("Pad", [x, b.const("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))], "m"),
    "pad_reflect": lambda b, x: b.node("Pad", [x, b.const("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))],
                                       "m", mode="reflect"),
    "resize": lambda b, x: b.node("Resize", [x, "", b.const("sc", np.array([1, 1, 2, 2], np.float32))], "m",
                                  mode="nearest"),
    "resize_asym": lambda b, x: b.node("Resize", [x, "", b.const("sc", np.array([1, 1, 1.5, 2], np.float32))], "m",
                                       mode="nearest", coordinate_transformation_mode="asymmetric",
                                       nearest_mode="floor"),
    "split": lambda b, x: b.node("Split", [x, b.const("sp", np.array([1, 2], np.int64))], "m", n_out=2, axis=1),
    "relu": lambda b, x: b.node("Relu", [x], "m"),
    "sigmoid": lambda b, x: b.node("Sigmoid", [x], "m"),
    "hardswish": lambda b, x: b.node("HardSwish", [x], "m"),
    "leaky": lambda b, x: b.node("LeakyRelu", [x], "m", alpha=26 / 256),
}


@pytest.mark.parametrize("move", sorted(MOVES))
@pytest.mark.parametrize("out_fix", [4, 5])
def test_data_movement_and_tables_are_bit_exact(move, out_fix):
    model = _single_op_model("half_up", MOVES[move], [1, 3, 7, 9], 4, out_fix)
    compiled = npuflow.compile(model, "cpu-int8")  # cpu-int8 lists every op kind
    assert all(s.on_accelerator for s in compiled.subgraphs), compiled.notes
    diffs = compare_with_ort(model, {"x": _x([1, 3, 7, 9], 9, 2.0)}, "cpu-int8")
    assert max(diffs.values()) == 0, diffs


def test_concat_with_different_input_scales():
    b = Builder("half_up")
    a = b.input("a", [1, 2, 4, 4], 2.0 ** -3)
    c = b.input("c", [1, 3, 4, 4], 2.0 ** -5)
    y = b.node("Concat", [b.dq(a), b.dq(c)], "cat", axis=1)
    b.output(b.quantize(y, 2.0 ** -4), "y")
    diffs = compare_with_ort(b.model(), {"a": _x([1, 2, 4, 4], 1, 3), "c": _x([1, 3, 4, 4], 2)}, DPU)
    assert max(diffs.values()) == 0, diffs


@pytest.mark.parametrize("kind", ["gemm", "gemm_nobias", "matmul", "matmul_act"])
def test_fc_and_matmul_are_bit_exact(kind):
    rng = np.random.default_rng(3)
    b = Builder("half_up")
    x = b.input("x", [2, 40], 2.0 ** -4)
    if kind.startswith("gemm"):
        w = b.weight("w", rng.normal(0, 0.2, (10, 40)).astype(np.float32), 2.0 ** -7)
        ins = [b.dq(x), w] + ([b.bias("b", rng.normal(0, 1, 10), 2.0 ** -11)] if kind == "gemm" else [])
        y = b.node("Gemm", ins, "fc", transB=1)
    elif kind == "matmul":
        w = b.weight("w", rng.normal(0, 0.2, (40, 10)).astype(np.float32), 2.0 ** -7)
        y = b.node("MatMul", [b.dq(x), w], "fc")
    else:
        other = b.input("z", [40, 10], 2.0 ** -5)
        y = b.node("MatMul", [b.dq(x), b.dq(other)], "fc")
    b.output(b.quantize(b.node("Relu", [y], "fc_relu"), 2.0 ** -3), "y")
    feeds = {"x": _x([2, 40], 4)}
    if kind == "matmul_act":
        feeds["z"] = _x([40, 10], 5)
    diffs = compare_with_ort(b.model(), feeds, "cpu-int8" if kind == "matmul_act" else DPU)
    assert max(diffs.values()) == 0, diffs


def test_conv_transpose_is_bit_exact():
    rng = np.random.default_rng(5)
    b = Builder("half_up")
    x = b.input("x", [1, 4, 5, 6], 2.0 ** -4)
    w = b.weight("w", rng.normal(0, 0.3, (4, 6, 3, 3)).astype(np.float32), 2.0 ** -7)
    y = b.node("ConvTranspose", [b.dq(x), w, b.bias("b", rng.normal(0, 1, 6), 2.0 ** -11)], "ct",
               strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
    b.output(b.quantize(y, 2.0 ** -3), "y")
    diffs = compare_with_ort(b.model(), {"x": _x([1, 4, 5, 6], 6)}, DPU)
    assert max(diffs.values()) == 0, diffs


def test_default_ort_optimisation_level_agrees_on_power_of_two():
    model = _conv_model("half_even", "relu")
    diffs = compare_with_ort(model, {"x": _x([1, 8, 13, 11], 2)}, DPU, levels=("disable", "all"))
    assert max(diffs.values()) == 0, diffs


def test_int16_activations_are_bit_exact():
    """16-bit tensors: convolutions split into bytes, matrix products in float64, 64k-entry tables."""
    rng = np.random.default_rng(12)
    b = Builder("half_up", opset=21)
    x = b.input("x", [1, 6, 9, 9], 2.0 ** -12, dtype="int16")
    c = b.node("Conv", [b.dq(x), b.weight("w", rng.normal(0, 0.3, (8, 6, 3, 3)).astype(np.float32), 2.0 ** -7),
                        b.bias("b", rng.normal(0, 1, 8), 2.0 ** -19)], "conv", pads=[1, 1, 1, 1])
    y = b.quantize(b.node("Relu", [c], "relu"), 2.0 ** -11, dtype="int16")
    p = b.quantize(b.node("MaxPool", [b.dq(y)], "mp", kernel_shape=[3, 3], strides=[3, 3]), 2.0 ** -11,
                   dtype="int16")
    a = b.quantize(b.node("GlobalAveragePool", [b.dq(p)], "gap"), 2.0 ** -12, dtype="int16")
    f = b.node("Flatten", [b.dq(a)], "flat", axis=1)
    fq = b.quantize(f, 2.0 ** -12, dtype="int16")
    g = b.node("Gemm", [b.dq(fq), b.weight("fw", rng.normal(0, 0.3, (5, 8)).astype(np.float32), 2.0 ** -7)],
               "fc", transB=1)
    b.output(b.quantize(g, 2.0 ** -6), "y")
    diffs = compare_with_ort(b.model(), {"x": _x([1, 6, 9, 9], 13, 2.0)}, "cpu-int8")
    assert max(diffs.values()) == 0, diffs
