"""Dense convolutions with float epilogues on ONNX Runtime's ``ConvInteger`` (issue 19).

Where this CPU's uint8 x uint8 ``ConvInteger`` is exact (``ort_kernels.convinteger_exact``), a
dense convolution or fully connected layer whose epilogue is float (the DPU's LeakyReLU and
hard-swish chains: an accumulator table, or the float chain where the scales are per channel)
runs on it instead of a float32 ``Conv``, and gives the kernels' codes bit for bit: padded taps
(``ConvInteger`` pads with the input zero point) add nothing, strides and asymmetric padding
included.  Depthwise convolutions keep the float ``Conv``.
"""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow import ort_kernels
from npuflow.runtime import fused, fused_conv
from tests.qdq_builder import Builder
from tests.unit.test_compiler_kernels import CPU, DPU, _conv_model, _x
from tests.unit.test_runtime_fused import _equal_fused_and_kernels


def _ops(plan: fused.Plan) -> list[str]:
    """The op types of the plan's one fused run."""
    (run,) = [it for it in plan.items if isinstance(it, fused.FusedRun)]
    return [n.op_type for n in run.graph().nodes]


def _epilogue(model, target: str) -> tuple[dict, dict]:
    """The compiled op (conv or matmul) and its epilogue."""
    (op,) = [op for sg in npuflow.compile(model, target).manifest["subgraphs"] for op in sg.get("ops", [])
             if op["op"] in ("conv", "matmul")]
    return op, op["attrs"]["epilogue"]


def test_the_probe_finds_uint8_convinteger_exact_on_this_cpu():
    # MLAS widens uint8 x uint8 products to 16 bits before it adds them: exact on every x86-64
    # (ort_kernels' module docstring); the probe runs once per process and says so
    assert ort_kernels.convinteger_exact()


def _dense_model(target: str, act: str, k: int, strides: tuple, pads: tuple, w_n: int, per_channel: bool):
    """A dense convolution (8 -> 16 channels) with LeakyReLU or hard-swish fused as a float chain,
    weights on ``2^-w_n`` (times 0.83 on the CPU, whose codes are uint8 with zero points): coarse
    weights give short accumulators, whose table is small enough to be built."""
    rng = np.random.default_rng(41)
    b = Builder("half_up" if target == DPU else "half_even")
    s = (lambda n: 2.0 ** -n) if target == DPU else (lambda n: 0.83 * 2.0 ** -n)
    zp, dtype = (0, "int8") if target == DPU else (131, "uint8")
    x = b.input("x", [1, 8, 13, 11], s(5), zp, dtype)
    wscale = np.linspace(0.5, 1.0, 16).astype(np.float32) * np.float32(s(w_n)) if per_channel else s(w_n)
    w = b.weight("w", rng.normal(0, 0.3, (16, 8, k, k)).astype(np.float32), wscale, axis=0 if per_channel else None)
    bias = b.bias("b", rng.normal(0, 0.5, 16), np.float32(s(5)) * np.asarray(wscale, np.float32))
    c = b.node("Conv", [b.dq(x), w, bias], "conv", pads=list(pads), strides=list(strides), kernel_shape=[k, k])
    c = b.node("LeakyRelu", [c], "act", alpha=26 / 256) if act == "leaky" else b.node("HardSwish", [c], "act")
    b.output(b.quantize(c, s(2), zp // 2, dtype), "out")
    return b.model()


@pytest.mark.parametrize("target,act,w_n,per_channel,table", [
    (DPU, "leaky", 3, False, True), (DPU, "hswish", 3, False, True), (DPU, "leaky", 7, False, False),
    (CPU, "hswish", 3, False, True), (CPU, "leaky", 3, True, False)])
@pytest.mark.parametrize("k,strides,pads", [(3, (1, 1), (1, 1, 1, 1)), (3, (2, 2), (1, 1, 1, 1)),
                                            (3, (2, 1), (0, 2, 1, 0)), (1, (1, 1), (0, 0, 0, 0)),
                                            (1, (2, 2), (0, 0, 0, 0))])
def test_float_epilogue_dense_conv_runs_on_convinteger_exactly(target, act, w_n, per_channel, table, k, strides, pads):
    model = _dense_model(target, act, k, strides, pads, w_n, per_channel)
    op, ep = _epilogue(model, target)
    assert ep["mode"] == "float" and ep["chain"]
    if target == CPU:  # uint8 codes with a zero point: padded taps stand for it
        assert op["attrs"]["x_zp"] != 0
    for seed, scale in ((3, 0.5), (4, 3.0), (5, 40.0)):  # everyday codes, wide ones, saturated ones
        plan = _equal_fused_and_kernels(model, {"x": _x([1, 8, 13, 11], seed, scale)}, target)
    ops = _ops(plan)
    assert ops.count("ConvInteger") == 1 and "Conv" not in ops, ops
    # the accumulator table where the scales are per tensor and it is small, else the float chain
    assert ("GatherElements" in ops) == table, ops
    if table:  # indexed by the clamped int32 accumulator itself: no cast between
        assert _index_writer(plan) == "Clip", ops


def _index_writer(plan: fused.Plan) -> str:
    """The op type that writes the index of the plan's one table lookup (through its ``Reshape``)."""
    (run,) = [it for it in plan.items if isinstance(it, fused.FusedRun)]
    nodes = run.graph().nodes
    writer = {o: n for n in nodes for o in n.output}
    (gather,) = [n for n in nodes if n.op_type == "GatherElements"]
    flat = writer[gather.input[1]]
    assert flat.op_type == "Reshape"
    return writer[flat.input[0]].op_type


def test_depthwise_float_epilogue_keeps_the_float_conv():
    # ConvInteger is slower than the float Conv on a depthwise 3x3 (0.62 against 0.27 ms)
    model = _conv_model("half_up", "leaky", group=8, cout=8)
    plan = _equal_fused_and_kernels(model, {"x": _x([1, 8, 13, 11], 6, 3.0)}, DPU)
    ops = _ops(plan)
    assert "Conv" in ops and "ConvInteger" not in ops, ops


@pytest.mark.parametrize("target", [DPU, CPU])
def test_fully_connected_with_a_float_chain_runs_on_convinteger(target):
    rng = np.random.default_rng(47)
    b = Builder("half_up" if target == DPU else "half_even")
    s = (lambda n: 2.0 ** -n) if target == DPU else (lambda n: 0.83 * 2.0 ** -n)
    x = b.input("x", [5, 24], s(5))
    w = b.weight("w", rng.normal(0, 0.6, (7, 24)).astype(np.float32), s(7))
    bias = b.bias("b", rng.normal(0, 0.5, 7), np.float32(s(5)) * np.float32(s(7)))
    fc = b.node("Gemm", [b.dq(x), w, bias], "fc", transB=1)
    b.output(b.quantize(b.node("LeakyRelu", [fc], "act", alpha=26 / 256), s(4)), "out")
    op, ep = _epilogue(b.model(), target)
    assert op["op"] == "matmul" and ep["mode"] == "float"
    plan = _equal_fused_and_kernels(b.model(), {"x": _x([5, 24], 48, scale=8.0)}, target)
    ops = _ops(plan)
    # its 5 rows as they lie: MatMulInteger (fused_conv._rows_accumulator), no layout Transpose
    assert ops.count("MatMulInteger") == 1 and "Conv" not in ops and "ConvInteger" not in ops, ops
    assert "Transpose" not in ops, ops


def test_weight_code_minus_128_bounds_the_accumulator_table():
    # every weight at -128 (int8's |w| wraps to -128): the table must still span every accumulator
    b = Builder("half_up")
    x = b.input("x", [1, 8, 9, 7], 2.0 ** -5)
    w = b.weight("w", np.full((4, 8, 1, 1), -1.0, np.float32), 2.0 ** -7)
    c = b.node("HardSwish", [b.node("Conv", [b.dq(x), w], "conv", kernel_shape=[1, 1])], "act")
    b.output(b.quantize(c, 2.0 ** -5), "out")
    op, _ = _epilogue(b.model(), DPU)
    assert np.min(npuflow.compile(b.model(), DPU).blob(op["blobs"]["w"])) == -128
    for seed, scale in ((7, 1.0), (8, 8.0)):
        plan = _equal_fused_and_kernels(b.model(), {"x": _x([1, 8, 9, 7], seed, scale)}, DPU)
    ops = _ops(plan)
    assert "ConvInteger" in ops and "GatherElements" in ops, ops


@pytest.mark.parametrize("table", [True, False])
def test_codes_before_convinteger_are_held_on_its_offset(table):
    # a depthwise convolution (power-of-two, float Conv), or a table composed onto a
    # ConvInteger's accumulator table (hard-swish, then a one-value scale), before a ConvInteger
    # writes its int8 codes minus -128: the uint8 input is then one Cast, without an Add first;
    # the table writes those uint8 bytes itself, without the Cast
    rng = np.random.default_rng(53)
    b = Builder("half_up")
    x = b.input("x", [1, 8, 13, 11], 2.0 ** -5)
    if table:
        w0 = b.weight("w0", rng.normal(0, 0.3, (8, 8, 1, 1)).astype(np.float32), 2.0 ** -3)
        c = b.node("HardSwish", [b.node("Conv", [b.dq(x), w0], "pw0", kernel_shape=[1, 1])], "act0")
        k = b.weight("k", np.array([0.77], np.float32), 2.0 ** -7)
        c = b.quantize(b.node("Mul", [b.dq(b.quantize(c, 2.0 ** -4)), k], "scale"), 2.0 ** -4)
    else:
        dw = b.weight("dw", rng.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32), 2.0 ** -6)
        c = b.quantize(b.node("Conv", [b.dq(x), dw], "depthwise", pads=[1, 1, 1, 1], group=8), 2.0 ** -4)
    w = b.weight("w", rng.normal(0, 0.3, (16, 8, 1, 1)).astype(np.float32), 2.0 ** -3)
    pw = b.node("HardSwish", [b.node("Conv", [b.dq(c), w], "pw", kernel_shape=[1, 1])], "act")
    b.output(b.quantize(pw, 2.0 ** -2), "out")
    for seed, scale in ((9, 1.0), (10, 8.0)):
        plan = _equal_fused_and_kernels(b.model(), {"x": _x([1, 8, 13, 11], seed, scale)}, DPU)
    (run,) = [it for it in plan.items if isinstance(it, fused.FusedRun)]
    nodes = run.graph().nodes
    writer = {o: n for n in nodes for o in n.output}
    ci = [n for n in nodes if n.op_type == "ConvInteger"][-1]
    n = writer[ci.input[0]]
    if not table:
        assert n.op_type == "Cast", n.op_type
        n = writer[n.input[0]]
    while n.op_type == "Reshape":  # a lookup's row back in shape
        n = writer[n.input[0]]
    assert n.op_type == ("GatherElements" if table else "Round"), n.op_type


def test_without_an_exact_convinteger_the_float_conv_serves(monkeypatch):
    # a CPU whose ConvInteger the probe refuses: the float forms, exact, codes on their zero points
    monkeypatch.setattr(fused_conv, "convinteger_exact", lambda: False)
    model = _dense_model(DPU, "hswish", 3, (2, 2), (1, 1, 1, 1), 3, False)
    plan = _equal_fused_and_kernels(model, {"x": _x([1, 8, 13, 11], 11, 3.0)}, DPU)
    ops = _ops(plan)
    assert "ConvInteger" not in ops and "Conv" in ops, ops
