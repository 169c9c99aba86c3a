"""ONNX Runtime's integer kernels inside the fused runs (``runtime/fused_qlinear.py``): uint8
float-scale groups run as ``QLinearConv``/``QLinearAdd`` on uint8 codes, bit-exact with the
kernels of ``numerics``, and fall back to the float forms where this CPU's kernels differ."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import npuflow
from npuflow import numerics as nm
from npuflow import ort_kernels
from npuflow.runtime import fused, fused_graph, fused_pairs, fused_qgemm, fused_qlinear
from tests.qdq_builder import Builder
from tests.unit.test_compiler_kernels import CPU, DPU, _x
from tests.unit.test_runtime_fused import _equal_fused_and_kernels


def _uint8_block() -> "Builder":
    """conv 3x3 + Relu -> TF-style pad -> depthwise stride 2 -> 1x1 conv, + a residual add, all
    uint8 with per-channel weights; one channel of the first conv has a tiny weight scale, so its
    int32 bias saturates (a near-dead channel whose accumulator would leave int32)."""
    rng = np.random.default_rng(31)
    b = Builder("half_even")
    x = b.input("x", [1, 8, 12, 12], 0.043, 128, "uint8")
    ws = np.linspace(0.004, 0.01, 8).astype(np.float32)
    ws[3] = 1e-9
    w1 = b.weight("w1", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), ws, axis=0)
    bias = rng.normal(0, 0.5, 8)
    bias[3] = 50.0
    b1 = b.bias("b1", bias, np.float32(0.043) * ws)
    c = b.node("Conv", [b.dq(x), w1, b1], "conv", pads=[1, 1, 1, 1])
    c = b.node("Relu", [c], "relu")  # a clamp the uint8 output range applies: ONNX Runtime fuses it
    c = b.quantize(c, 0.024, 0, "uint8")
    p = b.quantize(b.node("Pad", [b.dq(c), b.const("pads", np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64))], "pad"),
                   0.024, 0, "uint8")
    k = b.weight("k", rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32), np.full(8, 0.0093, np.float32), axis=0)
    d = b.quantize(b.node("Conv", [b.dq(p), k], "depthwise", group=8, strides=[2, 2]), 0.05, 131, "uint8")
    w2 = b.weight("w2", rng.normal(0, 0.3, (8, 8, 1, 1)).astype(np.float32), np.full(8, 0.011, np.float32), axis=0)
    e = b.quantize(b.node("Conv", [b.dq(d), w2], "pointwise"), 0.04, 120, "uint8")
    b.output(b.quantize(b.node("Add", [b.dq(d), b.dq(e)], "add"), 0.07, 125, "uint8"), "out")
    return b


def _live_ops(plan: fused.Plan) -> list[str]:
    run = next(it for it in plan.items if isinstance(it, fused.FusedRun))
    g = run.graph()
    heads = [g.bytes[t] if t in g.bytes else g.names[t] for t in run.outputs]
    return [n.op_type for n in fused_graph.live(g.nodes, g.inits, heads)[0]]


@pytest.mark.parametrize("scale", [0.3, 2.0, 20.0])  # small codes, everyday ones, saturation
def test_uint8_groups_run_on_integer_kernels_exactly(scale):
    plan = _equal_fused_and_kernels(_uint8_block().model(), {"x": _x([1, 8, 12, 12], 7, scale)}, CPU)
    assert not plan.reasons, plan.reasons
    ops = _live_ops(plan)
    # three convolutions and the add on ONNX Runtime's integer kernels, the pad folded, no float pass
    assert ops.count("QLinearConv") == 3 and ops.count("QLinearAdd") == 1, ops
    # before them the input's quantize step, after them the output's dequantize step, in float32
    assert set(ops[ops.index("QLinearConv"):ops.index("QLinearAdd") + 1]) == {"QLinearConv", "QLinearAdd"}, ops


def test_float_forms_serve_where_the_integer_kernels_differ(monkeypatch):
    monkeypatch.setattr(ort_kernels, "exact", lambda: False)
    monkeypatch.setattr(ort_kernels, "weight_form", lambda: None)
    plan = _equal_fused_and_kernels(_uint8_block().model(), {"x": _x([1, 8, 12, 12], 7, 2.0)}, CPU)
    ops = _live_ops(plan)
    assert "QLinearConv" not in ops and ops.count("Conv") == 3, ops


def test_probe_notices_kernels_that_round_otherwise(monkeypatch):
    # this machine's kernels compute what numerics defines, in one of the weight forms (int8
    # weights where MLAS' uint8 x int8 kernels do not saturate, else uint8 weights + 128)
    assert ort_kernels.weight_form.__wrapped__() in ("s8", "u8")
    assert ort_kernels.exact.__wrapped__()
    real = nm.requantize_float
    monkeypatch.setattr(nm, "requantize_float", lambda acc, m, mode: real(acc, m, mode) + (np.asarray(acc) % 7 == 0))
    assert ort_kernels.weight_form.__wrapped__() is None


def test_probe_checks_the_power_of_two_rounding_too(monkeypatch):
    # numerics' tie rule that the nudged multipliers stand for (a changed rule: no integer kernels)
    real = nm.shift_round
    monkeypatch.setattr(nm, "shift_round", lambda acc, s, mode: real(acc, s, "half_even" if mode == "half_up" else mode))
    assert ort_kernels.weight_form.__wrapped__() is None


def test_saturating_uint8_x_int8_kernels_fall_back_to_uint8_weights(monkeypatch):
    # MLAS without VNNI adds pairs of uint8 x int8 products in saturating 16-bit lanes: the probe
    # must then pick uint8 weights (exact 16-bit products), whatever this machine's CPU does
    real = ort_kernels._conv_exact
    monkeypatch.setattr(ort_kernels, "_conv_exact", lambda rng, form, *shape: form == "u8" and real(rng, form, *shape))
    assert ort_kernels.weight_form.__wrapped__() == "u8"
    monkeypatch.setattr(ort_kernels, "weight_form", lambda: "u8")
    # no lanes known (test_ort_kernels_pairs: where they are, weights that cannot saturate stay int8)
    monkeypatch.setattr(ort_kernels, "pairing_confirmed", lambda: False)
    plan = _equal_fused_and_kernels(_uint8_block().model(), {"x": _x([1, 8, 12, 12], 7, 20.0)}, CPU)
    assert _live_ops(plan).count("QLinearConv") == 3
    g = next(it for it in plan.items if isinstance(it, fused.FusedRun)).graph()
    weights = {t.name: t for t in g.inits}
    convs = [n for n in g.nodes if n.op_type == "QLinearConv"]
    assert all(weights[n.input[3]].data_type == TensorProto.UINT8 for n in convs)


def _one_pair_off(real):
    """``numerics.qlinear_add`` one step off on a single pair of codes (a = 17, b = 200): an integer
    kernel that rounds one pair in 65,536 otherwise."""
    def add(a, sa, za, b, sb, zb, sc, zc, **flags):
        return real(a, sa, za, b, sb, zb, sc, zc, **flags) + ((np.asarray(a) == 17) & (np.asarray(b) == 200))
    return add


def test_add_check_refuses_an_integer_kernel_that_differs_on_a_few_pairs(monkeypatch, tmp_path):
    # numerics defines the add; where ONNX Runtime's QLinearAdd differs from it on any pair of
    # codes with the op's scales the kernels of numerics serve, though the process probe (random
    # codes, one set of scales) passes (measured before the check: the fused run used QLinearAdd)
    monkeypatch.setattr(nm, "qlinear_add", _one_pair_off(nm.qlinear_add))
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))  # no verdict of the real numerics from the disk cache
    fused_qlinear._qlinear_add_matches.cache_clear()
    fused_pairs._add_float_matches.cache_clear()  # its float form differs from that numerics too
    try:
        assert ort_kernels.exact.__wrapped__()  # the probe does not see it
        assert not fused_qlinear._qlinear_add_matches(0.05, 131, 0.04, 120, 0.07, 125)  # _uint8_block's add
        plan = _equal_fused_and_kernels(_uint8_block().model(), {"x": _x([1, 8, 12, 12], 7, 2.0)}, CPU)
        ops = _live_ops(plan)
        assert "QLinearAdd" not in ops and ops.count("QLinearConv") == 3, ops
    finally:
        fused_qlinear._qlinear_add_matches.cache_clear()
        fused_pairs._add_float_matches.cache_clear()


def test_add_check_accepts_onnxruntimes_kernel_on_every_pair():
    assert fused_qlinear._qlinear_add_matches(0.05, 131, 0.04, 120, 0.07, 125)
    assert fused_qlinear._qlinear_add_matches(0.31102362, 128, 0.029210764, 0, 0.16302805, 0)  # YOLOv8n's anchor add as uint8


@pytest.mark.parametrize("silu_scale", [0.033, 0.0331, 0.0332])
def test_tables_and_data_movement_keep_uint8_codes_between_integer_kernels(silu_scale):
    # YOLOv8's C2f on uint8: conv -> SiLU (QLinearSigmoid, then QLinearMul) -> split -> conv on
    # one half -> concat -> max pool -> 2x nearest resize -> conv: the codes stay uint8 from kernel
    # to kernel (no float32 view, no cast), and equal the kernels' bit for bit.  With the SiLU
    # output on 0.033, 190 of the 65,536 code pairs are exact ties, which ONNX Runtime's
    # QLinearMul rounds after adding the zero point (numerics: before), and one of them is a pair
    # (x, sigmoid(x)) that SiLU meets, so the probe keeps the float form of that product; on
    # 0.0331 there is no tie, and on 0.0332 ties among the 65,536 pairs but none among SiLU's 256
    # (the only pairs its product meets): QLinearMul serves both
    rng = np.random.default_rng(41)
    b = Builder("half_even")
    x = b.input("x", [1, 8, 12, 12], 0.043, 128, "uint8")

    def conv(t, cin, cout, name, k=1, scale=0.06, zp=120):
        w = b.weight(f"w_{name}", rng.normal(0, 0.3, (cout, cin, k, k)).astype(np.float32),
                     np.full(cout, 0.009, np.float32), axis=0)
        return b.quantize(b.node("Conv", [b.dq(t), w], name, pads=[k // 2] * 4), scale, zp, "uint8")

    c = conv(x, 8, 8, "conv", 3)
    s = b.quantize(b.node("Sigmoid", [b.dq(c)], "sig"), 1 / 256, 0, "uint8")
    m = b.quantize(b.node("Mul", [b.dq(c), b.dq(s)], "silu"), silu_scale, 9, "uint8")
    halves = b.node("Split", [b.dq(m), b.const("sizes", np.array([4, 4], np.int64))], "split", n_out=2, axis=1)
    h0, h1 = (b.quantize(h, silu_scale, 9, "uint8") for h in halves)
    e = conv(h1, 4, 4, "inner", scale=silu_scale, zp=9)  # the concat's parts and output share their grid
    cat = b.quantize(b.node("Concat", [b.dq(h0), b.dq(e)], "concat", axis=1), silu_scale, 9, "uint8")
    p = b.quantize(b.node("MaxPool", [b.dq(cat)], "pool", kernel_shape=[2, 2], strides=[2, 2]), silu_scale, 9,
                   "uint8")
    r = b.node("Resize", [b.dq(p), "", b.const("scales", np.array([1, 1, 2, 2], np.float32))], "up", mode="nearest")
    b.output(conv(b.quantize(r, silu_scale, 9, "uint8"), 8, 4, "last"), "out")
    plan = _equal_fused_and_kernels(b.model(), {"x": _x([1, 8, 12, 12], 8, 2.0)}, CPU)
    assert not plan.reasons, plan.reasons
    ops = _live_ops(plan)
    core = ops[ops.index("QLinearConv"):len(ops) - ops[::-1].index("QLinearConv")]
    # the 2x upsampling: ONNX Runtime's Resize on the bytes, or on float codes (the product kept in
    # float, 0.033) an Expand written channels-last (fused._upsample_channels_last)
    upsample = "Expand" if silu_scale == 0.033 else "Resize"
    assert core.count("QLinearConv") == 3 and {"Slice", "Concat", "MaxPool", upsample} <= set(core), ops
    assert core.count("QLinearSigmoid") == 1 and "GatherElements" not in core, core
    assert ("QLinearMul" in core) == (silu_scale != 0.033), core
    if "QLinearMul" in core:  # nothing leaves uint8 but the max pool's float32 round trip (fused._maxpool)
        assert core.count("Cast") == 2 and ["Cast", "MaxPool", "Cast"] in [core[i:i + 3] for i in range(len(core))], core


def test_product_of_a_sigmoid_of_another_tensor_is_checked_on_every_pair():
    # the same SiLU scales as above at 0.0332 (ties among the 65,536 pairs, none among (x,
    # sigmoid(x))), but the sigmoid is of a second convolution: the product meets every pair, so
    # the check on all of them keeps the float form; its codes still equal the kernels'
    rng = np.random.default_rng(41)
    b = Builder("half_even")
    x = b.input("x", [1, 8, 12, 12], 0.043, 128, "uint8")
    convs = [b.quantize(b.node("Conv", [b.dq(x), b.weight(f"w{k}", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32),
                                                           np.full(8, 0.009, np.float32), axis=0)],
                               f"conv{k}", pads=[1, 1, 1, 1]), 0.06, 120, "uint8") for k in range(2)]
    s = b.quantize(b.node("Sigmoid", [b.dq(convs[1])], "sig"), 1 / 256, 0, "uint8")
    b.output(b.quantize(b.node("Mul", [b.dq(convs[0]), b.dq(s)], "product"), 0.0332, 9, "uint8"), "out")
    plan = _equal_fused_and_kernels(b.model(), {"x": _x([1, 8, 12, 12], 8, 2.0)}, CPU)
    ops = _live_ops(plan)
    assert "QLinearSigmoid" in ops and "QLinearMul" not in ops, ops


def _pow2_block(mode: str, relu_first: bool) -> "Builder":
    """Int8 power-of-two block as a DPU runs it: conv 3x3 (+ Relu) -> depthwise 3x3 stride 2 ->
    1x1 conv, + a residual add; shifts 9, 4 (a tie in every 16 accumulators) and 14 (the
    largest the nudged multipliers serve), output clamps 0..127 or -128..127."""
    rng = np.random.default_rng(37)
    b = Builder(mode)
    x = b.input("x", [1, 8, 12, 12], 2.0 ** -4)
    w1 = b.weight("w1", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), 2.0 ** -8)
    b1 = b.bias("b1", rng.normal(0, 0.5, 8), 2.0 ** -12)
    c = b.node("Conv", [b.dq(x), w1, b1], "conv", pads=[1, 1, 1, 1])
    if relu_first:
        c = b.node("Relu", [c], "relu")
    c = b.quantize(c, 2.0 ** -3)
    k = b.weight("k", rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32), 2.0 ** -7)
    d = b.quantize(b.node("Conv", [b.dq(c), k], "depthwise", group=8, strides=[2, 2], pads=[1, 1, 1, 1]), 2.0 ** -6)
    w2 = b.weight("w2", rng.normal(0, 0.3, (8, 8, 1, 1)).astype(np.float32), 2.0 ** -9)
    e = b.quantize(b.node("Conv", [b.dq(d), w2], "pointwise"), 2.0 ** -1)
    b.output(b.quantize(b.node("Add", [b.dq(d), b.dq(e)], "add"), 2.0 ** -1), "out")
    return b


@pytest.mark.parametrize("mode", ["half_up", "half_down", "half_even"])
@pytest.mark.parametrize("relu_first", [True, False])
@pytest.mark.parametrize("scale", [0.5, 4.0, 40.0])  # small codes, everyday ones, saturation
def test_power_of_two_convolutions_run_on_integer_kernels_exactly(mode, relu_first, scale):
    # the shift's tie rule through nudged float32 multipliers (numerics.shift_as_float32_multiplier),
    # int8 codes as uint8 bytes moved by 128 (or by 0 after the Relu's clamp)
    plan = _equal_fused_and_kernels(_pow2_block(mode, relu_first).model(), {"x": _x([1, 8, 12, 12], 9, scale)}, DPU)
    assert not plan.reasons, plan.reasons
    ops = _live_ops(plan)
    core = ops[ops.index("QLinearConv"):len(ops) - ops[::-1].index("QLinearConv")]
    assert core.count("QLinearConv") == 3 and not {"Conv", "Round", "Floor", "Cast"} & set(core), ops


@pytest.mark.parametrize("mode", ["half_up", "half_down", "half_even"])
@pytest.mark.parametrize("shift", [-3, 0, 1, 2, 7, 14])
def test_nudged_multipliers_give_the_tie_rule_on_every_accumulator(mode, shift):
    # every accumulator whose result lands in -2..257 (all ties on the grid), and random int32 ones
    span = 1 << max(shift, 0)
    acc = np.concatenate([np.arange(-2 * span, 258 * span),
                          np.random.default_rng(shift + 40).integers(-(1 << 31), 1 << 31, 20000)])
    m = nm.shift_as_float32_multiplier(np.array([shift]), mode)[0]
    mlas = np.clip(np.rint((acc.astype(np.float32) * m).astype(np.float32)), 0, 255)  # MLAS' output stage
    assert np.array_equal(mlas, np.clip(nm.shift_round(acc, shift, mode), 0, 255))
    if shift > 0 and mode != "half_even":  # the nudge is needed: ties otherwise go to even
        plain = np.clip(np.rint((acc.astype(np.float32) * np.float32(2.0 ** -shift)).astype(np.float32)), 0, 255)
        assert not np.array_equal(plain, mlas)
    assert nm.shift_as_float32_multiplier(np.array([nm.MAX_NUDGED_SHIFT + 1]), mode) is None


def test_lone_power_of_two_convolution_between_float_tensors_stays_float():
    # int8 codes in from outside, codes out to the caller: QLinearConv would add a conversion on
    # each side, so the exact float32 convolution serves
    from tests.unit.test_compiler_kernels import _conv_model

    plan = _equal_fused_and_kernels(_conv_model("half_up", "relu"), {"x": _x([1, 8, 13, 11], 3, 4.0)}, DPU)
    ops = _live_ops(plan)
    assert "Conv" in ops and "QLinearConv" not in ops, ops


@pytest.mark.parametrize("mode", ["half_up", "half_down", "half_even"])
@pytest.mark.parametrize("scale", [0.5, 4.0, 40.0])  # small codes, everyday ones, saturation
def test_heavy_power_of_two_convolution_between_float_tensors_runs_on_qlinearconv_exactly(mode, scale):
    # 32 input channels x 3x3 = 288 taps an output (HEAVY_TAPS and more): the int8 GEMM saves more
    # than the conversions on each side cost (PP-OCRv4 det's neck on the DPU); the 72-tap layer of
    # the test above stays float
    from tests.unit.test_compiler_kernels import _conv_model

    plan = _equal_fused_and_kernels(_conv_model(mode, "relu", cin=32), {"x": _x([1, 32, 13, 11], 5, scale)}, DPU)
    assert not plan.reasons, plan.reasons
    ops = _live_ops(plan)
    assert 32 * 9 >= fused_qlinear.HEAVY_TAPS > 8 * 9 and "QLinearConv" in ops and "Conv" not in ops, ops
    # a depthwise layer of as many taps is not dense: it keeps the float convolution
    plan = _equal_fused_and_kernels(_conv_model(mode, "relu", group=32, cin=32, cout=32, k=17, pads=(8, 8, 8, 8)),
                                    {"x": _x([1, 32, 13, 11], 5, scale)}, DPU)
    ops = _live_ops(plan)
    assert 17 * 17 >= fused_qlinear.HEAVY_TAPS and "Conv" in ops and "QLinearConv" not in ops, ops


def _qlinear_conv_channels(plan: fused.Plan) -> list[int]:
    """The output channels of each ``QLinearConv`` of ``plan``'s fused run (its weights' first dimension)."""
    g = next(it for it in plan.items if isinstance(it, fused.FusedRun)).graph()
    dims = {t.name: list(t.dims) for t in g.inits}
    return [dims[n.input[3]][0] for n in g.nodes if n.op_type == "QLinearConv"]


@pytest.mark.parametrize("mode", ["half_up", "half_even"])
def test_convolution_channels_padded_to_the_kernels_block_exactly(mode, monkeypatch):
    # 12 output channels run as 16 (CHANNEL_BLOCK; MLAS takes twice as long for 12) and are sliced
    # back; 143 output pixels are below PAD_PIXELS, so the threshold is lowered here (exactness: the
    # padded channels are zero weights sliced off, the others the kernels' codes)
    from tests.unit.test_compiler_kernels import _conv_model

    x = {"x": _x([1, 32, 13, 11], 5, 4.0)}
    assert 13 * 11 < fused_qlinear.PAD_PIXELS and 12 % fused_qlinear.CHANNEL_BLOCK
    plan = _equal_fused_and_kernels(_conv_model(mode, "relu", cin=32, cout=12), x, DPU)
    assert _qlinear_conv_channels(plan) == [12] and "Slice" not in _live_ops(plan)  # too few pixels
    monkeypatch.setattr(fused_qlinear, "PAD_PIXELS", 64)
    plan = _equal_fused_and_kernels(_conv_model(mode, "relu", cin=32, cout=12), x, DPU)
    assert not plan.reasons and _qlinear_conv_channels(plan) == [16] and "Slice" in _live_ops(plan), plan.reasons
    # 26 run as 28 (a multiple of CHANNEL_STEP); 16 and 24, and a depthwise layer (its channels are
    # its input's), stay as they are
    plan = _equal_fused_and_kernels(_conv_model(mode, "relu", cin=32, cout=26), x, DPU)
    assert _qlinear_conv_channels(plan) == [28] and "Slice" in _live_ops(plan)
    for cout in (16, 24):
        plan = _equal_fused_and_kernels(_conv_model(mode, "relu", cin=32, cout=cout), x, DPU)
        assert _qlinear_conv_channels(plan) == [cout] and "Slice" not in _live_ops(plan)
    monkeypatch.setattr(fused_qlinear, "PAD_PIXELS", 1)
    block = _pow2_block(mode, relu_first=True).model()  # 8 channels each: 3x3, depthwise, 1x1
    plan = _equal_fused_and_kernels(block, {"x": _x([1, 8, 12, 12], 9, 4.0)}, DPU)
    assert _qlinear_conv_channels(plan) == [16, 8, 16], _qlinear_conv_channels(plan)


@pytest.mark.parametrize("mode", ["half_up", "half_even"])
def test_large_power_of_two_fully_connected_layer_runs_on_an_integer_kernel_exactly(mode, monkeypatch):
    # 512 x 160 weights (LARGE_WEIGHTS and more) between float32 tensors: one byte a weight on
    # QGemm (one shift: one multiplier), as exact as the float form the small layers keep
    rng = np.random.default_rng(47)
    b = Builder(mode)
    x = b.input("x", [3, 512], 2.0 ** -5)
    w = b.weight("w", rng.normal(0, 0.3, (160, 512)).astype(np.float32), 2.0 ** -7)
    bias = b.bias("b", rng.normal(0, 0.5, 160), np.float32(2.0 ** -12))
    b.output(b.quantize(b.node("Gemm", [b.dq(x), w, bias], "fc", transB=1), 2.0 ** -2), "out")
    plan = _equal_fused_and_kernels(b.model(), {"x": _x([3, 512], 45, scale=8.0)}, DPU)
    assert not plan.reasons, plan.reasons
    ops = _live_ops(plan)
    assert 160 * 512 >= fused_qgemm.LARGE_WEIGHTS and "QGemm" in ops and "Conv" not in ops, ops
    monkeypatch.setattr(fused_qgemm, "qgemm_exact", lambda: False)  # the convolution form otherwise
    ops = _live_ops(_equal_fused_and_kernels(b.model(), {"x": _x([3, 512], 45, scale=8.0)}, DPU))
    assert "QLinearConv" in ops and "Conv" not in ops, ops


@pytest.mark.parametrize("scale", [0.3, 2.0, 20.0])
def test_global_average_of_uint8_codes_is_onnxruntimes_own_kernel(scale):
    # conv (QLinearConv, uint8 codes) -> GlobalAveragePool -> quantize: ONNX Runtime fuses the
    # average into QLinearGlobalAveragePool, which the fused run then is itself (one node instead
    # of a float32 view, a sum, a multiplier and the rounding passes), equal to the kernels
    rng = np.random.default_rng(53)
    b = Builder("half_even")
    x = b.input("x", [1, 8, 9, 14], 0.043, 128, "uint8")
    w = b.weight("w", rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32), np.full(16, 0.007, np.float32), axis=0)
    c = b.quantize(b.node("Conv", [b.dq(x), w], "conv", pads=[1, 1, 1, 1]), 0.031, 17, "uint8")
    b.output(b.quantize(b.node("GlobalAveragePool", [b.dq(c)], "gap"), 0.0123, 131, "uint8"), "out")
    plan = _equal_fused_and_kernels(b.model(), {"x": _x([1, 8, 9, 14], 11, scale)}, CPU)
    assert not plan.reasons, plan.reasons
    ops = _live_ops(plan)
    assert ops.count("QLinearGlobalAveragePool") == 1 and "ReduceSum" not in ops, ops


def _se_product(batch: int = 1) -> "Builder":
    """conv (uint8 codes) times a per-channel scale from its global average (an SE block's
    product, broadcast [N, C, 1, 1]), float scales."""
    rng = np.random.default_rng(59)
    b = Builder("half_even")
    x = b.input("x", [batch, 8, 7, 10], 0.043, 128, "uint8")
    w = b.weight("w", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), np.full(8, 0.007, np.float32), axis=0)
    c = b.quantize(b.node("Conv", [b.dq(x), w], "conv", pads=[1, 1, 1, 1]), 0.031, 17, "uint8")
    s = b.quantize(b.node("GlobalAveragePool", [b.dq(c)], "gap"), 0.0123, 3, "uint8")
    b.output(b.quantize(b.node("Mul", [b.dq(c), b.dq(s)], "se"), 0.029, 9, "uint8"), "out")
    return b


@pytest.mark.parametrize("scale", [0.3, 2.0, 20.0])
def test_se_product_of_a_per_channel_scale_runs_on_qlinearmul_exactly(scale):
    plan = _equal_fused_and_kernels(_se_product().model(), {"x": _x([1, 8, 7, 10], 13, scale)}, CPU)
    assert not plan.reasons, plan.reasons
    ops = _live_ops(plan)
    # no float pass: the input's quantize step is QuantizeLinear (test_runtime_quantize_steps.py)
    assert ops.count("QLinearMul") == 1 and "Round" not in ops and "QuantizeLinear" in ops, ops


@pytest.mark.parametrize("scale", [0.3, 20.0])
def test_se_product_at_batch_3_runs_on_qlinearmul_exactly(scale):
    # each image's own per-channel scale ([3, C, 1, 1]): the same kernel as at batch 1 (PP-OCR
    # cls cpu-int8 at batch 8 took the float form of its nine SE products before)
    plan = _equal_fused_and_kernels(_se_product(3).model(), {"x": _x([3, 8, 7, 10], 17, scale)}, CPU)
    assert not plan.reasons, plan.reasons
    ops = _live_ops(plan)
    assert ops.count("QLinearMul") == 1 and "Round" not in ops, ops


def test_broadcast_product_stays_float_where_the_kernel_differs_on_a_pair(monkeypatch, tmp_path):
    real = fused_pairs.on_all_pairs
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))  # no verdict of the real kernel from the disk cache
    fused_qlinear._mul_matches.cache_clear()

    def one_off(op_type, inputs, inits, pairs=fused_pairs.ALL_PAIRS):
        got = real(op_type, inputs, inits, pairs)
        if pairs is not fused_pairs.ALL_PAIRS:  # the broadcast path only
            got = got.copy()
            got.flat[12345] ^= 1
        return got

    monkeypatch.setattr(fused_pairs, "on_all_pairs", one_off)
    try:
        plan = _equal_fused_and_kernels(_se_product().model(), {"x": _x([1, 8, 7, 10], 13, 2.0)}, CPU)
        assert "QLinearMul" not in _live_ops(plan)
    finally:
        fused_qlinear._mul_matches.cache_clear()


def _requantising_concat() -> "Builder":
    """Two uint8 convolutions on scales of their own and the input itself (a third scale),
    concatenated onto a fourth scale and read by a 1x1 convolution: each part requantises
    (a table per part), as in a model quantized elsewhere (ONNX Runtime's quantizer)."""
    rng = np.random.default_rng(41)
    b = Builder("half_even")
    x = b.input("x", [1, 8, 12, 12], 0.043, 128, "uint8")
    parts = [x]
    for k, (scale, zp) in enumerate([(0.024, 0), (0.05, 131)]):
        w = b.weight(f"w{k}", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), np.full(8, 0.009, np.float32),
                     axis=0)
        parts.append(b.quantize(b.node("Conv", [b.dq(x), w], f"conv{k}", pads=[1, 1, 1, 1]), scale, zp, "uint8"))
    c = b.quantize(b.node("Concat", [b.dq(p) for p in parts], "concat", axis=1), 0.061, 117, "uint8")
    w = b.weight("w2", rng.normal(0, 0.3, (8, 24, 1, 1)).astype(np.float32), np.full(8, 0.011, np.float32), axis=0)
    b.output(b.quantize(b.node("Conv", [b.dq(c), w], "pointwise"), 0.04, 120, "uint8"), "out")
    return b


def test_requantising_concat_runs_on_qlinearconcat_exactly():
    plan = _equal_fused_and_kernels(_requantising_concat().model(), {"x": _x([1, 8, 12, 12], 7, 2.0)}, CPU)
    assert not plan.reasons, plan.reasons  # before: the concat ran as its kernel between two fused runs
    ops = _live_ops(plan)
    assert ops.count("QLinearConcat") == 1 and ops.count("QLinearConv") == 3 and "GatherElements" not in ops, ops


def test_requantising_concat_stays_a_kernel_where_qlinearconcat_differs_on_a_code(monkeypatch, tmp_path):
    real = fused_qlinear.probe_session
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))  # no verdict of the real kernel from the disk cache
    fused_qlinear._concat_matches.cache_clear()

    class OneCodeOff:
        """ONNX Runtime's session with code 200 of its output one step off."""

        def __init__(self, session):
            self.session = session

        def run(self, names, feeds):
            got = [y.copy() for y in self.session.run(names, feeds)]
            got[0].flat[200] ^= 1
            return got

    monkeypatch.setattr(fused_qlinear, "probe_session", lambda nodes, *a, **k: (
        OneCodeOff if nodes[0].op_type == "QLinearConcat" else lambda session: session)(real(nodes, *a, **k)))
    try:
        assert not fused_qlinear._concat_matches(0.024, 0, 0.061, 117, np.arange(256, dtype=np.int64).tobytes())
        plan = _equal_fused_and_kernels(_requantising_concat().model(), {"x": _x([1, 8, 12, 12], 7, 2.0)}, CPU)
        assert list(plan.reasons.values()) == ["lookup table part"], plan.reasons  # constant parts fuse (1ee278e)
        assert all("QLinearConcat" not in _live_ops(fused.Plan([it], {}))
                   for it in plan.items if isinstance(it, fused.FusedRun))
    finally:
        fused_qlinear._concat_matches.cache_clear()


def test_concat_check_accepts_onnxruntimes_kernel_and_refuses_another_table():
    codes = np.arange(256)
    table = np.clip(nm.quantize(nm.dequantize(codes, np.float32(0.024), 0), np.float32(0.061), 117, bits=8,
                                signed=False, round_mode=nm.ONNX_ROUND_MODE), 0, 255).astype(np.int64)
    assert fused_qlinear._concat_matches(0.024, 0, 0.061, 117, table.tobytes())
    assert fused_qlinear._concat_matches(0.061, 117, 0.061, 117, codes.astype(np.int64).tobytes())  # a copy
    table[37] += 1
    assert not fused_qlinear._concat_matches(0.024, 0, 0.061, 117, table.tobytes())


def test_onnxruntime_quantized_yolov8n_concatenations_run_on_qlinearconcat_exactly():
    # ORT's quantize_static gives each Concat input a scale of its own: 20 of YOLOv8n's concats
    # requantise their parts (npuflow's quantizer shares one scale per concat, so none of its own);
    # before, each ran as its kernel between two fused runs (20 runs instead of 3)
    from tests.models.test_foreign_exactness import SHAPES, _calibration, _ort_quantized

    model = npuflow.load(onnx.load(str(_ort_quantized("yolo", True))), input_shapes={"images": SHAPES["yolo"]})
    compiled = npuflow.compile(model, CPU)
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    x = {"images": _calibration("yolo")[0]["images"]}
    a, b = fast.run(x), ref.run(x)
    assert a.keys() == b.keys()
    for k in b:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    plans = [ex.plan for ex in fast._executors if hasattr(ex, "plan")]
    requantising = [op for ex in fast._executors if hasattr(ex, "plan") for op in ex._ops
                    if op["op"] == "concat" and any("table" in p for p in op["attrs"]["parts"])]
    runs = [it for p in plans for it in p.items if isinstance(it, fused.FusedRun)]
    qconcats = sum(n.op_type == "QLinearConcat" for run in runs for n in run.graph().nodes)
    assert len(requantising) >= 10 and qconcats == len(requantising), (len(requantising), qconcats)
    assert not [why for p in plans for why in p.reasons.values()] and len(runs) <= 4, len(runs)


def _image_conv(cin: int) -> "Builder":
    """A uint8 image of ``cin`` channels -> conv 3x3 stride 2 (per-channel weights) + Relu -> a
    1x1 conv: a network's first layer and the next."""
    rng = np.random.default_rng(53 + cin)
    b = Builder("half_even")
    x = b.input("x", [1, cin, 20, 18], 1 / 255, 3, "uint8")
    ws = np.linspace(0.002, 0.02, 16).astype(np.float32)
    w1 = b.weight("w1", rng.normal(0, 0.5, (16, cin, 3, 3)).astype(np.float32), ws, axis=0)
    b1 = b.bias("b1", rng.normal(0, 0.5, 16), np.float32(1 / 255) * ws)
    c = b.quantize(b.node("Relu", [b.node("Conv", [b.dq(x), w1, b1], "conv", pads=[1, 1, 1, 1], strides=[2, 2])],
                          "relu"), 0.02, 0, "uint8")
    w2 = b.weight("w2", rng.normal(0, 0.3, (8, 16, 1, 1)).astype(np.float32), np.full(8, 0.01, np.float32), axis=0)
    b.output(b.quantize(b.node("Conv", [b.dq(c), w2], "pointwise"), 0.05, 128, "uint8"), "out")
    return b


def _qlinear_conv_inputs(plan: fused.Plan) -> list[tuple[int, str]]:
    """Each ``QLinearConv`` of ``plan``'s fused run: its weights' input channels and the op writing its input."""
    g = next(it for it in plan.items if isinstance(it, fused.FusedRun)).graph()
    dims = {t.name: list(t.dims) for t in g.inits}
    writer = {o: n.op_type for n in g.nodes for o in n.output}
    return [(dims[n.input[3]][1], writer.get(n.input[0], "input")) for n in g.nodes if n.op_type == "QLinearConv"]


@pytest.mark.parametrize("cin", [1, 3])
def test_first_layer_of_few_channels_gets_zero_weight_channels_exactly(cin, monkeypatch):
    # 1 or 3 input channels run as CHANNEL_STEP (4): a Pad of the input's zero point and zero
    # weights, so every accumulator is the same (MLAS runs 4 channels 1.3-2x faster than 3); on
    # an image quantized over its whole range and past it, equal to the kernels and to the form
    # without the padding
    x = {"x": np.random.default_rng(cin).uniform(-0.1, 1.1, (1, cin, 20, 18)).astype(np.float32)}
    model = _image_conv(cin).model()
    plan = _equal_fused_and_kernels(model, x, CPU)
    assert not plan.reasons and _qlinear_conv_inputs(plan)[0] == (fused_qlinear.CHANNEL_STEP, "Pad"), \
        _qlinear_conv_inputs(plan)
    assert _qlinear_conv_inputs(plan)[1][0] == 16  # 16 channels are a multiple of the step: as they are
    padded = npuflow.Session(npuflow.compile(model, CPU)).run(x)
    monkeypatch.setattr(fused_qlinear, "input_padding", lambda w, attrs: 0)
    plan = _equal_fused_and_kernels(model, x, CPU)
    assert _qlinear_conv_inputs(plan)[0][0] == cin and "Pad" not in _live_ops(plan)
    plain = npuflow.Session(npuflow.compile(model, CPU)).run(x)
    assert all(np.array_equal(padded[k], plain[k]) for k in plain)
