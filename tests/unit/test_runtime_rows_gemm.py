"""A fully connected layer of several rows on the float accumulator runs as ``Gemm`` of the rows as
they lie (``fused_conv._rows_gemm``, issue 19).

The 1x1-convolution form moved the rows to (1, K, rows, 1) and the result back (``Reshape ->
Transpose -> Reshape`` each way) and ONNX Runtime put NCHWc reorders around the ``Conv``: the
EfficientFormer-style net on B4096 ran its four token layers so, 10 nodes a layer where ``Gemm`` takes
about 5.  The codes stay the kernels' bit for bit: power-of-two shifts folded into the weights, a
float epilogue with per-channel scales, and sums past 2^24 (input-channel chunks in float64)."""

from __future__ import annotations

import numpy as np
import pytest

from npuflow.runtime import fused_conv
from tests.qdq_builder import Builder
from tests.unit.test_compiler_kernels import DPU, _x
from tests.unit.test_runtime_convinteger import _epilogue, _ops
from tests.unit.test_runtime_fused import _equal_fused_and_kernels


def _fully_connected(rows: list[int], k: int, n: int, act: str | None, seed: int, w_scale=2.0 ** -7,
                     w_std: float = 0.6):
    """A quantized ``Gemm`` (or a ``MatMul`` of 3-D rows) of ``k`` inputs and ``n`` outputs, with ``act`` after it."""
    rng = np.random.default_rng(seed)
    b = Builder("half_up")
    x = b.input("x", rows + [k], 2.0 ** -5)
    w = b.weight("w", rng.normal(0, w_std, (n, k)).astype(np.float32) if len(rows) == 1
                 else rng.normal(0, w_std, (k, n)).astype(np.float32), w_scale, axis=0 if np.ndim(w_scale) else None)
    bias = b.bias("b", rng.normal(0, 0.5, n), np.float32(2.0 ** -5) * np.asarray(w_scale, np.float32))
    if len(rows) == 1:
        fc = b.node("Gemm", [b.dq(x), w, bias], "fc", transB=1)
    else:
        fc = b.node("Add", [b.node("MatMul", [b.dq(x), w], "mm"), bias], "fc")
    if act is not None:
        fc = b.node("LeakyRelu", [fc], "act", alpha=26 / 256)
    b.output(b.quantize(fc, 2.0 ** -4), "out")
    return b.model()


@pytest.mark.parametrize("rows", [[5], [1, 16]])
def test_shift_fully_connected_rows_are_one_gemm_without_layout_moves(rows):
    model = _fully_connected(rows, 48, 40, None, 3)
    op, ep = _epilogue(model, DPU)
    assert op["op"] == "matmul" and ep["mode"] == "shift"
    plan = _equal_fused_and_kernels(model, {"x": _x(rows + [48], 5, scale=2.0)}, DPU)
    ops = _ops(plan)
    assert ops.count("Gemm") == 1 and "Conv" not in ops and "Transpose" not in ops, ops  # Conv + 2 Transpose before


def test_single_row_keeps_the_conv_form():
    ops = _ops(_equal_fused_and_kernels(_fully_connected([1], 48, 40, None, 4), {"x": _x([1, 48], 6, 2.0)}, DPU))
    assert ops.count("Conv") == 1 and "Gemm" not in ops, ops


def test_long_rows_sum_in_float64_chunks_on_the_channel_axis():
    # saturated codes over 2048 inputs of large weights: partial sums past 2^24, input-channel chunks
    model = _fully_connected([6], 2048, 8, None, 7, w_scale=2.0 ** -3, w_std=40.0)
    plan = _equal_fused_and_kernels(model, {"x": _x([6, 2048], 8, scale=50.0)}, DPU)
    ops = _ops(plan)
    assert ops.count("Gemm") >= 2 and "Sum" in ops and "Transpose" not in ops, ops


@pytest.mark.parametrize("act", [None, "leaky"])
def test_per_channel_epilogues_broadcast_on_the_channels(monkeypatch, act):
    # float scales per channel (a fixed-point, or a float epilogue with one multiplier a channel) on a
    # CPU whose integer kernels the probes refuse: the float accumulator, per-channel constants
    monkeypatch.setattr(fused_conv, "convinteger_exact", lambda: False)
    monkeypatch.setattr(fused_conv, "matmulinteger_u8_exact", lambda: False)
    model = _fully_connected([7], 24, 12, act, 9, w_scale=0.77 * 2.0 ** -np.arange(5, 17).astype(np.float32))
    op, ep = _epilogue(model, "bernoulli2")
    assert op["op"] == "matmul" and ep["mode"] in ("fixed", "float") and np.size(ep.get("acc_scale", ep.get("multiplier"))) == 12
    ops = _ops(_equal_fused_and_kernels(model, {"x": _x([7, 24], 10, scale=3.0)}, "bernoulli2"))
    assert ops.count("Gemm") == 1 and "Transpose" not in ops, ops
