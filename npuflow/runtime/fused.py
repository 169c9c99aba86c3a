"""Runs of an integer program's ops as ONE ONNX Runtime graph of exact float operations.

Run op by op, a convolution costs a call into a tiny ONNX Runtime session, two layout
reorders, casts and an int64 epilogue in numpy; the profile (``docs/compiler-runtime.md``,
"Where the time goes") shows that these, not the arithmetic, are most of the time.  Here a run
of consecutive ops becomes one graph, built at Session load from the manifest, in which every
integer tensor is a float32 tensor holding its codes: ONNX Runtime then plans the whole run
(blocked layouts kept across convolutions, its own buffers, no Python between ops).

Every operation of such a graph is exact, so its codes equal the op-by-op kernels' bit for bit:

* a convolution's partial sums are integers times one power of two, bounded at load from the
  weights and the input type (``sum|w| * max|x - zp| * 2^lshift + |bias|`` per channel, plus
  the rounding offset); below 2^24 float32 holds every one, in any summation order, and longer
  reductions are cut into input-channel chunks summed in float64;
* a power-of-two requantisation is folded into the weights and bias (``w * 2^(lshift-shift)``,
  ``bias * 2^-shift + offset``: exact), the offset from ``numerics.rounding_as_nearest_even``;
* float-scale epilogues repeat the float operations of the kernels with the same IEEE types
  (``numerics.requantize_float``'s float32 product, ``numerics.quantize``'s float32 division
  and float64 tie rule); a fixed-point multiplier is a float32 product where
  ``numerics.fixed_point_as_float32`` proves at load that one gives the exact codes for every
  accumulator the channels can hold, else an exact float64 product where the accumulator's
  non-saturating range and the multiplier fit 52 bits, else int64 arithmetic
  (``numerics.shift_rounding_as_onnx``).

Passes over the tensors, not arithmetic, are what such a graph spends its time on, so it makes as
few as exactness allows: code tensors are held centred on their zero point (a requantisation
leaves it out; convolutions, eltwise ops, pads, tables and pools read codes minus it anyway), a
constant pad of the zero point becomes the convolution's own padding, and an op whose inputs are
all elementwise functions of one 8-bit tensor (SiLU's and hard-swish's ``Mul`` of a table's input
and output, tables of tables, one-value scale and offset) is one table of that tensor, computed
by the op's own kernel on every code.

A convolution's fused float chain (LeakyReLU, hard-sigmoid, hard-swish) is its float32
operations, one node each, as ``epilogues.eval_chain`` computes them; on uint8 float-scale
groups ONNX Runtime's own integer kernels do the work where they are the arithmetic
(``fused_qlinear``).

An op whose bound or form does not allow this (16-bit inputs split into bytes, eltwise chains,
``std_round`` ties, windowed averages, products of two activations, ...) runs as its kernel
between two graphs;
``Plan.reasons`` says why, per op.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .. import numerics as nm
from ..errors import NpuflowError
from ..ort_session import open_session
from .epilogues import out_type
from . import fused_qlinear
from .kernels import KERNELS
from .fused_graph import (F32_BOUND, ML_DOMAIN, Graph, NotFusable, centred_clip, channel, clamp_bounds,
                          code_range, input_name, code_reach, round_and_clip)

#: What a fused graph ONNX Runtime refuses raises: NPF_MODEL_INVALID from open_session at creation,
#: ORT's own types from a run.
_ORT_ERRORS = (NpuflowError, ort.capi.onnxruntime_pybind11_state.Fail,
               ort.capi.onnxruntime_pybind11_state.InvalidGraph, ort.capi.onnxruntime_pybind11_state.NotImplemented)

#: ONNX Runtime fusions that would change the float arithmetic of a graph (a non-power-of-two
#: multiplier folded into weights or a GEMM's alpha); every other fusion keeps exact values exact.
DISABLED_OPTIMIZERS = ["ConvMulFusion", "MatMulScaleFusion"]

#: Ops whose cost dominates a run; a run without one is cheaper as kernels than as a graph call.
_COMPUTE_OPS = {"conv", "conv_transpose", "matmul", "eltwise", "lut", "maxpool"}


# --- ops ------------------------------------------------------------------------------------


def _conv(g: Graph, op: dict, blobs: dict) -> None:
    a = op["attrs"]
    if a.get("split_bytes"):
        raise NotFusable("16-bit input split into bytes")
    w = np.asarray(blobs["w"], np.float64)
    t, pads = op["inputs"][0], a["pads"]
    padded = g.pads.get(t)
    if padded and not any(pads) and len(a["out_shape"]) == 4 and padded[2] == a["x_zp"] \
            and not np.any(padded[1][:2]) and np.all(np.asarray(padded[1]) >= 0):
        # a constant pad of the input's zero point read only here: the convolution's own zero
        # padding of the centred input (the Pad node then has no reader left and is dropped)
        t, width = padded[0], np.asarray(padded[1])
        pads = [int(width[2, 0]), int(width[3, 0]), int(width[2, 1]), int(width[3, 1])]
    if fused_qlinear.conv(g, op, t, pads, blobs):
        return
    if any(pads):  # zero padding stands for the code x_zp: read the input centred on it
        x, off = g.centered(t, a["x_zp"]), a["x_zp"]
    else:  # sum(w * (x - zp)) = sum(w * x) - zp * sum(w): the zero point moves into the bias
        x, off = g.base(t)
    if list(g.tensors[t]["shape"]) != list(a["in_shape"]) and t == op["inputs"][0]:
        x = g.node("Reshape", [x, g.const(a["in_shape"], np.int64)])
    attrs = {"pads": pads, "strides": a["strides"], "dilations": a["dilations"], "group": a["group"],
             "kernel_shape": list(w.shape[2:])}

    def emit(xs: str, wc: np.ndarray, b: np.ndarray | None) -> str:
        return g.node("Conv", [xs, g.const(wc)] + ([] if b is None else [g.const(b)]), **attrs)

    y, zp = _convolve(g, op, x, off, w, blobs["b"], emit)
    if len(a["out_shape"]) != 4:  # a 1-D convolution runs as 2-D with H = 1
        y = g.node("Reshape", [y, g.const(a["out_shape"], np.int64)])
    g.put(op["outputs"][0], y, zp)


def _matmul(g: Graph, op: dict, blobs: dict) -> None:
    """``x (..., K) @ w (K, N) + bias`` as a 1x1 convolution of the rows: ``x`` viewed as
    (1, K, rows, 1), the weights as (N, K, 1, 1); bounds, chunks and requantisation as
    :func:`_conv`, the result moved back to (..., N)."""
    a = op["attrs"]
    if a.get("wide"):
        raise NotFusable("16-bit inputs")
    w = np.asarray(blobs["w"], np.float64)
    t = op["inputs"][0]
    shape, (k, n) = list(g.tensors[t]["shape"]), w.shape
    rows = int(np.prod(shape[:-1]))
    x, off = g.base(t)
    x = g.node("Reshape", [g.node("Transpose", [g.node("Reshape", [x, g.const([rows, k], np.int64)])], perm=[1, 0]),
                           g.const([1, k, rows, 1], np.int64)])
    as_conv = {"attrs": {**a, "group": 1}, "inputs": [t]}

    def emit(xs: str, wc: np.ndarray, bias: np.ndarray | None) -> str:
        return g.node("Conv", [xs, g.const(wc)] + ([] if bias is None else [g.const(bias)]), kernel_shape=[1, 1])

    y, zp = _convolve(g, as_conv, x, off, w.T.reshape(n, k, 1, 1), blobs["b"], emit)
    y = g.node("Transpose", [g.node("Reshape", [y, g.const([n, rows], np.int64)])], perm=[1, 0])
    g.put(op["outputs"][0], g.node("Reshape", [y, g.const(a["out_shape"], np.int64)]), zp)


def _conv_transpose(g: Graph, op: dict, blobs: dict) -> None:
    """A transposed convolution as ONNX ``ConvTranspose`` on the full output, cut as the kernel
    cuts it (``pads`` at the start, ``out_shape`` long).  Bounds and requantisation as
    :func:`_conv`, with the weights seen per output channel; an output element sums a subset of
    the taps the bound counts."""
    a = op["attrs"]
    if a.get("wide"):
        raise NotFusable("16-bit products")
    wn = np.asarray(blobs["w"], np.float64)  # (cin, cout / group, kh, kw)
    cin, cout_g, kh, kw = wn.shape
    group = a["group"]
    cin_g = cin // group
    h, wd = g.tensors[op["inputs"][0]]["shape"][2:]
    ys, pads, strides, dil = a["out_shape"], a["pads"], a["strides"], a["dilations"]
    full = [(h - 1) * strides[0] + (kh - 1) * dil[0] + 1, (wd - 1) * strides[1] + (kw - 1) * dil[1] + 1]
    if pads[0] + ys[2] > full[0] or pads[1] + ys[3] > full[1]:
        raise NotFusable("output beyond the transposed convolution's reach")

    def node_layout(wc: np.ndarray) -> np.ndarray:
        return wc.reshape(group, cout_g, -1, kh, kw).transpose(0, 2, 1, 3, 4).reshape(-1, cout_g, kh, kw)

    def emit(xs: str, wc: np.ndarray, b: np.ndarray | None) -> str:
        v = g.node("ConvTranspose", [xs, g.const(node_layout(wc))] + ([] if b is None else [g.const(b)]),
                   strides=strides, dilations=dil, group=group, kernel_shape=[kh, kw])
        if [pads[0], pads[1], pads[0] + ys[2], pads[1] + ys[3]] != [0, 0, *full]:
            v = _slice_node(g, v, [[0, ys[0], 1], [0, ys[1], 1], [pads[0], pads[0] + ys[2], 1],
                                   [pads[1], pads[1] + ys[3], 1]])
        return v

    wc = wn.reshape(group, cin_g, cout_g, kh, kw).transpose(0, 2, 1, 3, 4).reshape(group * cout_g, cin_g, kh, kw)
    x = g.centered(op["inputs"][0], a["x_zp"])
    g.put(op["outputs"][0], *_convolve(g, op, x, a["x_zp"], wc, blobs["b"], emit))


Emit = Callable[[str, np.ndarray, "np.ndarray | None"], str]


def _convolve(g: Graph, op: dict, x: str, off: int, w: np.ndarray, bias: np.ndarray,
              emit: Emit) -> tuple[str, int]:
    """The exact accumulator of a (transposed) convolution and its requantisation: the output
    codes centred, ``(tensor, offset)``.

    ``x`` holds the input codes minus ``off``; where that is not the input zero point, every
    output sees every tap (no padding: the caller centres padded inputs), so the rest of the zero
    point moves into the bias.  ``w`` is in convolution layout (output channel, input channel of
    its group, kh, kw), which the bounds read; ``emit(x, w, bias)`` writes the ONNX node for such
    weights.
    """
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    if ep["mode"] not in ("shift", "scale", "fixed", "float") or (ep.get("chain") and ep["mode"] != "float"):
        raise NotFusable(f"{ep['mode']} epilogue with a chain")
    cout = w.shape[0]
    bias = np.asarray(bias, np.float64).reshape(-1)
    lshift = channel(a["lshift"], cout)
    if np.any(lshift < 0):
        raise NotFusable("negative lshift")
    w = w * np.exp2(lshift).reshape(cout, 1, 1, 1)  # (acc << lshift) + bias, as the kernel computes
    lo, hi = clamp_bounds(ep)
    zp = a["x_zp"] - off  # x holds q - off: sum(w * (q - x_zp)) = sum(w * x) - zp * sum(w)
    if zp:
        bias = bias - zp * w.reshape(cout, -1).sum(axis=1)
    reach = code_reach(a.get("in_dtype", g.tensors[op["inputs"][0]]["dtype"]), off)
    if ep["mode"] == "shift":
        y = _shift_folded(g, x, w, bias, reach, ep, lo, hi, emit)
        if y is not None:
            return y
    if ep["mode"] == "fixed":
        sums = reach * np.abs(w).reshape(cout, -1).sum(axis=1)
        fixed = _FixedPoint(ep, cout, bias - sums, bias + sums)
        keep = ~fixed.const.reshape(cout, 1, 1, 1)  # a constant channel: no taps, its value as bias
        acc, double = _accumulate(g, x, w * keep, np.where(fixed.const, fixed.value, bias), reach, emit, a["group"])
        return _requantize_fixed(g, acc, double, fixed, ep, lo, hi, const_in_acc=True)
    acc, double = _accumulate(g, x, w, bias, reach, emit, a["group"])
    if ep["mode"] == "float":
        return _float_epilogue(g, acc, double, ep, cout)
    return (_requantize_shift if ep["mode"] == "shift" else _requantize_float)(g, acc, double, ep, cout, lo, hi)


def _float_epilogue(g: Graph, acc: str, double: bool, ep: dict, cout: int) -> tuple[str, int]:
    """The kernels' float epilogue (``epilogues.make_epilogue``): ``float32(acc) * acc_scale``, the
    fused chain (LeakyReLU, the DPU's hard-sigmoid, hard-swish) in float32 as
    ``epilogues.eval_chain`` computes it, one IEEE operation per ONNX node, then
    ``numerics.quantize``."""
    if double:  # float32(acc), rounded to nearest as numpy converts int64
        acc = g.node("Cast", [acc], to=TensorProto.FLOAT)
    scale = np.broadcast_to(np.asarray(ep["acc_scale"], np.float32).reshape(-1), (cout,))
    v = g.node("Mul", [acc, g.const(scale.reshape(1, cout, 1, 1))])
    v = _chain(g, v, ep.get("chain", []), ep.get("result", "$x"))
    if np.ndim(ep["scale"]) or np.ndim(ep["zp"]):
        raise NotFusable("per-channel output scale")
    return _quantize_value(g, v, ep["scale"], ep, *nm.qrange(*out_type(ep)))


def _chain(g: Graph, x: str, steps: list[dict], result: str) -> str:
    """``epilogues.eval_chain`` as ONNX nodes on the float32 value ``x``: the same float32
    operations in the same order (HardSigmoid and HardSwish spelled out as their multiply, add
    and clip, as numpy computes them, not as ONNX Runtime's fused kernels)."""
    env = {"$x": x}

    def get(ref):
        if ref is None:
            return None
        return env[ref["t"]] if "t" in ref else g.const(np.float32(ref["c"]))

    def clip(v: str, lo, hi) -> str:
        if lo is not None:
            v = g.node("Max", [v, lo if isinstance(lo, str) else g.const(np.float32(lo))])
        if hi is not None:
            v = g.node("Min", [v, hi if isinstance(hi, str) else g.const(np.float32(hi))])
        return v

    for st in steps:
        args, op, a = [get(r) for r in st["in"]], st["op"], st["attrs"]
        v = args[0]
        if op == "Relu":
            y = g.node("Relu", [v])
        elif op == "Clip":
            y = clip(v, args[1] if len(args) > 1 and args[1] is not None else a.get("min"),
                     args[2] if len(args) > 2 and args[2] is not None else a.get("max"))
        elif op == "LeakyRelu":
            negative = g.node("Mul", [v, g.const(np.float32(a.get("alpha", 0.01)))])
            y = g.node("Where", [g.node("GreaterOrEqual", [v, g.const(np.float32(0))]), v, negative])
        elif op in ("Add", "Sub", "Mul", "Div"):
            y = g.node(op, [v, args[1]])
        elif op == "HardSigmoid":
            y = g.node("Add", [g.node("Mul", [g.const(np.float32(a.get("alpha", 0.2))), v]),
                               g.const(np.float32(a.get("beta", 0.5)))])
            y = clip(y, 0.0, 1.0)
        elif op == "HardSwish":
            gate = g.node("Add", [g.node("Mul", [v, g.const(np.float32(1 / 6))]), g.const(np.float32(0.5))])
            y = g.node("Mul", [v, clip(gate, 0.0, 1.0)])
        else:
            raise NotFusable(f"chain op {op}")
        env[st["out"]] = y
    return env[result]


def _quantize_value(g: Graph, v: str, scale, ep: dict, lo: int, hi: int) -> tuple[str, int]:
    """``numerics.quantize`` of float32 ``v``: float32 division by ``scale``, the tie rule of
    ``ep`` (its offset added in float64, as numpy does), saturation into ``lo..hi``; centred."""
    recipe = nm.rounding_as_onnx(ep["round"])
    if recipe is None:
        raise NotFusable(f"tie rule {ep['round']}")
    v = g.node("Div", [v, g.const(np.float32(scale))])
    wide = recipe[0] != 0
    if wide:
        v = g.node("Cast", [v], to=TensorProto.DOUBLE)
    return round_and_clip(g, v, ep, lo, hi, double=wide)


def _shift_folded(g: Graph, x: str, w: np.ndarray, bias: np.ndarray, reach: int, ep: dict, lo: int, hi: int,
                  emit: Emit) -> tuple[str, int] | None:
    """A power-of-two requantisation folded into the convolution.

    Weights ``w * 2^-shift`` and bias ``bias * 2^-shift + offset`` (exact) give the value on the
    grid ``2^-shift``, moved off its ties by ``numerics.rounding_as_nearest_even``, so ONNX
    ``Round`` applies the tie rule.  The clamps come first (integer bounds commute with
    rounding), as a ``Clip`` ONNX Runtime fuses into the convolution.  ``None`` when some
    partial sum could reach 2^24 on the grid ``2^-(shift+1)`` (offset included).
    """
    cout = w.shape[0]
    shift = channel(ep["shift"], cout)
    offset = nm.rounding_as_nearest_even(ep["round"], shift)
    if offset is None:
        raise NotFusable(f"tie rule {ep['round']}")
    bound = (reach * np.abs(w).reshape(cout, -1).sum(axis=1) + np.abs(bias)) * 2 + 1
    if np.any(bound >= F32_BOUND) or np.any(np.abs(shift) > 100):
        return None
    scale = np.exp2(-shift)
    v = emit(x, w * scale.reshape(cout, 1, 1, 1), bias * scale + offset)
    if np.ndim(ep["zp"]):
        raise NotFusable("per-channel zero point")
    zp = int(ep["zp"])
    return g.node("Round", [g.node("Clip", [v, g.const(lo - zp), g.const(hi - zp)])]), zp


def _accumulate(g: Graph, x: str, w: np.ndarray, bias: np.ndarray, reach: int, emit: Emit,
                group: int) -> tuple[str, bool]:
    """The exact accumulator (bias included): one float32 convolution when every partial sum
    stays below 2^24; else float64 (``True``): input-channel chunks whose sums each stay below
    2^24, and the bias, added exactly."""
    cout = w.shape[0]
    per_cin = reach * np.abs(w).sum(axis=(2, 3))  # (cout, cin_g): the most one input channel adds
    sums = per_cin.sum(axis=1)
    if np.all(sums + np.abs(bias) < F32_BOUND):
        return emit(x, w, bias), False
    if np.any(per_cin >= F32_BOUND) or np.any(sums + np.abs(bias) >= 1 << 53):
        raise NotFusable("one input channel's sums reach 2^24")
    bounds, run = [0], np.zeros(cout)
    for c in range(w.shape[1]):
        if np.any(run + per_cin[:, c] >= F32_BOUND):
            bounds.append(c)
            run = np.zeros(cout)
        run = run + per_cin[:, c]
    bounds.append(w.shape[1])
    if len(bounds) > 2 and group != 1:
        raise NotFusable("grouped convolution whose sums reach 2^24")
    parts = []
    for c0, c1 in zip(bounds, bounds[1:]):
        xs = x if len(bounds) == 2 else g.node("Slice", [x, g.const([c0], np.int64), g.const([c1], np.int64),
                                                         g.const([1], np.int64)])
        parts.append(g.node("Cast", [emit(xs, w[:, c0:c1], None)], to=TensorProto.DOUBLE))
    parts.append(g.const(bias.reshape(1, cout, 1, 1), np.float64))
    return g.node("Sum", parts), True


def _requantize_shift(g: Graph, acc: str, double: bool, ep: dict, cout: int, lo: int, hi: int) -> str:
    """``numerics.shift_round`` of an accumulator too long to fold: ``acc * 2^-shift`` in float64 is exact."""
    if not double:
        acc = g.node("Cast", [acc], to=TensorProto.DOUBLE)
    shift = channel(ep["shift"], cout)
    v = g.node("Mul", [acc, g.const(np.exp2(-shift).reshape(1, cout, 1, 1), np.float64)])
    return round_and_clip(g, v, ep, lo, hi, double=True)


def _requantize_float(g: Graph, acc: str, double: bool, ep: dict, cout: int, lo: int, hi: int) -> str:
    """``numerics.requantize_float``: float32 accumulator times the float32 multiplier, rounded."""
    if double:  # float32(acc), rounded to nearest as numpy converts int64
        acc = g.node("Cast", [acc], to=TensorProto.FLOAT)
    mult = channel(ep["multiplier"], cout).astype(np.float32).reshape(1, cout, 1, 1)
    return _round_product(g, g.node("Mul", [acc, g.const(mult)]), ep, lo, hi)


def _round_product(g: Graph, prod: str, ep: dict, lo: int, hi: int) -> tuple[str, int]:
    """``numerics.round_values`` of a float32 product with ``ep``'s tie rule, saturated into
    ``lo..hi``: centred ``(tensor, zero point)``."""
    recipe = nm.rounding_as_onnx(ep["round"])
    wide = recipe is not None and recipe[0] != 0  # numpy adds the offset in float64
    if wide:
        prod = g.node("Cast", [prod], to=TensorProto.DOUBLE)
    return round_and_clip(g, prod, ep, lo, hi, double=wide)


class _FixedPoint:
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


def _requantize_fixed(g: Graph, acc: str, double: bool, fx: _FixedPoint, ep: dict, lo: int, hi: int, *,
                      const_in_acc: bool = False) -> tuple[str, int]:
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
    ``shift_round`` does (more passes over 8-byte data).
    """
    cout = len(fx.mult)
    far = max(abs(lo - ep["zp"]), abs(hi - ep["zp"])) + 1
    reach = np.where(fx.const, 0, np.floor(np.minimum(far * np.exp2(fx.shift) / np.maximum(fx.mult, 1) + 1, fx.bound)))
    bits = np.ceil(np.log2(reach + 1)) + np.ceil(np.log2(fx.mult + 1))  # of |acc * m|; one more for the offset
    recipe = nm.rounding_as_onnx(ep["round"])
    if recipe is None:
        raise NotFusable(f"tie rule {ep['round']}")
    value = np.zeros(cout) if const_in_acc else fx.value
    m32 = None if double or np.ndim(ep["zp"]) else _float32_multipliers(fx, ep, lo, hi, const_in_acc)
    if m32 is not None:  # float32 all through: half the bytes, two casts fewer
        v = g.node("Mul", [acc, g.const(m32.reshape(1, cout, 1, 1))])
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


def _float32_multipliers(fx: _FixedPoint, ep: dict, lo: int, hi: int, const_in_acc: bool) -> np.ndarray | None:
    """``numerics.fixed_point_as_float32`` of a float32 accumulator: per-channel float32
    multipliers that give the exact saturated codes (centred on the zero point) for every
    accumulator the channel can hold, or ``None``.  A constant channel given its value as bias
    (``const_in_acc``) holds just that value, multiplied by 1."""
    one = fx.const & const_in_acc
    value = fx.value.astype(np.float64)
    zp = int(ep["zp"])
    return nm.fixed_point_as_float32(np.where(one, 1, fx.mult), np.where(one, 0, fx.shift), ep["round"],
                                     np.floor(np.where(one, value, fx.acc_lo)).astype(np.int64),
                                     np.ceil(np.where(one, value, fx.acc_hi)).astype(np.int64), lo - zp, hi - zp)


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


def _eltwise(g: Graph, op: dict, blobs: dict) -> None:
    if _as_table(g, op, blobs) or fused_qlinear.add(g, op) or fused_qlinear.mul(g, op):
        return
    a = op["attrs"]
    if "qlinear" in a or "scale_mult" in a or a["epilogue"].get("chain"):
        raise NotFusable("fused float chain or ONNX Runtime QLinearAdd")
    if "dequant" in a:
        g.put(op["outputs"][0], *_eltwise_float(g, op, blobs))
    elif a["epilogue"]["mode"] == "scale":
        g.put(op["outputs"][0], *_eltwise_scale(g, op, blobs))
    else:
        g.put(op["outputs"][0], *_eltwise_shift(g, op, blobs))


def _operand(g: Graph, op: dict, blobs: dict, k: int) -> tuple[str, int]:
    """Operand ``k`` as float32 codes minus its zero point, and the largest ``|q - zp|`` it can take."""
    spec = op["attrs"]["operands"][k]
    if np.ndim(spec["zp"]):
        raise NotFusable("per-channel operand zero point")
    if "const" in spec:
        c = np.asarray(blobs[spec["const"]], np.int64) - spec["zp"]
        return g.const(c), int(np.max(np.abs(c))) if c.size else 0
    name = op["inputs"][spec["input"]]
    return g.centered(name, spec["zp"]), code_reach(g.tensors[name]["dtype"], spec["zp"])


def _eltwise_shift(g: Graph, op: dict, blobs: dict) -> tuple[str, int]:
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    if ep["mode"] != "shift" or np.ndim(ep["shift"]) != 0:
        raise NotFusable("per-channel eltwise shift")
    shift, mode, align = int(ep["shift"]), a["mode"], a["align"]
    terms, reach = [], []
    for k in range(2):
        v, r = _operand(g, op, blobs, k)
        terms.append(v)
        reach.append(r * 2 ** align[k])
    scale_a = 2.0 ** (align[0] - shift)
    scale_b = 2.0 ** align[1] if mode == "mul" else 2.0 ** (align[1] - shift)
    recipe = nm.rounding_as_onnx(ep["round"])
    half = 2 ** (shift - 1) if shift > 0 and recipe and recipe[0] else 0
    bound = (reach[0] * reach[1] if mode == "mul" else reach[0] + reach[1]) + half
    if bound >= F32_BOUND:
        raise NotFusable("sum reaches 2^24")
    if mode == "mul":  # one scaling of the product: exact, as every factor is a power of two
        scale_a, scale_b = scale_a * scale_b, 1.0
    ta = g.node("Mul", [terms[0], g.const(scale_a)]) if scale_a != 1 else terms[0]
    tb = g.node("Mul", [terms[1], g.const(scale_b)]) if scale_b != 1 else terms[1]
    v = g.node({"add": "Add", "sub": "Sub", "mul": "Mul"}[mode], [ta, tb])
    lo, hi = clamp_bounds(ep)
    if shift > 0:
        return round_and_clip(g, v, ep, lo, hi, double=False)
    return centred_clip(g, v, ep["zp"], lo, hi, np.float32)


def _eltwise_scale(g: Graph, op: dict, blobs: dict) -> tuple[str, int]:
    """ONNX Runtime's ``QLinearMul`` (``numerics.requantize_float`` of the exact product of the
    centred codes): the product is exact in float32 below 2^24, then the float32 multiplier."""
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    if a["mode"] != "mul" or any(a["align"]) or np.ndim(ep["multiplier"]) or np.ndim(ep["zp"]):
        raise NotFusable("per-channel or aligned float-scale product")
    (x, rx), (y, ry) = _operand(g, op, blobs, 0), _operand(g, op, blobs, 1)
    if rx * ry >= F32_BOUND:
        raise NotFusable("product reaches 2^24")
    v = g.node("Mul", [g.node("Mul", [x, y]), g.const(np.float32(ep["multiplier"]))])
    return _round_product(g, v, ep, *clamp_bounds(ep))


def _eltwise_float(g: Graph, op: dict, blobs: dict) -> tuple[str, int]:
    """The kernels' ``_float_eltwise``: dequantize (float32), combine, ``numerics.quantize``."""
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    if np.ndim(ep["scale"]) != 0 or np.ndim(ep["zp"]) != 0 or any(np.ndim(s) for s in a["dequant"]):
        raise NotFusable("per-channel output scale")
    vals = []
    for k, (spec, s) in enumerate(zip(a["operands"], a["dequant"])):
        if "const" in spec:
            vals.append(g.const(nm.dequantize(blobs[spec["const"]], s, spec["zp"])))
            continue
        v = g.centered(op["inputs"][spec["input"]], spec["zp"])
        vals.append(g.node("Mul", [v, g.const(s)]))
    v = g.node({"add": "Add", "sub": "Sub", "mul": "Mul"}[a["mode"]], vals)
    v = g.node("Div", [v, g.const(ep["scale"])])
    recipe = nm.rounding_as_onnx(ep["round"])
    double = recipe is not None and recipe[0] != 0
    if double:
        v = g.node("Cast", [v], to=TensorProto.DOUBLE)
    lo, hi = nm.qrange(*out_type(ep))
    return round_and_clip(g, v, ep, lo, hi, double=double)


def _no_table(op: dict) -> None:
    if op["blobs"]:
        raise NotFusable("lookup table or constants")


def _pad(g: Graph, op: dict, blobs: dict) -> None:
    a = op["attrs"]
    _no_table(op)
    if a["mode"] != "constant":
        raise NotFusable(f"{a['mode']} padding")
    width = np.asarray(a["width"], np.int64)
    pads = g.const(np.concatenate([width[:, 0], width[:, 1]]), np.int64)
    x, off = g.base(op["inputs"][0])
    g.put(op["outputs"][0], g.node("Pad", [x, pads, g.const(a["pad_code"] - off)]), off)
    g.pads[op["outputs"][0]] = (op["inputs"][0], width.tolist(), a["pad_code"])


def _maxpool(g: Graph, op: dict, blobs: dict) -> None:
    a = op["attrs"]
    _no_table(op)
    h, w = g.tensors[op["inputs"][0]]["shape"][2:]
    t, l, b, r = a["pads"]
    k, s, d = a["kernel"], a["strides"], a["dilations"]
    floor_hw = [(n + p0 + p1 - d_ * (k_ - 1) - 1) // s_ + 1 for n, p0, p1, k_, s_, d_ in
                ((h, t, b, k[0], s[0], d[0]), (w, l, r, k[1], s[1], d[1]))]
    if floor_hw != list(a["out_shape"][2:]):
        raise NotFusable("ceil-mode windows")
    # the maximum of codes minus a constant, or of uint8 codes
    _moves(g, op, lambda x: g.node("MaxPool", [x], kernel_shape=k, strides=s, dilations=d, pads=a["pads"]))


def _global_avgpool(g: Graph, op: dict, blobs: dict) -> None:
    """The kernels' float-mode global average: the exact sum of ``q - zp`` (float32 while below
    2^24), times the float32 ``acc_scale``, divided by the float32 count, ``numerics.quantize``."""
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    _no_table(op)
    shape = g.tensors[op["inputs"][0]]["shape"]
    if a.get("qlinear") not in (None, "global") or ep["mode"] != "float" or ep.get("chain"):
        raise NotFusable("ONNX Runtime windowed QLinear pooling or fused float chain")
    if list(a["out_shape"][2:]) != [1, 1] or any(a["pads"]) or list(shape[2:]) != list(a["kernel"]):
        raise NotFusable("pooling windows")
    if any(np.ndim(ep[k]) for k in ("acc_scale", "scale", "zp")):
        raise NotFusable("per-channel scale")
    if code_reach(g.tensors[op["inputs"][0]]["dtype"], a["x_zp"]) * shape[2] * shape[3] >= F32_BOUND:
        raise NotFusable("sum reaches 2^24")
    x = g.centered(op["inputs"][0], a["x_zp"])
    v = g.node("ReduceSum", [x, g.const([2, 3], np.int64)], keepdims=1)
    if a.get("qlinear"):  # ORT's QLinearGlobalAveragePool: the exact sum times one float32 multiplier
        mult = np.float32(ep["acc_scale"]) / (np.float32(ep["scale"]) * np.float32(shape[2] * shape[3]))
        v = g.node("Mul", [v, g.const(mult)])
        g.put(op["outputs"][0], *_round_product(g, v, {**ep, "round": nm.ONNX_ROUND_MODE}, *nm.qrange(*out_type(ep))))
        return
    v = g.node("Div", [g.node("Mul", [v, g.const(ep["acc_scale"])]), g.const(shape[2] * shape[3])])
    v = g.node("Div", [v, g.const(ep["scale"])])
    recipe = nm.rounding_as_onnx(ep["round"])
    double = recipe is not None and recipe[0] != 0
    if double:
        v = g.node("Cast", [v], to=TensorProto.DOUBLE)
    g.put(op["outputs"][0], *round_and_clip(g, v, ep, *nm.qrange(*out_type(ep)), double=double))


def _lookup(g: Graph, src: str, out: str, table: np.ndarray, qmin: int) -> None:
    """``out = table[src - qmin]`` (the kernels' ``_lut``), a copy of table entries.

    Written as ``ai.onnx.ml.ArrayFeatureExtractor`` (entries of a 1-D tensor at the given indices,
    as a flat row, reshaped back to ``out``'s shape): ONNX Runtime runs it as a plain copy loop,
    where its ``Gather`` spends an index division per element (and more on negative indices,
    hence the shift to non-negative ones first, which also takes ``src``'s offset).  The entries
    are stored centred on ``out``'s zero point, as its readers want them (``Graph``).
    """
    if _bytes_only(g, src) and np.dtype(g.tensors[out]["dtype"]) == np.uint8 and qmin == 0 and table.size == 256:
        # uint8 codes from an integer kernel index the table as they are, and its entries go on
        # as uint8 codes to the next integer kernel or data movement
        idx = g.node("Cast", [g.bytes[src]], to=TensorProto.INT64)
        row = g.node("ArrayFeatureExtractor", [g.const(table), idx], domain=ML_DOMAIN)
        row = g.node("Reshape", [row, g.const(g.tensors[out]["shape"], np.int64)])
        g.put_bytes(out, g.node("Cast", [row], to=TensorProto.UINT8))
        return
    _table_node(g, *g.base(src), g.tensors[src]["dtype"], out, table, qmin)


def _table_node(g: Graph, x: str, off: int, dtype: str, out: str, table: np.ndarray, qmin: int) -> None:
    """:func:`_lookup` of the codes held in ``x`` minus ``off`` (codes of type ``dtype``)."""
    lo, hi = code_range(dtype)
    if table.size != hi - lo + 1 or lo != qmin:
        raise NotFusable("table does not cover the input codes")
    idx = g.node("Cast", [g.node("Sub", [x, g.const(lo - off)]) if lo != off else x], to=TensorProto.INT64)
    zp = (g.tensors[out].get("quant") or {}).get("zero_point", 0)
    zp = int(zp) if np.ndim(zp) == 0 else 0
    entries = g.const((np.asarray(table, np.int64) - zp).astype(np.float32))
    row = g.node("ArrayFeatureExtractor", [entries, idx], domain=ML_DOMAIN)
    g.put(out, g.node("Reshape", [row, g.const(g.tensors[out]["shape"], np.int64)]), zp)


def _lut(g: Graph, op: dict, blobs: dict) -> None:
    if _bytes_only(g, op["inputs"][0]) and fused_qlinear.sigmoid(g, op, blobs["table"]):
        return
    if not _as_table(g, op, blobs):
        _lookup(g, op["inputs"][0], op["outputs"][0], blobs["table"], op["attrs"]["qmin"])


def _codewise(op: dict, tensors: dict, blobs: dict) -> bool:
    """Whether ``op``'s kernel computes each output code from the input codes at the same position
    alone, with one set of parameters: a lookup table, or an eltwise op on tensors of the output's
    shape (no broadcasting; a constant operand holds one value) whose scales, zero points, shifts
    and chain constants are scalars.  Its kernel run on 1-D arrays of codes then gives its table."""
    shape = list(tensors[op["outputs"][0]]["shape"])
    if any(list(tensors[t]["shape"]) != shape for t in op["inputs"]):
        return False
    if op["op"] == "lut":
        return True
    if op["op"] != "eltwise" or any(np.size(v) != 1 for v in blobs.values()):
        return False
    a = op["attrs"]
    ep, spec = a.get("epilogue") or {}, a.get("qlinear", {})
    values = [ep.get(k) for k in ("shift", "multiplier", "zp", "scale", "acc_scale")]
    values += [*a.get("dequant", []), *(a.get("scale_mult") or []), *spec.get("scales", []), *spec.get("zps", [])]
    values += [r["c"] for st in ep.get("chain", []) for r in st["in"] if r and "c" in r]
    return all(np.ndim(v) == 0 for v in values if v is not None)


def _as_table(g: Graph, op: dict, blobs: dict) -> bool:
    """Write ``op`` as ONE lookup table of an 8-bit tensor when each of its inputs is that tensor
    or a table of it in this graph (``Graph.tables``), and say whether it did.

    SiLU and hard-swish reach the runtime as a table (sigmoid, hard-sigmoid) and an eltwise
    ``Mul`` of the table's input and output: as one table of the input they cost one copy loop
    instead of the dequantize-multiply-quantize passes, and a table of a table is one table.
    The composed table is the op's own kernel (``kernels.KERNELS``) run on the input codes that
    every source code gives, so it holds exactly the codes the op-by-op run computes."""
    if not _codewise(op, g.tensors, blobs):
        return False
    sources = {g.tables.get(t, (t, None))[0] for t in op["inputs"]}
    if len(sources) != 1:
        return False
    src = sources.pop()
    dt = np.dtype(g.tensors[src]["dtype"])
    if dt.kind not in "iu" or dt.itemsize != 1:
        return False
    lo, hi = nm.qrange(8, dt.kind == "i")
    codes = np.arange(lo, hi + 1).astype(dt)
    values = [codes if g.tables.get(t, (t, None))[1] is None else g.tables[t][1] for t in op["inputs"]]
    table = np.asarray(KERNELS[op["op"]](op["attrs"], blobs)(values)[0])
    out = op["outputs"][0]
    if table.size != codes.size or table.dtype != np.dtype(g.tensors[out]["dtype"]):
        return False
    table = table.reshape(-1)  # a one-value constant broadcasts as (1, 1, 1, 1)
    _lookup(g, src, out, table, lo)
    g.tables[out] = (src, table)
    return True


def _concat(g: Graph, op: dict, blobs: dict) -> None:
    if any("table" in p or "const" in p for p in op["attrs"]["parts"]):
        raise NotFusable("lookup table or constant part")
    names = [op["inputs"][p["input"]] for p in op["attrs"]["parts"]]
    if all(_bytes_only(g, t) for t in names) and _bytes_only_out(g, op):
        g.put_bytes(op["outputs"][0], g.node("Concat", [g.bytes[t] for t in names], axis=op["attrs"]["axis"]))
        return
    offsets = {g.base(t)[1] for t in names}
    off = offsets.pop() if len(offsets) == 1 else 0  # parts held alike stay so
    g.put(op["outputs"][0], g.node("Concat", [g.centered(t, off) for t in names], axis=op["attrs"]["axis"]), off)


def _reshape(g: Graph, op: dict, blobs: dict) -> None:
    _no_table(op)
    _moves(g, op, lambda x: g.node("Reshape", [x, g.const(op["attrs"]["out_shape"], np.int64)]))


def _transpose(g: Graph, op: dict, blobs: dict) -> None:
    _no_table(op)
    _moves(g, op, lambda x: g.node("Transpose", [x], perm=op["attrs"]["perm"]))


def _slice(g: Graph, op: dict, blobs: dict) -> None:
    _no_table(op)
    _moves(g, op, lambda x: _slice_node(g, x, op["attrs"]["slices"]))


def _bytes_only(g: Graph, tensor: str) -> bool:
    """Whether ``tensor`` is held only as uint8 codes (an integer kernel wrote it)."""
    return tensor in g.bytes and tensor not in g.names


def _bytes_only_out(g: Graph, op: dict) -> bool:
    return all(np.dtype(g.tensors[t]["dtype"]) == np.uint8 for t in op["outputs"])


def _moves(g: Graph, op: dict, move: Callable[[str], str]) -> None:
    """A data-movement op (``move`` of the held tensor), on the uint8 codes where the input is
    held only so: its output then stays uint8 for the next integer kernel, without casts."""
    t = op["inputs"][0]
    if _bytes_only(g, t) and _bytes_only_out(g, op):
        g.put_bytes(op["outputs"][0], move(g.bytes[t]))
        return
    x, off = g.base(t)
    g.put(op["outputs"][0], move(x), off)


def _slice_node(g: Graph, x: str, slices: list) -> str:
    s = np.asarray(slices, np.int64)
    return g.node("Slice", [x, g.const(s[:, 0], np.int64), g.const(s[:, 1], np.int64),
                            g.const(np.arange(len(s)), np.int64), g.const(s[:, 2], np.int64)])


def _split(g: Graph, op: dict, blobs: dict) -> None:
    a = op["attrs"]
    if any(a["tables"]):
        raise NotFusable("lookup table")
    t = op["inputs"][0]
    raw = _bytes_only(g, t) and _bytes_only_out(g, op)
    x, off = (g.bytes[t], 0) if raw else g.base(t)
    for (start, end), out in zip(a["parts"], op["outputs"]):
        part = g.node("Slice", [x, g.const([start], np.int64), g.const([end], np.int64), g.const([a["axis"]], np.int64)])
        if raw:
            g.put_bytes(out, part)
        else:
            g.put(out, part, off)


def _gather(g: Graph, op: dict, blobs: dict) -> None:
    """Nearest-neighbour resizing, then the op's scale-change table if it has one (as the
    kernels' ``_passthrough``).  Where every axis repeats each position a whole number of times
    ``f``, ONNX ``Resize`` (nearest, ``asymmetric``, ``floor``: source ``floor(i / f)``, which
    float32 computes exactly for these small integers) copies them, on ONNX Runtime's fast
    upsampling path; otherwise one ``Gather`` per axis whose indices are not the identity."""
    if set(op["blobs"]) - {"table"}:
        raise NotFusable("constants")
    t = op["inputs"][0]
    raw = "table" not in blobs and _bytes_only(g, t) and _bytes_only_out(g, op)  # uint8 codes moved as they are
    x, off = (g.bytes[t], 0) if raw else g.base(t)
    shape = g.tensors[t]["shape"]
    indices = [np.asarray(ix, np.int64) for ix in op["attrs"]["indices"]]
    factors = [len(ix) // n if n and len(ix) % n == 0 else 0 for ix, n in zip(indices, shape)]
    if all(f and len(ix) < 1 << 20 and np.array_equal(ix, np.repeat(np.arange(n), f))
           for ix, n, f in zip(indices, shape, factors)):
        if any(f != 1 for f in factors):
            x = g.node("Resize", [x, "", g.const(factors)], mode="nearest",
                       coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    else:
        for axis, ix in enumerate(indices):
            if list(ix) != list(range(len(ix))):
                x = g.node("Gather", [x, g.const(ix, np.int64)], axis=axis)
    if "table" in blobs:
        _table_node(g, x, off, g.tensors[t]["dtype"], op["outputs"][0], blobs["table"], op["attrs"]["qmin"])
    elif raw:
        g.put_bytes(op["outputs"][0], x)
    else:
        g.put(op["outputs"][0], x, off)


def _quantize(g: Graph, op: dict, blobs: dict) -> None:
    """``numerics.quantize`` of a model input: float32 division, the tie rule in float64 (as numpy)."""
    a = op["attrs"]
    if np.ndim(a["scale"]) or np.ndim(a["zp"]):
        raise NotFusable("per-channel quantize step")
    ep = {"round": a["round"], "zp": a["zp"]}
    g.put(op["outputs"][0], *_quantize_value(g, g.read(op["inputs"][0]), a["scale"], ep,
                                             *nm.qrange(a["bits"], a["signed"])))


def _dequantize(g: Graph, op: dict, blobs: dict) -> None:
    """``numerics.dequantize``: ``(q - zp) * scale`` in float32, per tensor or along ``axis``."""
    a = op["attrs"]
    scale, zp = np.asarray(a["scale"], np.float32), np.asarray(a["zp"], np.float32)
    if not zp.ndim:  # read centred on the zero point: q - zp
        x, zp = g.centered(op["inputs"][0], int(zp)), np.float32(0)
    else:
        x = g.read(op["inputs"][0])
    if scale.ndim:
        if a["axis"] is None:
            raise NotFusable("per-channel scale without an axis")
        shape = [1] * len(g.tensors[op["inputs"][0]]["shape"])
        shape[a["axis"]] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    if np.any(zp):
        x = g.node("Sub", [x, g.const(zp)])
    g.put(op["outputs"][0], g.node("Mul", [x, g.const(scale)]))


_EMITTERS: dict[str, Callable[[Graph, dict, dict], None]] = {
    "conv": _conv, "conv_transpose": _conv_transpose, "matmul": _matmul, "avgpool": _global_avgpool, "eltwise": _eltwise, "pad": _pad, "maxpool": _maxpool, "lut": _lut, "concat": _concat,
    "reshape": _reshape, "transpose": _transpose, "slice": _slice, "split": _split,
    "quantize": _quantize, "dequantize": _dequantize, "gather": _gather,
}


# --- segments -------------------------------------------------------------------------------


class FusedRun:
    """A run of a program's ops as one ONNX Runtime session; ``run(env)`` -> the tensors it makes.

    ``outputs`` are the tensors later ops or the subgraph's caller read; ``produced`` every
    integer tensor of the run, which dump mode (``run(env, dump=True)``) returns from a second
    session of the same graph, built on first use.
    """

    def __init__(self, g: Graph, outputs: list[str], produced: list[str], threads: int) -> None:
        self.inputs = list(g.inputs)
        self.outputs = outputs
        self.produced = produced
        self._graph = g
        self._threads = threads
        self._feeds = [input_name(k) for k in range(len(self.inputs))]
        self.session = self._session(outputs)
        self._dump_session: ort.InferenceSession | None = None
        self._lock = threading.Lock()

    def _session(self, outputs: list[str]) -> ort.InferenceSession:
        g = self._graph
        heads = []
        for name in outputs:
            if name in g.bytes:
                heads.append((g.bytes[name], None))  # uint8 codes as an integer kernel wrote them
            else:
                heads.append(g.base(name))  # (may add the float32 view of bytes to the graph)
        nodes, inits = list(g.nodes), list(g.inits)
        for k, (name, (x, off)) in enumerate(zip(outputs, heads)):
            if off is None:
                nodes.append(helper.make_node("Identity", [x], [f"out{k}"]))
                continue
            if off:  # a centred tensor: its codes
                inits.append(numpy_helper.from_array(np.float32(off), f"off{k}"))
                nodes.append(helper.make_node("Add", [x, f"off{k}"], [f"coded{k}"]))
                x = f"coded{k}"
            nodes.append(helper.make_node("Cast", [x], [f"out{k}"], to=_elem(g.tensors[name]["dtype"])))
        nodes, inits = _live(nodes, inits, [f"out{k}" for k in range(len(outputs))])
        graph = helper.make_graph(
            nodes, "fused_run",
            [helper.make_tensor_value_info(input_name(k), _elem(g.tensors[t]["dtype"]), g.tensors[t]["shape"])
             for k, t in enumerate(self.inputs)],
            [helper.make_tensor_value_info(f"out{k}", _elem(g.tensors[t]["dtype"]), g.tensors[t]["shape"])
             for k, t in enumerate(outputs)], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(ML_DOMAIN, 3),
                                                    helper.make_opsetid(fused_qlinear.MS_DOMAIN, 1)])
        model.ir_version = 8
        # Many sessions per Session: pool threads that spin between runs starve each other
        # (measured: 2 threads 50x slower than 1 on a 2-core machine), so they sleep.
        return open_session(model, level="all", threads=self._threads, spinning=self._threads <= 1,
                            disabled_optimizers=DISABLED_OPTIMIZERS)


    def run(self, env: dict[str, np.ndarray], dump: bool = False) -> dict[str, np.ndarray]:
        feeds = {n: env[t] for n, t in zip(self._feeds, self.inputs)}
        if not dump:
            return dict(zip(self.outputs, self.session.run(None, feeds)))
        with self._lock:
            if self._dump_session is None:
                self._dump_session = self._session(self.produced)
        return dict(zip(self.produced, self._dump_session.run(None, feeds)))


def _live(nodes: list, inits: list, outputs: list[str]) -> tuple[list, list]:
    """The nodes and initialisers ``outputs`` depend on: a table composed into a later one
    (``_as_table``) is computed only where something else still reads it (dump mode)."""
    need, keep = set(outputs), []
    for n in reversed(nodes):
        if need.intersection(n.output):
            keep.append(n)
            need.update(i for i in n.input if i)
    return keep[::-1], [t for t in inits if t.name in need]


def _elem(dtype: str) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


@dataclass(frozen=True)
class Plan:
    """An integer program as fused runs and single ops (``int`` = index of an op run as its kernel)."""

    items: list
    reasons: dict  # op index -> why it runs as its kernel


def plan(sg: dict, tensors: dict, blob: Callable[[str], np.ndarray], threads: int = 1) -> Plan:
    """Cut ``sg``'s ops into maximal runs that :data:`_EMITTERS` can write as exact float graphs."""
    ops = sg["ops"]
    last_use: dict[str, int] = {}
    for k, op in enumerate(ops):
        for t in op["inputs"]:
            last_use[t] = k
    keep = set(sg["outputs"])
    items: list = []
    reasons: dict[int, str] = {}
    g, start = Graph(tensors), 0

    def close(end: int) -> None:
        nonlocal g
        run_ops = range(start, end)
        if any(ops[k]["op"] in _COMPUTE_OPS for k in run_ops):
            produced = [t for k in run_ops for t in ops[k]["outputs"]]
            outs = [t for t in produced if t in keep or last_use.get(t, -1) >= end]
            try:
                items.append(FusedRun(g, outs, produced, threads))
            except _ORT_ERRORS as exc:  # the kernels compute the same codes, slower
                items.extend(run_ops)
                reasons.update({k: f"ONNX Runtime refused the fused graph: {exc}" for k in run_ops})
                warnings.warn(f"npuflow runtime: ops {ops[start]['name']!r}..{ops[end - 1]['name']!r} run as "
                              f"kernels, slower: ONNX Runtime refused their fused graph: {exc}", RuntimeWarning,
                              stacklevel=3)
        else:
            items.extend(run_ops)
        g = Graph(tensors)

    for k, op in enumerate(ops):
        emit = _EMITTERS.get(op["op"])
        mark = g.mark()
        try:
            if emit is None:
                raise NotFusable(f"{op['op']} runs as its kernel")
            emit(g, op, {role: blob(name) for role, name in op["blobs"].items()})
            continue
        except NotFusable as why:
            g.rollback(mark)
            reasons[k] = str(why)
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # a manifest form not met before
            g.rollback(mark)
            reasons[k] = f"no fused form ({type(exc).__name__}: {exc})"
            warnings.warn(f"npuflow runtime: op {op['name']!r} ({op['op']}) runs as its kernel, slower: "
                          f"{reasons[k]}", RuntimeWarning, stacklevel=2)
        close(k)
        items.append(k)
        start = k + 1
    close(len(ops))
    return Plan(items, reasons)
