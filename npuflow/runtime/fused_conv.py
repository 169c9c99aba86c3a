"""Convolutions, transposed convolutions and fully connected layers in a fused run.

The exact accumulator (one float32 convolution while every partial sum stays below 2^24, else
input-channel chunks summed in float64) and each requantisation the compiler writes, as ONNX
operations that compute the kernels' codes bit for bit (``runtime/fused.py``'s module docstring
says why each form is exact): a power-of-two shift folded into the weights, ONNX Runtime's float32
multiplier, a fixed-point multiplier (``fused_fixed``) in float32 where ``numerics`` proves it
exact, else float64 or int64, and a float epilogue (with its fused chain: LeakyReLU, hard-sigmoid,
hard-swish) a table of the accumulator where its scales are per tensor, else one float32 operation
per node. uint8 groups whose arithmetic is ONNX Runtime's, and fixed-point convolutions whose
float32 multipliers are exact, go to its own integer kernels first (``fused_qlinear``;
``fused_fixconv.dense_fixed`` where only some channels have one: the others with fix channels;
``fused_fixconv.depthwise_fixed`` for a depthwise layer); dense
convolutions and fully connected layers with a float epilogue take their exact int32 accumulator
from ONNX ``ConvInteger`` on uint8 codes and weights where this CPU's kernel is exact
(:func:`_integer_conv`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from onnx import TensorProto

from .. import numerics as nm
from ..ort_kernels import convinteger_exact, matmul_int8_exact, matmulinteger_u8_exact, weight_arrays
from . import fused_fixconv, fused_fixed, fused_qgemm, fused_qlinear
from .epilogues import chain_bounds, make_epilogue, make_float_finish, out_type
from .fused_graph import (F32_BOUND, INDEX_TYPE, Graph, NotFusable, abs_sums, channel, clamp_bounds,
                          code_range, code_reach, lookup, quantize_value, round_and_clip, round_scaled, rows_as_conv,
                          slice_node)


def conv(g: Graph, op: dict, blobs: dict) -> None:
    a = op["attrs"]
    if a.get("split_bytes"):
        raise NotFusable("16-bit input split into bytes")
    t, pads = op["inputs"][0], a["pads"]
    padded = g.pads.get(t)
    if padded and not any(pads) and len(a["out_shape"]) == 4 and padded[2] == a["x_zp"] \
            and not np.any(padded[1][:2]) and np.all(np.asarray(padded[1]) >= 0):
        # a constant pad of the input's zero point read only here: the convolution's own zero
        # padding of the centred input (the Pad node then has no reader left and is dropped)
        t, width = padded[0], np.asarray(padded[1])
        pads = [int(width[2, 0]), int(width[3, 0]), int(width[2, 1]), int(width[3, 1])]
    if fused_qlinear.conv(g, op, t, pads, blobs) or fused_fixconv.dense_fixed(g, op, blobs, t, pads, conv) \
            or fused_fixconv.depthwise_fixed(g, op, blobs, t, pads):
        return
    if list(g.tensors[t]["shape"]) == list(a["in_shape"]) or t != op["inputs"][0]:
        to_conv = _same
    else:  # a 1-D convolution runs as 2-D with H = 1
        def to_conv(v: str) -> str:
            return g.node("Reshape", [v, g.const(a["in_shape"], np.int64)])

    def from_conv(y: str) -> str:
        return y if len(a["out_shape"]) == 4 else g.node("Reshape", [y, g.const(a["out_shape"], np.int64)])

    attrs = {"pads": pads, "strides": a["strides"], "dilations": a["dilations"],
             "kernel_shape": list(np.shape(blobs["w"])[2:])}
    out = op["outputs"][0] if len(a["out_shape"]) == 4 else None
    if _integer_conv(g, op, t, blobs, to_conv, from_conv, out, **attrs):
        return
    w = np.asarray(blobs["w"], np.float32)  # see _convolve: float32 holds every weight exactly
    if any(pads):  # zero padding stands for the code x_zp: read the input centred on it
        x, off = g.centered(t, a["x_zp"]), a["x_zp"]
    else:  # sum(w * (x - zp)) = sum(w * x) - zp * sum(w): the zero point moves into the bias
        x, off = g.base(t)
    x = to_conv(x)

    def emit(xs: str, wc: np.ndarray, b: np.ndarray | None) -> str:
        return g.node("Conv", [xs, g.const(wc)] + ([] if b is None else [g.const(b)]), group=a["group"], **attrs)

    y, zp = _convolve(g, op, x, off, w, blobs["b"], emit, out=out, held=integer_offset(g, op["outputs"][0]))
    g.put(op["outputs"][0], from_conv(y), zp)


def _same(v: str) -> str:
    return v


def matmul(g: Graph, op: dict, blobs: dict) -> None:
    """``x (..., K) @ w (K, N) + bias`` as a 1x1 convolution of the rows: ``x`` viewed as
    (1, K, rows, 1), the weights as (N, K, 1, 1); bounds, chunks and requantisation as
    :func:`conv`, the result moved back to (..., N).  Several rows with a float or fixed-point
    epilogue take the exact accumulator from ``MatMulInteger`` of the rows as they lie
    (:func:`_rows_accumulator`), without that move."""
    a = op["attrs"]
    if a.get("wide"):
        raise NotFusable("16-bit inputs")
    if fused_qgemm.matmul(g, op, blobs):
        return
    w = np.asarray(blobs["w"])
    t = op["inputs"][0]
    k, n = w.shape
    shape = list(g.tensors[t]["shape"])
    as_conv = {**op, "attrs": {**a, "group": 1}, "inputs": [t]}
    wc = np.ascontiguousarray(w.T).reshape(n, k, 1, 1)
    rows = int(np.prod(shape[:-1]))
    if rows > 1 and matmulinteger_u8_exact() and _integer_conv(
            g, as_conv, t, {"w": wc, "b": blobs["b"]}, _same, _rows_back(g, a["out_shape"]), rows=rows):
        return
    to_rows, back = rows_as_conv(g, shape, n, a["out_shape"])
    if _integer_conv(g, as_conv, t, {"w": wc, "b": blobs["b"]}, to_rows, back, kernel_shape=[1, 1]):
        return
    x, off = g.base(t)
    if rows > 1:  # the rows as they lie: see _rows_gemm
        to_rows, back, emit = _rows_gemm(g, k, rows, a["out_shape"])
    else:
        def emit(xs: str, wc: np.ndarray, bias: np.ndarray | None) -> str:
            return g.node("Conv", [xs, g.const(wc)] + ([] if bias is None else [g.const(bias)]), kernel_shape=[1, 1])

    y, zp = _convolve(g, as_conv, to_rows(x), off, wc.astype(np.float32), blobs["b"], emit)
    g.put(op["outputs"][0], back(y), zp)


def _rows_gemm(g: Graph, k: int, rows: int, out_shape: list[int]
               ) -> tuple[Callable[[str], str], Callable[[str], str], Emit]:
    """A fully connected layer of ``rows`` float code rows of ``K`` values as ``Gemm`` of the rows as
    they lie: ``(to_rows, back, emit)`` for :func:`_convolve`.  ``to_rows`` views ``x`` (..., K) as
    (rows, K), where an input-channel chunk is a ``Slice`` of axis 1 as in the convolution layout;
    ``emit`` writes ``Gemm(x, w^T, bias)`` viewed as (rows, N, 1, 1), its channels on axis 1 where the
    epilogue's per-channel constants broadcast (as :func:`_rows_accumulator`); ``back`` puts that in
    ``out_shape``.  Exact as the 1x1 ``Conv`` it replaces: the same float32 products and partial sums,
    each an exact float32 under the bounds :func:`_convolve` checks, in any order.  The convolution
    form (``fused_graph.rows_as_conv``) moved the rows to (1, K, rows, 1) and back: two ``Transpose``
    and three more ``Reshape`` nodes a layer, and ONNX Runtime's NCHWc reorders around the ``Conv``
    (the EfficientFormer-style net on B4096: four such layers a frame)."""
    def to_rows(v: str) -> str:
        return g.node("Reshape", [v, g.const([rows, k], np.int64)])

    def emit(xs: str, wc: np.ndarray, bias: np.ndarray | None) -> str:
        y = g.node("Gemm", [xs, g.const(wc.reshape(wc.shape[0], -1))] + ([] if bias is None else [g.const(bias)]),
                   transB=1)
        return g.node("Reshape", [y, g.const([rows, wc.shape[0], 1, 1], np.int64)])

    return to_rows, _rows_back(g, out_shape), emit


def matmul2(g: Graph, op: dict, blobs: dict) -> None:
    """``(a - za) @ (b - zb)`` of two 8-bit activations (attention's ``Q K^T`` and ``A V``) as a
    float ``MatMul`` of the centred codes, then the kernel's requantisation.  Every partial sum is
    an integer of at most ``K * max|a - za| * max|b - zb|``: below 2^24 float32 holds each one in
    any summation order, else the codes go to float64 (exact to 2^53), so the accumulator equals
    the kernel's int64 one without relying on an integer kernel's lanes.  The epilogue has one
    scale (``manifest_check``); it runs on the accumulator viewed as 4-D, its constants' shape."""
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    if ep["mode"] not in ("shift", "scale", "fixed", "float") or (ep.get("chain") and ep["mode"] != "float"):
        raise NotFusable(f"{ep['mode']} epilogue with a chain")
    ta, tb = op["inputs"]
    shape_a, shape_b = g.tensors[ta]["shape"], g.tensors[tb]["shape"]
    if len(shape_a) < 2 or len(shape_b) < 2:
        raise NotFusable("matrix product of a vector")
    reach_a, reach_b = code_reach(g.tensors[ta]["dtype"], a["a_zp"]), code_reach(g.tensors[tb]["dtype"], a["b_zp"])
    bound = float(shape_a[-1]) * reach_a * reach_b
    if bound >= 1 << 53:
        raise NotFusable("accumulator beyond 2^53")
    x, y = g.centered(ta, a["a_zp"]), g.centered(tb, a["b_zp"])
    double = bound >= F32_BOUND
    if double:
        x, y = (g.node("Cast", [v], to=TensorProto.DOUBLE) for v in (x, y))
    acc = g.node("MatMul", [x, y])
    out_shape = list(a["out_shape"])
    if len(out_shape) != 4:
        acc = g.node("Reshape", [acc, g.const([1, 1, -1, out_shape[-1]], np.int64)])
    lo, hi = clamp_bounds(ep)
    if ep["mode"] == "float":
        v, zp = _float_epilogue(g, acc, double, ep, 1)
    elif ep["mode"] == "fixed":
        fixed = fused_fixed.FixedPoint(ep, 1, np.array([-bound]), np.array([bound]))
        v, zp = fused_fixed.requantize_fixed(g, acc, double, fixed, ep, lo, hi)
    else:
        v, zp = (_requantize_shift if ep["mode"] == "shift" else _requantize_float)(g, acc, double, ep, 1, lo, hi)
    if len(out_shape) != 4:
        v = g.node("Reshape", [v, g.const(out_shape, np.int64)])
    g.put(op["outputs"][0], v, zp)


def conv_transpose(g: Graph, op: dict, blobs: dict) -> None:
    """A transposed convolution as ONNX ``ConvTranspose`` on the full output, cut as the kernel
    cuts it (``pads`` at the start, ``out_shape`` long).  Bounds and requantisation as
    :func:`conv`, with the weights seen per output channel; an output element sums a subset of
    the taps the bound counts."""
    a = op["attrs"]
    if a.get("wide"):
        raise NotFusable("16-bit products")
    wn = np.asarray(blobs["w"], np.float32)  # (cin, cout / group, kh, kw)
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
            v = slice_node(g, v, [[0, ys[0], 1], [0, ys[1], 1], [pads[0], pads[0] + ys[2], 1],
                                   [pads[1], pads[1] + ys[3], 1]])
        return v

    wc = wn.reshape(group, cin_g, cout_g, kh, kw).transpose(0, 2, 1, 3, 4).reshape(group * cout_g, cin_g, kh, kw)
    x = g.centered(op["inputs"][0], a["x_zp"])
    g.put(op["outputs"][0], *_convolve(g, op, x, a["x_zp"], wc, blobs["b"], emit))


Emit = Callable[[str, np.ndarray, "np.ndarray | None"], str]


def _integer_conv(g: Graph, op: dict, t: str, blobs: dict, to_conv: Callable[[str], str],
                  from_conv: Callable[[str], str], out: str | None = None, rows: int | None = None,
                  **node_attrs) -> bool:
    """Write dense convolution ``op`` (manifest input ``t``, ``blobs`` in convolution layout) with
    a float epilogue as ONNX ``ConvInteger`` on 8-bit codes, and say whether it did.

    ``ConvInteger`` of uint8 codes and uint8 weights ``w + 128`` (zero points the input's, moved
    as the bytes are, and 128) is the exact int32 accumulator where ``convinteger_exact`` finds
    MLAS' uint8 x uint8 kernel exact: one byte a weight and an activation where the float
    ``Conv`` holds four, and about half its time on dense 1x1 and 3x3 convolutions.  Its padding
    is the input's zero point, so padded taps add nothing, as the kernels' zero padding of the
    centred input.  The bias follows in int32, then the accumulator table (:func:`_acc_table`) or
    the float epilogue (:func:`_float_epilogue`) on the accumulator cast to float32.  Grouped
    and depthwise convolutions keep the float ``Conv`` (``ConvInteger`` is slower there), as do
    int8 weights that are not codes, an ``lshift``, per-channel output scales and accumulators
    that could leave int32.  Wide pointwise convolutions whose int8 weights cannot saturate MLAS'
    uint8 x int8 lanes run as ``MatMulInteger`` instead (:func:`_matmul_form`).  ``to_conv``/``from_conv`` move
    ``t``'s codes into the convolution's layout and the result back; ``out`` as in :func:`_convolve`.
    ``rows``: ``op`` is a fully connected layer of that many rows of ``t`` as they are (..., K), its
    accumulator ``MatMulInteger``'s (:func:`_rows_accumulator`), not a convolution's."""
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    w, bias = fused_qlinear.int8_weights(blobs["w"]), np.asarray(blobs["b"]).reshape(-1)
    dtype = np.dtype(g.tensors[t]["dtype"])
    if not _integer_reader(op) or np.dtype(a.get("in_dtype", dtype)) != dtype or dtype.itemsize != 1 \
            or w is None or bias.dtype.kind not in "iu":
        return False
    held = g.byte_offsets.get(t, 0) if t in g.bytes else None
    k = held if held is not None and 0 <= a["x_zp"] - held <= 255 else code_range(dtype)[0]
    reach = code_reach(dtype, a["x_zp"])
    sums = reach * abs_sums(w)
    acc_hi = nm.qrange(32, True)[1]
    fixed = None
    if ep["mode"] == "fixed":
        # the same requantisation as ``_convolve``'s, of the same float32 accumulator (exact, as
        # there, only while every partial sum stays below 2^24): a constant channel gets no taps
        # and its value as the int32 added
        fixed = fused_fixed.FixedPoint(ep, w.shape[0], bias - sums, bias + sums)
        w, bias = fixed.constants_as_bias(w, bias)
        bias = bias.astype(np.int64)
        sums = reach * abs_sums(w)
        if np.any(sums + np.abs(bias) >= F32_BOUND):
            return False
    table = None if fixed is not None else _acc_table_range(ep, int(np.min(bias - sums)), int(np.max(bias + sums)))
    move = bias - (table[0] if table is not None else 0)  # the int32 added to ConvInteger's accumulator
    if not 0 <= a["x_zp"] - k <= 255 or np.any(sums + np.abs(move) > acc_hi) or not convinteger_exact():
        return False
    x, x_zp = to_conv(g.as_bytes(t, k)), g.scalar(a["x_zp"] - k, np.uint8)
    if rows is not None:
        acc = _rows_accumulator(g, x, x_zp, w, rows)
    elif _matmul_form(op, w, node_attrs):
        acc = _matmul_accumulator(g, x, x_zp, w, a["in_shape"])
    else:
        (wq, _), _ = weight_arrays(w, "u8")
        acc = g.node("ConvInteger", [x, g.const(wq, np.uint8), x_zp, g.scalar(-nm.qrange(8, True)[0], np.uint8)],
                     **node_attrs)
    if np.any(move):
        acc = g.node("Add", [acc, g.const(move.reshape(1, -1, 1, 1), np.int32)])
    if fixed is not None:
        lo, hi = clamp_bounds(ep)
        y, zp = fused_fixed.requantize_fixed(g, acc, False, fixed, ep, lo, hi, const_in_acc=True, int32=True)
    elif table is None:
        y, zp = _float_epilogue(g, g.node("Cast", [acc], to=TensorProto.FLOAT), False, ep, w.shape[0])
    else:
        # int32, the type of a table's index (INDEX_TYPE): the clamped accumulator is the index itself
        index = g.node("Clip", [acc, g.scalar(0, np.int32), g.scalar(len(table[1]) - 1, np.int32)])
        if out is not None:  # a codewise op reading ``out`` becomes one table of the index
            g.tables[out] = (("accumulator", index), table[1])
        held = integer_offset(g, op["outputs"][0])
        if held is not None:  # the bytes the next ConvInteger reads, not float32 codes cast to them
            g.put_bytes(op["outputs"][0], from_conv(lookup(g, index, table[1], held, np.uint8)), held)
            return True
        zp = int(ep["zp"])
        y = lookup(g, index, table[1], zp, out=op["outputs"][0])
    g.put(op["outputs"][0], from_conv(y), zp)
    return True


#: Input and output channels from which a pointwise convolution's ``MatMulInteger`` form
#: (:func:`_matmul_form`) saves more than its two transposes cost: the GEMM's saving grows with
#: the product of the channel counts, the transposes with their sum (measured on this project's
#: AVX2 machine, in a graph between a depthwise convolution and a table: 192 and more gain,
#: 32-128 channels lose or break even; docs/runtime-measurements.md, "Twelfth round").
MATMUL_CHANNELS = 192


def _matmul_form(op: dict, w: np.ndarray, node_attrs: dict) -> bool:
    """Whether :func:`_integer_conv` writes convolution ``op`` (int8 weights ``w``) as
    ``MatMulInteger`` of its channels-last rows and int8 weights: a pointwise convolution (1x1,
    stride 1, no padding) of at least :data:`MATMUL_CHANNELS` channels in and out whose weight
    pairs along the input channels cannot saturate MLAS' 16-bit lanes on this process' kernels
    (``ort_kernels.matmul_int8_exact``).  That runs on MLAS' uint8 x int8 kernel, about
    twice the rate of ``ConvInteger``'s uint8 x uint8 one on a CPU without VNNI, and is exact."""
    return op["op"] == "conv" and len(op["attrs"]["in_shape"]) == 4 \
        and list(node_attrs.get("kernel_shape", [])) == [1, 1] and not any(node_attrs.get("pads", [0])) \
        and all(s == 1 for s in node_attrs.get("strides", [1])) \
        and min(w.shape[:2]) >= MATMUL_CHANNELS and matmul_int8_exact(w.reshape(w.shape[0], -1).T)


def _matmul_accumulator(g: Graph, x: str, x_zp: str, w: np.ndarray, in_shape: list[int]) -> str:
    """The int32 accumulator (N, Cout, H, W) of a pointwise convolution of uint8 ``x`` (``in_shape``
    N, C, H, W; zero point ``x_zp``) with int8 weights ``w`` as ``MatMulInteger`` of the rows
    (N, H*W, C) and ``w`` as (C, Cout): uint8 activations as ``A``, the form MLAS runs on its
    uint8 x int8 kernel (int8 weights as ``A`` take its reference path)."""
    n, c, h, wd = in_shape
    rows = g.node("Transpose", [g.node("Reshape", [x, g.const([n, c, h * wd], np.int64)])], perm=[0, 2, 1])
    weights = g.const(np.ascontiguousarray(w.reshape(w.shape[0], c).T), np.int8)
    acc = g.node("MatMulInteger", [rows, weights, x_zp, g.scalar(0, np.int8)])
    return g.node("Reshape", [g.node("Transpose", [acc], perm=[0, 2, 1]), g.const([n, w.shape[0], h, wd], np.int64)])


def _rows_accumulator(g: Graph, x: str, x_zp: str, w: np.ndarray, rows: int) -> str:
    """The int32 accumulator of a fully connected layer of uint8 rows ``x`` (..., K; zero point
    ``x_zp``) and int8 weights ``w`` (N, K, 1, 1) as ``MatMulInteger`` of the rows as they lie, viewed
    as (rows, N, 1, 1): its channels on axis 1, where the epilogue's per-channel constants
    broadcast, with no data moved.  Int8 weights where ``ort_kernels.matmul_int8_exact`` finds
    MLAS' uint8 x int8 lanes exact for them, else uint8 ``w + 128`` (``ort_kernels.matmulinteger_u8_exact``).
    The convolution form (``fused_graph.rows_as_conv``) moved the rows to (1, K, rows, 1) and the
    result back: two ``Transpose`` and three ``Reshape`` nodes a layer (EfficientFormer-style
    attention blocks on bernoulli2: six such layers a frame)."""
    b = np.ascontiguousarray(w.reshape(w.shape[0], -1).T)
    if matmul_int8_exact(b):
        acc = g.node("MatMulInteger", [x, g.const(b, np.int8), x_zp, g.scalar(0, np.int8)])
    else:
        (wq, _), _ = weight_arrays(b, "u8")
        acc = g.node("MatMulInteger", [x, g.const(wq, np.uint8), x_zp, g.scalar(-nm.qrange(8, True)[0], np.uint8)])
    return g.node("Reshape", [acc, g.const([rows, w.shape[0], 1, 1], np.int64)])


def _rows_back(g: Graph, out_shape: list[int]) -> Callable[[str], str]:
    """The (rows, N, 1, 1) result of :func:`_rows_accumulator`'s layer put back in ``out_shape``."""
    def back(y: str) -> str:
        return g.node("Reshape", [y, g.const(list(out_shape), np.int64)])

    return back


def _integer_reader(op: dict) -> bool:
    """Whether ``op``'s attributes allow :func:`_integer_conv` (its weights and bounds decide the rest)."""
    a, ep = op["attrs"], op["attrs"].get("epilogue") or {}
    mode = ep.get("mode")
    return op["op"] in ("conv", "matmul") and a.get("group", 1) == 1 \
        and (mode == "float" or (mode == "fixed" and not ep.get("chain"))) \
        and not a.get("split_bytes") and not a.get("wide") and not np.any(np.asarray(a.get("lshift", 0)) != 0) \
        and not np.ndim(a["x_zp"]) and not np.ndim(ep["scale"]) and not np.ndim(ep["zp"])


def integer_offset(g: Graph, tensor: str) -> int | None:
    """The offset at which ``tensor``'s codes are best held as float32 when every reader takes
    them to ``ConvInteger`` (:func:`_integer_conv` casts codes minus the type's lowest code to
    uint8: held on that offset, the cast needs no ``Add`` first), else ``None``."""
    readers = g.readers.get(tensor, [])
    dtype = np.dtype(g.tensors[tensor]["dtype"])
    if not readers or dtype.itemsize != 1 or dtype.kind not in "iu" or not all(map(_integer_reader, readers)) \
            or not convinteger_exact():
        return None
    return code_range(dtype)[0]


def _convolve(g: Graph, op: dict, x: str, off: int, w: np.ndarray, bias: np.ndarray,
              emit: Emit, out: str | None = None, held: int | None = None) -> tuple[str, int]:
    """The exact accumulator of a (transposed) convolution and its requantisation: the output
    codes centred, ``(tensor, offset)``.

    ``x`` holds the input codes minus ``off``; where that is not the input zero point, every
    output sees every tap (no padding: the caller centres padded inputs), so the rest of the zero
    point moves into the bias.  ``w`` is in convolution layout (output channel, input channel of
    its group, kh, kw), which the bounds read; ``emit(x, w, bias)`` writes the ONNX node for such
    weights.  ``out``: the manifest tensor the result is, where it keeps the accumulator's layout,
    so that a table of it composes with an accumulator table (:func:`_acc_table`).  ``held``:
    the offset the output codes are wanted on (:func:`integer_offset`), which a folded
    power-of-two requantisation gives at no cost; elsewhere its zero point.

    ``w`` is float32: codes of at most 16 bits times powers of two, every one exact (and 4 bytes
    per weight where float64 copies of a 1280x1000 classifier made 39 MiB of load peak); sums
    over them are taken in float64 (:func:`abs_sums`).
    """
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    if ep["mode"] not in ("shift", "scale", "fixed", "float") or (ep.get("chain") and ep["mode"] != "float"):
        raise NotFusable(f"{ep['mode']} epilogue with a chain")
    cout = w.shape[0]
    bias = np.asarray(bias, np.float64).reshape(-1)
    lshift = channel(a["lshift"], cout)
    if np.any(lshift < 0):
        raise NotFusable("negative lshift")
    if np.any(lshift):  # (acc << lshift) + bias, as the kernel computes
        w = w * np.exp2(lshift).astype(np.float32).reshape(cout, 1, 1, 1)
    lo, hi = clamp_bounds(ep)
    zp = a["x_zp"] - off  # x holds q - off: sum(w * (q - x_zp)) = sum(w * x) - zp * sum(w)
    if zp:
        bias = bias - zp * w.reshape(cout, -1).sum(axis=1, dtype=np.float64)
    reach = code_reach(a.get("in_dtype", g.tensors[op["inputs"][0]]["dtype"]), off)
    if ep["mode"] == "shift":
        y = _shift_folded(g, x, w, bias, reach, ep, lo, hi, emit, held)
        if y is not None:
            return y
    if ep["mode"] == "fixed":
        fixed = fused_fixed.FixedPoint.of_layer(ep, w, bias, reach)
        acc, double = _accumulate(g, x, *fixed.constants_as_bias(w, bias), reach, emit, a["group"])
        return fused_fixed.requantize_fixed(g, acc, double, fixed, ep, lo, hi, const_in_acc=True)
    if ep["mode"] == "float":
        found = _acc_table(g, x, w, bias, reach, ep, emit)
        if found is not None:
            index, table = found
            if out is not None:  # a codewise op reading ``out`` becomes one table of the index
                g.tables[out] = (("accumulator", index), table)
            to = int(ep["zp"]) if held is None else held
            return lookup(g, index, table, to, out=op["outputs"][0]), to
    acc, double = _accumulate(g, x, w, bias, reach, emit, a["group"])
    if ep["mode"] == "float":
        return _float_epilogue(g, acc, double, ep, cout)
    return (_requantize_shift if ep["mode"] == "shift" else _requantize_float)(g, acc, double, ep, cout, lo, hi)


#: The most entries of an accumulator table (:func:`_acc_table`): a table of this size is 256 KiB
#: of float32, still served from the core's cache; a wider accumulator keeps the float epilogue.
ACC_TABLE_LIMIT = 1 << 16


def _acc_table(g: Graph, x: str, w: np.ndarray, bias: np.ndarray, reach: int, ep: dict,
               emit: Emit) -> tuple[str, np.ndarray] | None:
    """A float epilogue as a table of the accumulator: ``(index, table)``, the int32 index
    ``clip(acc, a0, a1) - a0`` and the output codes of every accumulator ``a0..a1``, or ``None``.

    A float epilogue (``epilogues.make_epilogue``: ``float32(acc) * acc_scale``, the fused chain,
    the quantize step) is a function of the integer accumulator alone when its scales are one
    value for every channel.  Written out it costs about ten passes over float32 tensors (the
    chain, the division, the tie rule); as a table, the clamp (which ONNX Runtime fuses
    into the convolution), one cast and one copy loop.  Only the accumulators whose codes differ
    need entries: ``a0`` is the largest accumulator up to which every code is that of the lowest
    reachable one, ``a1`` the smallest from which every code is that of the highest, both proved
    by bounding the chain over the range (``epilogues.chain_bounds``: float32 rounding is monotone)
    and the quantize step on the bounds.  The entries are the kernel's own epilogue run on
    ``a0..a1``, so the codes are the op-by-op run's by construction.  ``None`` where the scales
    are per channel, the table would exceed :data:`ACC_TABLE_LIMIT` entries, or the accumulator
    (moved by ``a0``) could leave float32's exact integers.
    """
    sums = reach * abs_sums(w)
    found = _acc_table_range(ep, int(np.floor(np.min(bias - sums))), int(np.ceil(np.max(bias + sums))))
    if found is None:
        return None
    a0, table = found
    if np.any(sums + np.abs(bias - a0) >= F32_BOUND):
        return None
    acc = g.node("Clip", [emit(x, w, bias - a0), g.const(np.float32(0)), g.const(np.float32(len(table) - 1))])
    return g.node("Cast", [acc], to=INDEX_TYPE), table


def _acc_table_range(ep: dict, lowest: int, highest: int) -> tuple[int, np.ndarray] | None:
    """The table of :func:`_acc_table` for accumulators in ``lowest..highest``: ``(a0, codes of
    a0..a1)``, or ``None`` where the scales are per channel or it would exceed
    :data:`ACC_TABLE_LIMIT` entries."""
    # one scale for every channel (compared, not ``np.unique``: that imports ``numpy.ma``, 0.5 MiB
    # of modules a Session's load otherwise never needs)
    acc_scale = np.asarray(ep["acc_scale"], np.float32).reshape(-1)
    if not acc_scale.size or np.any(acc_scale != acc_scale[0]) or np.ndim(ep["scale"]) or np.ndim(ep["zp"]):
        return None
    one = {**ep, "acc_scale": float(acc_scale[0])}
    quantize = make_float_finish({**one, "chain": []})
    steps, result = ep.get("chain", []), ep.get("result", "$x")

    def constant(a: int, b: int) -> bool:
        """Whether every accumulator in ``a..b`` gives one code."""
        v = (np.float32(a) * acc_scale[0], np.float32(b) * acc_scale[0])
        if steps:
            v = chain_bounds(steps, result, *v)
            if v is None:
                return False
        codes = quantize(np.asarray(v, np.float32))
        return codes[0] == codes[1]

    lo, hi = lowest, highest  # a0: the last accumulator of the constant run from ``lowest``
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if constant(lowest, mid) else (lo, mid - 1)
    a0 = lo
    lo, hi = a0, highest  # a1: the first accumulator of the constant run up to ``highest``
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if constant(mid, highest) else (mid + 1, hi)
    a1 = lo
    if a1 - a0 + 1 > ACC_TABLE_LIMIT:
        return None
    return a0, make_epilogue(one, 0, 1)(np.arange(a0, a1 + 1, dtype=np.int64))


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
    return quantize_value(g, v, ep["scale"], ep, *nm.qrange(*out_type(ep)))


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


def _shift_folded(g: Graph, x: str, w: np.ndarray, bias: np.ndarray, reach: int, ep: dict, lo: int, hi: int,
                  emit: Emit, held: int | None = None) -> tuple[str, int] | None:
    """A power-of-two requantisation folded into the convolution.

    Weights ``w * 2^-shift`` and bias ``bias * 2^-shift + offset`` (exact) give the value on the
    grid ``2^-shift``, moved off its ties by ``numerics.rounding_as_nearest_even``, so ONNX
    ``Round`` applies the tie rule.  The clamps come first (integer bounds commute with
    rounding), as a ``Clip`` ONNX Runtime fuses into the convolution.  The codes come out minus
    the zero point, or minus ``held`` where the shifts are not negative: ``zp - held`` more in
    the bias (an integer moves no value across a tie).  ``None`` when some partial sum could
    reach 2^24 on the grid ``2^-(shift+1)`` (offset and move included).
    """
    cout = w.shape[0]
    shift = channel(ep["shift"], cout)
    offset = nm.rounding_as_nearest_even(ep["round"], shift)
    if offset is None:
        raise NotFusable(f"tie rule {ep['round']}")
    zp = ep["zp"]
    to = zp if held is None or np.ndim(zp) or np.any(shift < 0) else held
    moved = bias + (np.asarray(zp) - to) * np.exp2(np.maximum(shift, 0))  # in accumulator units
    bound = (reach * abs_sums(w) + np.abs(moved)) * 2 + 1
    if np.any(bound >= F32_BOUND) or np.any(np.abs(shift) > 100):
        return None
    if np.ndim(zp):
        raise NotFusable("per-channel zero point")
    to = int(to)
    scale = np.exp2(-shift)
    v = emit(x, w * scale.astype(np.float32).reshape(cout, 1, 1, 1), moved * scale + offset)
    return g.node("Round", [g.node("Clip", [v, g.const(lo - to), g.const(hi - to)])]), to


def _accumulate(g: Graph, x: str, w: np.ndarray, bias: np.ndarray, reach: int, emit: Emit,
                group: int) -> tuple[str, bool]:
    """The exact accumulator (bias included): one float32 convolution when every partial sum
    stays below 2^24; else float64 (``True``): input-channel chunks whose sums each stay below
    2^24, and the bias, added exactly."""
    cout = w.shape[0]
    per_cin = reach * np.abs(w).sum(axis=(2, 3), dtype=np.float64)  # (cout, cin_g): most one input channel adds
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
    return round_scaled(g, acc, "Mul", mult, ep, lo, hi)
