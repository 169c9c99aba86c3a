"""ONNX node -> accelerator operation kind plus the layer parameters target limits refer to.

The kinds are the keys of a target's ``ops`` table (``conv2d``, ``depthwise_conv2d``, ``fc``,
``eltwise_add``, ``relu6``, ...; see ``docs/targets.md``).  The parameters use the names of the
vendor tables (``kernel_w``, ``stride_h``, ``pad_left``, ``input_channel``, ``channel_parallel``
comes from the target), so a target file can state a limit exactly as the vendor wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from .operators import (ACTIVATION_KINDS, LAYOUT_KINDS, Role, clip_bounds, clip_kind, conv_in_channels, conv_kind,
                         is_depthwise, op_def)
from .graph import GraphView
from .graph import attr_values as attrs

#: Roles decide how a node takes part in placement (:class:`npuflow.operators.Role`).
COMPUTE, ACTIVATION, LAYOUT, FOLLOWER = Role.COMPUTE.value, Role.ACTIVATION.value, Role.LAYOUT.value, Role.FOLLOWER.value
#: Suffix of the kind of a layer whose weights are computed at run time (no target has a rule for it).
DYNAMIC_WEIGHT = "_dynamic_weight"
__all__ = ["ACTIVATION", "ACTIVATION_KINDS", "COMPUTE", "FOLLOWER", "LAYOUT", "LAYOUT_KINDS", "OpInfo", "classify"]


@dataclass
class OpInfo:
    kind: str
    role: str
    params: dict[str, float | int | str] = field(default_factory=dict)
    affine: bool = False  # a per-channel constant scale/shift (foldable into the op before it)


def _pair(values, default):
    v = list(values) if values else [default, default]
    if len(v) == 1:
        v = [1, v[0]] if default == 1 else [default, v[0]]
    return int(v[-2]), int(v[-1])  # (h, w)


def _pads(node_attrs, kernel, strides, dilations, in_hw, out_hw):
    """ONNX pads -> (top, left, bottom, right), resolving auto_pad from the shapes."""
    auto = node_attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER") and in_hw and out_hw:
        res = []
        for k, s, d, i, o in zip(kernel, strides, dilations, in_hw, out_hw):
            total = max((o - 1) * s + (k - 1) * d + 1 - i, 0)
            small, big = total // 2, total - total // 2
            res.append((small, big) if auto == "SAME_UPPER" else (big, small))
        return res[0][0], res[1][0], res[0][1], res[1][1]
    p = list(node_attrs.get("pads", []))
    if not p:
        return 0, 0, 0, 0
    if len(p) == 2:  # 1-D op viewed as H=1
        return 0, p[0], 0, p[1]
    half = len(p) // 2
    return p[half - 2], p[half - 1], p[-2], p[-1]


def _hw(shape):
    if not shape or len(shape) < 3:
        return None
    return (1, shape[-1]) if len(shape) == 3 else (shape[-2], shape[-1])


def _window_params(node, a, view, kernel_hw):
    x = node.input[0]
    xs, ys = view.shape(x), view.shape(node.output[0])
    strides = _pair(a.get("strides"), 1)
    dil = _pair(a.get("dilations"), 1)
    top, left, bottom, right = _pads(a, kernel_hw, strides, dil, _hw(xs), _hw(ys))
    p = {
        "kernel_h": kernel_hw[0], "kernel_w": kernel_hw[1], "stride_h": strides[0], "stride_w": strides[1],
        "dilation_h": dil[0], "dilation_w": dil[1],
        "pad_top": top, "pad_left": left, "pad_bottom": bottom, "pad_right": right,
    }
    if xs and len(xs) >= 2:
        p["input_channel"] = xs[1]
        hw = _hw(xs)
        if hw:
            p["input_h"], p["input_w"] = hw
    if ys and len(ys) >= 2:
        p["output_channel"] = ys[1]
    return p


def _conv(node, view, transposed: bool) -> OpInfo:
    a = attrs(node)
    w = view.shape(node.input[1]) or []
    rank = len(w)
    if rank > 4:
        return OpInfo("conv3d" if not transposed else "transposed_conv3d", COMPUTE)
    kernel = a.get("kernel_shape") or w[2:]
    p = _window_params(node, a, view, _pair(kernel, 1))
    group = int(a.get("group", 1))
    p["group"] = group
    ic = p.get("input_channel", conv_in_channels(node, None, w) or 0)
    p["input_channel"] = ic
    if "output_channel" not in p and w:
        p["output_channel"] = w[1] * group if transposed else w[0]
    kind = conv_kind(transposed, is_depthwise(group, ic))
    if not view.is_const(node.input[1]):
        return OpInfo(kind + DYNAMIC_WEIGHT, COMPUTE, p)
    return OpInfo(kind, COMPUTE, p)


def _pool(node, view, kind) -> OpInfo:
    a = attrs(node)
    p = _window_params(node, a, view, _pair(a.get("kernel_shape"), 1))
    p["ceil_mode"] = int(a.get("ceil_mode", 0))
    return OpInfo(kind, COMPUTE, p)


def _global_pool(node, view, kind) -> OpInfo:
    xs = view.shape(node.input[0]) or []
    p: dict = {}
    if len(xs) >= 3:
        p["input_channel"] = p["output_channel"] = xs[1]
        h, w = _hw(xs)
        p.update(kernel_h=h, kernel_w=w, input_h=h, input_w=w, stride_h=1, stride_w=1)
    return OpInfo(kind, COMPUTE, p)


def _channels(view, tensor) -> dict:
    s = view.shape(tensor)
    if not s:
        return {}
    ch = s[1] if len(s) >= 2 else s[-1]
    return {"input_channel": ch, "output_channel": ch}


def _per_channel(const_shape, data_shape) -> bool:
    """A constant that broadcasts over N, H, W (scalar, [C], [C,1,1] or [1,C,1,1]; [C] on [N,C]; on
    [N, T, C] tokens [C] or [1,1,C], the channels XIR keeps last)."""
    if data_shape is None or len(data_shape) not in (2, 3, 4) or const_shape is None:
        return False
    if int(np.prod(const_shape)) == 1:
        return True
    if len(data_shape) in (2, 3):
        return list(const_shape)[-1:] == [data_shape[-1]] and int(np.prod(const_shape)) == data_shape[-1]
    dims = [1] * (4 - len(const_shape)) + list(const_shape)
    return len(const_shape) <= 4 and dims[0] == 1 and dims[2] == 1 and dims[3] == 1 and dims[1] == data_shape[1]


def _affine_conv(p: dict, xs: list[int], tokens: bool = False) -> OpInfo:
    """A per-channel scale/shift on ``xs`` ([N, C], [N, C, W] or [N, C, H, W]; with ``tokens``, [N, T, C]
    as a 1 x T map of C channels) as the 1x1 depthwise convolution Vitis AI's compiler runs it as."""
    c = xs[-1] if tokens else xs[1]
    hw = (1, xs[1]) if tokens else _hw(xs) or (1, 1)
    p.update(kernel_h=1, kernel_w=1, stride_h=1, stride_w=1, dilation_h=1, dilation_w=1, pad_top=0,
             pad_left=0, pad_bottom=0, pad_right=0, group=c, input_channel=c, output_channel=c,
             input_h=hw[0], input_w=hw[1])
    return OpInfo("depthwise_conv2d", COMPUTE, p, affine=True)


def _batchnorm(node, view) -> OpInfo:
    """Folded into the layer before it (:mod:`.fusion`), else the float passes write it as a 1x1
    depthwise convolution (``passes/fold_batchnorm.py``) on 1-D and 2-D feature maps."""
    xs = view.shape(node.input[0])
    if xs and len(xs) in (3, 4):
        return _affine_conv({}, xs)
    return OpInfo("batchnorm", COMPUTE, _channels(view, node.input[0]), affine=True)


def _eltwise(node, view, kind) -> OpInfo:
    ins = [t for t in node.input if t]
    consts = [t for t in ins if view.is_const(t)]
    out = view.shape(node.output[0]) or []
    p = {"num_inputs": len(ins)}
    if len(out) >= 2:
        p["input_channel"] = p["output_channel"] = out[1]
    if consts and len(ins) == 2 and len(consts) == 1:
        data = ins[0] if ins[1] in consts else ins[1]
        xs = view.shape(data)
        divides_const = kind == "eltwise_div" and ins[1] == data
        if _per_channel(view.shape(consts[0]), xs) and xs == out and not divides_const:
            return _affine_conv(p, xs, tokens=len(xs) == 3)
        return OpInfo(kind.replace("eltwise_", "") + "_const", COMPUTE, p)
    if consts:
        return OpInfo(kind.replace("eltwise_", "") + "_const", COMPUTE, p)
    return OpInfo(kind, COMPUTE, p)


def _gemm(node, view) -> OpInfo:
    a = attrs(node)
    ws = view.shape(node.input[1]) or []
    xs = view.shape(node.input[0]) or []
    const_w = view.is_const(node.input[1])
    if node.op_type == "Gemm":
        if int(a.get("transA", 0)):
            return OpInfo("matmul", COMPUTE, {})
        k, n = (ws[1], ws[0]) if int(a.get("transB", 0)) and len(ws) == 2 else (ws[0] if ws else 0, ws[1] if len(ws) > 1 else 0)
    else:
        k, n = (ws[-2], ws[-1]) if len(ws) >= 2 else (xs[-1] if xs else 0, ws[-1] if ws else 0)
    p = {"input_channel": int(k), "output_channel": int(n), "kernel_h": 1, "kernel_w": 1}
    if const_w and len(ws) == 2:
        return OpInfo("fc", COMPUTE, p)
    if node.op_type == "Gemm":
        # The quantizer takes a Gemm for an fc wherever its weights come from (passes/activations.op_kind)
        # and fuses its activation, so the checker fuses it too (fusion.fuse drops the suffix); as
        # "matmul", onnx's light AlexNet's ReLU after a ``ConstantOfShape``-weight Gemm ran alone.
        return OpInfo("fc" + DYNAMIC_WEIGHT, COMPUTE, p)
    return OpInfo("matmul", COMPUTE, p)


def _resize(node, view) -> OpInfo:
    a = attrs(node)
    mode = a.get("mode", "nearest")
    xs, ys = view.shape(node.input[0]), view.shape(node.output[0])
    p: dict = {"mode": mode}
    p.update(_channels(view, node.input[0]))
    if xs and ys and len(xs) >= 3 and len(ys) == len(xs):
        ratios = [o / i for o, i in zip(ys[2:], xs[2:]) if i]
        p["scale"] = max(ratios) if ratios else 1.0
        if max(ratios, default=1.0) <= 1.0:
            p["scale"] = min(ratios) if ratios else 1.0
        p["input_h"], p["input_w"] = _hw(xs)
    kind = "resize" if not xs or len(xs) <= 4 else "resize3d"
    return OpInfo(kind, COMPUTE, p)


def _scalar(view: GraphView) -> Callable[[str], float | None]:
    """The graph's value of a scalar constant, or ``None``."""
    def value(name: str) -> float | None:
        v = view.value(name)
        return float(v) if v is not None else None
    return value


def _clip(node, view) -> OpInfo:
    lo, hi = clip_bounds(node, _scalar(view))
    p = {"min": lo if lo is not None else float("-inf"), "max": hi if hi is not None else float("inf")}
    return OpInfo(clip_kind(lo, hi), ACTIVATION, p)


def _slice(node, view) -> OpInfo:
    xs = view.shape(node.input[0]) or []
    rank = len(xs)
    axes = view.value(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    steps = view.value(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    starts = view.value(node.input[1])
    axes = [int(x) % max(rank, 1) for x in (axes if axes is not None else range(len(starts) if starts is not None else 0))]
    steps = [int(s) for s in (steps if steps is not None else [1] * len(axes))]
    by_axis = dict(zip(axes, steps))
    p = {"stride_batch": by_axis.get(0, 1), "stride_channel": by_axis.get(1, 1), "axis": axes[0] if axes else 0}
    p.update(_channels(view, node.input[0]))
    return OpInfo("strided_slice", COMPUTE, p)


def _axis_op(node, view, kind) -> OpInfo:
    a = attrs(node)
    xs = view.shape(node.input[0]) or []
    axis = a.get("axis", op_def(node.op_type).axis)
    if kind.startswith("reduce_"):
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            v = view.value(node.input[1])
            axes = list(v) if v is not None else None
        axes = [int(x) % max(len(xs), 1) for x in (axes or [])]
        axis = axes[0] if len(axes) == 1 else -1
        if kind in ("reduce_mean", "reduce_max") and sorted(axes) == [2, 3] and len(xs) == 4:
            return _global_pool(node, view, "global_avg_pool" if kind == "reduce_mean" else "global_max_pool")
    axis = int(axis) % max(len(xs), 1) if xs else int(axis)
    p = {"axis": axis, "num_inputs": len([t for t in node.input if t]), "num_outputs": len([t for t in node.output if t])}
    p.update(_channels(view, node.input[0]))
    if kind == "concat":
        ys = view.shape(node.output[0]) or []
        if len(ys) >= 2:
            p["input_channel"] = p["output_channel"] = ys[1]
    return OpInfo(kind, COMPUTE if kind not in LAYOUT_KINDS else LAYOUT, p)


def _pad(node, view) -> OpInfo:
    a = attrs(node)
    mode = a.get("mode", "constant")
    p = {"mode": mode}
    p.update(_channels(view, node.input[0]))
    return OpInfo("pad", COMPUTE, p)


def _activation(node, view, kind) -> OpInfo:
    a = attrs(node)
    if kind == "leaky_relu":
        return OpInfo(kind, ACTIVATION, {"alpha": float(a.get("alpha", 0.01))})
    if kind == "hard_sigmoid":
        return OpInfo(kind, ACTIVATION, {"alpha": float(a.get("alpha", 0.2)), "beta": float(a.get("beta", 0.5))})
    if kind == "hard_swish":
        return OpInfo(kind, ACTIVATION, {"alpha": 1 / 6, "beta": 0.5})
    return OpInfo(kind, ACTIVATION, _channels(view, node.input[0]))


def _layout(node, view, kind) -> OpInfo:
    if kind == "transpose":
        return OpInfo(kind, LAYOUT, {"perm": str(list(attrs(node).get("perm", [])))})
    p = _channels(view, node.input[0])
    if kind in ("depth_to_space", "space_to_depth"):
        p["block_size"] = int(attrs(node).get("blocksize", 1))  # reorg's "stride" in UG1414's Table 28
    return OpInfo(kind, LAYOUT, p)


#: How the parameters of each target kind are read (the kinds are the registry's, :mod:`npuflow.operators`).
_BY_KIND = {
    "conv2d": lambda n, v, k: _conv(n, v, transposed=False),
    "transposed_conv2d": lambda n, v, k: _conv(n, v, transposed=True),
    "max_pool": _pool, "avg_pool": _pool,
    "global_avg_pool": _global_pool, "global_max_pool": _global_pool,
    "eltwise_add": _eltwise, "eltwise_sub": _eltwise, "eltwise_mul": _eltwise, "eltwise_div": _eltwise,
    "fc": lambda n, v, k: _gemm(n, v), "matmul": lambda n, v, k: _gemm(n, v),
    "resize": lambda n, v, k: _resize(n, v),
    "clip": lambda n, v, k: _clip(n, v),
    "strided_slice": lambda n, v, k: _slice(n, v),
    "pad": lambda n, v, k: _pad(n, v),
    "batchnorm": lambda n, v, k: _batchnorm(n, v),
    **{k: _axis_op for k in ("split", "concat", "softmax", "argmax", "reduce_max", "reduce_mean", "reduce_sum")},
}


def classify(node: onnx.NodeProto, view: GraphView, index: int) -> OpInfo:
    """The accelerator view of one node: the registry's kind and role, refined by the node
    (depthwise, ReLU6, per-channel affine, weights computed at run time) with its parameters."""
    d = op_def(node.op_type, node.domain)
    if view.qdq[index] or d.kind == "identity":
        return OpInfo("identity", FOLLOWER)
    if node.domain not in ("", "ai.onnx"):
        return OpInfo(f"{node.domain}:{node.op_type}", COMPUTE)
    read = _BY_KIND.get(d.kind)
    if read is not None:
        return read(node, view, d.kind)
    if d.role is Role.ACTIVATION:
        return _activation(node, view, d.kind)
    if d.role is Role.LAYOUT:
        return _layout(node, view, d.kind)
    if d.table and d.role is Role.COMPUTE:  # Elu, Selu, Softplus ...: elementwise, judged per channel
        return OpInfo(d.kind, COMPUTE, _channels(view, node.input[0]))
    return OpInfo(d.kind, COMPUTE)
