"""Wide pointwise convolutions with float epilogues on ``MatMulInteger`` with int8 weights (issue 19).

On a CPU without VNNI, MLAS' uint8 x int8 kernels add adjacent products in saturating 16-bit
lanes, so ``ConvInteger`` runs on uint8 weights ``w + 128`` (exact, about half the rate).  A 1x1
convolution is a matmul of its channels-last rows; ``MatMulInteger`` with the uint8 rows as ``A``
and int8 weights as ``B`` pairs products along the input channels, so where no such pair can
saturate (``ort_kernels.matmul_int8_exact``) the fused run writes that instead, transposes
included, and the codes stay the kernels' bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from npuflow import ort_kernels
from npuflow.runtime import fused_conv
from tests.qdq_builder import Builder
from tests.unit.test_compiler_kernels import DPU, _x
from tests.unit.test_runtime_convinteger import _ops
from tests.unit.test_runtime_fused import _equal_fused_and_kernels


def _matmul_integer(a: np.ndarray, zp: int, b: np.ndarray) -> np.ndarray:
    node = helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])
    inits = [numpy_helper.from_array(b.astype(np.int8), "b"), numpy_helper.from_array(np.uint8(zp), "az"),
             numpy_helper.from_array(np.int8(0), "bz")]
    session = ort_kernels.probe_session([node], [helper.make_tensor_value_info("a", TensorProto.UINT8, a.shape)],
                                        inits, TensorProto.INT32)
    return session.run(None, {"a": a})[0]


def _bound_pairs(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """Weights (k, n) whose pairs along ``k`` each sum to ``PAIR_BOUND`` in one sign."""
    return np.ascontiguousarray(ort_kernels._pair_weights(rng, n, k).T)


def test_matmul_int8_exact_is_true_only_where_the_kernel_is_exact():
    rng = np.random.default_rng(5)
    bound = _bound_pairs(rng, 37, 9)
    over = bound.copy()
    over[0, 0], over[1, 0] = 127, 2  # one lane over the bound
    wide = rng.integers(-128, 128, (64, 16)).astype(np.int8)
    for b in (bound, over, wide):
        exact = all(np.array_equal(_matmul_integer(a, zp, b), (a.astype(np.int64) - zp) @ b.astype(np.int64))
                    for a, zp in ((np.full((4, b.shape[0]), 255, np.uint8), 0),
                                  (rng.choice(np.array([0, 255], np.uint8), (6, b.shape[0])), 7)))
        assert exact or not ort_kernels.matmul_int8_exact(b)
    assert not ort_kernels.matmul_int8_exact(over) or ort_kernels.weight_form() == "s8"
    if ort_kernels.weight_form() == "u8":  # the saturating kernel (this project's AVX2 machine)
        assert ort_kernels.matmul_pairing_confirmed() and ort_kernels.matmul_int8_exact(bound)


def _pointwise_model(cin: int, cout: int, w_n: int, batch: int, strides: tuple = (1, 1)):
    """A 1x1 convolution (cin -> cout) with hard-swish fused as a float chain on power-of-two
    scales; weights on ``2^-w_n``: coarse ones cannot saturate a lane, fine ones (codes up to
    +-127) can."""
    rng = np.random.default_rng(59)
    b = Builder("half_up")
    x = b.input("x", [batch, cin, 5, 7], 2.0 ** -5)
    w = b.weight("w", rng.normal(0, 0.3, (cout, cin, 1, 1)).astype(np.float32), 2.0 ** -w_n)
    bias = b.bias("b", rng.normal(0, 0.5, cout), np.float32(2.0 ** -5) * np.float32(2.0 ** -w_n))
    c = b.node("Conv", [b.dq(x), w, bias], "conv", kernel_shape=[1, 1], strides=list(strides))
    b.output(b.quantize(b.node("HardSwish", [c], "act"), 2.0 ** -2), "out")
    return b.model()


@pytest.mark.parametrize("cin,cout,w_n,batch,strides,matmul", [
    (fused_conv.MATMUL_CHANNELS, 200, 3, 1, (1, 1), True),
    (256, fused_conv.MATMUL_CHANNELS, 4, 2, (1, 1), True),
    (fused_conv.MATMUL_CHANNELS, 200, 7, 1, (1, 1), False),  # pairs over the bound: ConvInteger
    (64, 200, 3, 1, (1, 1), False),  # too few channels to pay for the transposes
    (fused_conv.MATMUL_CHANNELS, 200, 3, 1, (2, 2), False)])  # strided: not a matmul of the rows
def test_wide_pointwise_conv_runs_on_matmulinteger_exactly(cin, cout, w_n, batch, strides, matmul):
    model = _pointwise_model(cin, cout, w_n, batch, strides)
    for seed, scale in ((3, 0.5), (4, 3.0), (5, 40.0)):  # everyday codes, wide ones, saturated ones
        plan = _equal_fused_and_kernels(model, {"x": _x([batch, cin, 5, 7], seed, scale)}, DPU)
    ops = _ops(plan)
    if ort_kernels.weight_form() == "s8":  # no 16-bit lanes (VNNI): every weight exact, the shape rule decides
        matmul = min(cin, cout) >= fused_conv.MATMUL_CHANNELS and strides == (1, 1)
    else:
        matmul = matmul and ort_kernels.weight_form() is not None and ort_kernels.matmul_pairing_confirmed()
    assert ops.count("MatMulInteger") == int(matmul) and ops.count("ConvInteger") == int(not matmul), ops
    assert "Conv" not in ops, ops


def test_extreme_codes_through_matmulinteger_equal_the_kernels():
    # every input code at -128 or 127 (an int8 tensor's extremes: 0 and 255 as bytes)
    model = _pointwise_model(fused_conv.MATMUL_CHANNELS, 200, 3, 1)
    x = np.random.default_rng(9).choice(np.array([-100.0, 100.0], np.float32), (1, fused_conv.MATMUL_CHANNELS, 5, 7))
    ops = _ops(_equal_fused_and_kernels(model, {"x": x}, DPU))
    assert "MatMulInteger" in ops or not ort_kernels.matmul_pairing_confirmed(), ops


@pytest.mark.parametrize("saturating", [False, True])
def test_exact_weights_keeps_matmulinteger_int8_weights_only_where_exact(saturating):
    # weights handed to ONNX Runtime outside the protobuf (as the fused runs do) must keep their
    # name where they stay int8: a renamed initializer made ONNX Runtime refuse the whole graph
    from npuflow.ort_session import open_session
    from npuflow.runtime.fused_graph import external_stub

    rng = np.random.default_rng(13)
    b = _bound_pairs(rng, 64, 32).astype(np.int8)
    if saturating:
        b[0, 0], b[1, 0] = 127, 2
    node = helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])
    graph = helper.make_graph([node], "mm", [helper.make_tensor_value_info("a", TensorProto.UINT8, (3, 64))],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
                              [external_stub("b", b), numpy_helper.from_array(np.uint8(5), "az"),
                               numpy_helper.from_array(np.int8(0), "bz")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    kept = ort_kernels.exact_weights(model, {"b": b})
    int8_form = ort_kernels.matmul_int8_exact(b) or ort_kernels.weight_form() != "u8"
    assert (kept.graph.node[0].input[1] == "b") == int8_form
    a = np.full((3, 64), 255, np.uint8)
    if not saturating or ort_kernels.weight_form() != "u8":  # external weights kept under their name
        got = open_session(model, threads=1, external={"b": b}).run(None, {"a": a})[0]
        assert np.array_equal(got, (a.astype(np.int64) - 5) @ b.astype(np.int64))
