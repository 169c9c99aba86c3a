"""numerics.py is the one integer arithmetic: check it against first principles and ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from npuflow import numerics as nm
from npuflow import qdq

MODES = [m.value for m in nm.RoundMode]


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("half_even", [-2, -2, -0.0, 0, 2, 2]),
        ("half_up", [-2, -1, 0, 1, 2, 3]),
        ("half_down", [-3, -2, -1, 0, 1, 2]),
        ("std_round", [-3, -2, -1, 1, 2, 3]),
    ],
)
def test_tie_rules(mode, expected):
    ties = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])
    assert nm.round_values(ties, mode).tolist() == expected


def test_non_ties_round_to_nearest_in_every_mode():
    v = np.array([-2.7, -1.2, 0.3, 0.7, 1.49, 2.51])
    for mode in MODES:
        assert nm.round_values(v, mode).tolist() == [-3, -1, 0, 1, 1, 3]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shift", [-2, 0, 1, 4, 9])
def test_shift_round_equals_real_rounding(mode, shift):
    rng = np.random.default_rng(shift + 7)
    acc = rng.integers(-(1 << 24), 1 << 24, size=20000)
    acc[:64] = np.arange(-32, 32) << max(shift, 0)  # exact multiples
    acc[64:128] = (np.arange(-32, 32) << max(shift, 0)) + (1 << max(shift - 1, 0))  # ties
    got = nm.shift_round(acc, shift, mode)
    ref = nm.round_values(acc.astype(np.float64) * 2.0 ** (-shift), mode)
    assert np.array_equal(got, ref.astype(np.int64))


def test_qrange_and_storage():
    assert nm.qrange(8) == (-128, 127)
    assert nm.qrange(8, narrow=True) == (-127, 127)
    assert nm.qrange(8, signed=False) == (0, 255)
    assert nm.qrange(4) == (-8, 7)
    assert nm.storage_dtype(16) == np.int16
    assert nm.storage_dtype(4) == np.int8


def test_pow2_fix_pos_covers_range_without_clipping():
    for amax in [0.01, 0.5, 1.0, 3.7, 127.0, 200.0]:
        n = int(nm.pow2_fix_pos(amax))
        assert amax * 2.0**n <= 127
        assert amax * 2.0 ** (n + 1) > 127
    assert nm.fix_pos_of(nm.pow2_scale(5)) == 5
    assert nm.fix_pos_of(np.float32(0.3)) is None


def test_quantize_saturates_and_uses_zero_point():
    q = nm.quantize(np.array([-1000.0, 0.0, 1000.0]), 0.5, 3, bits=8, signed=False, round_mode="half_even")
    assert q.dtype == np.uint8 and q.tolist() == [0, 3, 255]
    assert nm.dequantize(q, 0.5, 3).tolist() == [-1.5, 0.0, 126.0]


def test_per_channel_quantize_along_axis():
    w = np.array([[1.0, -2.0], [10.0, -20.0]], dtype=np.float32)
    q = nm.quantize(w, np.array([2 / 127, 20 / 127], dtype=np.float32), 0, round_mode="half_even", axis=0)
    assert q.tolist() == [[64, -127], [64, -127]]


def test_fixed_point_multiplier_matches_float():
    rng = np.random.default_rng(0)
    for real in [0.0003, 0.01234, 0.5, 0.99999, 1.7]:
        m, shift = nm.quantize_multiplier(real)
        assert (1 << 30) <= m < (1 << 31)
        acc = rng.integers(-(1 << 20), 1 << 20, size=5000)
        got = nm.requantize_fixed_point(acc, m, shift, "half_up")
        ref = np.floor(acc * real + 0.5)
        assert np.max(np.abs(got - ref)) <= 1


def _qdq_model(mode: str, scale: float, dtype: str = "int8") -> onnx.ModelProto:
    elem = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "int16": TensorProto.INT16}[dtype]
    standard = qdq.uses_standard_quantize(mode, dtype)
    op = "QuantizeLinear" if standard else qdq.function_name(mode, dtype)
    node = helper.make_node(op, ["x", "s", "z"], ["q"], domain="" if standard else qdq.DOMAIN)
    g = helper.make_graph(
        [node], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("q", elem, [None])],
        initializer=[helper.make_tensor("s", TensorProto.FLOAT, [], [scale]), helper.make_tensor("z", elem, [], [0])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    if not standard:
        qdq.ensure_quantize_function(m, mode, dtype)
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scale", [0.25, 2.0**-7, 0.0371])
@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_onnx_quantize_step_is_numerics_quantize(mode, scale, dtype):
    """The quantize step written into quantized_model.onnx computes numerics.quantize exactly."""
    rng = np.random.default_rng(1)
    x = np.concatenate([
        (np.arange(-600, 600) * scale / 2).astype(np.float32),  # every tie in range
        rng.normal(0, 40 * scale, 4000).astype(np.float32),
        np.array([1e9, -1e9], dtype=np.float32),  # saturation
    ])
    sess = ort.InferenceSession(_qdq_model(mode, scale, dtype).SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": x})
    bits = 16 if dtype == "int16" else 8
    ref = nm.quantize(x, scale, 0, bits=bits, round_mode=mode)
    assert np.array_equal(got, ref)


def test_function_names_round_trip():
    for mode in MODES:
        for dtype in ("int8", "uint8", "int16"):
            assert qdq.parse_function_name(qdq.function_name(mode, dtype)) == (nm.RoundMode(mode), dtype)
    assert qdq.parse_function_name("Conv") is None


@pytest.mark.parametrize("mode", MODES)
def test_shift_round_per_channel_equals_scalar_form(mode):
    rng = np.random.default_rng(3)
    shifts = np.array([-2, 0, 1, 5, 9])
    acc = rng.integers(-(1 << 20), 1 << 20, size=(7, 5, 33))
    acc[0, :, :8] = (np.arange(8) << 9) + (1 << 8)  # ties for every positive shift
    got = nm.shift_round(acc, shifts.reshape(1, 5, 1), mode)
    for c, s in enumerate(shifts):
        assert np.array_equal(got[:, c], nm.shift_round(acc[:, c], int(s), mode))


def test_requantize_fixed_point_per_channel():
    acc = np.arange(-500, 500).reshape(1, 2, 500)
    pairs = [nm.quantize_multiplier(r) for r in (0.0123, 0.77)]
    m = np.array([p[0] for p in pairs]).reshape(1, 2, 1)
    s = np.array([p[1] for p in pairs]).reshape(1, 2, 1)
    got = nm.requantize_fixed_point(acc, m, s, "half_up")
    for c, (mc, sc) in enumerate(pairs):
        assert np.array_equal(got[:, c], nm.requantize_fixed_point(acc[:, c], mc, sc, "half_up"))


@pytest.mark.parametrize("mode", MODES)
def test_shift_round_keeps_int32_exactly(mode):
    rng = np.random.default_rng(11)
    acc = rng.integers(-(1 << 24), 1 << 24, size=5000).astype(np.int32)
    acc[:32] = (np.arange(-16, 16) << 6) + (1 << 5)  # ties
    got = nm.shift_round(acc, 6, mode)
    assert got.dtype == np.int32
    assert np.array_equal(got, nm.shift_round(acc.astype(np.int64), 6, mode))


def _fixed_and_float32(mult, shift, mode, lo_acc, hi_acc, lo=-128, hi=127):
    """Both requantisations of every accumulator lo_acc..hi_acc (one channel per column), saturated."""
    m32 = nm.fixed_point_as_float32(mult, shift, mode, lo_acc, hi_acc, lo, hi)
    assert m32 is not None
    acc = np.arange(0, int(np.max(hi_acc - lo_acc)) + 1)[:, None] + lo_acc[None, :]
    acc = np.minimum(acc, hi_acc[None, :])
    want = np.clip(nm.requantize_fixed_point(acc, mult[None, :], shift[None, :], mode), lo, hi)
    got = np.clip(nm.requantize_fixed_point_float32(acc, m32[None, :], mode), lo, hi)
    return want, got


@pytest.mark.parametrize("mode", ["half_up", "half_even", "half_down"])
def test_float32_fixed_point_equals_int64_on_every_accumulator(mode):
    # exhaustive: random multipliers, shifts 31..40 (reach up to 2^17), the range around the reach
    rng = np.random.default_rng(11)
    mult, shift = rng.integers(1 << 30, 1 << 31, 10), np.arange(31, 41)
    reach = np.ceil(130 * np.exp2(shift) / mult).astype(np.int64)
    want, got = _fixed_and_float32(mult, shift, mode, -reach, reach)
    assert np.array_equal(want, got)


@pytest.mark.parametrize("mode", ["half_up", "half_even", "half_down"])
def test_float32_fixed_point_is_exact_on_ties_and_extreme_accumulators(mode):
    # exact ties (m = 2^30 at shift 31: every odd accumulator; 3 * 2^28 at 33, 5 * 2^27 at 36) and
    # accumulators at float32's exact bound (2^24 - 1) and the int8 clamps of a ReLU6
    mult, shift = np.array([1 << 30, 3 << 28, 5 << 27, 1518500251]), np.array([31, 33, 36, 40])
    for lo_acc, hi_acc in [(-(1 << 12), 1 << 12), ((1 << 24) - (1 << 16), (1 << 24) - 1),
                           (-(1 << 24) + 1, -(1 << 24) + (1 << 16))]:
        want, got = _fixed_and_float32(mult, shift, mode, np.full(4, lo_acc), np.full(4, hi_acc), lo=0, hi=97)
        assert np.array_equal(want, got)


def test_float32_fixed_point_is_refused_where_float32_cannot_tell_a_near_tie():
    # shift 44 (reach 2^20): a step whose exact product lies within float32's spacing of the tie
    rng = np.random.default_rng(5)
    mult, shift = rng.integers(1 << 30, 1 << 31, 8)[:1], np.array([44])
    full = np.array([-(1 << 23)]), np.array([1 << 23])
    assert nm.fixed_point_as_float32(mult, shift, "half_even", *full, -128, 127) is None
    # and the nearest float32 multiplier does round an accumulator next to a step differently
    acc = (np.round((np.arange(-128, 128) + 0.5) * 2.0 ** 44 / mult[0])[:, None] + np.arange(-2, 3)).reshape(-1)
    guess = np.float32(np.ldexp(float(mult[0]), -44))
    assert not np.array_equal(np.clip(nm.requantize_fixed_point_float32(acc, guess, "half_even"), -128, 127),
                              np.clip(nm.requantize_fixed_point(acc, mult[0], 44, "half_even"), -128, 127))
    assert nm.fixed_point_as_float32(mult, shift, "std_round", *full, -128, 127) is None  # no ONNX form
    assert nm.fixed_point_as_float32(mult, np.array([40]), "half_up", np.array([0]), np.array([1 << 24]),
                                     -128, 127) is None  # float32(acc) not exact


def test_float32_fixed_point_partial_keeps_the_channels_that_have_a_multiplier():
    # channel 0: the refused near-tie channel above (shift 44); channel 1: a short reach that has one
    rng = np.random.default_rng(5)
    mult, shift = np.array([rng.integers(1 << 30, 1 << 31, 8)[0], 1518500251]), np.array([44, 31])
    lo_acc, hi_acc = np.array([-(1 << 23), -(1 << 12)]), np.array([1 << 23, 1 << 12])
    assert nm.fixed_point_as_float32(mult, shift, "half_even", lo_acc, hi_acc, -128, 127) is None
    m32 = nm.fixed_point_as_float32(mult, shift, "half_even", lo_acc, hi_acc, -128, 127, partial=True)
    assert np.isnan(m32[0]) and not np.isnan(m32[1])
    acc = np.arange(-(1 << 12), (1 << 12) + 1)
    assert np.array_equal(np.clip(nm.requantize_fixed_point_float32(acc, m32[1], "half_even"), -128, 127),
                          np.clip(nm.requantize_fixed_point(acc, mult[1], 31, "half_even"), -128, 127))
