"""ONNX Runtime's integer kernels inside the fused runs (``runtime/fused_qlinear.py``): uint8
float-scale groups run as ``QLinearConv``/``QLinearAdd`` on uint8 codes, bit-exact with the
kernels of ``numerics``, and fall back to the float forms where this CPU's kernels differ."""

from __future__ import annotations

import numpy as np
import pytest

from npuflow import numerics as nm
from npuflow.runtime import fused, fused_qlinear
from tests.qdq_builder import Builder
from tests.unit.test_compiler_kernels import CPU, _x
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
    g = run._graph
    heads = [g.bytes[t] if t in g.bytes else g.names[t] for t in run.outputs]
    return [n.op_type for n in fused._live(g.nodes, g.inits, heads)[0]]


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
    monkeypatch.setattr(fused_qlinear, "exact", lambda: False)
    plan = _equal_fused_and_kernels(_uint8_block().model(), {"x": _x([1, 8, 12, 12], 7, 2.0)}, CPU)
    ops = _live_ops(plan)
    assert "QLinearConv" not in ops and ops.count("Conv") == 3, ops


def test_probe_notices_kernels_that_round_otherwise(monkeypatch):
    assert fused_qlinear.exact.__wrapped__()  # this machine's kernels: what numerics defines
    real = nm.requantize_float
    monkeypatch.setattr(nm, "requantize_float", lambda acc, m, mode: real(acc, m, mode) + (np.asarray(acc) % 7 == 0))
    assert not fused_qlinear.exact.__wrapped__()


@pytest.mark.parametrize("silu_scale", [0.033, 0.0331])
def test_tables_and_data_movement_keep_uint8_codes_between_integer_kernels(silu_scale):
    # YOLOv8's C2f on uint8: conv -> SiLU (QLinearSigmoid, then QLinearMul) -> split -> conv on
    # one half -> concat -> max pool -> 2x nearest resize -> conv: the codes stay uint8 from kernel
    # to kernel (no float32 view, no cast), and equal the kernels' bit for bit.  With the SiLU
    # output on 0.033, 190 of the 65,536 code pairs are exact ties, which ONNX Runtime's
    # QLinearMul rounds after adding the zero point (numerics: before), so the probe keeps the
    # float form of that product; on 0.0331 there is no tie and QLinearMul serves
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
    assert core.count("QLinearConv") == 3 and {"Slice", "Concat", "MaxPool", "Resize"} <= set(core), ops
    assert core.count("QLinearSigmoid") == 1 and "ArrayFeatureExtractor" not in core, core
    assert ("QLinearMul" in core) == (silu_scale != 0.033), core
    if "QLinearMul" in core:  # nothing leaves uint8
        assert "Cast" not in core, core
