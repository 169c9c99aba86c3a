"""Runs of an integer program's ops as ONE ONNX Runtime graph of exact float operations.

Run op by op, a convolution costs a call into a tiny ONNX Runtime session, two layout
reorders, casts and an int64 epilogue in numpy; the profile (``docs/runtime-measurements.md``,
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
  and float64 tie rule); a fixed-point multiplier (``fused_fixed``) is a float32 product where
  ``numerics.fixed_point_as_float32`` proves at load that one gives the exact codes for every
  accumulator the channels can hold (a dense convolution's channels that have one then run on
  ONNX Runtime's ``QLinearConv``, the others apart), else an exact float64 product where the
  accumulator's non-saturating range and the multiplier fit 52 bits, else int64 arithmetic
  (``numerics.shift_rounding_as_onnx``).

Passes over the tensors, not arithmetic, are what such a graph spends its time on, so it makes as
few as exactness allows: code tensors are held centred on their zero point (a requantisation
leaves it out; convolutions, eltwise ops, pads, tables and pools read codes minus it anyway), a
constant pad of the zero point becomes the convolution's own padding, and an op whose inputs are
all elementwise functions of one 8-bit tensor (SiLU's and hard-swish's ``Mul`` of a table's input
and output, tables of tables, one-value scale and offset) is one table of that tensor, computed
by the op's own kernel on every code.

A convolution's float epilogue (``float32(acc) * acc_scale``, a fused chain such as LeakyReLU,
hard-sigmoid or hard-swish, the quantize step) with one scale for every channel is a function
of the integer accumulator alone: it becomes a table of the accumulator over the range where
codes change (``fused_conv._acc_table``), and a codewise op reading the result (PP-LCNet's
scale and offset after each hard-swish) composes into that table.  Elsewhere the chain is its
float32 operations, one node each, as ``epilogues.eval_chain`` computes them; on uint8
float-scale groups ONNX Runtime's own integer kernels do the work where they are the
arithmetic (``fused_qlinear``).

An op whose bound or form does not allow this (16-bit inputs split into bytes, eltwise chains,
``std_round`` ties, ...) runs as its kernel
between two graphs;
``Plan.reasons`` says why, per op.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from onnx import TensorProto

from .. import numerics as nm
from .epilogues import out_type
from . import fused_cache, fused_pairs, fused_permute, fused_pool, fused_qlinear, kernels
from .fused_softmax import softmax
from .fused_run import _ORT_ERRORS, DISABLED_OPTIMIZERS, FusedRun, direct_run  # noqa: F401  (the runtime's names)
from .fused_conv import conv, conv_transpose, matmul, matmul2
from .fused_tables import (as_table, byte_form, byte_lookup, byte_table, bytes_only, channels_last, lut, lut_channel,
                           table_node)
from .fused_graph import (F32_BOUND, Graph, NotFusable, centred_clip, clamp_bounds, code_range, code_reach,
                          const_codes, dequantized, quantize_value, round_and_clip, round_float, round_scaled, slice_node)

#: Ops whose cost dominates a run; a run without one is cheaper as kernels than as a graph call.
_COMPUTE_OPS = {"conv", "conv_transpose", "matmul", "matmul2", "eltwise", "lut", "lut_channel", "maxpool", "softmax"}


# --- ops ------------------------------------------------------------------------------------


def _eltwise(g: Graph, op: dict, blobs: dict) -> None:
    if fused_pairs.constant_operand(g, op, blobs) or as_table(g, op, blobs) or fused_qlinear.add(g, op) \
            or fused_qlinear.mul(g, op) \
            or fused_pairs.qlinear_add_float(g, op):
        return
    a = op["attrs"]
    if "qlinear" in a or "scale_mult" in a or a["epilogue"].get("chain"):
        raise NotFusable("fused float chain or ONNX Runtime QLinearAdd")
    if "dequant" in a:
        _eltwise_float(g, op, blobs)
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


def _size(g: Graph, op: dict, blobs: dict, k: int) -> int:
    """The number of elements of eltwise operand ``k`` (before broadcasting)."""
    spec = op["attrs"]["operands"][k]
    if "const" in spec:
        return int(np.size(blobs[spec["const"]]))
    return int(np.prod(g.tensors[op["inputs"][spec["input"]]]["shape"]))


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
    if mode == "mul":  # one scaling of the product (exact: every factor is a power of two), applied to
        # the smaller operand: an SE block's per-channel scale rather than its feature map
        scale = scale_a * scale_b
        scale_a, scale_b = (1.0, scale) if _size(g, op, blobs, 1) < _size(g, op, blobs, 0) else (scale, 1.0)
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
    return round_scaled(g, g.node("Mul", [x, y]), "Mul", np.float32(ep["multiplier"]), ep, *clamp_bounds(ep))


def _eltwise_float(g: Graph, op: dict, blobs: dict) -> None:
    """The kernels' ``_float_eltwise``: dequantize (float32), combine, ``numerics.quantize``."""
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    if np.ndim(ep["scale"]) != 0 or np.ndim(ep["zp"]) != 0 or any(np.ndim(s) for s in a["dequant"]):
        raise NotFusable("per-channel output scale")
    vals = []
    for k, (spec, s) in enumerate(zip(a["operands"], a["dequant"])):
        if "const" in spec:
            vals.append(g.const(nm.dequantize(blobs[spec["const"]], s, spec["zp"])))
            continue
        vals.append(_dequantized_operand(g, op["inputs"][spec["input"]], s, spec["zp"]))
    if a["mode"] == "mul":  # see _put_quantized
        g.put(op["outputs"][0], *quantize_value(g, g.node("Mul", vals), ep["scale"], ep, *nm.qrange(*out_type(ep))))
        return
    # ``Sum``, not ``Add``: the same float32 sum, which ONNX Runtime does not fuse (_put_quantized)
    _put_quantized(g, op["outputs"][0], g.node({"add": "Sum", "sub": "Sub"}[a["mode"]], vals), ep)


def _put_quantized(g: Graph, out: str, v: str, ep: dict) -> None:
    """``numerics.quantize`` of float32 ``v`` by ``ep``'s one scale and zero point into ``out``
    (its type's full range): ONNX ``QuantizeLinear``'s bytes where that kernel computes it
    (``fused_qlinear.quantize_form``), else the float form (``fused_graph.quantize_value``).

    Why: the float form is four passes over float32 values (division, rounding, clamp, and the
    cast to the bytes an integer kernel reads, with the zero point), ``QuantizeLinear`` one
    (PP-OCRv4 det on bernoulli2: the FPN's float adds on [1, 96, 80, 80] and its SE pools).
    ``v`` must not be an ``Add`` or ``Mul`` of two ``DequantizeLinear``s: ONNX Runtime's QDQ
    fusion would run that group as ``QLinearAdd``/``QLinearMul``, whose float32 order rounds
    some pairs of codes elsewhere (``fused_pairs``: 4-6,842 of the 65,536 pairs of det's adds)."""
    bits, signed = out_type(ep)
    form = fused_qlinear.quantize_form(ep["scale"], ep["zp"], ep["round"], bits, signed)
    if form is None:
        g.put(out, *quantize_value(g, v, ep["scale"], ep, *nm.qrange(bits, signed)))
    else:
        fused_qlinear.put_quantized(g, out, v, form)


def _dequantized_operand(g: Graph, t: str, scale: float, zp: int | np.ndarray) -> str:
    """``float32(q - zp) * float32(scale)`` of 8-bit tensor ``t`` (``numerics.dequantize``): ONNX
    ``DequantizeLinear`` of its bytes where it is held as such and that kernel gives every code's
    value bit for bit (``fused_qlinear._dequantize_matches``, the zero point moved as the bytes
    are), one pass where the float form casts, centres and multiplies (PP-OCRv4 det on bernoulli2:
    the operands of the FPN's adds, written by integer kernels); else that float form."""
    moved = int(zp) - g.byte_offsets.get(t, 0) if np.ndim(zp) == 0 else -1
    if t in g.bytes and 0 <= moved <= 255 and fused_qlinear._dequantize_matches(float(np.float32(scale)), moved):
        return g.node("DequantizeLinear", [g.bytes[t], g.scalar(np.float32(scale)), g.scalar(moved, np.uint8)])
    return g.node("Mul", [g.centered(t, zp), g.const(scale)])


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

    def pool(x: str) -> str:
        return g.node("MaxPool", [x], kernel_shape=k, strides=s, dilations=d, pads=a["pads"])

    t = op["inputs"][0]
    if _raw_offset(g, t, op) is None or channels_last(g, g.bytes[t]):
        # the maximum of codes minus a constant, or of bytes ONNX Runtime's layout pass holds
        # channels-last, which it pools as they are (its NhwcMaxPool kernel: no Cast, no Transpose)
        _moves(g, op, pool)
    else:  # of bytes, through float32 and back (exact): ONNX Runtime's uint8 MaxPool is a reference
        # loop, about 36 times its float32 kernel on a 128x10x10 tensor with 5x5 windows
        _moves(g, op, lambda x: g.node("Cast", [pool(g.node("Cast", [x], to=TensorProto.FLOAT))],
                                       to=TensorProto.UINT8))


def _global_avgpool(g: Graph, op: dict, blobs: dict) -> None:
    """The kernels' float-mode average over windows: the exact sum of ``q - zp`` per window (float32
    while below 2^24), times the float32 ``acc_scale``, divided by the float32 count,
    ``numerics.quantize``, as ``kernels.prepare_avgpool``; the sums of windows that tile the map (the
    global average, PP-OCRv4 rec's 3x2 stride-(1, 2) pool of its 3-row map) one reduction, of
    overlapping or padded ones a depthwise sum (``fused_pool.window_sums``).

    Why: a pool the run cannot hold is a numpy kernel between two fused runs, its frame three calls
    where one does (PP-OCRv4 rec and EfficientFormer's token mixer on bernoulli2)."""
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    _no_table(op)
    shape = g.tensors[op["inputs"][0]]["shape"]
    if fused_pool.qlinear_window(g, op):  # ONNX Runtime's windowed QLinearAveragePool, where it is the kernel
        return
    if a.get("qlinear") not in (None, "global") or ep["mode"] != "float" or ep.get("chain"):
        raise NotFusable("ONNX Runtime windowed QLinear pooling or fused float chain")
    window = [int(k) for k in a["kernel"]]
    if len(shape) != 4 or any(np.ndim(ep[k]) for k in ("acc_scale", "scale", "zp")):
        raise NotFusable("per-channel scale or pooling rank")
    if code_reach(g.tensors[op["inputs"][0]]["dtype"], a["x_zp"]) * window[0] * window[1] >= F32_BOUND:
        raise NotFusable("sum reaches 2^24")
    sums = fused_pool.window_sums(g, op)  # None where the windows tile the map
    if sums is None:
        if a.get("qlinear") and _qlinear_global_average(g, op):
            return
        sums = _code_sums(g, op["inputs"][0], a["x_zp"], window), g.const(window[0] * window[1])
        if a.get("qlinear"):  # ORT's QLinearGlobalAveragePool: the exact sum times one float32 multiplier
            mult = np.float32(ep["acc_scale"]) / (np.float32(ep["scale"]) * np.float32(shape[2] * shape[3]))
            v = g.node("Mul", [sums[0], g.const(mult)])
            g.put(op["outputs"][0], *round_float(g, v, {**ep, "round": nm.ONNX_ROUND_MODE}, *nm.qrange(*out_type(ep))))
            return
    if not (window == shape[2:] and fused_pool.rounded_mean(g, op, sums[0], window[0] * window[1])):
        _put_quantized(g, op["outputs"][0], g.node("Div", [g.node("Mul", [sums[0], g.const(ep["acc_scale"])]), sums[1]]), ep)


def _code_sums(g: Graph, src: str, zp: int, window: list[int]) -> str:
    """Per image, channel and ``window`` (tiling the map), the exact float32 sum of ``src``'s codes
    minus ``zp``: the sum of the tensor as it is held (``q - off``), then ``(off - zp)`` times the
    window's size on that small result.  A window smaller than the map sums over a
    ``[N, C, rows, window rows, columns, window columns]`` view.

    Why: a tensor an integer kernel wrote is held as bytes, and its float32 view centred on ``zp``
    is one more pass over the whole tensor (an ``Add``) where its readers are kernels on bytes
    (PP-OCRv4 det on bernoulli2: the SE blocks' pools of the neck's 80x80 maps, whose products and
    adds run on ``QLinearMul``/``QLinearAdd``).  Exact: every partial sum of either form is an
    integer below 2^24 (the caller bounds ``|q - zp|`` times the count; ``q - off`` is checked here)."""
    n, c, h, w = g.tensors[src]["shape"]
    x, off = g.base(src)
    lo, hi = code_range(g.tensors[src]["dtype"])
    count = window[0] * window[1]

    def sums(t: str) -> str:
        if window == [h, w]:
            return g.node("ReduceSum", [t, g.const([2, 3], np.int64)], keepdims=1)
        view = g.node("Reshape", [t, g.const([n, c, h // window[0], window[0], w // window[1], window[1]], np.int64)])
        return g.node("ReduceSum", [view, g.const([3, 5], np.int64)], keepdims=0)

    if off == zp or max(abs(lo - off), abs(hi - off)) * count >= F32_BOUND:
        return sums(g.centered(src, zp))
    return g.node("Add", [sums(x), g.const(np.float32((off - zp) * count))])


def _qlinear_global_average(g: Graph, op: dict) -> bool:
    """ORT's ``QLinearGlobalAveragePool`` itself, on uint8 codes held as bytes (what the kernel of
    this op emulates, ``kernels._qlinear_global_avgpool``); say whether it was written."""
    ep, src, out = op["attrs"]["epilogue"], op["inputs"][0], op["outputs"][0]
    if not bytes_only(g, src) or g.byte_offsets.get(src, 0) or out_type(ep) != (8, False) \
            or np.dtype(g.tensors[src]["dtype"]) != np.uint8 or not 0 <= op["attrs"]["x_zp"] <= 255:
        return False
    y = g.node("QLinearGlobalAveragePool", [
        g.bytes[src], g.scalar(np.float32(ep["acc_scale"])), g.scalar(op["attrs"]["x_zp"], np.uint8),
        g.scalar(np.float32(ep["scale"])), g.scalar(ep["zp"], np.uint8)], domain=fused_qlinear.MS_DOMAIN, channels_last=0)
    g.put_bytes(out, y)
    return True


def _concat(g: Graph, op: dict, blobs: dict) -> None:
    """Tensors and constant parts (a ViT's class token; as a kernel it cut the run in two), each as its codes."""
    if fused_qlinear.concat(g, op, blobs):  # parts that requantise, on ONNX Runtime's QLinearConcat
        return
    a, out = op["attrs"], op["outputs"][0]
    if any("table" in p for p in a["parts"]):
        raise NotFusable("lookup table part")
    parts = [const_codes(blobs[p["const"]], a["out_shape"][0]) if "const" in p else op["inputs"][p["input"]]
             for p in a["parts"]]
    raw = {_raw_offset(g, t, op) for t in parts if isinstance(t, str)}
    k = raw.pop() if len(raw) == 1 else None
    if k is not None and all(0 <= c.min() - k and c.max() - k <= 255 for c in parts if not isinstance(c, str)):
        g.put_bytes(out, g.node("Concat", [g.bytes[t] if isinstance(t, str) else g.const(t - k, np.uint8) for t in parts],
                                axis=a["axis"]), k)  # bytes held alike: concatenated as they are
        return
    offsets = {g.base(t)[1] for t in parts if isinstance(t, str)}
    off = offsets.pop() if len(offsets) == 1 else 0  # parts held alike stay so
    g.put(out, g.node("Concat", [g.centered(t, off) if isinstance(t, str) else g.const(t - off) for t in parts],
                      axis=a["axis"]), off)


def _reshape(g: Graph, op: dict, blobs: dict) -> None:
    _no_table(op)
    _moves(g, op, lambda x: g.node("Reshape", [x, g.const(op["attrs"]["out_shape"], np.int64)]))


def _transpose(g: Graph, op: dict, blobs: dict) -> None:
    _no_table(op)
    _moves(g, op, lambda x: g.node("Transpose", [x], perm=op["attrs"]["perm"]))


def _shuffle(g: Graph, op: dict, blobs: dict) -> None:
    """DepthToSpace / SpaceToDepth as the kernel computes them: a reshape into blocks, a
    transpose and a reshape, moving the codes as they are held."""
    _no_table(op)
    a = op["attrs"]

    def move(x: str) -> str:
        blocks = g.node("Transpose", [g.node("Reshape", [x, g.const(a["view"], np.int64)])], perm=a["perm"])
        return g.node("Reshape", [blocks, g.const(a["out_shape"], np.int64)])

    _moves(g, op, move)


def _slice(g: Graph, op: dict, blobs: dict) -> None:
    _no_table(op)
    _moves(g, op, lambda x: slice_node(g, x, op["attrs"]["slices"]))


def _raw_offset(g: Graph, tensor: str, op: dict) -> int | None:
    """The offset of ``tensor``'s bytes when data-movement ``op`` can move them as they are (the
    input held only so, every output of its type); ``None`` otherwise."""
    dtype = np.dtype(g.tensors[tensor]["dtype"])
    if not bytes_only(g, tensor) or any(np.dtype(g.tensors[t]["dtype"]) != dtype for t in op["outputs"]):
        return None
    return g.byte_offsets.get(tensor, 0)


def _moves(g: Graph, op: dict, move: Callable[[str], str]) -> None:
    """A data-movement op (``move`` of the held tensor), on the 8-bit codes where the input is
    held only so: its output then stays bytes for the next integer kernel, without casts."""
    t = op["inputs"][0]
    k = _raw_offset(g, t, op)
    if k is not None:
        g.put_bytes(op["outputs"][0], move(g.bytes[t]), k)
        return
    x, off = g.base(t)
    g.put(op["outputs"][0], move(x), off)


def _split(g: Graph, op: dict, blobs: dict) -> None:
    a = op["attrs"]
    if any(a["tables"]):
        raise NotFusable("lookup table")
    t = op["inputs"][0]
    k = _raw_offset(g, t, op)
    x, off = (g.bytes[t], k) if k is not None else g.base(t)
    for (start, end), out in zip(a["parts"], op["outputs"]):
        part = g.node("Slice", [x, g.const([start], np.int64), g.const([end], np.int64), g.const([a["axis"]], np.int64)])
        if k is not None:
            g.put_bytes(out, part, k)
        else:
            g.put(out, part, off)


def _upsample_channels_last(g: Graph, x: str, shape: list[int], factors: list[int]) -> str:
    """Nearest upsampling of ``x`` (``[N, C, H, W]``: bytes held channels-last by ONNX Runtime,
    :func:`fused_tables.channels_last`, or float codes) by whole ``factors`` of H and W, written
    channels-last: a ``Transpose`` that cancels ONNX Runtime's, each position's C values repeated
    by ``Expand`` on a ``[N, H, 1, W, 1, C]`` view, and a ``Transpose`` back that ONNX Runtime moves
    on to the next channels-last kernel.  Why: ONNX Runtime's uint8 ``Resize`` is fast on NCHW
    (its layout pass then puts a transpose before and after, and around a concatenation the
    resized tensor joins) but a per-element loop channels-last (YOLOv8n's two neck upsamplings on
    cpu-int8: 25 and 20 us NCHW, 102 and 176 us NHWC); the expanded copy moves C values at a time.
    On float codes (float adds beside channels-last kernels' outputs) the adds, casts and next
    convolutions' inputs run channels-last (PP-OCRv4 det's FPN on bernoulli2 in session 29: 1.02x
    a frame, though the ``Expand``s cost more than the ``Resize``s; its sums are now the bytes of
    a ``QuantizeLinear``, :func:`_put_quantized`, which the uint8 ``Resize`` upsamples a little
    faster than these ``Expand``s do)."""
    n, c, h, w = shape
    fh, fw = factors
    rows = g.node("Reshape", [g.node("Transpose", [x], perm=[0, 2, 3, 1]), g.const([n, h, 1, w, 1, c], np.int64)])
    wide = g.node("Expand", [rows, g.const([n, h, fh, w, fw, c], np.int64)])
    return g.node("Transpose", [g.node("Reshape", [wide, g.const([n, h * fh, w * fw, c], np.int64)])],
                  perm=[0, 3, 1, 2])


def _joins_channels_last(g: Graph, tensor: str) -> bool:
    """Whether every reader of ``tensor`` is a concatenation whose other inputs are bytes ONNX
    Runtime holds channels-last (YOLOv8n's neck: an upsampled map beside a SiLU product): its
    layout pass then runs the concatenation channels-last, with no transpose before it.  Elsewhere
    a channels-last upsampling of bytes would move the transpose after it, onto the larger tensor
    (float codes go channels-last all the same: :func:`_upsample_channels_last`)."""
    readers = g.readers.get(tensor, [])
    return bool(readers) and all(
        r["op"] == "concat" and all(t == tensor or (t in g.bytes and channels_last(g, g.bytes[t])) for t in r["inputs"])
        for r in readers)


def _gather(g: Graph, op: dict, blobs: dict) -> None:
    """Nearest-neighbour resizing, then the op's scale-change table if it has one (as the
    kernels' ``_passthrough``).  Where every axis repeats each position a whole number of times
    ``f``, ONNX ``Resize`` (nearest, ``asymmetric``, ``floor``: source ``floor(i / f)``, which
    float32 computes exactly for these small integers) copies them, on ONNX Runtime's fast
    upsampling path (float codes, and channels-last bytes joining a channels-last concatenation:
    an ``Expand``, :func:`_upsample_channels_last`); otherwise one ``Gather`` per axis whose
    indices are not the identity."""
    if set(op["blobs"]) - {"table"}:
        raise NotFusable("constants")
    t, table = op["inputs"][0], blobs.get("table")
    # 8-bit codes moved as they are, and index the table so where it has a byte per code
    on_bytes = table is not None and byte_table(g, t, op["outputs"][0], np.asarray(table), op["attrs"]["qmin"])
    k = g.byte_offsets.get(t, 0) if on_bytes else None if table is not None else _raw_offset(g, t, op)
    x, off = (g.bytes[t], k) if k is not None else g.base(t)
    shape = g.tensors[t]["shape"]
    indices = [np.asarray(ix, np.int64) for ix in op["attrs"]["indices"]]
    if on_bytes and np.prod([len(ix) for ix in indices]) > np.prod(shape):
        # a table is elementwise, so it commutes with copying elements: looked up before an
        # upsampling (YOLOv8n's neck resizes: 4x fewer lookups), the copy then moves its bytes
        byte_form(g, t, op["outputs"][0], np.asarray(table))
        x, k, on_bytes, table = g.bytes[op["outputs"][0]], g.byte_offsets[op["outputs"][0]], False, None
    factors = [len(ix) // n if n and len(ix) % n == 0 else 0 for ix, n in zip(indices, shape)]
    if all(f and len(ix) < 1 << 20 and np.array_equal(ix, np.repeat(np.arange(n), f))
           for ix, n, f in zip(indices, shape, factors)):
        if factors[:2] == [1, 1] != factors[2:] and len(shape) == 4 and (
                k is None or channels_last(g, x) and _joins_channels_last(g, op["outputs"][0])):
            x = _upsample_channels_last(g, x, list(shape), factors[2:])
        elif any(f != 1 for f in factors):
            x = g.node("Resize", [x, "", g.const(factors)], mode="nearest",
                       coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    else:
        for axis, ix in enumerate(indices):
            if list(ix) != list(range(len(ix))):
                x = g.node("Gather", [x, g.const(ix, np.int64)], axis=axis)
    if on_bytes:
        byte_lookup(g, x, op["outputs"][0], np.asarray(table))
    elif table is not None:
        table_node(g, x, off, g.tensors[t]["dtype"], op["outputs"][0], table, op["attrs"]["qmin"])
    elif k is not None:
        g.put_bytes(op["outputs"][0], x, k)
    else:
        g.put(op["outputs"][0], x, off)


def _quantize(g: Graph, op: dict, blobs: dict) -> None:
    """``numerics.quantize`` of a model input: float32 division, then the tie rule (``fused_graph.round_float``);
    ``QuantizeLinear`` itself where that kernel computes it (``fused_qlinear.quantize``)."""
    a = op["attrs"]
    if np.ndim(a["scale"]) or np.ndim(a["zp"]):
        raise NotFusable("per-channel quantize step")
    if fused_qlinear.quantize(g, op):  # ONNX Runtime's QuantizeLinear, where it is this arithmetic
        return
    ep = {"round": a["round"], "zp": a["zp"]}
    g.put(op["outputs"][0], *quantize_value(g, g.read(op["inputs"][0]), a["scale"], ep,
                                             *nm.qrange(a["bits"], a["signed"])))


def _dequantize(g: Graph, op: dict, blobs: dict) -> None:
    """``numerics.dequantize``: ``(q - zp) * scale`` in float32, per tensor or along ``axis``;
    ``DequantizeLinear`` itself on bytes where that kernel computes it (``fused_qlinear.dequantize``)."""
    if fused_qlinear.dequantize(g, op):
        return
    a = op["attrs"]
    # codes not yet held as float32 come in as a cast of integers (graph input, bytes): no -0.0
    signed_zero = op["inputs"][0] in g.names and not g.readers.get(op["outputs"][0])
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
    g.put(op["outputs"][0], dequantized(g, x, scale, signed_zero=signed_zero))


_EMITTERS: dict[str, Callable[[Graph, dict, dict], None]] = {
    "conv": conv, "conv_transpose": conv_transpose, "matmul": matmul, "matmul2": matmul2, "avgpool": _global_avgpool, "eltwise": _eltwise, "pad": _pad, "maxpool": _maxpool, "lut": lut, "lut_channel": lut_channel,
    "concat": _concat,
    "reshape": _reshape, "transpose": _transpose, "shuffle": _shuffle, "slice": _slice, "split": _split,
    "quantize": _quantize, "dequantize": _dequantize, "gather": _gather, "softmax": softmax,
}


# --- segments -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """An integer program as fused runs and single ops (``int`` = index of an op run as its kernel)."""

    items: list
    reasons: dict  # op index -> why it runs as its kernel


def plan(sg: dict, tensors: dict, blob: Callable[[str], np.ndarray], threads: int = 1,
         release: Callable[[], object] | None = None, defer: bool = False) -> Plan:
    """Cut ``sg``'s ops into maximal runs that :data:`_EMITTERS` can write as exact float graphs
    (``release``: called before each run's session is created, :class:`FusedRun`); a plan this code
    built before is opened from ``$NPUFLOW_CACHE/fused`` instead (:mod:`.fused_cache`), or with
    ``defer`` its runs left for the caller to open (:meth:`FusedRun.deferred`)."""
    ops = sg["ops"]
    readers: dict[str, list[dict]] = {}  # filled on the first graph written: a stored plan reads no op

    def reading() -> dict[str, list[dict]]:
        if not readers:
            for op in ops:
                for t in op["inputs"]:
                    readers.setdefault(t, []).append(op)
        return readers

    def emit(g: Graph, op: dict) -> None:
        blobs = {role: blob(name) for role, name in op["blobs"].items()}
        if not op["inputs"] and op["op"] in kernels.KERNELS:  # of constants only (a frozen batch's anchor grid):
            for t, codes in zip(op["outputs"], kernels.KERNELS[op["op"]](op["attrs"], blobs)([])):  # its codes
                g.put(t, g.const(codes))
            return
        emitter = _EMITTERS.get(op["op"])
        if emitter is None:
            raise NotFusable(f"{op['op']} runs as its kernel")
        written, blobs = fused_permute.before(g, op, blobs)
        emitter(g, written, blobs)
        fused_permute.after(g, op)

    def rebuild(run_ops: range) -> Callable[[], Graph]:
        """The graph of ``run_ops`` written again: each op was written without a rollback, on a
        graph that held the run's earlier ops only, so the same steps give the same graph."""
        def build() -> Graph:
            again = Graph(tensors, readers=reading())
            for k in run_ops:
                emit(again, ops[k])
            return again
        return build

    name = fused_cache.key(sg, tensors, blob, threads)
    stored = _stored(name, fused_cache.open_reader(name), ops, threads, rebuild, release, defer)
    if stored is not None:
        return stored
    store = fused_cache.open_writer(name)
    try:
        result, warned = _build(sg, tensors, reading(), emit, rebuild, threads, release, store)
    except BaseException:
        if store is not None:
            store.abandon()
        raise
    if store is not None:
        if warned:
            store.abandon()
        else:
            store.finish_plan(result.items, result.reasons)
    return result


def _stored(name: str | None, reader: fused_cache.Reader | None, ops: list[dict], threads: int,
            rebuild: Callable[[range], Callable[[], Graph]], release: Callable[[], object] | None,
            defer: bool = False) -> Plan | None:
    """The plan ``reader`` holds (stored as ``name``), its runs' sessions opened from the stored
    graphs (with ``defer``, not yet: :meth:`FusedRun.deferred`); ``None`` where there is none or it
    cannot be read (the caller builds)."""
    if reader is None:
        return None
    items: list = []
    try:
        for item in reader.items:
            if isinstance(item, int):
                items.append(item)
                continue
            start, stop, inputs, outputs = item
            run_ops = range(start, stop)
            produced = functools.partial(_produced, ops, run_ops)  # read when asked: dump mode, a rebuild
            k = sum(not isinstance(i, int) for i in items)
            reread = lambda k=k: fused_cache.read_run(name, k)  # noqa: E731
            items.append(FusedRun.deferred(inputs, outputs, produced, threads, rebuild(run_ops), release, run_ops,
                                           reread) if defer else
                         FusedRun.stored(inputs, outputs, produced, threads, rebuild(run_ops), release, run_ops,
                                         *reader.run(k), reread=reread))
        return Plan(items, reader.reasons)
    except (*_ORT_ERRORS, OSError, ValueError, KeyError, TypeError, IndexError):  # a damaged file: the build
        return None
    finally:
        reader.close()


def _produced(ops: Sequence[dict], run_ops: range) -> list[str]:
    """The tensors the ops ``run_ops`` make, in order."""
    return [t for k in run_ops for t in ops[k]["outputs"]]


def _build(sg: dict, tensors: dict, readers: dict, emit: Callable[[Graph, dict], None],
           rebuild: Callable[[range], Callable[[], Graph]], threads: int, release: Callable[[], object] | None,
           store: fused_cache.Writer | None) -> tuple[Plan, bool]:
    """:func:`plan`'s build, and whether it warned (a refused graph, a manifest form not met before)."""
    ops = sg["ops"]
    last_use: dict[str, int] = {}
    for k, op in enumerate(ops):
        for t in op["inputs"]:
            last_use[t] = k
    keep = set(sg["outputs"])
    items: list = []
    reasons: dict[int, str] = {}
    g, start, warned = Graph(tensors, readers=readers), 0, False

    def close(end: int) -> None:
        nonlocal g, warned
        run_ops = range(start, end)
        if any(ops[k]["op"] in _COMPUTE_OPS for k in run_ops):
            produced = [t for k in run_ops for t in ops[k]["outputs"]]
            outs = [t for t in produced if t in keep or last_use.get(t, -1) >= end]
            try:
                items.append(FusedRun(g, outs, produced, threads, rebuild(run_ops), release, store, run_ops))
            except _ORT_ERRORS as exc:  # the kernels compute the same codes, slower
                warned = True
                items.extend(run_ops)
                reasons.update({k: f"ONNX Runtime refused the fused graph: {exc}" for k in run_ops})
                warnings.warn(f"npuflow runtime: ops {ops[start]['name']!r}..{ops[end - 1]['name']!r} run as "
                              f"kernels, slower: ONNX Runtime refused their fused graph: {exc}", RuntimeWarning,
                              stacklevel=4)
        else:
            items.extend(run_ops)
        g = Graph(tensors, readers=readers)

    def written(op: dict) -> str | None:
        """Write ``op`` into ``g``; where it cannot be, ``g`` as before and why.  The graph's mark
        lives only in this call: its copies of the graph's maps would otherwise keep the run's
        tables through the next session's creation."""
        nonlocal warned
        mark = g.mark()
        try:
            emit(g, op)
            return None
        except NotFusable as why:
            g.rollback(mark)
            return str(why)
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, *_ORT_ERRORS) as exc:  # a new form; no contrib ops
            g.rollback(mark)
            warned = True
            reason = f"no fused form ({type(exc).__name__}: {exc})"
            warnings.warn(f"npuflow runtime: op {op['name']!r} ({op['op']}) runs as its kernel, slower: {reason}",
                          RuntimeWarning, stacklevel=4)
            return reason

    for k, op in enumerate(ops):
        why = written(op)
        if why is None:
            continue
        reasons[k] = why
        close(k)
        items.append(k)
        start = k + 1
    close(len(ops))
    return Plan(items, reasons), warned
