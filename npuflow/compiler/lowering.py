"""Lowering: quantized ONNX nodes -> :class:`IntOp` integer operations.

A node lowers when its data inputs are dequantized integer tensors (or integer constants) and
its output reaches exactly one quantize step, possibly through a fused activation chain.  Each
``lower_*`` function returns an :class:`IntOp` or a short reason why the node stays ONNX (it then
runs on the CPU with the model's own Q/DQ steps at its boundaries).

Requantisation follows the scales: when every scale involved is a power of two the accumulator
is shifted with ``numerics.shift_round`` (bit-exact); otherwise it follows what ONNX Runtime
computes on the model's float scales: the float32 multiplier of its integer kernels
(``numerics.requantize_float``) for products, float32 arithmetic on dequantized operands and
``QuantizeLinear`` for elementwise ops.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..check.fusion import pattern_view
from ..check.lowerable import lowering_limit, table_lowered
from .. import numerics
from ..numerics import ONNX_ROUND_MODE, dequantize, qrange, round_values
from ..numerics_softmax import softmax_table
from ..activation_patterns import unit_kind
from ..operators import PRELU_MAX_SLOPES, is_depthwise, softmax_axes
from ..graph import attr
from ..model import default_opset
from ..passes.gelu import gelu, table_ops
from ..passes.linear_bias import linear_bias
from . import fragments
from .epilogue import accumulator_range, clamps_are_noop, collect_chain, make_epilogue, out_spec, quantize_scalar
from .operands import Reject as _Reject, act as _act, chain as _chain, operand as _operand, shape as _shape
from .operands import weight as _weight
from .program import IntOp
from .qgraph import QGraph, QParams

Lowered = IntOp | str


def _span(p: QParams) -> int:
    """Largest |q - zero_point| of a tensor type (bounds exact float32 chunk sizes)."""
    lo, hi = qrange(p.bits, p.signed)
    z = p.scalar_zp()
    return max(hi - z, z - lo)


def _k_chunk(x: QParams, w: np.ndarray) -> int:
    """Longest reduction whose float32 partial sums stay exact integers (< 2^24).

    Inputs wider than 8 bits are convolved byte by byte (see ``split_bytes``), so their chunk is
    that of a byte (|hi|, |lo| <= 256)."""
    wmax = max(int(np.abs(w.astype(np.int64)).max(initial=0)), 1)
    return max(1, (1 << 24) // (min(_span(x), 256) * wmax))


def _acc_plan(x: QParams, w: QParams, bias: np.ndarray | None, b: QParams | None, out: QParams, cout: int):
    """Accumulator scale per channel, its left shift, the bias in accumulator units, and the
    power-of-two output shift (``None`` on float scales)."""
    sw = np.broadcast_to(w.scale.astype(np.float64).reshape(-1), (cout,))
    fx, fw, fo = x.fix_pos, w.fix_pos, out.fix_pos
    fb = b.fix_pos if b is not None else None
    pow2 = fx is not None and fw is not None and fo is not None and (b is None or fb is not None)
    bias_acc = np.zeros(cout, np.int64)
    lshift = np.zeros(cout, np.int64)
    if pow2:
        f = int(fx) + np.broadcast_to(np.asarray(fw, np.int64).reshape(-1), (cout,))
        a = f.copy()
        if bias is not None:
            nb = np.broadcast_to(np.asarray(fb, np.int64).reshape(-1), (cout,))
            a = np.maximum(f, nb)
            bias_acc = bias.astype(np.int64).reshape(-1) << (a - nb)
        lshift = a - f
        acc_scale = np.ldexp(1.0, -a)
        return acc_scale, lshift, bias_acc, (a - int(fo))
    acc_scale = x.scalar_scale() * sw
    if bias is not None:
        # the bias as ONNX Runtime dequantizes it (float32: an int32 bias saturated at 2^31 - 1
        # reads 2^31), in accumulator units
        real = dequantize(bias.reshape(-1), b.scale.reshape(-1), 0, axis=0 if b.scale.size > 1 else None)
        bias_acc = round_values(real.astype(np.float64) / acc_scale, ONNX_ROUND_MODE).astype(np.int64)
    return acc_scale, lshift, bias_acc, None


def ort_integer_kernel(*params: QParams) -> bool:
    """Whether ONNX Runtime's default run (x86-64 CPU, measured on 1.32) computes a float-scale
    group over these tensors with an integer QLinear kernel (``QLinearConv``, ``QLinearMatMul``,
    ``QLinearAdd``, ``QLinearMul``, ``QLinearAveragePool``): reliably only when they are uint8.
    On int8 models it keeps the float ``Conv``/``MatMul`` between the Q/DQ steps, and the float
    arithmetic is what its default run computes."""
    return all(p.dtype == "uint8" for p in params)


def _compact(values: np.ndarray):
    flat = np.asarray(values).reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return flat[0].item()
    return flat.tolist()


def _pads(node: onnx.NodeProto, in_hw: list[int], kernel: list[int], strides: list[int],
          dilations: list[int]) -> list[int]:
    """``[top, left, bottom, right]`` with ``auto_pad`` resolved."""
    auto = attr(node, "auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        p = attr(node, "pads", [0] * 4) if auto == "NOTSET" else [0] * 4
        if len(p) == 2:  # a 1-D op viewed as H = 1
            return [0, p[0], 0, p[1]]
        return [p[0], p[1], p[2], p[3]]
    out = []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations):
        o = -(-size // s)
        total = max(0, (o - 1) * s + (k - 1) * d + 1 - size)
        out.append((total // 2, total - total // 2) if auto == "SAME_UPPER" else (total - total // 2, total // 2))
    return [out[0][0], out[1][0], out[0][1], out[1][1]]


# --- convolutions and matrix products -------------------------------------------------------


def _as_2d(n: onnx.NodeProto, xs: list[int], w: np.ndarray) -> tuple[list[int], np.ndarray, list[int], list[int]]:
    """A 1-D convolution viewed as a 2-D one with H = 1 (what Vitis AI's compiler runs):
    ``(input shape, weights, strides, dilations)`` in NCHW form; 2-D ones unchanged."""
    strides = list(attr(n, "strides", [1] * (w.ndim - 2)))
    dil = list(attr(n, "dilations", [1] * (w.ndim - 2)))
    if w.ndim == 3:
        return [*xs[:2], 1, xs[2]], w[:, :, None, :], [1, *strides], [1, *dil]
    return xs, w, strides, dil


def lower_conv(g: QGraph, n: onnx.NodeProto) -> IntOp:
    x_name, xp, x_dq = _act(g, n.input[0])
    w, wp, w_dq = _weight(g, n.input[1])
    xs, w, strides, dil = _as_2d(n, _shape(g, n.input[0]), w)
    group = int(attr(n, "group", 1))
    cout, cin_g, kh, kw = w.shape
    pads = _pads(n, xs[2:], [kh, kw], strides, dil)
    bias, bp, reads = None, None, [x_dq.name, w_dq.name]
    if len(n.input) > 2 and n.input[2]:
        bias, bp, b_dq = _weight(g, n.input[2])
        reads.append(b_dq.name)
    chain, q, op_ = _chain(g, n.output[0])
    acc_scale, lshift, bias_acc, shift = _acc_plan(xp, wp, bias, bp, op_, cout)
    ys = _shape(g, q.output[0])
    kind = "depthwise_conv2d" if is_depthwise(group, xs[1]) else "conv2d"
    attrs = {
        "strides": strides, "pads": pads, "dilations": dil, "group": group, "kernel": [kh, kw],
        "x_zp": xp.scalar_zp(), "k_chunk": _k_chunk(xp, w), "lshift": _compact(lshift),
        "in_shape": xs, "in_dtype": xp.dtype, "split_bytes": _span(xp) > 256, "out_shape": ys,
        "epilogue": make_epilogue(g, n.output[0], chain, acc_scale, op_, shift, ort_kernel=ort_integer_kernel(xp, op_),
                                  acc_range=accumulator_range(bias_acc, w, 0, _span(xp))),
    }
    macs = int(np.prod(ys)) * cin_g * kh * kw
    return IntOp("conv", n.name, kind, [x_name], [q.output[0]], attrs,
                 {"w": w.astype(np.int8 if w.dtype.itemsize == 1 else w.dtype), "b": bias_acc},
                 [n.name, *[c.name for c in chain], q.name], reads, macs)


def lower_conv_transpose(g: QGraph, n: onnx.NodeProto) -> IntOp:
    x_name, xp, x_dq = _act(g, n.input[0])
    w, wp, w_dq = _weight(g, n.input[1])
    xs = _shape(g, n.input[0])
    group = int(attr(n, "group", 1))
    cin, cout_g, kh, kw = w.shape
    cout = cout_g * group
    if not wp.per_tensor and wp.axis != 1:
        raise _Reject("per-channel ConvTranspose weights must use axis 1")
    bias, bp, reads = None, None, [x_dq.name, w_dq.name]
    if len(n.input) > 2 and n.input[2]:
        bias, bp, b_dq = _weight(g, n.input[2])
        reads.append(b_dq.name)
    wq = QParams(wp.dtype, wp.scale, wp.zero_point, 0 if not wp.per_tensor else None, wp.round_mode)
    chain, q, op_ = _chain(g, n.output[0])
    acc_scale, lshift, bias_acc, shift = _acc_plan(xp, wq, bias, bp, op_, cout)
    ys = _shape(g, q.output[0])
    attrs = {
        "strides": list(attr(n, "strides", [1, 1])), "pads": list(attr(n, "pads", [0, 0, 0, 0])),
        "dilations": list(attr(n, "dilations", [1, 1])), "group": group, "kernel": [kh, kw],
        "x_zp": xp.scalar_zp(), "k_chunk": _k_chunk(xp, w), "wide": _span(xp) > 256, "lshift": _compact(lshift),
        "out_shape": ys,
        "epilogue": make_epilogue(g, n.output[0], chain, acc_scale, op_, shift),
    }
    kind = "depthwise_transposed_conv2d" if is_depthwise(group, cin) else "transposed_conv2d"
    macs = int(np.prod(xs)) * cout_g * kh * kw
    return IntOp("conv_transpose", n.name, kind, [x_name], [q.output[0]], attrs,
                 {"w": w, "b": bias_acc}, [n.name, *[c.name for c in chain], q.name], reads, macs)


def _matmul_const(g: QGraph, n: onnx.NodeProto, a_in: str, w: np.ndarray, wp: QParams, reads: list[str],
                  bias_in: str | None, bias_add: onnx.NodeProto | None = None) -> IntOp:
    """``x @ w (+ bias)`` with ``w`` an integer [K, N] constant (FC run as a 1x1 convolution);
    ``bias_add``: the ``Add`` that adds ``bias_in`` after a ``MatMul`` (:func:`linear_bias`), part
    of this op, its epilogue starting after it."""
    x_name, xp, x_dq = _act(g, a_in)
    bias, bp = None, None
    if bias_in:
        bias, bp, b_dq = _weight(g, bias_in)
        reads.append(b_dq.name)
    k, cout = w.shape
    t0 = bias_add.output[0] if bias_add is not None else n.output[0]
    chain, q, op_ = _chain(g, t0)
    acc_scale, lshift, bias_acc, shift = _acc_plan(xp, wp, bias, bp, op_, cout)
    ys = _shape(g, q.output[0])
    attrs = {
        "x_zp": xp.scalar_zp(), "k_chunk": _k_chunk(xp, w), "wide": _span(xp) > 256, "lshift": _compact(lshift),
        "out_shape": ys,
        "epilogue": make_epilogue(g, t0, chain, acc_scale, op_, shift, ort_kernel=ort_integer_kernel(xp, op_),
                                  acc_range=accumulator_range(bias_acc, w, 1, _span(xp))),
    }
    macs = int(np.prod(ys)) * k
    members = [n.name, *([bias_add.name] if bias_add is not None else []), *[c.name for c in chain], q.name]
    return IntOp("matmul", n.name, "fc", [x_name], [q.output[0]], attrs, {"w": w, "b": bias_acc},
                 members, [x_dq.name, *reads], macs)


def lower_gemm(g: QGraph, n: onnx.NodeProto) -> IntOp:
    w, wp, w_dq = _weight(g, n.input[1])
    if attr(n, "transB", 0):
        w = w.T
    bias_in = n.input[2] if len(n.input) > 2 and n.input[2] else None
    return _matmul_const(g, n, n.input[0], np.ascontiguousarray(w), wp, [w_dq.name], bias_in)


def lower_matmul(g: QGraph, n: onnx.NodeProto) -> IntOp:
    b_src = g.dq_source(n.input[1])
    if b_src is not None and g.const(b_src[0]) is not None:
        w, wp, w_dq = _weight(g, n.input[1])
        if w.ndim != 2:
            raise _Reject("MatMul constant must be 2-D")
        bias = linear_bias(n, g)
        if bias is None:
            return _matmul_const(g, n, n.input[0], w, wp, [w_dq.name], None)
        return _matmul_const(g, n, n.input[0], w, wp, [w_dq.name], bias.bias, bias.add)
    a_name, ap, a_dq = _act(g, n.input[0])
    b_name, bp, b_dq = _act(g, n.input[1])
    chain, q, op_ = _chain(g, n.output[0])
    fa, fb, fo = ap.fix_pos, bp.fix_pos, op_.fix_pos
    acc_scale = np.array([ap.scalar_scale() * bp.scalar_scale()])
    shift = None if fa is None or fb is None or fo is None else np.array([int(fa) + int(fb) - int(fo)])
    ys = _shape(g, q.output[0])
    attrs = {"a_zp": ap.scalar_zp(), "b_zp": bp.scalar_zp(), "out_shape": ys,
             "epilogue": make_epilogue(g, n.output[0], chain, acc_scale, op_, shift,
                                       ort_kernel=ort_integer_kernel(ap, bp, op_))}
    macs = int(np.prod(ys)) * _shape(g, n.input[0])[-1]
    return IntOp("matmul2", n.name, "matmul", [a_name, b_name], [q.output[0]], attrs, {},
                 [n.name, *[c.name for c in chain], q.name], [a_dq.name, b_dq.name], macs)


# --- elementwise ----------------------------------------------------------------------------


def lower_eltwise(g: QGraph, n: onnx.NodeProto) -> IntOp:
    """``Add``/``Sub``/``Mul`` of two integer tensors (either may be a quantized constant)."""
    ops = [_operand(g, i) for i in n.input[:2]]
    chain, q, op_ = _chain(g, n.output[0])
    ys = _shape(g, q.output[0])
    inputs, blobs, reads, operands = [], {}, [], []
    for idx, (name, const, p, dq) in enumerate(ops):
        reads.append(dq.name)
        if name is None:
            blobs[f"c{idx}"] = const
            operands.append({"const": f"c{idx}", "zp": p.scalar_zp()})
        else:
            inputs.append(name)
            operands.append({"input": len(inputs) - 1, "zp": p.scalar_zp()})
    pa, pb = ops[0][2], ops[1][2]
    attrs = {"mode": n.op_type.lower(), "operands": operands, "out_shape": ys}
    fixes = [pa.fix_pos, pb.fix_pos, op_.fix_pos]
    kind = "eltwise_mul" if n.op_type == "Mul" else "eltwise_add"
    nodes = [n.name, *[c.name for c in chain], q.name]
    fused = ort_integer_kernel(pa, pb, op_) and clamps_are_noop(g, chain, op_)
    if any(f is None for f in fixes) and not (n.op_type == "Mul" and fused):
        attrs.update(_float_scale_eltwise(g, n, chain, ops, op_, ys))
        return IntOp("eltwise", n.name, kind, inputs, [q.output[0]], attrs, blobs, nodes, reads, int(np.prod(ys)))
    if n.op_type == "Mul":
        # float scales: ORT's QLinearMul, the integer product times the float32 multiplier sa*sb/sc
        acc_scale = np.array([pa.scalar_scale() * pb.scalar_scale()])
        pow2 = all(f is not None for f in fixes)
        shift = np.array([int(fixes[0]) + int(fixes[1]) - int(fixes[2])]) if pow2 else None
        attrs["align"] = [0, 0]
    else:
        top = max(int(fixes[0]), int(fixes[1]))
        attrs["align"] = [top - int(fixes[0]), top - int(fixes[1])]
        acc_scale = np.array([np.ldexp(1.0, -top)])
        shift = np.array([top - int(fixes[2])])
    attrs["epilogue"] = make_epilogue(g, n.output[0], chain, acc_scale, op_, shift, ort_kernel=True)
    return IntOp("eltwise", n.name, kind, inputs, [q.output[0]], attrs, blobs, nodes, reads, int(np.prod(ys)))


def _float_scale_eltwise(g: QGraph, n: onnx.NodeProto, chain: list[onnx.NodeProto], ops: list, op_: QParams,
                         ys: list[int]) -> dict:
    """Float-scale ``Add``/``Sub``, and ``Mul`` that ORT does not fuse, as ONNX Runtime runs them.

    On uint8 ORT fuses ``DQ -> Add -> Q`` into ``QLinearAdd`` (``numerics.qlinear_add``), also
    when the chain is a clamp that the output's range already applies (its Relu/Clip fusions drop
    it).  Everything else is float in ORT: both operands dequantized to float32, combined and run
    through the chain in float32, then ``QuantizeLinear``.
    """
    scales = [p.scalar_scale() for _, _, p, _ in ops]
    zps = [p.scalar_zp() for _, _, p, _ in ops]
    if n.op_type == "Add" and ort_integer_kernel(*[p for _, _, p, _ in ops], op_) and clamps_are_noop(g, chain, op_):
        shapes = [_shape(g, i) for i in n.input[:2]]
        scalar = [int(np.prod(s)) == 1 or (len(s) > 0 and s[-1] == 1 and ys[-1] > 1) for s in shapes]
        return {"qlinear": {"scales": scales, "zps": zps, "out_scale": op_.scalar_scale(),
                            "out_zp": op_.scalar_zp(), "scalar": scalar, "out_dtype": op_.dtype}}
    return {"dequant": scales,
            "epilogue": make_epilogue(g, n.output[0], chain, np.array([1.0]), op_, None, force_float=True)}


def lower_select(g: QGraph, n: onnx.NodeProto) -> IntOp:
    """``Max``/``Min`` of two integer tensors (``torch.maximum``): each operand's codes through its
    table ``Q(chain(DQ(q)))`` onto the output grid, computed by ORT on the model's own nodes, then the
    larger or smaller code (``numerics.select_codes``: exact, as quantizing keeps order; the checker
    admits only order-keeping chains, ``check/lowerable._select_chain_limit``)."""
    chain, q, op_ = _chain(g, n.output[0])
    names, reads, blobs, qmins = [], [], {}, []
    for k, data in enumerate(n.input):
        x_name, xp, x_dq = _act(g, data)
        names.append(x_name)
        reads.append(x_dq.name)
        qmins.append(qrange(xp.bits, xp.signed)[0])
        blobs[f"t{k}"] = fragments.lookup_table(g, x_dq, xp, n.output[0], chain, q)
    attrs = {"mode": n.op_type.lower(), "qmins": qmins, "out_dtype": op_.dtype, "out_shape": _shape(g, q.output[0])}
    return IntOp("select", n.name, n.op_type.lower(), names, [q.output[0]], attrs, blobs,
                 [n.name, *[c.name for c in chain], q.name], reads, 0)


def lower_softmax(g: QGraph, n: onnx.NodeProto) -> IntOp:
    """``DQ -> Softmax -> Q`` (cpu-int8's QLinearSoftmax) over the axes the opset means
    (:func:`~npuflow.operators.softmax_axes`): the exponentials of every code difference in one
    table, the row's sum and division in float64, then the quantize step (``numerics_softmax.softmax_codes``)."""
    x_name, xp, x_dq = _act(g, n.input[0])
    chain, q, op_ = _chain(g, n.output[0])
    if chain:
        raise _Reject(f"Softmax output {n.output[0]!r} passes through {chain[0].op_type} before its quantize step")
    xs = _shape(g, n.input[0])
    axes = softmax_axes(n, len(xs), default_opset(g.model))
    attrs = {"axes": list(axes), "out_scale": op_.scalar_scale(), "out_zp": op_.scalar_zp(), "bits": op_.bits,
             "signed": op_.signed, "out_dtype": op_.dtype}
    qlinear = xp.bits == 8 and xp.dtype == op_.dtype  # what ORT's QLinearSoftmax takes
    table = softmax_table(xp.scalar_scale(), xp.bits, int(np.prod([xs[a] for a in axes])), qlinear)
    return IntOp("softmax", n.name, "softmax", [x_name], [q.output[0]], attrs, {"table": table},
                 [n.name, q.name], [x_dq.name], 0)


def lower_unary(g: QGraph, n: onnx.NodeProto) -> IntOp:
    """A standalone elementwise activation chain ``DQ -> f... -> Q`` as a lookup table (a GELU,
    :func:`npuflow.passes.gelu.gelu`: ``Q(gelu(DQ(q)))`` for each of the 256 int8 codes, named
    ``gelu`` as the checker names it)."""
    data = next((i for i in n.input if i and g.const(i) is None), None)
    if data is None:
        raise _Reject("no data input")
    x_name, xp, x_dq = _act(g, data)
    view = pattern_view(g.facts.view)
    found = collect_chain(g, data, [n], table_ops(n, view))
    if found is None:
        raise _Reject("activation chain does not end in a single quantize step")
    chain, q, op_ = found
    table = fragments.lookup_table(g, x_dq, xp, data, chain, q)
    found_gelu = gelu(chain[-1], view)
    gelu_chain = found_gelu is not None and [m.output[0] for m in found_gelu.nodes] == [c.output[0] for c in chain]
    kind = "gelu" if gelu_chain else unit_kind(chain, g.scalar) or chain[0].op_type.lower()
    return IntOp("lut", n.name, kind, [x_name], [q.output[0]],
                 {"qmin": qrange(xp.bits, xp.signed)[0], "out_dtype": op_.dtype}, {"table": table},
                 [*[c.name for c in chain], q.name], [x_dq.name], 0)


def lower_prelu(g: QGraph, n: onnx.NodeProto) -> IntOp:
    """``DQ -> PRelu(x, slope) [-> f...] -> Q`` as one code table per slope element (ONNX Runtime
    runs it in float: dequantize, PRelu, quantize; the tables are that, computed by it).

    The slope broadcasts to the input (ONNX's unidirectional rule), so the tables are indexed by
    its shape at the input's rank: ``[1, C, 1, 1]`` for a convolution's channels (MTCNN), ``[1, C]``
    after a fully connected layer; one slope (or equal slopes) gives a single ``lut``."""
    x_name, xp, x_dq = _act(g, n.input[0])
    slope, before = g.const(n.input[1]), []
    dq = g.dq_source(n.input[1])
    if slope is None and dq is not None and g.const(dq[0]) is not None:  # a quantized slope: ORT dequantizes it
        slope, before = g.const(dq[0]), [dq[2]]
    if slope is None:
        raise _Reject(f"slope {n.input[1]!r} is computed at run time")
    if slope.size > PRELU_MAX_SLOPES:
        raise _Reject(f"{slope.size} slopes (one per element): one code table each, at most {PRELU_MAX_SLOPES}")
    rank = len(_shape(g, n.input[0]))
    if slope.ndim > rank:
        raise _Reject(f"slope of rank {slope.ndim} for an input of rank {rank}")
    chain, q, op_ = _chain(g, n.output[0])
    shape = [1] * (rank - slope.ndim) + list(slope.shape)
    tables = fragments.channel_tables(g, x_dq, xp, [*before, n], chain, q, shape)
    nodes, attrs = [n.name, *[c.name for c in chain], q.name], {"qmin": qrange(xp.bits, xp.signed)[0],
                                                                "out_dtype": op_.dtype}
    if np.all(tables == tables[:1]):
        return IntOp("lut", n.name, "prelu", [x_name], [q.output[0]], attrs, {"table": tables[0]}, nodes,
                     [x_dq.name], 0)
    return IntOp("lut_channel", n.name, "prelu", [x_name], [q.output[0]], {**attrs, "shape": shape},
                 {"table": tables}, nodes, [x_dq.name], 0)


# --- data movement and pooling ----------------------------------------------------------------


def _passthrough(g: QGraph, n: onnx.NodeProto, op: str, kind: str, attrs: dict) -> IntOp:
    """Ops that move integer codes (maxpool, reshape, transpose, slice, pad, resize, gather)
    followed by the code-to-code table ``Q_out(chain(DQ_in(q)))`` (identity when scales agree)."""
    x_name, xp, x_dq = _act(g, n.input[0])
    chain, q, op_ = _chain(g, n.output[0])
    table = fragments.lookup_table(g, x_dq, xp, n.output[0], chain, q)
    blobs = {}
    codes = fragments.codes(xp)
    if not (table.dtype == codes.dtype and np.array_equal(table, codes)):
        blobs["table"] = table
    attrs = {**attrs, "qmin": qrange(xp.bits, xp.signed)[0], "x_zp": xp.scalar_zp(),
             "out_dtype": op_.dtype, "out_shape": _shape(g, q.output[0])}
    return IntOp(op, n.name, kind, [x_name], [q.output[0]], attrs, blobs,
                 [n.name, *[c.name for c in chain], q.name], [x_dq.name], 0)


def _pool_geometry(g: QGraph, n: onnx.NodeProto, global_pool: bool) -> dict:
    xs = _shape(g, n.input[0])
    if global_pool:
        return {"kernel": xs[2:], "strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1]}
    kernel = list(attr(n, "kernel_shape"))
    strides = list(attr(n, "strides", [1, 1]))
    dil = list(attr(n, "dilations", [1, 1]))
    pads = _pads(n, xs[2:], kernel, strides, dil)
    ys = _shape(g, n.output[0])
    # ceil_mode: extend the bottom/right padding so that the last window exists
    for axis in (0, 1):
        need = (ys[2 + axis] - 1) * strides[axis] + (kernel[axis] - 1) * dil[axis] + 1
        have = xs[2 + axis] + pads[axis] + pads[axis + 2]
        if need > have:
            pads[axis + 2] += need - have
    return {"kernel": kernel, "strides": strides, "pads": pads, "dilations": dil,
            "real_pads": _pads(n, xs[2:], kernel, strides, dil)}


def lower_maxpool(g: QGraph, n: onnx.NodeProto) -> IntOp:
    glob = n.op_type == "GlobalMaxPool"
    geo = _pool_geometry(g, n, glob)
    return _passthrough(g, n, "maxpool", "global_max_pool" if glob else "max_pool", geo)


def lower_avgpool(g: QGraph, n: onnx.NodeProto) -> IntOp:
    """Average pooling mirrors the reference: the float32 window sum divided in float32 by the
    window size, then the output's quantize step (and any fused chain) in float32; on float
    scales, what ORT's fused ``QLinearAveragePool``/``QLinearGlobalAveragePool`` compute."""
    x_name, xp, x_dq = _act(g, n.input[0])
    glob = n.op_type == "GlobalAveragePool"
    geo = _pool_geometry(g, n, glob)
    chain, q, op_ = _chain(g, n.output[0])
    geo["count_include_pad"] = int(attr(n, "count_include_pad", 0))
    geo["x_zp"] = xp.scalar_zp()
    geo["out_shape"] = _shape(g, q.output[0])
    ep = make_epilogue(g, n.output[0], chain, np.array([xp.scalar_scale()]), op_, None, force_float=True)
    geo["epilogue"] = ep
    if xp.fix_pos is None or op_.fix_pos is None:
        # float scales: ORT fuses the group into QLinear(Global)AveragePool when the chain is
        # nothing the output range does not already apply; the kernel follows its arithmetic
        if ort_integer_kernel(xp, op_) and clamps_are_noop(g, chain, op_):
            geo["qlinear"] = "global" if glob else "window"
    kind = "global_avg_pool" if glob else "avg_pool"
    return IntOp("avgpool", n.name, kind, [x_name], [q.output[0]], geo, {},
                 [n.name, *[c.name for c in chain], q.name], [x_dq.name], int(np.prod(_shape(g, n.input[0]))))


def lower_concat(g: QGraph, n: onnx.NodeProto) -> IntOp:
    ops = [_operand(g, i) for i in n.input]
    chain, q, op_ = _chain(g, n.output[0])
    if chain:
        raise _Reject("Concat with a fused activation is not lowered")
    ys = _shape(g, q.output[0])
    inputs, blobs, reads, parts = [], {}, [], []
    for idx, (name, const, p, dq) in enumerate(ops):
        reads.append(dq.name)
        table = fragments.lookup_table(g, dq, p, dq.output[0], [], q)
        part: dict = {"qmin": qrange(p.bits, p.signed)[0]}
        if not np.array_equal(table, fragments.codes(p)):
            blobs[f"t{idx}"] = table
            part["table"] = f"t{idx}"
        if name is None:
            blobs[f"c{idx}"] = const
            part["const"] = f"c{idx}"
        else:
            inputs.append(name)
            part["input"] = len(inputs) - 1
        parts.append(part)
    axis = int(attr(n, "axis"))
    axis = axis + len(ys) if axis < 0 else axis
    return IntOp("concat", n.name, "concat", inputs, [q.output[0]],
                 {"axis": axis, "parts": parts, "out_dtype": op_.dtype, "out_shape": ys}, blobs,
                 [n.name, q.name], reads, 0)


def lower_reshape(g: QGraph, n: onnx.NodeProto) -> IntOp:
    return _passthrough(g, n, "reshape", "reshape", {})


def lower_transpose(g: QGraph, n: onnx.NodeProto) -> IntOp:
    rank = len(_shape(g, n.input[0]))
    perm = attr(n, "perm") or list(reversed(range(rank)))
    return _passthrough(g, n, "transpose", "transpose", {"perm": list(perm)})


def lower_block_shuffle(g: QGraph, n: onnx.NodeProto) -> IntOp:
    """``DepthToSpace`` (DCR or CRD) / ``SpaceToDepth`` as ONNX defines them: a reshape into
    blocks, a transpose and a reshape, moving codes (exact on integers)."""
    batch, c, h, w = _shape(g, n.input[0])
    b = int(attr(n, "blocksize"))
    if n.op_type == "SpaceToDepth":
        view, perm = [batch, c, h // b, b, w // b, b], [0, 3, 5, 1, 2, 4]
    elif attr(n, "mode", "DCR") == "CRD":
        view, perm = [batch, c // (b * b), b, b, h, w], [0, 1, 4, 2, 5, 3]
    else:
        view, perm = [batch, b, b, c // (b * b), h, w], [0, 3, 4, 1, 5, 2]
    kind = "space_to_depth" if n.op_type == "SpaceToDepth" else "depth_to_space"
    return _passthrough(g, n, "shuffle", kind, {"view": view, "perm": perm})


def lower_slice(g: QGraph, n: onnx.NodeProto) -> IntOp:
    xs = _shape(g, n.input[0])
    consts = [g.const(i) if i else None for i in n.input[1:]]
    starts, ends = consts[0], consts[1]
    axes = consts[2] if len(consts) > 2 and consts[2] is not None else np.arange(len(starts))
    steps = consts[3] if len(consts) > 3 and consts[3] is not None else np.ones(len(starts), np.int64)
    spec = [[0, s, 1] for s in xs]
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = int(ax) + len(xs) if ax < 0 else int(ax)
        start, stop, step = slice(int(st), int(en), int(sp)).indices(xs[ax])
        # indices() writes "before element 0" of a reversing slice as stop -1, which as a slice
        # (numpy, ONNX Slice) means the last element: -(dim + 1) means "before 0" to both
        spec[ax] = [start, -(xs[ax] + 1) if step < 0 and stop < 0 else stop, step]
    return _passthrough(g, n, "slice", "strided_slice", {"slices": spec})


def lower_pad(g: QGraph, n: onnx.NodeProto) -> IntOp:
    xs = _shape(g, n.input[0])
    pads = g.const(n.input[1]) if len(n.input) > 1 else attr(n, "pads")
    pads = np.asarray(pads, np.int64).reshape(-1)
    if len(n.input) > 3 and n.input[3]:
        axes = g.const(n.input[3])
        full = np.zeros(2 * len(xs), np.int64)
        for j, ax in enumerate(axes):
            ax = int(ax) + len(xs) if ax < 0 else int(ax)
            full[ax], full[ax + len(xs)] = pads[j], pads[j + len(axes)]
        pads = full
    mode = attr(n, "mode", "constant")
    value = 0.0
    if len(n.input) > 2 and n.input[2]:
        value = float(np.asarray(g.const(n.input[2])).reshape(-1)[0])
    rank = len(xs)
    width = [[int(pads[i]), int(pads[i + rank])] for i in range(rank)]
    chain, q, op_ = _chain(g, n.output[0])
    pad_code = quantize_scalar(value, op_)
    return _passthrough(g, n, "pad", "pad", {"width": width, "mode": mode, "pad_code": pad_code})


def lower_resize(g: QGraph, n: onnx.NodeProto) -> IntOp:
    if attr(n, "mode", "nearest") != "nearest":
        raise _Reject(f"Resize mode {attr(n, 'mode')!r} is not lowered (nearest only)")
    for i in n.input[1:]:
        if i and g.const(i) is None:
            raise _Reject("Resize roi/scales/sizes must be constants")
    idx = fragments.resize_indices(g, n, _shape(g, n.input[0]))
    if idx is None:
        raise _Reject("Resize index map is not separable per axis")
    return _passthrough(g, n, "gather", "resize", {"indices": idx})


def lower_split(g: QGraph, n: onnx.NodeProto) -> IntOp:
    x_name, xp, x_dq = _act(g, n.input[0])
    xs = _shape(g, n.input[0])
    axis = int(attr(n, "axis", 0))
    axis = axis + len(xs) if axis < 0 else axis
    outputs, nodes, tables, blobs, begin = [], [n.name], [], {}, 0
    parts = []
    for j, o in enumerate(n.output):
        chain, q, op_ = _chain(g, o)
        if chain:
            raise _Reject("Split with fused activations is not lowered")
        size = _shape(g, o)[axis]
        parts.append([begin, begin + size])
        begin += size
        table = fragments.lookup_table(g, x_dq, xp, o, [], q)
        if not np.array_equal(table, fragments.codes(xp)):
            blobs[f"t{j}"] = table
        outputs.append(q.output[0])
        nodes.append(q.name)
        tables.append(f"t{j}" if f"t{j}" in blobs else None)
    return IntOp("split", n.name, "strided_slice", [x_name], outputs,
                 {"axis": axis, "parts": parts, "tables": tables, "qmin": qrange(xp.bits, xp.signed)[0],
                  "out_dtype": xp.dtype}, blobs, nodes, [x_dq.name], 0)


LOWERINGS = {
    "Conv": lower_conv,
    "ConvTranspose": lower_conv_transpose,
    "Gemm": lower_gemm,
    "MatMul": lower_matmul,
    "Add": lower_eltwise,
    "Sub": lower_eltwise,
    "Mul": lower_eltwise,
    "Concat": lower_concat,
    "MaxPool": lower_maxpool,
    "GlobalMaxPool": lower_maxpool,
    "AveragePool": lower_avgpool,
    "GlobalAveragePool": lower_avgpool,
    "Reshape": lower_reshape,
    "Flatten": lower_reshape,
    "Squeeze": lower_reshape,
    "Unsqueeze": lower_reshape,
    "Transpose": lower_transpose,
    "DepthToSpace": lower_block_shuffle,
    "SpaceToDepth": lower_block_shuffle,
    "Slice": lower_slice,
    "Pad": lower_pad,
    "Resize": lower_resize,
    "Split": lower_split,
    "PRelu": lower_prelu,
    "Max": lower_select,
    "Softmax": lower_softmax,
    "Min": lower_select,
}


def lower_node(g: QGraph, n: onnx.NodeProto) -> Lowered:
    """The integer op for ``n`` or the reason it stays ONNX (first the graph facts the checker
    places by, so a node it puts on the accelerator is one lowered here)."""
    reason = lowering_limit(n, g.facts)
    if reason is not None:
        return reason
    fn = lower_unary if table_lowered(n, g.facts) else LOWERINGS.get(n.op_type)
    if fn is None:
        return f"{n.op_type} has no integer lowering"
    try:
        return fn(g, n)
    except _Reject as exc:
        return str(exc)


def lower_quantize(g: QGraph, q: onnx.NodeProto) -> IntOp | None:
    """A quantize step of a float graph input (the model's input quantization)."""
    p = g.quantize_params(q)
    if p is None or not p.per_tensor or q.input[0] not in g.graph_inputs:
        return None
    return IntOp("quantize", q.name, "quantize", [q.input[0]], [q.output[0]],
                 {**out_spec(p), "bits": p.bits, "signed": p.signed}, {}, [q.name], [], 0)


def lower_requantize(g: QGraph, q: onnx.NodeProto) -> IntOp | None:
    """``DQ -> Q`` directly (a change of scale) as a lookup table."""
    src = g.dq_source(q.input[0])
    p = g.quantize_params(q)
    if src is None or p is None or not src[1].per_tensor or g.const(src[0]) is not None:
        return None
    int_name, xp, dq = src
    table = fragments.lookup_table(g, dq, xp, q.input[0], [], q)
    return IntOp("lut", q.name, "requantize", [int_name], [q.output[0]],
                 {"qmin": qrange(xp.bits, xp.signed)[0], "out_dtype": p.dtype}, {"table": table},
                 [q.name], [dq.name], 0)


def lower_dequantize(g: QGraph, dq: onnx.NodeProto) -> IntOp | None:
    """A dequantize step producing a graph output (the model's output dequantization)."""
    p = g.dequantize_params(dq)
    if p is None or not g.is_graph_output(dq.output[0]) or g.const(dq.input[0]) is not None:
        return None
    return IntOp("dequantize", dq.name, "dequantize", [dq.input[0]], [dq.output[0]],
                 {"scale": p.scale.astype(np.float64).tolist(), "zp": p.zero_point.tolist(), "axis": p.axis},
                 {}, [dq.name], [], 0)
