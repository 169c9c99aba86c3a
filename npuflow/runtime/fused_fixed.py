"""Fixed-point requantisation (``numerics.requantize_fixed_point``) in a fused run.

A float-scale target with fixed-point multipliers (bernoulli2) rounds ``acc * m * 2^-shift``
exactly.  Prepared per channel (:class:`FixedPoint`), it runs on ONNX Runtime's own integer
kernels where a float32 multiplier provably gives every code (:func:`kernel_form`, read by
``fused_qlinear``), else as ONNX operations on the accumulator (:func:`requantize_fixed`): one
float32 product where ``numerics.fixed_point_as_float32`` proves that exact, float64 where the
product fits 52 bits, else int64 with a shift.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .. import numerics as nm
from .fused_graph import Graph, NotFusable, abs_sums, centred_clip, channel, clamp_bounds


class FixedPoint:
    """A fixed-point requantisation (``numerics.requantize_fixed_point``) prepared per channel.

    ``shift_round`` gives 0 for shifts of 64 and more, so such a channel gets multiplier 0.  A
    channel whose whole accumulator range (``acc_lo..acc_hi``: bias +- the largest sum) rounds to
    one value (a near-dead channel: tiny weight scale, saturated bias) is ``const``, its value in
    ``value``.
    """

    def __init__(self, ep: dict, cout: int, acc_lo: np.ndarray, acc_hi: np.ndarray) -> None:
        shift = channel(ep["shift"], cout).astype(np.int64)
        self.mult = np.where(shift >= 64, 0, channel(ep["multiplier"], cout).astype(np.int64))
        self.shift = np.where(shift >= 64, 0, shift)
        self.acc_lo, self.acc_hi = np.asarray(acc_lo, np.float64), np.asarray(acc_hi, np.float64)
        self.bound = np.maximum(np.abs(acc_lo), np.abs(acc_hi))
        if np.any(self.shift < 0) or np.any(self.mult < 0):
            raise NotFusable("negative fixed-point shift or multiplier")
        in_int64 = self.bound * self.mult < 2.0 ** 62
        ends = [nm.requantize_fixed_point(np.where(in_int64, e, 0).astype(np.int64), self.mult, self.shift,
                                          ep["round"]) for e in (acc_lo, acc_hi)]
        self.const = in_int64 & (ends[0] == ends[1])
        if np.any(~in_int64 & ~self.const):
            raise NotFusable("fixed-point product beyond int64")
        self.value = np.where(self.const, ends[0], 0)

    @classmethod
    def of_layer(cls, ep: dict, w: np.ndarray, bias: np.ndarray, reach: int | float) -> "FixedPoint":
        """The requantisation of a layer with weights ``w`` (output channels first) and ``bias``
        whose input codes lie within ``reach`` of its zero point: accumulators bias +- reach * sum|w|."""
        sums = reach * abs_sums(w)
        return cls(ep, w.shape[0], bias - sums, bias + sums)

    def constants_as_bias(self, w: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``w`` and ``bias`` with each constant channel given no taps and its value as bias."""
        w = np.where(self.const.reshape(-1, *([1] * (w.ndim - 1))), 0, w).astype(w.dtype)
        return w, np.where(self.const, self.value, bias)


def requantize_fixed(g: Graph, acc: str, double: bool, fx: FixedPoint, ep: dict, lo: int, hi: int, *,
                      const_in_acc: bool = False, int32: bool = False) -> tuple[str, int]:
    """``numerics.requantize_fixed_point``: round ``acc * m * 2^-shift``, exactly; the codes
    centred, ``(tensor, offset)``.

    Only accumulators up to ``reach = (T + 1) * 2^shift / m`` can give a code that does not
    saturate (``T``: the farthest code from the zero point).  When ``reach`` and ``m`` together
    fit 52 bits, the float64 product of such an accumulator (and its offset) is exact and rounds
    with ``numerics.rounding_as_onnx``; a larger accumulator's product may round, but float64
    multiplication, addition and rounding are monotone and ``T + 1`` is a float64 integer, so it
    still lands at ``T + 1`` or beyond and saturates as the exact one does: no clamp of the
    accumulator is needed.  The clamps follow in float32, moved by the zero point, which is left
    out (the output is held centred, ``Graph``).  Before both, a float32 accumulator tries
    ``numerics.fixed_point_as_float32``: where float32 multipliers reproduce every channel's
    codes, the requantisation is one float32 ``Mul`` and the rounding, without the two casts and
    the float64 passes (measured: most of a float-scale frame's time besides the convolutions).
    Constant channels give their value: added
    after rounding, or, with ``const_in_acc`` (the convolution gave them no taps and their value
    as bias), multiplied by 1.  Otherwise the product is formed in int64 and shifted as
    ``shift_round`` does (more passes over 8-byte data).  ``int32``: ``acc`` is ``ConvInteger``'s
    int32 accumulator (below 2^24), cast once to the type each form computes in (float64 or int64
    directly: exact, one pass fewer than through float32).
    """
    cout = len(fx.mult)
    far = max(abs(lo - ep["zp"]), abs(hi - ep["zp"])) + 1
    reach = np.where(fx.const, 0, np.floor(np.minimum(far * np.exp2(fx.shift) / np.maximum(fx.mult, 1) + 1, fx.bound)))
    bits = np.ceil(np.log2(reach + 1)) + np.ceil(np.log2(fx.mult + 1))  # of |acc * m|; one more for the offset
    recipe = nm.rounding_as_onnx(ep["round"])
    if recipe is None:
        raise NotFusable(f"tie rule {ep['round']}")
    value = np.zeros(cout) if const_in_acc else fx.value
    m32 = None if double or np.ndim(ep["zp"]) else float32_multipliers(fx, ep, lo, hi, const_in_acc)
    if m32 is not None:  # float32 all through: half the bytes, two casts fewer
        v = g.node("Mul", [g.node("Cast", [acc], to=TensorProto.FLOAT) if int32 else acc,
                           g.const(m32.reshape(1, cout, 1, 1))])
        offset, op = recipe
        if offset:
            v = g.node("Add", [v, g.const(offset)])
        return centred_clip(g, g.node(op, [v]), ep["zp"], lo, hi, np.float32)
    if np.all(fx.const | (bits <= 52)):
        v = acc
        if not double:
            v = g.node("Cast", [v], to=TensorProto.DOUBLE)
        m = np.where(fx.const, float(const_in_acc), np.ldexp(fx.mult.astype(np.float64), -fx.shift))  # exact: 31 bits
        v = g.node("Mul", [v, g.const(m.reshape(1, cout, 1, 1), np.float64)])
        offset, op = recipe
        if offset or np.any(value):
            v = g.node("Add", [v, g.const((value + offset).reshape(1, cout, 1, 1), np.float64)])
        return centred_clip(g, g.node("Cast", [g.node(op, [v])], to=TensorProto.FLOAT), ep["zp"], lo, hi, np.float32)
    one = fx.const & const_in_acc
    prod = g.node("Mul", [g.node("Cast", [acc], to=TensorProto.INT64),
                          g.const(np.where(one, 1, fx.mult).reshape(1, cout, 1, 1), np.int64)])
    y = _shift_round_int64(g, prod, ep["round"], np.where(one, 0, fx.shift).reshape(1, cout, 1, 1))
    if np.any(value):
        y = g.node("Add", [y, g.const(value.reshape(1, cout, 1, 1), np.int64)])
    y, zp = centred_clip(g, y, ep["zp"], lo, hi, np.int64)
    return g.node("Cast", [y], to=TensorProto.FLOAT), zp


def float32_multipliers(fx: FixedPoint, ep: dict, lo: int, hi: int, const_in_acc: bool,
                        partial: bool = False) -> np.ndarray | None:
    """``numerics.fixed_point_as_float32`` of a float32 accumulator: per-channel float32
    multipliers that give the exact saturated codes (centred on the zero point) for every
    accumulator the channel can hold, or ``None``.  A constant channel given its value as bias
    (``const_in_acc``) holds just that value, multiplied by 1."""
    one = fx.const & const_in_acc
    value = fx.value.astype(np.float64)
    zp = int(ep["zp"])
    return nm.fixed_point_as_float32(np.where(one, 1, fx.mult), np.where(one, 0, fx.shift), ep["round"],
                                     np.floor(np.where(one, value, fx.acc_lo)).astype(np.int64),
                                     np.ceil(np.where(one, value, fx.acc_hi)).astype(np.int64), lo - zp, hi - zp,
                                     partial=partial)


def _shift_round_int64(g: Graph, v: str, mode: str, shift: np.ndarray) -> str:
    """``numerics.shift_round`` of int64 ``v`` (``|v| + half < 2^63``) by 0..63 as ONNX ops, the
    tie rule from ``numerics.shift_rounding_as_onnx``.  ONNX shifts only unsigned integers, so
    the floor division is ``((v + half + 2^63) >> shift) - 2^(63 - shift)`` in uint64, whose
    wrap-around arithmetic makes the casts between int64 and uint64 exact."""
    recipe = nm.shift_rounding_as_onnx(mode)
    if recipe is None:
        raise NotFusable(f"tie rule {mode}")
    negate, tie_to_even = recipe
    shift = shift.astype(np.uint64)
    half = np.where(shift > 0, np.left_shift(np.uint64(1), np.maximum(shift, 1) - np.uint64(1)), np.uint64(0))
    if negate:
        v = g.node("Neg", [v])
    u = g.node("Add", [g.node("Cast", [v], to=TensorProto.UINT64), g.const(half + np.uint64(1 << 63), np.uint64)])
    s = g.const(shift, np.uint64)
    uq = g.node("BitShift", [u, s], direction="RIGHT")
    q = g.node("Cast", [g.node("Sub", [uq, g.const(np.left_shift(np.uint64(1), np.uint64(63) - shift), np.uint64)])],
               to=TensorProto.INT64)
    if tie_to_even:  # an exact half rounded up to an odd quotient goes back down
        exact = g.node("Equal", [g.node("Cast", [g.node("BitShift", [uq, s], direction="LEFT")], to=TensorProto.INT64),
                                 g.node("Cast", [u], to=TensorProto.INT64)])
        tie = g.node("And", [exact, g.const(half > 0, np.bool_)])
        odd = g.node("Cast", [g.node("BitwiseAnd", [q, g.const(1, np.int64)])], to=TensorProto.BOOL)
        q = g.node("Sub", [q, g.node("Cast", [g.node("And", [tie, odd])], to=TensorProto.INT64)])
    return g.node("Neg", [q]) if negate else q


def kernel_form(w: np.ndarray, bias: np.ndarray, ep: dict, reach: int,
                partial: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Int8 weights, int32 bias and per-channel float32 multipliers with which an MLAS integer
    kernel (``QLinearConv``: the int32 accumulator times a float32 multiplier, ties to even, as
    ``numerics.requantize_float`` models it) gives fixed-point convolution ``ep``'s codes, or ``None``.

    The check is :func:`float32_multipliers` over each channel's whole reachable accumulator
    range (bias +- ``reach`` times its weights' absolute sum): it holds only where the target
    rounds ties to even, as MLAS does; a channel whose range rounds to one code gets no taps, its
    code as bias and multiplier 1.  ``None`` where some channel has no such multiplier (the
    caller keeps the exact ONNX forms of :func:`requantize_fixed`); with ``partial``, that
    channel's multiplier is NaN (``None`` only where no channel has one)."""
    if nm.RoundMode(ep["round"]) != nm.RoundMode.HALF_EVEN:
        return None
    bias = np.asarray(bias, np.int64).reshape(-1)
    try:
        fx = FixedPoint.of_layer(ep, w, bias, reach)
    except NotFusable:
        return None
    lo, hi = clamp_bounds(ep)
    mult = float32_multipliers(fx, ep, lo, hi, const_in_acc=True, partial=partial)
    if mult is None or np.all(np.isnan(mult)):
        return None
    return (*fx.constants_as_bias(w, bias), mult)
