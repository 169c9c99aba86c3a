"""THE integer arithmetic of npuflow.

The quantizer (fake quantization, weight packing), the compiler/integer executor and the PyTorch
QAT modules all call these functions, so simulation and deployment compute the same numbers.
Tests prove the agreement bit for bit; do not re-implement rounding anywhere else.

Conventions
-----------
* A quantized value is ``q = clip(round(x / scale) + zero_point, qmin, qmax)``; the real value it
  stands for is ``(q - zero_point) * scale``.
* Power-of-two targets (Vitis AI DPUs) use ``scale = 2 ** -fix_pos`` where ``fix_pos`` is the
  "fix position" of ``quant_info.json``.  Division by such a scale is exact in binary floating
  point, which is what makes bit-exact simulation possible.
* Rounding modes (names follow the Vitis AI quantizer configuration):

  ``half_even``  ties to even (ONNX ``QuantizeLinear``, numpy ``rint``)
  ``half_up``    ties towards +inf: ``floor(v + 0.5)`` (DPU activations)
  ``half_down``  ties towards -inf: ``ceil(v - 0.5)``
  ``std_round``  ties away from zero: ``sign(v) * floor(|v| + 0.5)`` (C ``round``; DPU weights/bias)
"""

from __future__ import annotations

import math
from enum import Enum
from types import ModuleType
from typing import Any

import numpy as np


class RoundMode(str, Enum):
    """How a value exactly between two integers is rounded."""

    HALF_EVEN = "half_even"
    HALF_UP = "half_up"
    HALF_DOWN = "half_down"
    STD_ROUND = "std_round"


#: The tie rule fixed by the ONNX format and ONNX Runtime: ``QuantizeLinear`` and the MLAS
#: requantisation of ORT's integer kernels (``QLinearConv``, ``QLinearMatMul``, ``QLinearAdd``,
#: the pools) round half to even, as does ORT's quantization tool for int32 biases.
ONNX_ROUND_MODE = RoundMode.HALF_EVEN

#: The DPU's LeakyReLU slope: 26/256 = 0.1015625, the 8-bit fixed-point value nearest 0.1.
DPU_LEAKY_RELU_SLOPE = 26.0 / 256.0


def round_values(values: Any, mode: RoundMode | str, xp: ModuleType = np) -> Any:
    """Round to integers (as floats) with the given tie rule, exactly, for every float.

    ``xp`` is the array module: ``numpy`` (the default) or ``torch``; the torch fake
    quantization calls this same definition, so simulation and training round alike (a test
    compares both bit for bit, the sign of a zero included).  float32 and float64 inputs keep
    their type, other inputs are rounded in float64.

    Each rule splits ``v`` into an integer part and a fraction and compares the fraction with
    one half.  ``floor(v + 0.5)`` is not exact: in float32 ``0.49999997 + 0.5`` rounds up to 1,
    in float64 ``2**52 + 1`` to ``2**52 + 2``.  ``v - floor(v)`` is exact (Sterbenz) except for
    ``-0.5 < v < 0``, where it rounds to a value still at least one half, which is the right
    answer there.  ``half_down`` is ``half_up`` of ``-v`` negated, ``std_round`` ``half_up`` of
    ``|v|`` with ``v``'s sign.  Only ops the TorchScript ONNX exporter knows are used (no
    ``trunc``): the QAT export traces this code.
    """
    mode = RoundMode(mode)
    v = xp.asarray(values) if hasattr(values, "dtype") else xp.asarray(values, dtype=xp.float64)  # torch: not float32
    if v.dtype not in (xp.float32, xp.float64):
        v = xp.asarray(v, dtype=xp.float64)
    if mode is RoundMode.HALF_EVEN:
        return xp.round(v)  # numpy and torch: round half to even (rint)
    with np.errstate(invalid="ignore"):  # +-inf - +-inf: NaN compares False, so inf stays inf
        if mode is RoundMode.HALF_UP:  # ties towards +inf
            return _half_up(v, xp)
        if mode is RoundMode.HALF_DOWN:  # ties towards -inf: half up of -v, negated
            return -_half_up(-v, xp)
        r = _half_up(xp.abs(v), xp)  # STD_ROUND, ties away from zero: half up of the magnitude
        return xp.where(v < 0, -r, r)


def _half_up(v: Any, xp: ModuleType) -> Any:
    """``floor(v)`` plus one where the exact fraction is at least one half (a bool added to a
    float array is 0/1 in numpy and torch, and cheaper than a select)."""
    low = xp.floor(v)
    return low + ((v - low) >= 0.5)


def qrange(bits: int, signed: bool = True, narrow: bool = False) -> tuple[int, int]:
    """Integer range of a ``bits``-wide tensor; ``narrow`` drops the most negative code (-127..127)."""
    if signed:
        qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return (qmin + 1 if narrow else qmin), qmax
    return 0, (1 << bits) - 1


def saturation_bounds(scale: float, zero_point: int, dtype: str) -> tuple[float, float]:
    """Real values past which ``quantize`` clips to the end codes of ``dtype`` (half a step beyond
    the end codes' values: nearer values round to the end code anyway, a rounding error, not a clip)."""
    info = np.iinfo(np.dtype(dtype))
    return (info.min - zero_point - 0.5) * scale, (info.max - zero_point + 0.5) * scale


def storage_dtype(bits: int, signed: bool = True) -> np.dtype:
    """Smallest numpy integer type that stores ``bits``-wide values (int4 is stored in int8)."""
    if bits <= 8:
        return np.dtype(np.int8 if signed else np.uint8)
    if bits <= 16:
        return np.dtype(np.int16 if signed else np.uint16)
    return np.dtype(np.int32 if signed else np.uint32)


def _along_axis(ndim: int, axis: int | None, scale: np.ndarray, zero_point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scale`` and ``zero_point`` shaped to broadcast along ``axis`` of an ``ndim``-D tensor when
    they are per-channel (1-D) and an axis is given; unchanged otherwise (per-tensor)."""
    if axis is None or scale.ndim != 1:
        return scale, zero_point
    shape = [1] * ndim
    shape[axis] = -1
    return scale.reshape(shape), zero_point.reshape(shape)


def quantize(
    x: np.ndarray,
    scale: float | np.ndarray,
    zero_point: int | np.ndarray = 0,
    *,
    bits: int = 8,
    signed: bool = True,
    narrow: bool = False,
    round_mode: RoundMode | str,
    axis: int | None = None,
) -> np.ndarray:
    """Quantize ``x`` to integers stored in :func:`storage_dtype`.

    ``scale``/``zero_point`` are scalars, or 1-D arrays applied along ``axis`` (per channel).
    The division is done in float32, as ONNX Runtime does, then rounded with ``round_mode`` (no
    default: the tie rule is the target's, or :data:`ONNX_ROUND_MODE` for ``QuantizeLinear``),
    so the result equals the quantize step written into ``quantized_model.onnx``.
    """
    xf = np.asarray(x, dtype=np.float32)
    s, zp = _along_axis(xf.ndim, axis, np.asarray(scale, dtype=np.float32), np.asarray(zero_point, dtype=np.float64))
    v = round_values(xf / s, round_mode).astype(np.float64) + zp
    qmin, qmax = qrange(bits, signed, narrow)
    return np.clip(v, qmin, qmax).astype(storage_dtype(bits, signed))


def dequantize(
    q: np.ndarray,
    scale: float | np.ndarray,
    zero_point: int | np.ndarray = 0,
    *,
    axis: int | None = None,
) -> np.ndarray:
    """Real values of ``q`` as float32: ``(q - zero_point) * scale`` (ONNX ``DequantizeLinear``)."""
    qf = np.asarray(q, dtype=np.float32)
    s, zp = _along_axis(qf.ndim, axis, np.asarray(scale, dtype=np.float32), np.asarray(zero_point, dtype=np.float32))
    return ((qf - zp) * s).astype(np.float32)


def centered_codes(q: np.ndarray, zero_point: int | np.ndarray = 0, *, axis: int | None = None) -> np.ndarray:
    """``q - zero_point`` as int32: codes whose ``DequantizeLinear`` without a zero point has the
    same real values (every 8/16-bit difference is exact in int32)."""
    qi = np.asarray(q).astype(np.int32)
    _, zp = _along_axis(qi.ndim, axis, np.asarray(zero_point), np.asarray(zero_point).astype(np.int32))
    return (qi - zp).astype(np.int32)


def fake_quantize(
    x: np.ndarray,
    scale: float | np.ndarray,
    zero_point: int | np.ndarray = 0,
    *,
    bits: int = 8,
    signed: bool = True,
    narrow: bool = False,
    round_mode: RoundMode | str,
    axis: int | None = None,
) -> np.ndarray:
    """``dequantize(quantize(x))``: what a Q/DQ pair computes in float."""
    q = quantize(x, scale, zero_point, bits=bits, signed=signed, narrow=narrow, round_mode=round_mode, axis=axis)
    return dequantize(q, scale, zero_point, axis=axis)


# --- choosing scales ------------------------------------------------------------------------


def float_scale(amax: float | np.ndarray, bits: int = 8, narrow: bool = False) -> np.ndarray:
    """Symmetric float scale that maps ``amax`` to the largest code (``amax / qmax``)."""
    qmax = qrange(bits, True, narrow)[1]
    amax = np.maximum(np.asarray(amax, dtype=np.float64), np.finfo(np.float32).tiny)
    return (amax / qmax).astype(np.float32)


def asymmetric_params(
    xmin: float, xmax: float, bits: int = 8, signed: bool = False
) -> tuple[np.float32, int]:
    """Scale and zero point covering ``[min(xmin,0), max(xmax,0)]`` (zero is always exact)."""
    qmin, qmax = qrange(bits, signed)
    lo, hi = min(float(xmin), 0.0), max(float(xmax), 0.0)
    scale = max((hi - lo) / (qmax - qmin), float(np.finfo(np.float32).tiny))
    zp = int(np.clip(round_values(qmin - lo / scale, ONNX_ROUND_MODE), qmin, qmax))
    return np.float32(scale), zp


def pow2_fix_pos(amax: float | np.ndarray, bits: int = 8) -> np.ndarray:
    """Fix position ``n`` (scale ``2**-n``) of a power-of-two quantizer covering ``amax``.

    The largest ``n`` such that ``amax * 2**n`` does not exceed the largest code, i.e. no
    clipping of the calibrated range (Vitis AI's "max" method); search methods adjust from here.
    """
    qmax = qrange(bits, True)[1]
    amax = np.maximum(np.asarray(amax, dtype=np.float64), 1e-30)
    return np.floor(np.log2(qmax / amax)).astype(np.int32)


def pow2_scale(fix_pos: int | np.ndarray) -> np.ndarray:
    """``2**-fix_pos`` as float32 (exact)."""
    return np.ldexp(np.float32(1.0), -np.asarray(fix_pos, dtype=np.int32)).astype(np.float32)


def fix_pos_of(scale: float | np.ndarray) -> np.ndarray | None:
    """Fix position of a power-of-two scale, or ``None`` when some scale is not a power of two."""
    s = np.asarray(scale, dtype=np.float64)
    mantissa, exponent = np.frexp(s)
    if not np.all(mantissa == 0.5):
        return None
    return (1 - exponent).astype(np.int32)


# --- integer requantisation (compiler / executor) -------------------------------------------


def shift_round(acc: np.ndarray, shift: int, mode: RoundMode | str) -> np.ndarray:
    """``round(acc * 2**-shift)`` on integers, exactly, with the given tie rule.

    ``shift`` may be negative (a left shift, no rounding), and may be an array broadcastable
    against ``acc`` (one shift per output channel).  This is the requantisation of a
    power-of-two target: ``acc`` carries scale ``2**-(n_in + n_w)`` and the output ``2**-n_out``,
    so ``shift = n_in + n_w - n_out``.

    The result is int64, except that an int32 ``acc`` with a scalar right shift stays int32 (half
    the memory traffic); that is exact while ``|acc| + 2**(shift-1) < 2**31``, which holds for the
    accumulators of exact float32 sums (< 2**24).
    """
    a = np.asarray(acc)
    if a.dtype != np.int32 or np.ndim(shift) != 0 or not 0 < int(shift) < 31:
        a = a.astype(np.int64, copy=False)
    if np.ndim(shift) != 0:
        return _shift_round_broadcast(a, np.asarray(shift, dtype=np.int64), RoundMode(mode))
    shift = int(shift)
    if shift <= 0:
        return a << (-shift)
    if shift >= 64:  # |a| < 2**63: less than half a step, 0 under every tie rule
        return np.zeros_like(a)
    half = a.dtype.type(1) << a.dtype.type(shift - 1)
    return _round_right_shift(a, half, a.dtype.type(shift), RoundMode(mode))


def _shift_round_broadcast(a: np.ndarray, shift: np.ndarray, mode: RoundMode) -> np.ndarray:
    """:func:`shift_round` with one shift per element of a broadcastable array (per-channel
    requantisation); each element is rounded exactly as the scalar form would round it."""
    a = a << np.maximum(-shift, 0)
    right = np.clip(shift, 0, 63)  # numpy (like C) takes shift counts >= 64 modulo 64
    half = (np.int64(1) << np.maximum(right - 1, 0)) * (right > 0)  # 0 where right == 0: nothing to round
    y = _round_right_shift(a, half, right, mode)
    if np.any(shift >= 64):  # |a| < 2**63: less than half a step, 0 under every tie rule
        y = np.where(shift >= 64, 0, y)
    return y


def _round_right_shift(a: np.ndarray, half, right, mode: RoundMode) -> np.ndarray:
    """``a >> right`` rounded with the tie rule; ``half`` is ``2**(right-1)`` (0 where right is 0)."""
    if mode is RoundMode.HALF_UP:
        return (a + half) >> right
    if mode is RoundMode.HALF_DOWN:
        return -((-a + half) >> right)
    if mode is RoundMode.STD_ROUND:
        mag = (np.abs(a) + half) >> right
        return np.where(a < 0, -mag, mag)
    floor = a >> right
    rem = a - (floor << right)
    up = (rem > half) | ((rem == half) & (half > 0) & ((floor & 1) == 1))
    return floor + up.astype(a.dtype)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Fixed-point form of a positive real multiplier: ``real ~= m * 2**-shift`` with m in [2^30, 2^31).

    Used by float-scale targets, whose requantisation multiplier ``s_in*s_w/s_out`` is not a
    power of two (the gemmlowp/TFLite scheme).
    """
    if real <= 0:
        raise ValueError("multiplier must be positive")
    mantissa, exponent = math.frexp(real)
    m = int(round(mantissa * (1 << 31)))
    if m == (1 << 31):
        m //= 2
        exponent += 1
    return m, 31 - exponent


def requantize_fixed_point(acc: np.ndarray, multiplier: int, shift: int, mode: RoundMode | str) -> np.ndarray:
    """``round(acc * multiplier * 2**-shift)`` exactly in int64 (|acc| < 2^31 assumed).

    ``multiplier`` and ``shift`` may be arrays broadcastable against ``acc`` (per channel).
    """
    prod = np.asarray(acc, dtype=np.int64) * np.asarray(multiplier, dtype=np.int64)
    return shift_round(prod, shift, mode)


def requantize_fixed_point_float32(acc: np.ndarray, multiplier32: np.ndarray, mode: RoundMode | str) -> np.ndarray:
    """The float32 stand-in for :func:`requantize_fixed_point` that
    :func:`fixed_point_as_float32` checks: ``OP(float32(acc) * m32 + offset)`` with every
    operation in float32 (``OP``, ``offset``: :func:`rounding_as_onnx`), as a fused graph computes
    it with ONNX ``Mul``, ``Add`` and ``Round``/``Floor``/``Ceil``.  Float32 values, not clipped."""
    offset, op = rounding_as_onnx(mode)
    v = np.asarray(acc).astype(np.float32) * np.asarray(multiplier32, np.float32)
    if offset:
        v = v + np.float32(offset)
    return {"Floor": np.floor, "Ceil": np.ceil, "Round": np.rint}[op](v)


def fixed_point_as_float32(multiplier: np.ndarray, shift: np.ndarray, mode: RoundMode | str, acc_lo: np.ndarray,
                           acc_hi: np.ndarray, lo: int, hi: int, tries: int = 2,
                           partial: bool = False) -> np.ndarray | None:
    """Per-channel float32 multipliers ``m32`` with which :func:`requantize_fixed_point_float32`,
    saturated to ``lo..hi``, equals :func:`requantize_fixed_point` saturated alike for EVERY
    integer accumulator ``acc_lo[c] <= acc <= acc_hi[c]``; ``None`` when some channel has none.

    Why: the exact product ``acc * m`` needs up to 55 bits (float64 passes over every tensor),
    while the saturated result only changes at a few hundred accumulators per channel.  Both
    functions are monotone non-decreasing in ``acc`` (``m >= 0``; float32 multiplication,
    addition and rounding to integers are monotone, and ``float32(acc)`` is exact below 2^24), so
    they agree everywhere iff they agree at the range's ends and on both sides of each step of the
    exact one (``a - 1`` and ``a`` where it rises): on a plateau between two steps the float32 one
    is pinned at both ends, hence constant.  The steps are ``ceil((k - 1/2) * 2^shift / m)``
    in float64, corrected by the exact function; the candidates are ``float32(m * 2^-shift)``
    and its nearest float32 neighbours (``tries`` on each side), the first that agrees at every
    check point is taken.  A channel with a step whose exact product lies closer to the tie
    than float32's spacing (long reach: small ``m * 2^-shift``) usually has none; with
    ``partial`` such channels get NaN instead of the whole answer being ``None`` (a caller that
    runs the other channels otherwise).
    """
    mode = RoundMode(mode)
    mult = np.asarray(multiplier, np.int64).reshape(-1)
    shift = np.broadcast_to(np.asarray(shift, np.int64), mult.shape)
    a_lo = np.broadcast_to(np.asarray(acc_lo, np.int64), mult.shape)
    a_hi = np.broadcast_to(np.asarray(acc_hi, np.int64), mult.shape)
    if (rounding_as_onnx(mode) is None or np.any(mult < 0) or np.any(a_lo > a_hi)
            or np.any(np.maximum(np.abs(a_lo), np.abs(a_hi)) >= FLOAT_EXACT_BOUND[np.dtype(np.float32)])
            or np.any(np.maximum(np.abs(a_lo), np.abs(a_hi)) * mult >= 2.0 ** 62)):
        return None

    def exact(acc: np.ndarray) -> np.ndarray:
        return np.clip(requantize_fixed_point(acc, mult[:, None], shift[:, None], mode), lo, hi)

    first, last = exact(a_lo[:, None])[:, 0], exact(a_hi[:, None])[:, 0]
    ks = np.arange(lo + 1, hi + 1)[None, :]  # a step up to k: first acc whose code is >= k
    live = (ks > first[:, None]) & (ks <= last[:, None])
    scale = np.ldexp(mult.astype(np.float64), -np.minimum(shift, 1100))  # exact: 31 bits
    with np.errstate(divide="ignore", invalid="ignore"):  # a channel with m = 0 has no step
        near = np.ceil((ks - 0.5) / scale[:, None])  # within one of the step (float64 error < 2^-28)
    steps = np.where(live, np.clip(near, a_lo[:, None] + 1, a_hi[:, None]), a_lo[:, None] + 1).astype(np.int64)
    while True:  # exact(a_lo) < k <= exact(a_hi): the step lies in a_lo + 1 .. a_hi
        down = live & (exact(steps - 1) >= ks)
        up = live & (exact(steps) < ks)
        if not (np.any(down) or np.any(up)):
            break
        steps = steps - down + up
    points = np.concatenate([a_lo[:, None], a_hi[:, None], np.where(live, steps, a_lo[:, None]),
                             np.where(live, steps - 1, a_lo[:, None])], axis=1)
    want = exact(points)
    guess = scale.astype(np.float32)
    chosen = np.full(mult.shape, np.nan, np.float32)
    for k in [0] + [sign * j for j in range(1, tries + 1) for sign in (1, -1)]:
        cand = guess
        for _ in range(abs(k)):
            cand = np.nextafter(cand, np.float32(np.inf if k > 0 else 0))
        got = np.clip(requantize_fixed_point_float32(points, cand[:, None], mode), lo, hi)
        chosen = np.where(np.isnan(chosen) & np.all(got == want, axis=1), cand, chosen)
        if not np.any(np.isnan(chosen)):
            break
    return None if np.any(np.isnan(chosen)) and not partial else chosen


#: How far (relative) :func:`multipliers_with_float32_form` may move a fixed-point multiplier from
#: the real ratio: float32's machine epsilon 2^-23.  The ratio ``s_in * s_w / s_out`` comes from
#: float32 scales (each rounded by up to 2^-24 of itself), and ONNX Runtime's own integer kernels
#: apply it as one float32 number (``requant_scale``): a multiplier this close is as exact an
#: encoding of the model's ratio as its scales define and its reference run applies.  PP-OCRv4 rec
#: on bernoulli2: 140 of 149 channels without a float32 form get one within 2^-23, 107 within
#: 2^-24 (benchmarks/results/runtime_rec_b2_s34.md).
FLOAT32_FORM_TOLERANCE = 2.0 ** -23


def multipliers_with_float32_form(real: np.ndarray, acc_lo: np.ndarray, acc_hi: np.ndarray, lo: int, hi: int,
                                  mode: RoundMode | str,
                                  tolerance: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel fixed-point ``(multiplier, shift)`` of the positive ratios ``real``: each
    channel's :func:`quantize_multiplier`, except where no float32 multiplier reproduces it over
    the channel's accumulators ``acc_lo..acc_hi`` (:func:`fixed_point_as_float32`, codes saturated
    to ``lo..hi`` around the zero point): then the multiplier nearest ``real * 2^shift`` within
    ``tolerance`` of it (relative; :data:`FLOAT32_FORM_TOLERANCE` where None) that has such a
    float32 form, if any.

    Why: such a channel has a step whose exact product lies within float32's spacing of a tie,
    and a target run on float32 kernels (the runtime's ``QLinearConv``) must compute it apart or
    correct it with extra kernel channels (``runtime/fused_fixconv.py``).  Moving the multiplier by
    less than float32's own precision moves only products that close to a tie (one code at such
    accumulators, as the model's float32 reference run may differ there too) and leaves the
    fixed-point arithmetic what it is: the target and the op-by-op runtime compute the new
    multiplier exactly.  The candidates are checked with the same function, over a superset of
    the accumulators the runtime proves, so its check finds the float32 form again."""
    real = np.asarray(real, np.float64).reshape(-1)
    tolerance = FLOAT32_FORM_TOLERANCE if tolerance is None else tolerance
    pairs = [quantize_multiplier(float(r)) for r in real]
    mult = np.array([m for m, _ in pairs], np.int64)
    shift = np.array([s for _, s in pairs], np.int64)
    a_lo = np.broadcast_to(np.asarray(acc_lo, np.int64), mult.shape)
    a_hi = np.broadcast_to(np.asarray(acc_hi, np.int64), mult.shape)
    # a channel beyond float32's exact integers (a saturated bias: the runtime gives it its constant) keeps its own
    near = np.flatnonzero(np.maximum(np.abs(a_lo), np.abs(a_hi)) < FLOAT_EXACT_BOUND[np.dtype(np.float32)])
    found = fixed_point_as_float32(mult[near], shift[near], mode, a_lo[near], a_hi[near], lo, hi, partial=True)
    if found is None:
        return mult, shift
    for c in near[np.isnan(found)]:
        target = math.ldexp(float(real[c]), int(shift[c]))  # real * 2^shift: exact (a power of two)
        width = math.floor(target * tolerance)
        cand = np.arange(math.ceil(target - width), math.floor(target + width) + 1, dtype=np.int64)
        cand = cand[(cand >= 1) & (cand < (1 << 31)) & (cand != mult[c])]
        cand = cand[np.argsort(np.abs(cand - target), kind="stable")]  # nearest first
        for start in range(0, len(cand), 64):
            part = cand[start:start + 64]
            got = fixed_point_as_float32(part, np.full(len(part), shift[c]), mode, np.full(len(part), a_lo[c]),
                                         np.full(len(part), a_hi[c]), lo, hi, partial=True)
            ok = np.flatnonzero(~np.isnan(got)) if got is not None else []
            if len(ok):
                mult[c] = part[ok[0]]
                break
    return mult, shift


def requant_scale(acc_scale: float | np.ndarray, out_scale: float) -> np.ndarray:
    """The float32 multiplier ONNX Runtime's integer kernels apply to an accumulator.

    ``QLinearConv``/``QLinearMatMul`` (and the QDQ groups ORT fuses into them) compute
    ``x_scale * w_scale / y_scale`` in float32, left to right.  ``acc_scale`` is ``x_scale *
    w_scale`` (per channel); a float64 product of two float32 scales is exact, so its float32
    rounding is the float32 product ORT computes.
    """
    return (np.asarray(acc_scale, np.float64).astype(np.float32) / np.float32(out_scale)).astype(np.float32)


def requantize_float(acc: np.ndarray, multiplier: float | np.ndarray, mode: RoundMode | str) -> np.ndarray:
    """``round(float32(acc) * multiplier)`` as int64: the requantisation of a float-scale model.

    This is MLAS's ``MlasRequantizeOutput`` (the output stage of ORT's ``QLinearConv`` and
    ``QLinearMatMul``): the exact integer accumulator (bias included) converted to float32,
    multiplied in float32 by the float32 multiplier of :func:`requant_scale`, and rounded with
    the output's tie rule (:data:`ONNX_ROUND_MODE` for ``QuantizeLinear``).  The caller adds the zero point
    and saturates; clamping before or after rounding gives the same integers because the bounds
    are integers.  A fixed-point multiplier would round the real product correctly, which is
    not what the model's own runtime computes, and its rare one-step differences grow through
    steep lookup tables (a sigmoid after a convolution) into many steps downstream.
    """
    prod = np.asarray(acc).astype(np.float32) * np.asarray(multiplier, np.float32)
    return round_values(prod, mode).astype(np.int64)


def _fma32(x: np.ndarray, y, z) -> np.ndarray:
    """``float32(x * y + z)`` rounded once (a fused multiply-add), for float32 operands.

    The float64 product of a float32 and a small integer is exact, and so is its float64 sum with
    a float32 of similar magnitude; the one rounding is the conversion to float32."""
    return (np.asarray(x, np.float64) * np.float64(y) + np.asarray(z, np.float64)).astype(np.float32)


def qlinear_add(
    a: np.ndarray, a_scale: float, a_zp: int, b: np.ndarray, b_scale: float, b_zp: int,
    out_scale: float, out_zp: int, *, a_scalar: bool = False, b_scalar: bool = False,
) -> np.ndarray:
    """``QLinearAdd`` as ONNX Runtime computes it (int64 codes, zero point added, not saturated).

    ORT fuses ``DQ -> Add -> Q`` into ``QLinearAdd``, whose MLAS kernel (x86-64, AVX2) folds the
    zero points into one float32 constant and adds each operand with a fused multiply-add of its
    code and its float32 scale ratio (``scale / out_scale``), rounding once to even at the end:

        fixed = zc - fma(rV, zv, rS * zs)
        c = fma(v, rV, fma(s, rS, fixed))

    ``v`` is the operand that varies along ORT's broadcast span, ``s`` the other: ``a`` unless
    ``a`` is constant along the span (``a_scalar``: a scalar, or a per-channel tensor broadcast
    over H, W), where ORT passes ``b`` first.  A constant ``b`` (``b_scalar``) gets the same
    arithmetic: MLAS folds it into ``fixed`` once with the same fused multiply-add.  Measured on
    ORT 1.32 over 600 random scale and zero point sets, all 65,536 pairs each: this form differs
    nowhere; ``fixed + float32(s * rS)`` for a constant ``b`` on 42 of 39.3 million pairs, and
    that with ``a`` kept first for a constant ``a`` on 125.  Rounding the real sum instead differs
    by one step on about one element in 10^5, which steep lookup tables after the add grow into
    many steps.
    """
    del b_scalar  # the same arithmetic as two varying operands
    if a_scalar:
        a, a_scale, a_zp, b, b_scale, b_zp = b, b_scale, b_zp, a, a_scale, a_zp
    ra, rb, fixed = qlinear_add_constants(a_scale, a_zp, b_scale, b_zp, out_scale, out_zp)
    v = _fma32(np.asarray(a).astype(np.float32), ra, _fma32(np.asarray(b).astype(np.float32), rb, fixed))
    return round_values(v, ONNX_ROUND_MODE).astype(np.int64)


def qlinear_add_constants(a_scale: float, a_zp: int, b_scale: float, b_zp: int, out_scale: float,
                          out_zp: int) -> tuple[np.float32, np.float32, np.float32]:
    """:func:`qlinear_add`'s float32 constants ``(rA, rB, fixed)``: each operand's scale ratio and
    the zero points folded into one value, as MLAS computes them.  The code of a pair is then
    ``round_half_even(fma(a, rA, fma(b, rB, fixed)))``, each fused multiply-add one float64 product
    and sum rounded once to float32 (:func:`_fma32`), which is how the runtime's fused graphs write
    it where ONNX Runtime's ``QLinearAdd`` rounds otherwise (``fused_pairs.qlinear_add_float``)."""
    ra = np.float32(np.float32(a_scale) / np.float32(out_scale))
    rb = np.float32(np.float32(b_scale) / np.float32(out_scale))
    fixed = np.float32(np.float32(out_zp) - _fma32(ra, np.float32(a_zp), np.float32(rb * np.float32(b_zp))))
    return ra, rb, fixed


def quantize_pooled(
    values: np.ndarray, scale: float, zero_point: int, bits: int = 8, signed: bool = True
) -> np.ndarray:
    """The output step of ORT's ``QLinearAveragePool``: ``rint(v / scale + zero_point)`` in float32.

    Unlike ``QuantizeLinear`` (round, then add the zero point) the zero point is added in float32
    before rounding, which moves the rounding point of a value whose fraction float32 cannot
    keep next to the zero point."""
    v = np.asarray(values, np.float32) / np.float32(scale) + np.float32(zero_point)
    return saturate(round_values(v, ONNX_ROUND_MODE), bits, signed)


def select_codes(a: np.ndarray, b: np.ndarray, mode: str) -> np.ndarray:
    """``Max``/``Min`` of two quantized tensors on integers, given each operand's codes already on the
    output grid (``a = Q_out(DQ_a(qa))``, by a table): ``max(a, b)`` (``min``), broadcast.

    Exact for any scales and zero points: quantizing (float32 division by a positive scale, rounding,
    saturation) is monotone non-decreasing, so ``Q(max(x, y)) = max(Q(x), Q(y))`` for the float32
    values ONNX Runtime compares; no common scale beyond the output's is needed."""
    if mode not in ("max", "min"):
        raise ValueError(f"select mode {mode!r} is not 'max' or 'min'")
    return np.maximum(a, b) if mode == "max" else np.minimum(a, b)


def one_hot_rows(weights: np.ndarray, bias: np.ndarray | None, hot: float, cold: float) -> np.ndarray | None:
    """Every row a float32 matrix product of one-hot codes can make: ``onehot @ weights + bias``, where a
    row's codes are ``hot`` at one position of the ``n`` (``weights`` is ``[n, N]``) and ``cold`` elsewhere,
    as an ``[n + 1, N]`` float32 table (row ``n``: no position hot); None where that is not provably exact.

    Exact (the table equals ONNX Runtime's ``Gemm`` of the codes bit for bit, whatever order it sums in):
    every product and the bias are multiples of one power of two ``2^-k`` (``k`` <= 100: no subnormal)
    with at most 2^24 of it in each output's sum of magnitudes, so every partial sum is a float32; and
    an output is ``-0.0`` only where all its terms are zeros, which is refused (IEEE leaves that sign
    to the order: ``0 * -w``)."""
    n, width = weights.shape
    b = np.zeros(width) if bias is None else np.broadcast_to(np.asarray(bias, np.float64), (width,))
    terms = [np.float64(cold) * weights, np.float64(hot) * weights, b]  # float32 products: exact in float64
    if not all(np.isfinite(t).all() for t in terms):
        return None
    k = next((k for k in range(101) if all((np.ldexp(t, k) == np.rint(np.ldexp(t, k))).all() for t in terms)), None)
    bound = FLOAT_EXACT_BOUND[np.dtype(np.float32)]
    if k is None or any(np.abs(np.ldexp(t, k)).max(initial=0) > bound for t in terms):
        return None
    c0, c1, bb = (np.ldexp(t, k).astype(np.int64) for t in terms)
    if (np.maximum(np.abs(c0), np.abs(c1)).sum(axis=0) + np.abs(bb) > bound).any():
        return None
    cold_sum = c0.sum(axis=0) + bb
    table = np.concatenate([cold_sum - c0 + c1, cold_sum[None]])
    cold_terms = (c0 != 0).sum(axis=0) + (bb != 0)  # each output's nonzero terms: the cold ones and the bias,
    nonzero = np.concatenate([cold_terms - (c0 != 0) + (c1 != 0), cold_terms[None]])  # the hot one for its own
    if (nonzero == 0).any():
        return None
    return np.ldexp(table.astype(np.float64), -k).astype(np.float32)


def saturate(values: np.ndarray, bits: int = 8, signed: bool = True, narrow: bool = False) -> np.ndarray:
    """Clamp integers into the code range and store them in the matching integer type."""
    qmin, qmax = qrange(bits, signed, narrow)
    return np.clip(values, qmin, qmax).astype(storage_dtype(bits, signed))


# --- the same rounding as ONNX operations (the runtime's fused graphs) ----------------------

#: Float types in which every integer of magnitude below the bound is exact (float32: 2^24).
FLOAT_EXACT_BOUND = {np.dtype(np.float32): 1 << 24, np.dtype(np.float64): 1 << 53}


def rounding_as_onnx(mode: RoundMode | str) -> tuple[float, str] | None:
    """The tie rule as ``OP(v + offset)`` with ``OP`` an ONNX ``Floor``, ``Ceil`` or ``Round``.

    ``round_values`` written as one addition and one standard ONNX op, so that a graph built
    for ONNX Runtime rounds as this module does: ``half_up`` is ``Floor(v + 0.5)``,
    ``half_down`` ``Ceil(v - 0.5)``, ``half_even`` ONNX ``Round`` (ties to even).  The addition
    is exact when ``v + offset`` is representable (integers times a power of two far enough
    below the float type's bound); callers check that bound.  ``std_round`` (ties away from
    zero) has no such form: ``None``.
    """
    mode = RoundMode(mode)
    return {RoundMode.HALF_UP: (0.5, "Floor"), RoundMode.HALF_DOWN: (-0.5, "Ceil"),
            RoundMode.HALF_EVEN: (0.0, "Round")}.get(mode)


def rounding_by_doubling(mode: RoundMode | str) -> tuple[str, str] | None:
    """The tie rule of ANY float as ``OUTER(INNER(2 * v) * 0.5)`` with ONNX ``Floor``/``Ceil``:
    ``(INNER, OUTER)``; every step is exact in the float's own type, so a float32 graph rounds a
    float32 value as :func:`round_values` does without widening it to float64 for the addition
    of :func:`rounding_as_onnx` (which rounds ``0.49999997 + 0.5`` up to 1 in float32).

    ``half_up``: with ``n = floor(2v)``, ``2v`` lies in ``[n, n + 1)``, so ``v + 1/2`` lies in
    ``[(n + 1)/2, (n + 2)/2)``, an interval of length 1/2 starting at an integer or a half-integer:
    ``floor(v + 1/2) = floor((n + 1)/2) = ceil(n/2)``.  ``half_down`` mirrors it:
    ``ceil(v - 1/2) = floor(ceil(2v)/2)``.  Doubling, halving an integer, ``Floor`` and ``Ceil``
    are exact (a doubling that overflows to infinity saturates as the value itself would).
    ``half_even`` is ONNX ``Round`` itself and ``std_round`` has no such form: ``None``.
    """
    return {RoundMode.HALF_UP: ("Floor", "Ceil"), RoundMode.HALF_DOWN: ("Ceil", "Floor")}.get(RoundMode(mode))


def rounding_as_quantize_linear(mode: RoundMode | str) -> tuple[str, float] | None:
    """The tie rule of a float32 value ``v`` as ``QuantizeLinear(INNER(2 * v) + offset, scale 2)``:
    ``(INNER, offset)`` with ``INNER`` an ONNX ``Floor`` or ``Ceil``.  Four ONNX nodes for a quantize
    step (``Div`` by half the scale, ``INNER``, ``Add``, ``QuantizeLinear``) where the quantizer's
    function (``qdq.make_quantize_function``) inlines to eight, with the same codes.

    ``half_up``: with ``n = floor(2v)``, ``floor(v + 1/2) = ceil(n/2)`` (:func:`rounding_by_doubling`),
    and ``(n + 1/2) / 2 = n/2 + 1/4`` lies a quarter away from ``ceil(n/2)`` and three quarters from
    the other neighbour: never a tie, so ``QuantizeLinear``'s rounding (ties to even, or any rule to
    nearest) gives ``ceil(n/2)``, its zero point and saturation the function's ``Add`` and ``Clip``.
    ``half_down`` mirrors it: ``ceil(v - 1/2) = floor(m/2)`` with ``m = ceil(2v)``, ``(m - 1/2)/2``.
    Every step is exact in float32 where it matters: ``x / (scale/2)`` is ``2 * (x / scale)`` (both
    rounded once; scaling by two commutes with rounding away from the subnormals, where either
    value rounds to code 0 or the zero point and an overflow to infinity saturates as the finite value
    would), ``Floor``/``Ceil`` are exact, ``n + 1/2`` is exact below ``2^23`` and beyond it rounding is
    monotone and the quotient saturates any 8-bit code.  NaN: ONNX leaves a NaN's integer code
    undefined, and ONNX Runtime gives the two forms different ones (the test pins which).
    ``half_even`` is ``QuantizeLinear`` itself and ``std_round`` has no such form: ``None``.
    """
    return {RoundMode.HALF_UP: ("Floor", 0.5), RoundMode.HALF_DOWN: ("Ceil", -0.5)}.get(RoundMode(mode))


def shift_rounding_as_onnx(mode: RoundMode | str) -> tuple[bool, bool] | None:
    """:func:`shift_round`'s tie rule as integer floor divisions: ``(negate, tie_to_even)``.

    ``half_up`` is ``floor((a + half) / 2^s)``; ``half_down`` the same on ``-a``, negated
    (``-floor((-a + half) / 2^s)``, as :func:`_round_right_shift`); ``half_even`` is ``half_up``
    minus one where ``a + half`` is an exact multiple of ``2^s`` (a tie) and the quotient is odd.
    ``std_round`` (ties away from zero): ``None``.
    """
    mode = RoundMode(mode)
    return {RoundMode.HALF_UP: (False, False), RoundMode.HALF_DOWN: (True, False),
            RoundMode.HALF_EVEN: (False, True)}.get(mode)


def rounding_as_nearest_even(mode: RoundMode | str, shift: int | np.ndarray) -> np.ndarray | None:
    """Offset that turns the tie rule into round-half-to-even on the grid ``2^-shift``.

    A value ``v`` on that grid (an integer accumulator times ``2^-shift``) moved by
    ``2^-(shift+1)`` lies strictly between two rounding points, so rounding it to nearest (any
    tie rule) gives ``floor(v + 0.5)`` (``half_up``, offset ``+2^-(shift+1)``) or ``ceil(v - 0.5)``
    (``half_down``, ``-2^-(shift+1)``); ``half_even`` needs no offset.  A shift of 0 or less leaves
    integers: offset 0.  ``std_round``: ``None``.  Per channel when ``shift`` is an array.
    """
    mode = RoundMode(mode)
    sign = {RoundMode.HALF_UP: 1.0, RoundMode.HALF_DOWN: -1.0, RoundMode.HALF_EVEN: 0.0}.get(mode)
    if sign is None:
        return None
    shift = np.asarray(shift, np.float64)
    return np.where(shift > 0, sign * np.exp2(-shift - 1), 0.0)


#: The largest right shift :func:`shift_as_float32_multiplier` serves: it nudges the product by
#: up to 257 * 2^-23 plus half a float32 step at 256 (2^-16), less than the 2^-14 that separates
#: a non-tie from a rounding point.
MAX_NUDGED_SHIFT = 14


def shift_as_float32_multiplier(shift: np.ndarray, mode: RoundMode | str) -> np.ndarray | None:
    """Float32 multipliers ``m`` (one per shift) with which MLAS' requantisation to uint8,
    ``clip(rint(float32(float32(acc) * m)), 0, 255)`` (ties to even), equals
    ``clip(shift_round(acc, shift, mode), 0, 255)`` for every int32 accumulator.

    ``m`` is ``2^-shift`` nudged by one float32 step towards the tie rule: ``half_up`` ties
    (exact halves on the grid ``2^-shift``) then land just above the half, ``half_down`` ties
    just below, while every non-tie keeps its side (the nudge, at most ``257 * 2^-23`` plus the
    product's rounding, stays below ``2^-14 <= 2^-shift``).  Ties below zero move the wrong way,
    but there both results saturate to 0: a caller moves the codes it keeps to ``0..255`` first
    (through the bias).  ``half_even`` and shifts of 0 or less (integers, no ties) need no nudge.
    ``None`` for ``std_round`` or a shift beyond :data:`MAX_NUDGED_SHIFT`.
    """
    mode = RoundMode(mode)
    shift = np.asarray(shift, np.int64)
    nudge = {RoundMode.HALF_UP: 1.0 + 2.0 ** -23, RoundMode.HALF_DOWN: 1.0 - 2.0 ** -24,
             RoundMode.HALF_EVEN: 1.0}.get(mode)
    if nudge is None or np.any(shift > MAX_NUDGED_SHIFT):
        return None
    return (np.exp2(-shift.astype(np.float64)) * np.where(shift > 0, nudge, 1.0)).astype(np.float32)
