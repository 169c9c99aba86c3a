"""Windowed average pools of ONNX Runtime's arithmetic as ``com.microsoft.QLinearAveragePool`` in a fused run.

On float-scale targets the lowering gives an ``AveragePool`` that ONNX Runtime fuses into its integer
kernel the same arithmetic (``attrs.qlinear == "window"``, ``kernels._qlinear_avgpool``): each code
dequantized to float32, the window summed in float32 row by row, divided by the float32 count, then
``numerics.quantize_pooled``.  A sequential float32 sum is not a graph of exact operations (ONNX
Runtime's ``ReduceSum`` or ``AveragePool`` may add in another order), so ``fused._global_avgpool``
refused it and the pool ran as its numpy kernel between two fused runs: EfficientFormer's 3x3
stride-1 token mixer on cpu-int8 (99 us in numpy between runs of 22 and 43 us) and its mean over the
tokens before the head (a [16, 1] window), each a frame's seam.  ONNX Runtime's own kernel is that
arithmetic, so the pool is written as the kernel itself where a check at load shows that it gives
the op's kernel's codes (:func:`_kernel_matches`); elsewhere the kernel path stays.
"""

from __future__ import annotations

import json

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .. import numerics as nm
from .. import ort_kernels, ort_verdicts
from ..ort_kernels import MS_DOMAIN, probe_session
from . import fused_qlinear
from .epilogues import make_float_finish, out_type
from .fused_graph import Graph, NotFusable, centred_clip, code_range
from .kernels import KERNELS, _count_maps

#: Elements of the check's test tensor beyond its 256 one-code channels (random codes)
CHECK_ELEMENTS = 1 << 20
#: The most sums :func:`rounded_mean` checks (every sum a global average's codes can make; PP-OCR
#: cls's largest, 256 codes x 24 x 48 pixels: 294,913), a few milliseconds per candidate form; and
#: the sums it checks at a time, so that its arrays stay a few hundred KiB (a load's peak memory).
MEAN_SUMS = 1 << 21
MEAN_CHUNK = 1 << 15


def rounded_mean(g: Graph, op: dict, sums: str, count: int) -> bool:
    """Write global average ``op``'s codes from ``sums`` (the exact float32 sum of its ``count``
    codes minus the zero point, per channel) as one rounding of ``(sums + h) * m`` (or ``/ d``),
    saturated only where some sum needs it, where that gives the kernel's codes for every sum the
    input's codes can make (``kernels.prepare_avgpool``: ``float32(sum) * acc_scale / count``, then
    ``numerics.quantize``); say whether it did.

    Why: the kernel's arithmetic written out is a ``Mul``, a ``Div`` and, for a DPU's half-up
    rounding, ``Div``, ``Floor``, ``Mul``, ``Ceil`` and ``Clip`` (``fused_graph.round_float``): seven
    nodes on a ``[1, C, 1, 1]`` tensor, each costing ONNX Runtime's fixed per-node time and no
    arithmetic to speak of (PP-OCR cls on B4096: ten SE pools, 70 of its 476 nodes); this is two to
    four.  Exact: the sums are the integers of a range known from the codes, and every one of them
    is tried here in numpy, whose float32 sum, product, quotient and ``round`` (half to even),
    ``floor`` and ``ceil`` are the IEEE operations of ONNX Runtime's ``Add``, ``Mul``, ``Div``,
    ``Round``, ``Floor`` and ``Ceil``; forms are tried in :data:`MEAN_FORMS`' order and the first
    that gives every sum's code is written (none: the long form stays).  Not where ONNX Runtime's
    ``QuantizeLinear`` computes the quantize step (``fused_qlinear.quantize_form``; bernoulli2's SE
    pools): that is one node too, and its output is the bytes the next integer kernel reads."""
    ep, a, src = op["attrs"]["epilogue"], op["attrs"], op["inputs"][0]
    if fused_qlinear.quantize_form(ep["scale"], ep["zp"], ep["round"], *out_type(ep)) is not None:
        return False  # ``QuantizeLinear`` computes the step: one node, and it writes the bytes readers want
    lo_q, hi_q = code_range(g.tensors[src]["dtype"])
    first, last = (lo_q - int(a["x_zp"])) * count, (hi_q - int(a["x_zp"])) * count
    if last - first + 1 > MEAN_SUMS:
        return False
    acc_scale, zp, finish = np.float32(ep["acc_scale"]), int(ep["zp"]), make_float_finish(ep)
    lo, hi = nm.qrange(*out_type(ep))
    d = count * float(np.float32(ep["scale"])) / float(acc_scale)  # sum / d is the code before rounding
    m = np.float32(1 / d)
    scalings = [("Mul", c) for c in (m, np.nextafter(m, np.float32(np.inf)), np.nextafter(m, np.float32(-np.inf)))]
    scalings.append(("Div", np.float32(d)))

    def codes(h: np.float32, scaling: str, c: np.float32, rounding: str, start: int) -> tuple[bool, float, float]:
        """Whether the form gives the kernel's code for the sums ``start..`` (one chunk), and its
        least and greatest value there before saturation."""
        s = np.arange(start, min(start + MEAN_CHUNK, last + 1), dtype=np.float32)  # integers below 2^24: exact
        want = finish((s * acc_scale) / np.float32(count)).astype(np.int32) - zp
        t = s + h if h else s
        y = _ROUNDINGS[rounding](t * c if scaling == "Mul" else t / c)
        return np.array_equal(np.clip(y, lo - zp, hi - zp), want), float(y.min()), float(y.max())

    for rounding, half in MEAN_FORMS:
        h = np.float32(half * d)
        for scaling, c in scalings:
            checked = []
            for start in range(first, last + 1, MEAN_CHUNK):
                checked.append(codes(h, scaling, c, rounding, start))
                if not checked[-1][0]:
                    break
            if not checked[-1][0]:
                continue
            v = g.node(rounding, [g.node(scaling, [g.node("Add", [sums, g.const(h)]) if h else sums, g.const(c)])])
            if min(k[1] for k in checked) >= lo - zp and max(k[2] for k in checked) <= hi - zp:
                g.put(op["outputs"][0], v, zp)  # no sum reaches a bound: no saturation
            else:
                g.put(op["outputs"][0], *centred_clip(g, v, zp, lo, hi, np.float32))
            return True
    return False


#: :func:`rounded_mean`'s forms, in order: the rounding op and the half step ``h`` (in units of the
#: divisor ``d``) added to the sum before it: half to even, half up, half down.
MEAN_FORMS = (("Round", 0.0), ("Floor", 0.5), ("Ceil", -0.5))
_ROUNDINGS = {"Round": lambda v: nm.round_values(v, nm.ONNX_ROUND_MODE), "Floor": np.floor, "Ceil": np.ceil}


def qlinear_window(g: Graph, op: dict) -> bool:
    """Write avgpool ``op`` of ONNX Runtime's windowed ``QLinearAveragePool`` arithmetic as that kernel
    on its input's bytes (int8 codes moved by 128, with the zero point) into uint8 output codes,
    where :func:`_kernel_matches` passes for its constants and input size; say whether it did.

    Why only these forms: the pads must be the real ones (no ceil-mode extension, whose counts
    the kernel and ONNX Runtime would take otherwise), no dilation (the contrib op has none), and
    a uint8 output (an int8 one would need the zero point moved by 128 before a float32 rounding,
    which is not the same sum)."""
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    src, out = op["inputs"][0], op["outputs"][0]
    shape = list(g.tensors[src]["shape"])
    dtype = np.dtype(g.tensors[src]["dtype"])
    if a.get("qlinear") != "window" or ep.get("chain") or op["blobs"] or len(shape) != 4 \
            or out_type(ep) != (8, False) or dtype.itemsize != 1 or dtype.kind not in "iu" \
            or any(np.ndim(v) for v in (ep["acc_scale"], ep["scale"], ep["zp"], a["x_zp"])) \
            or list(a["pads"]) != list(a.get("real_pads", a["pads"])) or any(d != 1 for d in a["dilations"]) \
            or not ort_kernels.exact():
        return False
    low = nm.qrange(8, dtype.kind == "i")[0]  # the bytes hold codes minus this
    zx = int(a["x_zp"]) - low
    if not 0 <= zx <= 255 or not 0 <= int(ep["zp"]) <= 255:
        return False
    keys = ("kernel", "strides", "pads", "real_pads", "dilations", "count_include_pad", "out_shape", "x_zp", "qlinear")
    attrs = json.dumps({**{k: a[k] for k in keys if k in a}, "epilogue": ep}, sort_keys=True,
                       default=lambda v: np.asarray(v).tolist())
    if not _kernel_matches(attrs, shape[2], shape[3], dtype.str):
        return False
    y = g.node("QLinearAveragePool", [g.as_bytes(src, low), *_constants(g, a, zx)], domain=MS_DOMAIN,
               **_node_attrs(a, 0))
    g.put_bytes(out, y)
    return True


def window_sums(g: Graph, op: dict) -> tuple[str, str] | None:
    """Float-mode avgpool ``op``'s exact sums of ``q - zp`` per window and its float32 counts (graph
    tensors), where its windows overlap or are padded; None where they tile the map (one reduction,
    ``fused._code_sums``).  The sums are a depthwise ``Conv`` of ones over the centred codes with the
    op's padding (zeros, as the kernel pads ``q - zp``), exact as every partial sum is an integer
    below 2^24 (bounded by the caller); the counts are the kernel's own map (``kernels._count_maps``,
    ``count_include_pad`` and ceil-mode pads).

    Why: EfficientFormer's token mixer (3x3, stride 1, pad 1, ``count_include_pad=0``) on bernoulli2
    and the DPU targets ran as its numpy kernel between two fused runs; on bernoulli2 the rest of the
    frame is one joined call."""
    a = op["attrs"]
    src = op["inputs"][0]
    n, c, h, w = g.tensors[src]["shape"]
    window, strides = [int(k) for k in a["kernel"]], [int(s) for s in a["strides"]]
    dil, pads = [int(d) for d in a.get("dilations", [1, 1])], [int(p) for p in a["pads"]]
    axes = list(zip(a["out_shape"][2:], window, strides, (h, w)))
    if not any(pads) and dil == [1, 1] and all(o * k == size and (o == 1 or s == k) for o, k, s, size in axes):
        return None
    out = [(size + pads[i] + pads[i + 2] - dil[i] * (k - 1) - 1) // s + 1 for i, (_, k, s, size) in enumerate(axes)]
    if a.get("qlinear") or out != list(a["out_shape"][2:]):
        raise NotFusable("pooling windows")
    sums = g.node("Conv", [g.centered(src, int(a["x_zp"])), g.const(np.ones((c, 1, *window), np.float32))],
                  group=c, kernel_shape=window, strides=strides, pads=pads, dilations=dil)
    return sums, g.const(_count_maps(a)(h, w))


def _constants(g: Graph, a: dict, zx: int) -> list[str]:
    """The kernel's scale and zero point inputs (float32 scales, uint8 zero points)."""
    ep = a["epilogue"]
    return [g.scalar(np.float32(ep["acc_scale"])), g.scalar(zx, np.uint8), g.scalar(np.float32(ep["scale"])),
            g.scalar(int(ep["zp"]), np.uint8)]


def _node_attrs(a: dict, channels_last: int) -> dict:
    return {"kernel_shape": [int(k) for k in a["kernel"]], "strides": [int(s) for s in a["strides"]],
            "pads": [int(p) for p in a["pads"]], "count_include_pad": int(a["count_include_pad"]),
            "channels_last": channels_last}


@ort_verdicts.persistent_check
def _kernel_matches(attrs: str, h: int, w: int, dtype: str) -> bool:
    """Whether ``QLinearAveragePool``, channels-first and channels-last (ONNX Runtime's layout pass
    may turn a fused run's node into either), gives the op's own kernel's codes
    (``kernels.KERNELS["avgpool"]``, ``attrs`` its JSON) on an ``[1, C, h, w]`` map of ``dtype``
    codes: 256 channels of one code each, then random codes (:data:`CHECK_ELEMENTS`).

    A sample, not every input (a window of nine codes has 2^72): the kernel emulates ONNX Runtime's
    loop operation for operation, so the check guards against an ONNX Runtime or CPU whose kernel
    adds in another order or rounds otherwise, which shows on a large share of random windows
    (the verdict is kept per ONNX Runtime build and CPU, ``ort_verdicts``)."""
    a = json.loads(attrs)
    dt = np.dtype(dtype)
    low = nm.qrange(8, dt.kind == "i")[0]
    rng = np.random.default_rng(19)
    const = np.broadcast_to(np.arange(256).reshape(1, 256, 1, 1), (1, 256, h, w))
    noise = rng.integers(0, 256, (1, max(64, CHECK_ELEMENTS // (h * w)), h, w))
    x = (np.concatenate([const, noise], axis=1) + low).astype(dt)
    want = np.asarray(KERNELS["avgpool"](a, {})([x])[0])
    if want.dtype != np.uint8:
        return False
    node_inputs = ["x", "sx", "zx", "sy", "zy"]
    inits = [numpy_helper.from_array(np.asarray(v, t).reshape(()), n) for n, v, t in (
        ("sx", a["epilogue"]["acc_scale"], np.float32), ("zx", int(a["x_zp"]) - low, np.uint8),
        ("sy", a["epilogue"]["scale"], np.float32), ("zy", a["epilogue"]["zp"], np.uint8))]
    codes = (x.astype(np.int64) - low).astype(np.uint8)
    for channels_last, perm in ((0, (0, 1, 2, 3)), (1, (0, 2, 3, 1))):
        node = helper.make_node("QLinearAveragePool", node_inputs, ["y"], domain=MS_DOMAIN, **_node_attrs(a, channels_last))
        fed = np.ascontiguousarray(codes.transpose(perm))
        try:
            sess = probe_session([node], [helper.make_tensor_value_info("x", TensorProto.UINT8, fed.shape)], inits)
            got = sess.run(None, {"x": fed})[0]
        except ort_kernels._ORT_REFUSALS:  # no such kernel in this ONNX Runtime: the numpy kernel serves
            return False
        if not np.array_equal(got.transpose(np.argsort(perm)), want):
            return False
    return True
