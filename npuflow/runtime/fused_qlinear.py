"""ONNX Runtime's own 8-bit integer kernels inside a fused run, where they are the model's arithmetic.

On a float-scale target the compiler gives an op whose group ONNX Runtime fuses into integer
kernels the arithmetic of those kernels (``docs/compiler-runtime.md``, "Requantisation"): a
convolution with a ``scale`` epilogue is MLAS' ``QLinearConv`` output stage
(``numerics.requantize_float``: the exact int32 accumulator times a float32 multiplier, ties to
even), an add with ``qlinear`` attributes is ``QLinearAdd`` (``numerics.qlinear_add``).  Written
as float graphs they cost a float32 convolution and four passes over float tensors; ONNX
Runtime's own ``QLinearConv`` (uint8 activations, int8 weights: its int8 GEMM, VNNI where the CPU
has it) and ``com.microsoft.QLinearAdd`` compute the same codes in one integer kernel each.

A table that ``com.microsoft.QLinearSigmoid`` reproduces on all 256 codes (a sigmoid), one that
``com.microsoft.QLinearLeakyRelu`` with ``alpha`` 1 reproduces (a change of scale), and a
float-scale product that ``com.microsoft.QLinearMul`` computes as ``numerics`` does for all 65,536
pairs of codes run as those kernels too, checked per op at load: they keep the codes uint8 and
ONNX Runtime's channels-last layout, where a lookup through float32 indices breaks both (YOLOv8n's
SiLU: 121 layout transposes).  ``QLinearMul`` adds the zero point before rounding, ``numerics``
after, so where a product lands exactly on a tie the check refuses it and the float form serves.
``QLinearAdd`` is checked per op the same way (all pairs, the op's scales and zero points): a
float32 rounding that differs on one pair in a million escapes the process probe's random codes.
A concatenation whose parts requantise (a model quantized elsewhere gives each part a scale of
its own) runs as ``com.microsoft.QLinearConcat``, checked per part on all 256 codes against its
table: the float forms have no such concatenation, which ran as its kernel between two fused runs.
A model's float32 input quantized to uint8 (ties to even) and a dequantize step of uint8 codes are
ONNX ``QuantizeLinear`` and ``DequantizeLinear``, checked per scale and zero point at load: one
node each where the float form has three to five.

The compiler gives these epilogues to uint8 groups only (``compiler/lowering.ort_integer_kernel``),
so the tensors they read and write are uint8 codes, held as such between two integer kernels
(``Graph.as_bytes``) and given a float32 view only where a float op reads them.  A fixed-point
convolution (bernoulli2, int8 codes moved to bytes) runs on ``QLinearConv`` where
``fused_fixed.kernel_form`` proves float32 multipliers exact over every reachable accumulator.

A fully connected layer with one multiplier runs as ``com.microsoft.QGemm`` (``fused_qgemm.matmul``).
A power-of-two convolution (a DPU's ``shift`` epilogue, int8 codes) runs on ``QLinearConv`` too:
its int8 codes travel as uint8 bytes moved by their lowest code, and nudged multipliers make
MLAS' ties-to-even rounding the target's tie rule (:func:`_shift_form`).

That these kernels compute exactly what ``numerics`` defines is a property of the CPU: on x86-64
without VNNI, MLAS' uint8 x int8 kernels add pairs of products in saturating 16-bit lanes (its
uint8 x uint8 kernels do not), and on other architectures ``QLinearAdd`` may round its sum
differently.  ``ort_kernels.weight_form`` and ``ort_kernels.exact`` therefore run each kernel once
per process on codes at the extremes and compare them with ``numerics``; where they differ the
fused runs keep their float forms.  Where the uint8 x int8 kernels saturate, a convolution whose
weights cannot overflow the lanes MLAS pairs them in (and every depthwise one, whose kernel has
no such lanes) still gets int8 weights (``ort_kernels.conv_weight_form``): exact, and faster.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .. import numerics as nm
from .. import ort_kernels, ort_verdicts
from ..ort_kernels import _ORT_REFUSALS, MS_DOMAIN, probe_session, weight_arrays
from . import fused_fixed, fused_pairs
from .epilogues import out_type
from .fused_graph import Graph, channel, clamp_bounds, code_range, code_reach, code_span

def _uint8(*dtypes) -> bool:
    return all(np.dtype(d) == np.uint8 for d in dtypes)


def conv(g: Graph, op: dict, x: str, pads: list[int], blobs: dict) -> bool:
    """Write convolution ``op`` (input tensor ``x``, zero padding ``pads``) as ``QLinearConv`` on
    8-bit codes (uint8 activations, int8 weights) when its arithmetic is that kernel's; say
    whether it did.

    Two epilogues are that kernel's: a float-scale group's ``scale`` (MLAS' own output stage) and
    a power-of-two ``shift`` (:func:`_shift_form`).  Int8 codes travel as uint8 bytes moved into
    0..255 (``Graph.byte_offsets``), the input's offset taken out by the kernel's zero point."""
    a = op["attrs"]
    if len(a["out_shape"]) != 4 or list(g.tensors[op["inputs"][0]]["shape"]) != list(a["in_shape"]):
        return False
    w = int8_weights(blobs["w"])
    if w is None:
        return False
    return _qlinear_conv(g, op, x, w, blobs["b"], lambda v: v, lambda y: y, shift_bytes=heavy(w, a.get("group", 1)),
                         pads=pads, strides=a["strides"], dilations=a["dilations"], group=a["group"],
                         kernel_shape=list(w.shape[2:]))


#: Taps per output (input channels of a group times the kernel's size) from which a power-of-two
#: dense convolution runs on ``QLinearConv`` even between float32 tensors: its int8 GEMM then saves
#: more than the two conversions cost (PP-OCRv4 det's neck on the DPU: 3x3 convolutions of 96
#: channels, 864 taps, whose float ``Conv`` was a third of the frame; docs/compiler-runtime.md).
HEAVY_TAPS = 256


def heavy(w: np.ndarray, group: int) -> bool:
    """Whether a convolution with int8 codes ``w`` (output channels first) and ``group`` is dense
    and has :data:`HEAVY_TAPS` taps per output or more."""
    return group == 1 and int(np.prod(w.shape[1:])) >= HEAVY_TAPS


def int8_weights(blob: np.ndarray) -> np.ndarray | None:
    """The weight codes as int16 (exact, a quarter of int64's bytes), or ``None`` where they
    are not int8 codes."""
    w = np.asarray(blob)
    if w.dtype.kind not in "iu" or w.min(initial=0) < -128 or w.max(initial=0) > 127:
        return None
    return w.astype(np.int16)


def _qlinear_conv(g: Graph, op: dict, x: str, w: np.ndarray, bias: np.ndarray, to_conv: Callable[[str], str],
                  from_conv: Callable[[str], str], *, shift_bytes: bool, **node_attrs) -> bool:
    """``QLinearConv`` of manifest tensor ``x``'s bytes (``to_conv`` puts them in convolution
    layout, ``from_conv`` puts its output back) with int8 codes ``w`` (convolution layout) and
    ``node_attrs``, where :func:`_kernel_form` finds one."""
    extra = input_padding(w, node_attrs)
    if extra:
        w = np.concatenate([w, np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)], axis=1)
    form = _kernel_form(g, op, x, w, bias, shift_bytes=shift_bytes, group=node_attrs.get("group", 1))
    if form is None:
        return False
    if extra:  # the added channels hold the zero point (any code: their weights are 0, the accumulators the same)
        pads, zp = g.const([0, 0, 0, 0, 0, extra, 0, 0], np.int64), g.scalar(op["attrs"]["x_zp"] - form["k_in"], np.uint8)

        def to_conv(v: str, inner: Callable[[str], str] = to_conv) -> str:
            return g.node("Pad", [inner(v), pads, zp])
    _emit(g, op, x, form, "QLinearConv", to_conv, from_conv, **node_attrs)
    return True


def input_padding(w: np.ndarray, node_attrs: dict) -> int:
    """Zero-weight input channels to add to a dense channels-first ``QLinearConv`` with weights
    ``w`` (out, in, rows, columns): up to :data:`CHANNEL_STEP` where it has fewer (an image's 3
    channels, MNIST's 1): ONNX Runtime's MLAS runs 1-3 input channels slower than a ``Pad`` to 4 and the
    kernel (measurements: ``benchmarks/results/runtime_yolo_cpu_s31.md``)."""
    if node_attrs.get("group", 1) != 1 or "channels_last" in node_attrs or w.ndim != 4:
        return 0
    return max(CHANNEL_STEP - w.shape[1], 0)


def _kernel_form(g: Graph, op: dict, x: str, w: np.ndarray, bias: np.ndarray, *, shift_bytes: bool, group: int = 1,
                 weight_form: Callable[[np.ndarray, int], str | None] = ort_kernels.conv_weight_form) -> dict | None:
    """The constants with which an MLAS integer kernel (``QLinearConv``, ``QGemm``: an int32
    accumulator times a float32 multiplier per output channel, ties to even) computes ``op``'s
    codes from manifest tensor ``x`` and int8 codes ``w`` (output channels first), or ``None``.

    A ``shift`` epilogue takes this form only where ``x`` is held as bytes or a reader wants
    bytes, or ``shift_bytes``: between float32 tensors the float convolution saves two
    conversions."""
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    if ep.get("chain") or np.ndim(ep["zp"]) or np.ndim(a["x_zp"]):
        return None
    in_dtype = np.dtype(a.get("in_dtype", g.tensors[x]["dtype"]))
    if in_dtype != np.dtype(g.tensors[x]["dtype"]) or in_dtype.itemsize != 1 or np.dtype(ep["dtype"]).itemsize != 1:
        return None
    bias = np.asarray(bias, np.int64).reshape(-1)
    reach = code_reach(in_dtype, a["x_zp"])
    if not 0 <= a["x_zp"] - code_range(in_dtype)[0] <= 255 or not 0 <= ep["zp"] - code_range(ep["dtype"])[0] <= 255:
        return None  # zero points outside their type (a damaged manifest): the float forms judge it
    if ep["mode"] == "scale":
        if not _uint8(in_dtype, ep["dtype"]) or np.any(np.asarray(a["lshift"]) != 0) \
                or nm.RoundMode(ep["round"]) != nm.RoundMode.HALF_EVEN:
            return None
        mult = np.broadcast_to(np.asarray(ep["multiplier"], np.float32).reshape(-1), (w.shape[0],))
        parts = _int32_accumulators(w, bias, mult, ep, reach)
        k_in, (k_out, span) = 0, (0, 255)
    elif ep["mode"] in ("shift", "fixed"):
        if ep["mode"] == "shift" and x not in g.bytes and not _bytes_readers(g, op["outputs"][0]) and not shift_bytes:
            return None  # float32 in and out: the float convolution saves two conversions
        held = g.byte_offsets.get(x, 0) if x in g.bytes else None
        k_in = held if held is not None and 0 <= a["x_zp"] - held <= 255 else code_range(in_dtype)[0]
        lo, hi = clamp_bounds(ep)
        if ep["mode"] == "shift":
            parts = _shift_form(w, bias, a, ep, reach)
        else:  # the zero point as the kernel's, moved by ``lo``
            fits = not np.any(np.asarray(a["lshift"]) != 0) and 0 <= ep["zp"] - lo <= 255 and hi - lo <= 255
            if not fits:
                parts = None
            elif "m32" in ep:  # multipliers its caller proved, fix channels too
                parts = w, bias, ep["m32"]  # (``fused_fixconv.dense_fixed``, ``depthwise_fixed``)
            else:
                parts = fused_fixed.kernel_form(w, bias, ep, code_span(g, x, in_dtype, a["x_zp"]))
        k_out, span = lo, hi - lo
        mult = parts[2] if parts is not None else None
    else:
        return None
    if parts is None:
        return None
    form = weight_form(parts[0], group)
    if form is None:
        return None
    return {"w": parts[0], "bias": parts[1], "mult": mult, "form": form, "k_in": k_in, "k_out": k_out, "span": span}


def _emit(g: Graph, op: dict, x: str, form: dict, op_type: str, to_kernel: Callable[[str], str],
          from_kernel: Callable[[str], str], **node_attrs) -> None:
    """Kernel ``op_type`` (``QLinearConv`` or ``QGemm``) with :func:`_kernel_form`'s ``form`` on
    ``x``'s bytes, its fused clamp after it, its codes put back as ``op``'s output bytes."""
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    k_in, k_out, span = form["k_in"], form["k_out"], form["span"]
    w, mult, bias = form["w"], form["mult"], form["bias"]
    cout = w.shape[0]
    pad = (padded_channels(cout) - cout if op_type == "QLinearConv" and node_attrs.get("group", 1) == 1
           and "channels_last" not in node_attrs and int(np.prod(a["out_shape"][2:])) >= PAD_PIXELS else 0)
    if pad:  # zero channels up to the kernel's step, sliced off after it
        w = np.concatenate([w, np.zeros((pad, *w.shape[1:]), w.dtype)])
        mult = np.concatenate([np.broadcast_to(np.asarray(mult, np.float32).reshape(-1), (cout,)),
                               np.ones(pad, np.float32)])
        bias = np.concatenate([np.asarray(bias).reshape(-1), np.zeros(pad, np.int64)])
    ins = [to_kernel(g.as_bytes(x, k_in)), g.scalar(1.0), g.scalar(a["x_zp"] - k_in, np.uint8),
           *_weights(g, w, mult, form["form"], per_channel=op_type != "QGemm")]
    out = [g.scalar(1.0), g.scalar(0 if ep["mode"] == "shift" else ep["zp"] - k_out, np.uint8)]
    bias = g.const(bias, np.int32)
    y = g.node(op_type, ins + ([bias] + out if op_type == "QGemm" else out + [bias]), **node_attrs)
    if pad:
        y = g.node("Slice", [y, g.const([0], np.int64), g.const([cout], np.int64), g.const([1], np.int64)])
    if ep["mode"] == "scale":
        y = _clamped(g, y, ep)
    elif span < 255:
        y = g.node("Clip", [y, g.scalar(0, np.uint8), g.scalar(span, np.uint8)])
    g.put_bytes(op["outputs"][0], from_kernel(y), k_out)


#: ``QLinearConv``'s output channels come in steps of this many: MLAS' int8 kernel (AVX-512 VNNI)
#: takes about 1.6x as long for a count that is not a multiple of 4 as for the next multiple (96 -> N
#: 3x3 at 80x80: 24 and 28 channels 1.05 ms, 25-27 2.0; 52-64 1.9, 54 2.9), so a layer's channels are
#: padded with zero ones to such a count and sliced off after (54 -> 56 or 64 and a ``Slice``: 1.9 ms).
#: PP-OCRv4 det on bernoulli2: its neck's layers with fix channels, 54 of them.
CHANNEL_STEP = 4
#: The fewest output channels ``QLinearConv`` runs (padded as for :data:`CHANNEL_STEP`): 12 and 14
#: channels took 1.1 and 1.4 ms where 16 took 0.6.
CHANNEL_BLOCK = 16
#: Output pixels from which a convolution's channels are padded (:func:`padded_channels`): below,
#: the ``Slice`` costs about what the kernel saves.
PAD_PIXELS = 256


def padded_channels(cout: int) -> int:
    """The output channels ``QLinearConv`` runs for a dense layer of ``cout``: a multiple of
    :data:`CHANNEL_STEP`, at least :data:`CHANNEL_BLOCK`; one channel as it is (MLAS runs it as
    fast as 16, and the ``Slice`` is saved: YOLOv8n's DFL convolution, 16 -> 1 channels on 4 x 2,100
    pixels, 102 against 118 us with its slice; two or three channels are padded: 158 against 113)."""
    return cout if cout == 1 else max(CHANNEL_BLOCK, cout + (-cout % CHANNEL_STEP))


#: Ops that read 8-bit codes as bytes without a float32 view (integer kernels, data movement, tables).
_BYTES_MOVES = {"concat", "reshape", "transpose", "shuffle", "slice", "split", "maxpool", "gather", "pad"}


def _bytes_readers(g: Graph, tensor: str, depth: int = 4) -> bool:
    """Whether some reader of ``tensor`` takes it as bytes: a convolution whose epilogue an
    integer kernel computes, a lookup table, or data movement that passes it on to such a reader."""
    for op in g.readers.get(tensor, []):
        ep = op["attrs"].get("epilogue") or {}
        if op["op"] == "conv" and ep.get("mode") in ("shift", "scale", "fixed") and not ep.get("chain"):
            return True
        if op["op"] == "lut":
            return True
        if op["op"] in _BYTES_MOVES and depth and any(_bytes_readers(g, t, depth - 1) for t in op["outputs"]):
            return True
    return False


def _shift_form(w: np.ndarray, bias: np.ndarray, a: dict, ep: dict,
                reach: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Weights, int32 bias and float32 multipliers with which ``QLinearConv`` (output zero point
    0) gives a power-of-two convolution's codes minus their lowest, ``lo`` (its clamp).

    The kernel's ``(acc << lshift) + bias``, shifted right by ``shift`` with the target's tie
    rule, is ``(acc + bias >> lshift)`` shifted by ``shift - lshift`` where the bias is a multiple
    of ``2^lshift``; adding ``(zp - lo) << shift`` to the bias moves the codes kept to 0..255,
    where ``numerics.shift_as_float32_multiplier`` makes MLAS' rounding the tie rule.  ``None``
    where that does not hold or an accumulator could leave int32."""
    cout = w.shape[0]
    lshift = channel(a["lshift"], cout).astype(np.int64)
    shift = channel(ep["shift"], cout).astype(np.int64) - lshift
    if np.any(lshift < 0) or np.any(bias % (np.int64(1) << lshift) != 0) or np.any(shift < -31):
        return None
    mult = nm.shift_as_float32_multiplier(shift, ep["round"])
    lo = clamp_bounds(ep)[0]
    move = int(ep["zp"]) - lo
    if mult is None or np.any((shift < 0) & (move % (np.int64(1) << np.maximum(-shift, 0)) != 0)):
        return None
    bias = (bias >> lshift) + np.where(shift >= 0, move << np.maximum(shift, 0), move >> np.maximum(-shift, 0))
    if np.any(np.abs(bias) + reach * np.abs(w).reshape(cout, -1).sum(axis=1) >= 2 ** 31):
        return None
    return w, bias, mult


def _weights(g: Graph, w: np.ndarray, mult: np.ndarray, form: str, per_channel: bool = True) -> list[str]:
    """``QLinearConv``'s weight, weight scale and weight zero point inputs for int8 codes ``w``
    and multipliers ``mult`` in ``form`` (``ort_kernels.weight_form``); scalars for all outputs
    where not ``per_channel`` (``mult`` then one value)."""
    (wq, _), (zq, _) = weight_arrays(w, form)
    if not per_channel:
        return [g.const(wq, wq.dtype), g.scalar(np.asarray(mult).reshape(-1)[0]), g.scalar(zq[0], zq.dtype)]
    return [g.const(wq, wq.dtype), g.const(mult), g.const(zq, zq.dtype)]


def _int32_accumulators(w: np.ndarray, bias: np.ndarray, mult: np.ndarray, ep: dict,
                        reach: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Weights and bias for which ``QLinearConv``'s int32 accumulator gives ``op``'s codes.

    MLAS accumulates in int32, the kernels in int64.  A channel whose accumulator could leave
    int32 is almost always a near-dead one (a tiny weight scale makes its bias huge) whose whole
    range rounds to one code: it gets no taps and a bias that ``numerics.requantize_float``
    checks gives that code.  ``None`` when some other channel could overflow."""
    cout = len(bias)
    sums = reach * np.abs(w).reshape(cout, -1).sum(axis=1)
    lo, hi = clamp_bounds(ep)
    zp = int(ep["zp"])

    def codes(acc: np.ndarray) -> np.ndarray:
        return np.clip(nm.requantize_float(acc, mult, nm.RoundMode.HALF_EVEN), lo - zp, hi - zp)

    ends = codes(bias - sums), codes(bias + sums)
    wide = np.abs(bias) + sums >= 2 ** 31
    if not np.any(wide):
        return w, bias
    if np.any(wide & (ends[0] != ends[1])):
        return None
    w, bias = w.copy(), bias.copy()
    for c in np.flatnonzero(wide):
        value = ends[0][c]
        for b in (nm.round_values(np.float64(value) / np.float64(mult[c]), nm.RoundMode.HALF_EVEN),
                  2 ** 31 - 1, -(2 ** 31 - 1)):
            b = int(np.clip(b, -(2 ** 31 - 1), 2 ** 31 - 1))
            if codes(np.full(cout, b))[c] == value:
                w[c], bias[c] = 0, b
                break
        else:
            return None
    return w, bias


def _clamped(g: Graph, y: str, ep: dict) -> str:
    """The fused Relu/Clip bounds of ``ep`` applied to uint8 codes ``y``."""
    lo, hi = clamp_bounds(ep)
    if (lo, hi) == nm.qrange(*out_type(ep)):
        return y
    return g.node("Clip", [y, g.scalar(lo, np.uint8), g.scalar(hi, np.uint8)])


def add(g: Graph, op: dict) -> bool:
    """Write ``op`` (an eltwise add with ONNX Runtime's ``QLinearAdd`` arithmetic) as that kernel
    when both operands are uint8 tensors of the output's shape and the kernel, run at load on all
    65,536 pairs of codes with the op's scales and zero points, gives ``numerics.qlinear_add``
    (:func:`_qlinear_add_matches`); say whether it did.  Elsewhere (a CPU whose kernel rounds
    otherwise) ``fused_pairs.qlinear_add_float`` writes that arithmetic as float operations."""
    if "dequant" in op["attrs"]:
        return fused_pairs.dequantized(g, op, "QLinearAdd")
    found = fused_pairs.qlinear_add_operands(g, op)
    if found is None or not ort_kernels.exact():
        return False
    names, out, (sa, za, sb, zb, sc, zc) = found
    if not _qlinear_add_matches(sa, za, sb, zb, sc, zc):
        return False
    y = g.node("QLinearAdd", [
        g.as_bytes(names[0]), g.scalar(sa), g.scalar(za, np.uint8),
        g.as_bytes(names[1]), g.scalar(sb), g.scalar(zb, np.uint8),
        g.scalar(sc), g.scalar(zc, np.uint8)], domain=MS_DOMAIN)
    g.put_bytes(out, y)
    return True


@ort_verdicts.persistent_check
def _qlinear_add_matches(sa: float, za: int, sb: float, zb: int, sc: float, zc: int) -> bool:
    """Whether ``com.microsoft.QLinearAdd`` with these float32 scales and uint8 zero points gives
    ``numerics.qlinear_add`` (saturated) on every pair of codes.  The process probe
    (``ort_kernels.exact``) tries one set of scales on random codes; a rounding that differs on
    one pair in a million (a fold or an operand order other than ``numerics``') only shows on all
    pairs with the op's own scales."""
    pa, pb = fused_pairs.ALL_PAIRS
    want = np.clip(nm.qlinear_add(pa, sa, za, pb, sb, zb, sc, zc), 0, 255)
    got = fused_pairs.on_all_pairs("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], {
        "sa": np.float32(sa), "za": np.uint8(za), "sb": np.float32(sb), "zb": np.uint8(zb),
        "sc": np.float32(sc), "zc": np.uint8(zc)})
    return np.array_equal(got, want)


def sigmoid(g: Graph, op: dict, table: np.ndarray) -> bool:
    """Write lookup-table ``op`` as ``com.microsoft.QLinearSigmoid`` on uint8 codes when that
    kernel, run at load on all 256 codes with the tensors' scales, gives exactly ``table`` (a
    sigmoid of a uint8 group: ONNX Runtime's own table); say whether it did.  Unlike a lookup
    through float32 indices it keeps the codes uint8 and ONNX Runtime's channels-last layout."""
    x, out = op["inputs"][0], op["outputs"][0]
    params = [g.tensors[t].get("quant") or {} for t in (x, out)]
    if not _uint8(g.tensors[x]["dtype"], g.tensors[out]["dtype"]) or table.size != 256 \
            or any(np.ndim(q.get("scale")) or np.ndim(q.get("zero_point")) or "scale" not in q for q in params) \
            or x not in g.bytes or not ort_kernels.exact():
        return False
    (sx, zx), (sy, zy) = ((np.float32(q["scale"]), np.uint8(q["zero_point"])) for q in params)
    if not _sigmoid_matches(float(sx), int(zx), float(sy), int(zy), np.asarray(table, np.int64).tobytes()):
        return False
    g.put_bytes(out, g.node("QLinearSigmoid", [g.as_bytes(x), g.scalar(sx), g.scalar(zx, np.uint8), g.scalar(sy),
                                               g.scalar(zy, np.uint8)], domain=MS_DOMAIN))
    g.kernel_tables[out] = (x, np.asarray(table, np.int64))
    return True


@ort_verdicts.persistent_check
def _sigmoid_matches(sx: float, zx: int, sy: float, zy: int, table: bytes) -> bool:
    """Whether ``com.microsoft.QLinearSigmoid`` with these scales and zero points gives the int64
    codes ``table`` on all 256 codes."""
    return _lookup_kernel_gives("QLinearSigmoid", {}, sx, zx, sy, zy, table)


def rescale(g: Graph, src: str, out: str, table: np.ndarray) -> bool:
    """Write the byte table ``out = table[src]`` (uint8 to uint8, ``src`` held as bytes from the
    lowest code) as ``com.microsoft.QLinearLeakyRelu`` with ``alpha`` 1 when that kernel, run at
    load on all 256 codes with the tensors' scales, gives exactly ``table``: a change of scale
    (YOLOv8n's two neck upsamplings on cpu-int8 requantise a SiLU product to the concatenation's
    scale, looked up before the copy, ``fused._gather``); say whether it did.

    Why: the kernel is ONNX Runtime's own lookup of a table it builds from its float function
    (dequantize, identity, quantize) on uint8 bytes: 12 and 19 us on YOLOv8n's [1, 256, 10, 10]
    and [1, 128, 20, 20] against about 50 us each for a table's ``Cast``, ``GatherElements`` and
    two reshapes.  ONNX Runtime's layout pass keeps a transpose before it and one after the
    upsampling's reshape (13 transposes in the frame's joined session against 9, about 25 us in
    all); the float form (``DequantizeLinear``, ``QuantizeLinear``) keeps the same four."""
    params = [g.tensors[t].get("quant") or {} for t in (src, out)]
    if not _uint8(g.tensors[src]["dtype"], g.tensors[out]["dtype"]) or np.asarray(table).size != 256 \
            or any(np.ndim(q.get("scale")) or np.ndim(q.get("zero_point")) or "scale" not in q for q in params) \
            or g.byte_offsets.get(src, 0) != 0 or not ort_kernels.exact():
        return False
    (sx, zx), (sy, zy) = ((np.float32(q["scale"]), np.uint8(q["zero_point"])) for q in params)
    # a cheap screen before the probe's session: a change of scale in numpy's float32 is within one
    # code of every entry (a table of another function is far off somewhere)
    near = np.clip(nm.round_values((np.arange(256, dtype=np.float32) - np.float32(zx)) * sx / sy,
                                   nm.RoundMode.HALF_EVEN) + int(zy), 0, 255)
    if int(np.abs(near - np.asarray(table, np.int64).reshape(-1)).max()) > 1 \
            or not _rescale_matches(float(sx), int(zx), float(sy), int(zy), np.asarray(table, np.int64).tobytes()):
        return False
    g.put_bytes(out, g.node("QLinearLeakyRelu", [g.bytes[src], g.scalar(sx), g.scalar(zx, np.uint8), g.scalar(sy),
                                                 g.scalar(zy, np.uint8)], domain=MS_DOMAIN, alpha=1.0))
    return True


@ort_verdicts.persistent_check
def _rescale_matches(sx: float, zx: int, sy: float, zy: int, table: bytes) -> bool:
    """Whether ``com.microsoft.QLinearLeakyRelu`` with ``alpha`` 1 and these scales and zero points
    gives the int64 codes ``table`` on all 256 codes."""
    return _lookup_kernel_gives("QLinearLeakyRelu", {"alpha": 1.0}, sx, zx, sy, zy, table)


def _lookup_kernel_gives(op_type: str, attrs: dict, sx: float, zx: int, sy: float, zy: int, table: bytes) -> bool:
    """Whether ONNX Runtime's table kernel ``op_type`` (``QLinearSigmoid``, ``QLinearLeakyRelu``:
    a 256-entry table built from the float function, then looked up) gives the int64 codes
    ``table`` on all 256 codes, with these scales and zero points."""
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (np.float32(sx), "sx"), (np.uint8(zx), "zx"), (np.float32(sy), "sy"), (np.uint8(zy), "zy"))]
    node = helper.make_node(op_type, ["x", "sx", "zx", "sy", "zy"], ["y"], domain=MS_DOMAIN, **attrs)
    codes = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    try:
        got = probe_session([node], [helper.make_tensor_value_info("x", TensorProto.UINT8, codes.shape)], inits).run(
            None, {"x": codes})[0]
    except _ORT_REFUSALS:  # an ONNX Runtime built without its contrib ops: not this kernel
        return False
    return np.array_equal(got.reshape(-1), np.frombuffer(table, np.int64))


def mul(g: Graph, op: dict) -> bool:
    """Write eltwise ``op`` (ONNX Runtime's ``QLinearMul`` arithmetic, the ``scale`` epilogue) as
    ``com.microsoft.QLinearMul`` on uint8 operands of the output's shape (or one of them a value
    per channel, an SE block's scale), when that kernel gives ``numerics.requantize_float`` of
    the exact product for every pair of codes (run at load on all 65,536, broadcast as the
    operands are); say whether it did."""
    a, ep = op["attrs"], op["attrs"].get("epilogue") or {}
    if "dequant" in a:
        return fused_pairs.dequantized(g, op, "QLinearMul")
    if a.get("mode") != "mul" or ep.get("mode") != "scale" or ep.get("chain") or any(a.get("align", [1])) \
            or np.ndim(ep["multiplier"]) or np.ndim(ep["zp"]) or any("const" in o for o in a["operands"]) \
            or nm.RoundMode(ep["round"]) != nm.RoundMode.HALF_EVEN:
        return False
    names, out = [op["inputs"][o["input"]] for o in a["operands"]], op["outputs"][0]
    shape = list(g.tensors[out]["shape"])
    broadcast = fused_pairs.per_channel_operand(shape, [list(g.tensors[t]["shape"]) for t in names])
    if not _uint8(ep["dtype"], *(g.tensors[t]["dtype"] for t in (*names, out))) \
            or broadcast is False or clamp_bounds(ep) != (0, 255) or not ort_kernels.exact():
        return False
    za, zb = (int(o["zp"]) for o in a["operands"])
    m, zc = np.float32(ep["multiplier"]), int(ep["zp"])
    table, k = _table_of_other(g, names)
    if not _mul_matches(float(m), za, zb, zc, broadcast, table, k):
        return False
    g.put_bytes(out, g.node("QLinearMul", [
        g.as_bytes(names[0]), g.scalar(m), g.scalar(za, np.uint8), g.as_bytes(names[1]), g.scalar(1.0),
        g.scalar(zb, np.uint8), g.scalar(1.0), g.scalar(zc, np.uint8)], domain=MS_DOMAIN))
    return True


def _table_of_other(g: Graph, names: list[str]) -> tuple[bytes, int]:
    """The int64 codes of a product's operand ``k`` for every code of the other operand, where
    operand ``k`` is a table of the other written as an integer kernel (SiLU's sigmoid:
    ``Graph.kernel_tables``), and ``k``; ``(b"", 1)`` otherwise."""
    for k in (1, 0):
        source, table = g.kernel_tables.get(names[k], (None, None))
        if source == names[1 - k] and table.size == 256:
            return table.tobytes(), k
    return b"", 1


@ort_verdicts.persistent_check
def _mul_matches(m: float, za: int, zb: int, zc: int, broadcast: int | None, table: bytes = b"",
                 k: int = 1) -> bool:
    """Whether ``com.microsoft.QLinearMul`` (product scale ``m``, these zero points) gives
    ``numerics.requantize_float`` of the exact product on every pair of codes the product can
    meet, broadcast as ``broadcast`` says (``None``: operands of one shape; ``k``: operand ``k``
    one value per channel).  With ``table`` (int64 codes, operand ``k`` a table of the other:
    SiLU's product of a tensor and its sigmoid) only the 256 pairs ``(x, table[x])`` occur, so
    those are the pairs checked: a tie elsewhere among the 65,536 (where ``QLinearMul`` adds the
    zero point before rounding) cannot reach the output."""
    if table:
        codes = np.arange(256).reshape(1, 1, 16, 16)
        other = np.frombuffer(table, np.int64).reshape(codes.shape)
        pairs = (codes, other) if k == 1 else (other, codes)
    else:
        pairs = fused_pairs.ALL_PAIRS if broadcast is None else fused_pairs.broadcast_pairs(broadcast)
    pa, pb = pairs
    want = np.clip(nm.requantize_float((pa - za) * (pb - zb), np.float32(m), nm.RoundMode.HALF_EVEN) + zc, 0, 255)
    got = fused_pairs.on_all_pairs("QLinearMul", ["a", "sa", "za", "b", "one", "zb", "one", "zc"], {
        "sa": np.float32(m), "za": np.uint8(za), "one": np.float32(1), "zb": np.uint8(zb), "zc": np.uint8(zc)}, pairs)
    return np.array_equal(got, want)


def quantize(g: Graph, op: dict) -> bool:
    """Write quantize step ``op`` (a float32 model input to uint8 codes, one scale and zero point,
    ties to even) as ONNX ``QuantizeLinear`` (:func:`quantize_form`); say whether it did.

    Not to int8 codes: those keep the float form, whose float32 codes the first convolution reads
    as they are; bytes would put that layer (3 input channels) on ``QLinearConv``, slower (PP-OCRv4
    det 320 on bernoulli2, one process against session 29's code: 1.06x a frame with the int8
    input on ``QuantizeLinear``, 1.13x with its float form kept)."""
    a = op["attrs"]
    x, out = op["inputs"][0], op["outputs"][0]
    if a.get("narrow") or (a["bits"], a["signed"]) != (8, False) or np.dtype(g.tensors[x]["dtype"]) != np.float32 \
            or np.dtype(g.tensors[out]["dtype"]) != np.uint8:
        return False
    form = quantize_form(a["scale"], a["zp"], a["round"], a["bits"], a["signed"])
    if form is None:
        return False
    put_quantized(g, out, g.read(x), form)
    return True


def quantize_form(scale, zp, round_mode, bits: int, signed: bool) -> tuple[np.float32, int, int] | None:
    """``(scale, byte zero point, k)`` where ONNX ``QuantizeLinear`` to uint8 with these gives
    ``numerics.quantize``'s 8-bit codes (one scale and zero point, ties to even, the type's full
    range) minus ``k`` on the values :func:`_quantize_matches` tries; else ``None``.  An int8
    code is its byte minus 128 (``k`` = -128, the zero point moved by 128), as the integer
    kernels hold them (``Graph.bytes``).

    One node instead of the division, rounding, clamp, zero point and cast of the float form
    (``fused_graph.quantize_value``), and its codes come out as the bytes an integer kernel or
    table reads.  MLAS divides by the scale in float32, clamps to the codes' range minus the zero
    point, converts with the processor's ties-to-even rounding and adds the zero point:
    ``numerics.quantize``'s operations, the clamp and the rounding swapped, which commute since
    the bounds are integers, and shifting the codes by 128 commutes with both.  The check
    confirms that this ONNX Runtime computes it so (a reciprocal multiplied instead of the
    division would show next to the ties)."""
    if bits != 8 or np.ndim(scale) or np.ndim(zp) or nm.RoundMode(round_mode) != nm.ONNX_ROUND_MODE:
        return None
    k = nm.qrange(8, signed)[0]
    scale, moved = np.float32(scale), int(zp) - k
    if not (np.isfinite(scale) and scale > 0 and 0 <= moved <= 255) or not _quantize_matches(float(scale), moved):
        return None
    return scale, moved, k


def put_quantized(g: Graph, out: str, v: str, form: tuple[np.float32, int, int]) -> None:
    """Hold ``out`` as the bytes of ``QuantizeLinear`` of float32 ``v`` with :func:`quantize_form`'s ``form``."""
    scale, moved, k = form
    g.put_bytes(out, g.node("QuantizeLinear", [v, g.scalar(scale), g.scalar(moved, np.uint8)]), k)


@ort_verdicts.persistent_check
def _quantize_matches(scale: float, zp: int) -> bool:
    """Whether ONNX Runtime's ``QuantizeLinear`` (float32 to uint8, this scale and zero point)
    equals ``numerics.quantize`` (ties to even) on every value of :func:`quantize_probe_values`,
    run as one tensor (MLAS' vector loop) and its ties three at a time (the scalar loop that
    finishes a tensor whose length is not a multiple of the vector width)."""
    x = quantize_probe_values(np.float32(scale), zp)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    inits = [numpy_helper.from_array(np.float32(scale), "s"), numpy_helper.from_array(np.uint8(zp), "z")]
    sess = probe_session([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])], inits)
    with np.errstate(over="ignore", invalid="ignore"):  # the extremes overflow the division, as they do in ORT
        want = nm.quantize(x, np.float32(scale), zp, bits=8, signed=False, round_mode=nm.ONNX_ROUND_MODE)
    if not np.array_equal(sess.run(None, {"x": x})[0], want):
        return False
    ties = _PROBE_CODES.size
    return all(np.array_equal(sess.run(None, {"x": x[k:k + 3]})[0], want[k:k + 3]) for k in range(0, ties, 3))


#: The codes whose ties and values :func:`quantize_probe_values` tries: 0..255 and two beyond each end.
_PROBE_CODES = np.arange(-2, 258, dtype=np.float64)


def quantize_probe_values(scale: np.float32, zp: int) -> np.ndarray:
    """Float32 inputs where a quantize step's rounding is decided: for every code of 0..255 and
    two beyond each end, the float32 values nearest the tie ``(k - zp + 1/2) * scale`` and the
    code itself ``(k - zp) * scale``, each with its four float32 neighbours on either side; the
    extremes (zeros, infinities, the largest and the smallest normal and subnormal values of each
    sign) and 4,099 spread values; the ties come first."""
    k = _PROBE_CODES - zp
    centres = np.concatenate([(k + 0.5) * np.float64(scale), k * np.float64(scale)]).astype(np.float32)
    near = [centres]
    for direction in (np.float32(np.inf), np.float32(-np.inf)):
        v = centres
        for _ in range(4):
            v = np.nextafter(v, direction)
            near.append(v)
    info = np.finfo(np.float32)
    extremes = np.array([0.0, -0.0, np.inf, -np.inf, info.max, -info.max, info.tiny, -info.tiny,
                         info.smallest_subnormal, -info.smallest_subnormal], np.float32)
    spread = (np.random.default_rng(0).standard_normal(4099) * 128 * np.float64(scale)).astype(np.float32)
    return np.concatenate([*near, extremes, spread]).astype(np.float32)


def dequantize(g: Graph, op: dict) -> bool:
    """Write dequantize step ``op`` of a tensor held as uint8 bytes (one scale and zero point) as
    ONNX ``DequantizeLinear`` when that kernel gives ``numerics.dequantize`` on all 256 codes; say
    whether it did.  One node instead of the cast to float32, the zero point and the product."""
    a = op["attrs"]
    x, out = op["inputs"][0], op["outputs"][0]
    if np.ndim(a["scale"]) or np.ndim(a["zp"]) or np.dtype(g.tensors[x]["dtype"]) != np.uint8 \
            or x not in g.bytes or g.byte_offsets.get(x, 0) or np.dtype(g.tensors[out]["dtype"]) != np.float32:
        return False
    scale, zp = np.float32(a["scale"]), int(a["zp"])
    if not 0 <= zp <= 255 or not _dequantize_matches(float(scale), zp):
        return False
    g.put(out, g.node("DequantizeLinear", [g.as_bytes(x), g.scalar(scale), g.scalar(zp, np.uint8)]))
    return True


@ort_verdicts.persistent_check
def _dequantize_matches(scale: float, zp: int) -> bool:
    """Whether ONNX Runtime's ``DequantizeLinear`` (uint8, this scale and zero point) equals
    ``numerics.dequantize`` on every code, bit for bit (signed zeros and non-finite products
    included)."""
    codes = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"])
    inits = [numpy_helper.from_array(np.float32(scale), "s"), numpy_helper.from_array(np.uint8(zp), "z")]
    got = probe_session([node], [helper.make_tensor_value_info("x", TensorProto.UINT8, codes.shape)], inits,
                        TensorProto.FLOAT).run(None, {"x": codes})[0]
    want = nm.dequantize(codes, np.float32(scale), zp)
    return got.dtype == want.dtype and np.array_equal(got.view(np.uint32), want.view(np.uint32))


def concat(g: Graph, op: dict, blobs: dict) -> bool:
    """Write concatenation ``op`` whose parts requantise (a table per part: a model quantized
    elsewhere, its inputs on scales of their own) as ``com.microsoft.QLinearConcat`` on uint8
    codes, when that kernel, run at load on all 256 codes of each part with the part's and the
    output's scales and zero points, gives exactly the part's table (the codes themselves for a
    part without one); say whether it did.  The float forms cannot write such a concatenation,
    whose op then runs as its kernel between two fused runs."""
    a, out = op["attrs"], op["outputs"][0]
    parts = a["parts"]
    if any("const" in p for p in parts) or not any("table" in p for p in parts):
        return False
    names = [op["inputs"][p["input"]] for p in parts]
    params = [g.tensors[t].get("quant") or {} for t in (*names, out)]
    if not _uint8(a["out_dtype"], *(g.tensors[t]["dtype"] for t in (*names, out))) or not ort_kernels.exact() \
            or any("scale" not in q or np.ndim(q["scale"]) or np.ndim(q.get("zero_point", 0)) for q in params):
        return False
    *scales, (sy, zy) = [(float(np.float32(q["scale"])), int(q.get("zero_point", 0))) for q in params]
    identity = np.arange(256, dtype=np.int64)
    for p, (sx, zx) in zip(parts, scales):
        table = np.asarray(blobs[p["table"]], np.int64).reshape(-1) if "table" in p else identity
        if p["qmin"] != 0 or table.size != 256 or not all(0 <= z <= 255 for z in (zx, zy)) \
                or not _concat_matches(sx, zx, sy, zy, table.tobytes()):
            return False
    ins = [g.scalar(sy), g.scalar(zy, np.uint8)]
    for t, (sx, zx) in zip(names, scales):
        ins += [g.as_bytes(t), g.scalar(sx), g.scalar(zx, np.uint8)]
    g.put_bytes(out, g.node("QLinearConcat", ins, axis=a["axis"], domain=MS_DOMAIN))
    return True


@ort_verdicts.persistent_check
def _concat_matches(sx: float, zx: int, sy: float, zy: int, table: bytes) -> bool:
    """Whether ``com.microsoft.QLinearConcat`` gives the int64 codes ``table`` on all 256 codes of
    a part with scale ``sx`` and zero point ``zx`` (output: ``sy``, ``zy``), concatenated with a
    part on the output's scale (its codes copied).  ONNX Runtime copies a part whose scale and
    zero point are the output's and looks the others up in a table of its own (a float32
    dequantize and quantize step), part by part, so one part's codes say what it does with that
    part in any concatenation."""
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (np.float32(sx), "sx"), (np.uint8(zx), "zx"), (np.float32(sy), "sy"), (np.uint8(zy), "zy"))]
    node = helper.make_node("QLinearConcat", ["sy", "zy", "x", "sx", "zx", "x", "sy", "zy"], ["y"],
                            domain=MS_DOMAIN, axis=1)
    codes = np.arange(256, dtype=np.uint8).reshape(1, 256)
    got = probe_session([node], [helper.make_tensor_value_info("x", TensorProto.UINT8, codes.shape)], inits).run(
        None, {"x": codes})[0]
    return np.array_equal(got[0, :256], np.frombuffer(table, np.int64)) and np.array_equal(got[0, 256:], codes[0])
