"""The softmax of codes (cpu-int8's ``DQ -> Softmax -> Q``): part of ``numerics``, the one place of the
integer arithmetic, in a module of its own so that ``numerics.py`` stays under 700 lines.

The arithmetic is ONNX Runtime's ``com.microsoft.QLinearSoftmax`` as its portable C++ source writes it
(a float32 table of exponentials by code difference, the row's float32 sum in order, ``rint(e *
floor(1 / scale) / sum)``): its default run of a ``DQ -> Softmax -> Q`` equals it on random rows
(``tests/unit/test_newops3_softmax.py``).  Its vectorised MLAS kernel (ONNX Runtime 1.32 on an
AVX-512 Xeon) rounds the sum and the scale differently, so where a ratio lies within a float32
rounding of a tie (rows of repeated maxima) the two can differ by one code; the order here is the one
a fused run can reproduce exactly (``runtime/fused_softmax.py``: ``CumSum``).
"""

from __future__ import annotations

import numpy as np

from .numerics import ONNX_ROUND_MODE, qrange, quantize, round_values, storage_dtype


def softmax_table(scale: float, bits: int, reduce_len: int, qlinear: bool) -> np.ndarray:
    """The exponential of every code difference ``d = q - max(q)`` a softmax of ``bits``-bit codes
    reads (the zero point cancels), indexed by ``d + 2^bits - 1``.

    ``qlinear`` (8-bit codes in and out of one type: ONNX Runtime's default run fuses such a
    ``DQ -> Softmax -> Q`` into its ``QLinearSoftmax``): that kernel's float32 table, ``exp((d + shift)
    * scale)`` computed in double, ``shift`` the headroom it keeps so that ``reduce_len`` terms cannot
    overflow float32.  Otherwise (it runs them in float): ``exp(scale * d)`` in float64."""
    span = (1 << bits) - 1
    d = np.arange(-span, 1, dtype=np.float64)
    s = np.float64(np.float32(scale))
    if not qlinear:
        return np.exp(s * d)
    headroom = np.log(np.float64(np.float32(np.finfo(np.float32).max) / np.float32(reduce_len)))
    shift = max(0.0, float(headroom) - 5.0) / s
    return np.exp((d + shift) * s).astype(np.float32)


def softmax_codes(q: np.ndarray, axes: tuple[int, ...], table: np.ndarray, out_scale: float, out_zp: int,
                  bits: int = 8, signed: bool = True) -> np.ndarray:
    """``Q(softmax(DQ(q)))`` over ``axes`` (consecutive) with :func:`softmax_table`'s ``table``.

    A float32 table (8 bits) is ONNX Runtime's ``QLinearSoftmax``: each row's float32 sum taken in
    order, ``rint(e * floor(1 / out_scale) / sum) + zp`` in float32, saturated (bit exact against its
    default run on random rows; its float run differs by 1 LSB on ~0.3 % of codes, ``newops3_s35.md``).  A float64
    table: the row normalised in float64, then ``QuantizeLinear``, as its float ``Softmax`` computes
    up to float32 rounding."""
    qmin, qmax = qrange(bits, signed)
    d = q.astype(np.int64) - q.max(axis=axes, keepdims=True).astype(np.int64)
    e = table[d + (table.size - 1)]
    if table.dtype != np.float32:
        y = e / e.sum(axis=axes, keepdims=True)
        return quantize(y, out_scale, out_zp, bits=bits, signed=signed, round_mode=ONNX_ROUND_MODE)
    rows = np.moveaxis(e, axes, tuple(range(e.ndim - len(axes), e.ndim)))
    flat = rows.reshape(*rows.shape[:rows.ndim - len(axes)], -1)
    total = np.cumsum(flat, axis=-1, dtype=np.float32)[..., -1:]  # in order, as the kernel adds
    inv = np.float32(np.floor(np.float32(1.0) / np.float32(out_scale)))
    with np.errstate(over="ignore"):  # a row of one term: its product may overflow to inf, saturated
        r = round_values((flat * inv).astype(np.float32) / total, ONNX_ROUND_MODE)
    v = (np.clip(r, qmin - int(out_zp), qmax - int(out_zp)).astype(np.int64) + int(out_zp)).reshape(rows.shape)
    return np.moveaxis(v, tuple(range(e.ndim - len(axes), e.ndim)), axes).astype(storage_dtype(bits, signed))
