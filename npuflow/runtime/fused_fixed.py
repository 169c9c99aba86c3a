"""Fixed-point requantisation (``numerics.requantize_fixed_point``) in a fused run.

A float-scale target with fixed-point multipliers (bernoulli2) rounds ``acc * m * 2^-shift``
exactly.  Prepared per channel (:class:`FixedPoint`), it runs on ONNX Runtime's own integer
kernels where a float32 multiplier provably gives every code (:func:`kernel_form`, read by
``fused_qlinear``), a channel without one where two float32 multipliers and the tie rule pick
its code (:func:`tie_pairs`, read by ``fused_conv``), else as ONNX operations on the accumulator
(:func:`requantize_fixed`): one float32 product where ``numerics.fixed_point_as_float32`` proves
that exact, float64 where the product fits 52 bits, else int64 with a shift.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from onnx import TensorProto

from .. import numerics as nm
from .fused_graph import F32_BOUND, Graph, NotFusable, abs_sums, centred_clip, channel, clamp_bounds, signed_sums


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
    def of_layer(cls, ep: dict, w: np.ndarray, bias: np.ndarray,
                 reach: int | float | tuple[int, int]) -> "FixedPoint":
        """The requantisation of a layer with weights ``w`` (output channels first) and ``bias``
        whose input codes lie within ``reach`` of its zero point: accumulators bias +- reach *
        sum|w|; or, ``reach`` a pair ``(below, above)`` (``fused_graph.code_span``), bias - below *
        sum(w+) - above * sum|w-| .. bias + above * sum(w+) + below * sum|w-|."""
        if np.ndim(reach) == 0:
            sums = reach * abs_sums(w)
            return cls(ep, w.shape[0], bias - sums, bias + sums)
        (below, above), (pos, neg) = reach, signed_sums(w)
        return cls(ep, w.shape[0], bias - below * pos - above * neg, bias + above * pos + below * neg)

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


def kernel_form(w: np.ndarray, bias: np.ndarray, ep: dict, reach: int | tuple[int, int],
                partial: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Int8 weights, int32 bias and per-channel float32 multipliers with which an MLAS integer
    kernel (``QLinearConv``: the int32 accumulator times a float32 multiplier, ties to even, as
    ``numerics.requantize_float`` models it) gives fixed-point convolution ``ep``'s codes, or ``None``.

    The check is :func:`float32_multipliers` over each channel's whole reachable accumulator
    range (``FixedPoint.of_layer``: ``reach`` one bound or a pair ``(below, above)`` of the input
    codes around their zero point, the pair the tighter): it holds only where the target
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



#: Float32 neighbours of ``m * 2^-shift`` (each side) among which :func:`step_fixes` picks the base
#: (more found no fewer fixes on PP-OCRv4 det: 8 and 32 gave the same 279 million multiply-adds).
FIX_TRIES = 3
#: Fixes of each kind (a step ONNX Runtime's kernel takes late, or early) a channel may need.
FIX_ROUNDS = 2


class StepFixes:
    """:func:`step_fixes`' answer for a layer's channels ``rows``: per row, a float32 multiplier
    ``mult`` (NaN: no form) and its corrections, ``late[r]``/``early[r]`` for round ``r`` (the
    exact step's accumulator ``a`` and byte ``k``, or None)."""

    def __init__(self, n: int) -> None:
        self.mult = np.full(n, np.nan, np.float32)
        self.late: list[list[tuple[int, int] | None]] = [[None] * FIX_ROUNDS for _ in range(n)]
        self.early: list[list[tuple[int, int] | None]] = [[None] * FIX_ROUNDS for _ in range(n)]


def step_fixes(w: np.ndarray, bias: np.ndarray, ep: dict, reach: int | tuple[int, int],
               rows: np.ndarray) -> StepFixes:
    """For channels ``rows`` of a fixed-point convolution (weights ``w``, ``bias``, inputs within
    ``reach`` of their zero point) without one exact float32 multiplier (:func:`kernel_form`): a
    float32 multiplier and the few steps where ``QLinearConv`` with it steps one or more
    accumulators late or early, each fixed by one more output channel of the same kernel.

    Why: such a channel's exact product lies, at one or two accumulators, within float32's
    spacing of a tie (``k - 1/2`` plus 1e-7): the kernel's product rounds onto the tie and then to
    even, and no float32 multiplier gets both such near-ties of a channel right (one needs it
    larger, the other smaller).  Those accumulators are known, so an output channel with the same
    weights, multiplier 1 and bias moved by ``k - a`` (bytes ``I = clip(acc - a + k, 0, 255)``)
    fixes a late step at ``a`` to byte ``k`` as ``max(c, min(I, k))`` and an early one as
    ``min(c, max(I, k - 1))``: ``Min``/``Max`` on a few uint8 channels, where computing the
    channel apart (``ConvInteger`` and the exact requantisation) costs an im2col of the layer's
    input whatever its few output channels.

    The check: the kernel's bytes ``min(clip(rint(float32(acc) * m) + Z, 0, 255), hi - lo)``
    (``numerics.requantize_float``; ``Z = zp - lo``) and each fix channel's are monotone in
    ``acc``, so between two consecutive steps of any of them and of the exact bytes all are
    constant; the fixed bytes are compared with the exact ones at the range's ends and at every
    such step.  Ties to even only (MLAS' rounding).  Of the candidates within :data:`FIX_TRIES`
    float32 steps that need at most :data:`FIX_ROUNDS` fixes of each kind and pass, a row takes one
    with the fewest fixes (the nearest first among equals): each fix is one more output channel of
    the layer's kernel (PP-OCRv4 det on bernoulli2: its neck's 864-tap layers carried 30 fix
    channels beside 24 of their own; the fewest instead of the first passing candidate: 312 -> 279
    million fix-channel multiply-adds a frame).  A row keeps NaN where no candidate passes."""
    lo, hi = clamp_bounds(ep)
    out = StepFixes(len(rows))
    if nm.RoundMode(ep["round"]) != nm.RoundMode.HALF_EVEN or not len(rows):
        return out
    try:
        fx = FixedPoint.of_layer(ep, w, np.asarray(bias, np.int64).reshape(-1), reach)
    except NotFusable:
        return out
    zp, span = int(ep["zp"]), hi - lo
    mult, shift = fx.mult[rows][:, None], fx.shift[rows][:, None]
    a_lo, a_hi = np.floor(fx.acc_lo[rows]).astype(np.int64)[:, None], np.ceil(fx.acc_hi[rows]).astype(np.int64)[:, None]
    if np.any(np.maximum(-a_lo, a_hi) + 256 >= F32_BOUND):
        return out

    def exact(acc: np.ndarray, rows=slice(None)) -> np.ndarray:
        return np.clip(nm.requantize_fixed_point(acc, mult[rows], shift[rows], ep["round"]) + zp, lo, hi) - lo

    scale = np.ldexp(mult.astype(np.float64), -shift)
    with np.errstate(divide="ignore"):
        guess = np.nan_to_num(np.ceil((np.arange(1, 256)[None, :] + lo - zp - 0.5) / scale))
    want = _steps(exact, a_lo, a_hi, guess)
    ks = np.broadcast_to(np.arange(1, 256)[None, :], want.shape)
    cands = [scale.astype(np.float32)]
    for direction in (np.inf, 0):
        m = cands[0]
        for _ in range(FIX_TRIES):
            m = np.nextafter(m, np.float32(direction))
            cands.append(m)
    fewest = np.full(len(rows), FIX_ROUNDS * 2 + 1)
    for m32 in cands:
        def kernel(acc: np.ndarray, rows=slice(None), m32=m32) -> np.ndarray:
            return np.minimum(np.clip(nm.requantize_float(acc, m32[rows], nm.RoundMode.HALF_EVEN) + zp - lo, 0, 255),
                              span)

        got = _steps(kernel, a_lo, a_hi, want)
        for r in np.flatnonzero(fewest > 0):
            late = [(int(a), int(k)) for a, b, k in zip(want[r], got[r], ks[r]) if b > a]
            early = [(int(a), int(k)) for a, b, k in zip(want[r], got[r], ks[r]) if b < a]
            if len(late) > FIX_ROUNDS or len(early) > FIX_ROUNDS or len(late) + len(early) >= fewest[r]:
                continue
            points = [a_lo[r], a_hi[r], want[r], got[r]] + [a - k + np.arange(1, 256) for a, k in late + early]
            acc = np.clip(np.concatenate(points), a_lo[r, 0], a_hi[r, 0])[None, :]
            one = slice(r, r + 1)
            if np.array_equal(fixed_bytes(kernel(acc, one), acc, late, early, span), exact(acc, one)):
                fewest[r] = len(late) + len(early)
                out.mult[r] = m32[r, 0]
                out.late[r] = (late + [None] * FIX_ROUNDS)[:FIX_ROUNDS]
                out.early[r] = (early + [None] * FIX_ROUNDS)[:FIX_ROUNDS]
    return out


def fixed_bytes(c: np.ndarray, acc: np.ndarray, late: list, early: list, span: int) -> np.ndarray:
    """Kernel bytes ``c`` at accumulators ``acc`` with :func:`step_fixes`' corrections applied as
    the fused graph applies them: late fixes first, then early ones, each fix channel's bytes
    ``min(clip(acc - a + k, 0, 255), span)``."""
    for fixes, late_kind in ((late, True), (early, False)):
        for a, k in fixes:
            ind = np.minimum(np.clip(acc - a + k, 0, 255), span)
            c = np.maximum(c, np.minimum(ind, k)) if late_kind else np.minimum(c, np.maximum(ind, k - 1))
    return c


def _steps(f: Callable[[np.ndarray], np.ndarray], a_lo: np.ndarray, a_hi: np.ndarray,
           guess: np.ndarray) -> np.ndarray:
    """The first accumulator in ``a_lo + 1 .. a_hi`` at which the monotone bytes ``f`` reach each of
    1..255 (rows: channels), searched from ``guess``; ``a_lo`` where ``f`` does not step there."""
    ks = np.arange(1, 256)[None, :]
    live = (f(a_lo) < ks) & (f(a_hi) >= ks)
    steps = np.where(live, np.clip(guess, a_lo + 1, a_hi), a_lo).astype(np.int64)
    while True:
        down = live & (f(steps - 1) >= ks)
        up = live & (f(steps) < ks)
        if not (np.any(down) or np.any(up)):
            return steps
        steps = steps - down + up
