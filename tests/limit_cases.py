"""Boundary cases for every limit in every target family, as one-node ONNX models.

For a :class:`ParamLimit` the cases are generated from the limit itself: the value on each
bound passes, one step outside fails (below the lower bound only where ONNX can express it).
For a :class:`Constraint` the pass/fail parameters come from :data:`CONSTRAINT_CASES`, keyed by
the formula text, so a formula added to a target file without a case here fails the
meta-test (``tests/unit/test_check_limits.py``).

Each case is a small graph (prefix-named) and all cases of one target are merged into one
model, so a family is checked with a single ``npuflow.check`` call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import helper

from npuflow.targets import DATA_DIR, load_target
from npuflow.targets.expr import evaluate
from npuflow.targets.spec import Target
from tests import onnx_builders as B

#: Which target stands for each file that holds limits (family bases are not targets themselves).
FILE_TARGETS = {
    "_dpuczdx8g.yaml": "DPUCZDX8G_ISA1_B4096",
    "_dpucahx8l.yaml": "DPUCAHX8L_ISA0",
    "_dpucvdx8g.yaml": "DPUCVDX8G_ISA3_C32B3",
    "_dpucahx8h.yaml": "DPUCAHX8H_ISA2_DWC",
    "_dpucadf8h.yaml": "DPUCADF8H_ISA0",
    "_dpucvdx8h.yaml": "DPUCVDX8H_ISA1_F2W4_4PE",
    "_dpucv2dx8g.yaml": "DPUCV2DX8G_ISA1_C20B1",
    "bernoulli2.yaml": "bernoulli2",
}

DEFAULTS = {
    "kernel_h": 3, "kernel_w": 3, "stride_h": 1, "stride_w": 1, "dilation_h": 1, "dilation_w": 1,
    "pad_top": 1, "pad_left": 1, "pad_bottom": 1, "pad_right": 1, "input_channel": 4, "output_channel": 4,
    "input_h": 12, "input_w": 12, "mode": None, "scale": 2, "axis": 1, "num_outputs": 2, "num_inputs": 2,
    "stride_batch": 1, "stride_channel": 1, "alpha": 0.1, "beta": 0.5, "block_size": 2,
}
_OP_DEFAULTS = {
    "transposed_conv2d": {"kernel_h": 4, "kernel_w": 4, "stride_h": 2, "stride_w": 2},
    "depthwise_transposed_conv2d": {"kernel_h": 3, "kernel_w": 3, "stride_h": 1, "stride_w": 1},
    "hard_sigmoid": {"alpha": 1 / 6}, "hard_swish": {"alpha": 1 / 6},
    "global_avg_pool": {"input_h": 7, "input_w": 7}, "global_max_pool": {"input_h": 7, "input_w": 7},
    # channels that blocks 2 and 3 divide (a pixel shuffle's block-size cases judge the block alone)
    "depth_to_space": {"input_channel": 36}, "space_to_depth": {"input_channel": 36},
}
#: Modes per op, to pick one a target does not allow.
_MODES = {"resize": ["nearest", "linear", "cubic"], "pad": ["constant", "reflect", "edge"]}


def _ic_taps(t: Target, taps: int, extra: int) -> int:
    return t.channel_parallel * (t.bank_depth // taps + extra)


def _ratio(lo, hi):
    return lambda t: ([{"kernel_w": hi, "kernel_h": hi, "stride_w": 1, "stride_h": 1},
                       {"kernel_w": lo, "kernel_h": lo, "stride_w": 1, "stride_h": 1}],
                      [{"kernel_w": hi + 1, "kernel_h": hi + 1, "stride_w": 1, "stride_h": 1},
                       {"kernel_w": 1, "kernel_h": 1, "stride_w": 2, "stride_h": 2}])


def _ratioset(ok, bad):
    return lambda t: ([{"kernel_w": ok, "kernel_h": ok, "stride_w": 1, "stride_h": 1}],
                      [{"kernel_w": bad, "kernel_h": bad, "stride_w": 1, "stride_h": 1}])


def _cp256(key):
    return lambda t: ([{key: 256 * t.channel_parallel, "kernel_w": 1, "kernel_h": 1, "pad_left": 0, "pad_right": 0,
                        "pad_top": 0, "pad_bottom": 0, "input_h": 2, "input_w": 2}],
                      [{key: 256 * t.channel_parallel + 1, "kernel_w": 1, "kernel_h": 1, "pad_left": 0,
                        "pad_right": 0, "pad_top": 0, "pad_bottom": 0, "input_h": 2, "input_w": 2}])


_K1 = {"kernel_w": 1, "kernel_h": 1, "pad_left": 0, "pad_right": 0, "pad_top": 0, "pad_bottom": 0}

#: formula -> target -> (passing parameter sets, failing parameter sets)
CONSTRAINT_CASES = {
    "dilation_w * input_channel <= 256 * channel_parallel and dilation_h * input_channel <= 256 * channel_parallel":
        lambda t: ([{"dilation_w": 2, "dilation_h": 2, "input_channel": 128 * t.channel_parallel, **_K1,
                     "input_h": 2, "input_w": 2}],
                   [{"dilation_w": 2, "dilation_h": 1, "input_channel": 128 * t.channel_parallel + 1, **_K1,
                     "input_h": 2, "input_w": 2},
                    {"dilation_w": 1, "dilation_h": 2, "input_channel": 128 * t.channel_parallel + 1, **_K1,
                     "input_h": 2, "input_w": 2}]),
    "kernel_w * kernel_h * ceil(input_channel / channel_parallel) <= bank_depth":
        lambda t: ([{"input_channel": _ic_taps(t, 9, 0), "output_channel": 1, "input_h": 3, "input_w": 3}],
                   [{"input_channel": _ic_taps(t, 9, 1), "output_channel": 1, "input_h": 3, "input_w": 3}]),
    "input_channel <= 256 * channel_parallel": _cp256("input_channel"),
    "output_channel <= 256 * channel_parallel": _cp256("output_channel"),
    "kernel_w * kernel_h * ceil(input_channel / 2048) <= 64":
        lambda t: ([{"kernel_w": 8, "kernel_h": 8, "input_channel": 2048, "output_channel": 1, "pad_left": 0,
                     "pad_right": 0, "pad_top": 0, "pad_bottom": 0, "input_h": 8, "input_w": 8}],
                   [{"kernel_w": 8, "kernel_h": 8, "input_channel": 2049, "output_channel": 1, "pad_left": 0,
                     "pad_right": 0, "pad_top": 0, "pad_bottom": 0, "input_h": 8, "input_w": 8}]),
    "256 * kernel_h * kernel_w <= 13760":
        lambda t: ([{"kernel_w": 16, "kernel_h": 3, "pad_left": 0, "pad_right": 0, "input_w": 16}],
                   [{"kernel_w": 16, "kernel_h": 4, "pad_left": 0, "pad_right": 0, "pad_top": 0, "input_w": 16}]),
    "kernel_h * kernel_w <= 431":
        lambda t: ([{"kernel_w": 21, "kernel_h": 20, **_K1 | {}, "pad_left": 0, "input_h": 20, "input_w": 21}],
                   [{"kernel_w": 21, "kernel_h": 21, "pad_left": 0, "input_h": 21, "input_w": 21}]),
    "(6 * stride_w + kernel_w) * kernel_h + 4 <= 512":
        lambda t: ([{"stride_w": 20, "kernel_w": 49, "kernel_h": 3, "input_w": 60}],
                   [{"stride_w": 20, "kernel_w": 50, "kernel_h": 3, "input_w": 60}]),
    "ceil(kernel_h / bank_num) * kernel_w <= bank_depth":
        lambda t: ([{"kernel_h": 256, "kernel_w": min(256, t.bank_depth // 32), "input_channel": 1}],
                   [{"kernel_h": 256, "kernel_w": t.bank_depth // 32 + 1, "input_channel": 1}]),
    "kernel_h * kernel_w <= bank_depth":
        lambda t: ([{"kernel_h": 256, "kernel_w": t.bank_depth // 256, "input_channel": 1}],
                   [{"kernel_h": 256, "kernel_w": t.bank_depth // 256 + 1, "input_channel": 1}]),
    "kernel_w == kernel_h":
        lambda t: ([{"kernel_w": 3, "kernel_h": 3}], [{"kernel_w": 5, "kernel_h": 3}]),
    "1 <= kernel_w / stride_w <= 16 and 1 <= kernel_h / stride_h <= 16": _ratio(1, 16),
    "1 <= kernel_w / stride_w <= 256 and 1 <= kernel_h / stride_h <= 256": _ratio(1, 256),
    "1 <= kernel_w / stride_w <= 8 and 1 <= kernel_h / stride_h <= 8": _ratio(1, 8),
    "(kernel_w / stride_w == 3) and (kernel_h / stride_h == 3)": _ratioset(3, 4),
    "(kernel_w / stride_w == 1 or kernel_w / stride_w == 2 or kernel_w / stride_w == 3 or kernel_w / stride_w == 5 or "
    "kernel_w / stride_w == 7) and (kernel_h / stride_h == 1 or kernel_h / stride_h == 2 or kernel_h / stride_h == 3 "
    "or kernel_h / stride_h == 5 or kernel_h / stride_h == 7)": _ratioset(7, 4),
    "ceil(input_channel / channel_parallel) <= bank_depth":
        lambda t: ([{"input_channel": t.channel_parallel * t.bank_depth, "output_channel": 1}],
                   [{"input_channel": t.channel_parallel * t.bank_depth + 1, "output_channel": 1}]),
    "mode != 'nearest' or ceil(scale / bank_num) * scale * ceil(input_channel / channel_parallel) <= bank_depth":
        lambda t: ([{"mode": "nearest", "scale": 2, "input_h": 1, "input_w": 1,
                     "input_channel": t.channel_parallel * (t.bank_depth // (2 * math.ceil(2 / t.bank_num)))},
                    {"mode": "linear", "scale": 2, "input_h": 1, "input_w": 1,
                     "input_channel": t.channel_parallel * (t.bank_depth // (2 * math.ceil(2 / t.bank_num)) + 1)}],
                   [{"mode": "nearest", "scale": 2, "input_h": 1, "input_w": 1,
                     "input_channel": t.channel_parallel * (t.bank_depth // (2 * math.ceil(2 / t.bank_num)) + 1)}]),
    # the failing axis is the batch: a max over a spatial axis is a MaxPool on an H = 1 view (passes/ops_1d)
    "axis == 1": lambda t: ([{"axis": 1}], [{"axis": 0}]),
    "input_channel <= 128": lambda t: ([{"input_channel": 128}], [{"input_channel": 129}]),
    "input_channel < 2 ** 12": lambda t: ([{"input_channel": 4095}], [{"input_channel": 4096}]),
    "input_channel <= 64": lambda t: ([{"input_channel": 64}], [{"input_channel": 65}]),
    "num_inputs == 2": lambda t: ([{"num_inputs": 2}], [{"num_inputs": 3}]),
    "abs(alpha - 26 / 256) <= 0.01": lambda t: ([{"alpha": 0.1}, {"alpha": 26 / 256}], [{"alpha": 0.2}, {"alpha": 0.01}]),
    "abs(alpha - 1 / 6) <= 0.001 and beta == 0.5":
        lambda t: ([{"alpha": 1 / 6, "beta": 0.5}], [{"alpha": 0.2, "beta": 0.5}, {"alpha": 1 / 6, "beta": 0.6}]),
    "input_channel / group <= 2048 and output_channel / group <= 2048":
        lambda t: ([{"input_channel": 2048, "output_channel": 2, **_K1, "input_h": 1, "input_w": 1}],
                   [{"input_channel": 2049, "output_channel": 2, **_K1, "input_h": 1, "input_w": 1, "only": "conv2d"},
                    {"input_channel": 2, "output_channel": 2 * 2049, **_K1, "input_h": 1, "input_w": 1}]),
    "kernel_h * kernel_w * input_channel / group <= 32768":
        lambda t: ([{"kernel_h": 7, "kernel_w": 7, "input_channel": 668, "output_channel": 1, "input_h": 7,
                     "input_w": 7}],
                   [{"kernel_h": 7, "kernel_w": 7, "input_channel": 669, "output_channel": 1, "input_h": 7,
                     "input_w": 7}]),
    "input_channel <= 2048 and output_channel <= 2048":
        lambda t: ([{"input_channel": 2048, "output_channel": 2048, **_K1 | {"kernel_w": 2, "kernel_h": 2},
                     "input_h": 1, "input_w": 1, "stride_w": 2, "stride_h": 2}],
                   [{"input_channel": 2049, "output_channel": 1, "kernel_w": 2, "kernel_h": 2, "pad_left": 0,
                     "pad_right": 0, "pad_top": 0, "pad_bottom": 0, "input_h": 1, "input_w": 1, "stride_w": 2,
                     "stride_h": 2},
                    {"input_channel": 1, "output_channel": 2049, "kernel_w": 2, "kernel_h": 2, "pad_left": 0,
                     "pad_right": 0, "pad_top": 0, "pad_bottom": 0, "input_h": 1, "input_w": 1, "stride_w": 2,
                     "stride_h": 2}]),
    "input_channel <= 2048": lambda t: ([{"input_channel": 2048, "input_h": 2, "input_w": 2}],
                                        [{"input_channel": 2049, "input_h": 2, "input_w": 2}]),
    "input_channel <= 16384": lambda t: ([{"input_channel": 16384, "output_channel": 1}],
                                         [{"input_channel": 16385, "output_channel": 1}]),
    "ceil(output_channel / 4) <= 1024": lambda t: ([{"output_channel": 4096, "input_channel": 1}],
                                                   [{"output_channel": 4097, "input_channel": 1}]),
    "kernel_h * kernel_w <= 8192": lambda t: ([{"input_h": 64, "input_w": 128, "input_channel": 1}],
                                              [{"input_h": 64, "input_w": 129, "input_channel": 1}]),
    "axis != 1 or input_channel % num_outputs == 0":
        lambda t: ([{"input_channel": 6, "num_outputs": 3}, {"input_channel": 7, "num_outputs": 3, "axis": 2}],
                   [{"input_channel": 7, "num_outputs": 3}]),
    "block_size ** 2 * input_channel <= 256 * channel_parallel":
        lambda t: ([{"block_size": 2, "input_channel": 64 * t.channel_parallel},
                    {"block_size": 4, "input_channel": 16 * t.channel_parallel}],
                   [{"block_size": 2, "input_channel": 64 * t.channel_parallel + 1},
                    {"block_size": 4, "input_channel": 16 * t.channel_parallel + 1}]),
    "1 / 256 < scale <= 256":
        lambda t: ([{"scale": 256, "input_h": 1, "input_w": 1, "input_channel": 1},
                    {"scale": 1 / 128, "input_h": 256, "input_w": 256, "input_channel": 1}],
                   [{"scale": 512, "input_h": 1, "input_w": 1, "input_channel": 1},
                    {"scale": 1 / 256, "input_h": 256, "input_w": 256, "input_channel": 1}]),
}


@dataclass
class Case:
    """One model branch: ``op`` built with ``params``; ``rule`` must pass (``ok``) or fail."""

    name: str
    file: str
    op: str
    rule: str  # "param:<name>" or "expr:<formula>"
    ok: bool
    params: dict = field(default_factory=dict)
    label: str = ""  # constraint label (reason prefix)


# --- building -------------------------------------------------------------------------------

def _conv(p, pre, transposed=False, depthwise=False):
    ic, oc = p["input_channel"], p["output_channel"]
    if depthwise and oc < ic:
        oc = ic  # a depthwise conv's outputs are a multiple of its inputs
    elif depthwise and oc % ic:
        ic = oc
    group = ic if depthwise else p.get("group", 1)
    kh, kw = p["kernel_h"], p["kernel_w"]
    wshape = (ic, oc // group, kh, kw) if transposed else (oc, ic // group, kh, kw)
    w = B.const(f"{pre}w", np.zeros(wshape, np.float32))
    op = "ConvTranspose" if transposed else "Conv"
    node = helper.make_node(op, [f"{pre}x", w.name], [f"{pre}y"], name=f"{pre}node", kernel_shape=[kh, kw],
                            strides=[p["stride_h"], p["stride_w"]], dilations=[p["dilation_h"], p["dilation_w"]],
                            pads=[p["pad_top"], p["pad_left"], p["pad_bottom"], p["pad_right"]], group=group)
    h = max(p["input_h"], (kh - 1) * p["dilation_h"] + 1)
    wd = max(p["input_w"], (kw - 1) * p["dilation_w"] + 1)
    return [node], [B.vi(f"{pre}x", [1, ic, h, wd])], [w]


def _pool(p, pre, op):
    kh, kw = p["kernel_h"], p["kernel_w"]
    node = helper.make_node(op, [f"{pre}x"], [f"{pre}y"], name=f"{pre}node", kernel_shape=[kh, kw],
                            strides=[p["stride_h"], p["stride_w"]],
                            pads=[p["pad_top"], p["pad_left"], p["pad_bottom"], p["pad_right"]])
    return [node], [B.vi(f"{pre}x", [1, p["input_channel"], max(p["input_h"], kh), max(p["input_w"], kw)])], []


def _global_pool(p, pre, op):
    node = helper.make_node(op, [f"{pre}x"], [f"{pre}y"], name=f"{pre}node")
    kh = p["kernel_h"] if p.get("_kernel_set") else p["input_h"]
    kw = p["kernel_w"] if p.get("_kernel_set") else p["input_w"]
    return [node], [B.vi(f"{pre}x", [1, p["input_channel"], kh, kw])], []


def _eltwise(p, pre, op):
    c = p["input_channel"]
    names = [f"{pre}x{i}" for i in range(p["num_inputs"])]
    node = helper.make_node("Sum" if p["num_inputs"] > 2 else op, names, [f"{pre}y"], name=f"{pre}node")
    return [node], [B.vi(n, [1, c, 2, 2]) for n in names], []


def _clamp(p, pre, op):
    """``Max``/``Min`` of a tensor and a scalar constant (a clamp, as TensorFlow exports write it)."""
    bound = B.const(f"{pre}bound", np.full((1, 1, 1, 1), -0.4, np.float32))
    node = helper.make_node(op, [f"{pre}x", bound.name], [f"{pre}y"], name=f"{pre}node")
    return [node], [B.vi(f"{pre}x", [1, p["input_channel"], 2, 2])], [bound]


def _fc(p, pre):
    w = B.const(f"{pre}w", np.zeros((p["output_channel"], p["input_channel"]), np.float32))
    node = helper.make_node("Gemm", [f"{pre}x", w.name], [f"{pre}y"], name=f"{pre}node", transB=1)
    return [node], [B.vi(f"{pre}x", [1, p["input_channel"]])], [w]


def _resize(p, pre):
    mode = p["mode"] or "nearest"
    s = float(p["scale"])
    scales = B.const(f"{pre}s", np.array([1, 1, s, s], np.float32))
    node = helper.make_node("Resize", [f"{pre}x", "", scales.name], [f"{pre}y"], name=f"{pre}node", mode=mode)
    # a linear resize of a 1 x 1 map is the nearest one (the float passes write it so): at least 2 x 2 keeps its mode
    h, w = (p["input_h"], p["input_w"]) if mode == "nearest" else (max(p["input_h"], 2), max(p["input_w"], 2))
    return [node], [B.vi(f"{pre}x", [1, p["input_channel"], h, w])], [scales]


def _pad(p, pre):
    pads = B.const(f"{pre}p", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    node = helper.make_node("Pad", [f"{pre}x", pads.name], [f"{pre}y"], name=f"{pre}node", mode=p["mode"] or "constant")
    return [node], [B.vi(f"{pre}x", [1, p["input_channel"], 4, 4])], [pads]


def _slice(p, pre):
    cs = [B.const(f"{pre}{k}", np.array(v, np.int64)) for k, v in
          (("s", [0, 0]), ("e", [1, 4]), ("a", [0, 1]), ("st", [p["stride_batch"], p["stride_channel"]]))]
    node = helper.make_node("Slice", [f"{pre}x"] + [c.name for c in cs], [f"{pre}y"], name=f"{pre}node")
    return [node], [B.vi(f"{pre}x", [1, 4, 2, 2])], cs


def _axis(p, pre, op):
    attrs = {"axis": p["axis"]} if op == "ArgMax" else {"axes": [p["axis"]]}
    node = helper.make_node(op, [f"{pre}x"], [f"{pre}y"], name=f"{pre}node", keepdims=1, **attrs)
    return [node], [B.vi(f"{pre}x", [1, p["input_channel"], 2, 2])], []


def _split(p, pre):
    c, n, axis = p["input_channel"], p["num_outputs"], p["axis"]
    size = c if axis == 1 else 6
    parts = [size // n + (1 if i < size % n else 0) for i in range(n)]
    sp = B.const(f"{pre}sp", np.array(parts, np.int64))
    outs = [f"{pre}y{i}" for i in range(n)]
    node = helper.make_node("Split", [f"{pre}x", sp.name], outs, name=f"{pre}node", axis=axis)
    shape = [1, c, 6, 6]
    return [node], [B.vi(f"{pre}x", shape)], [sp]


def _act(p, pre, op):
    x = f"{pre}x"
    if op == "LeakyRelu":
        nodes = [helper.make_node("LeakyRelu", [x], [f"{pre}y"], name=f"{pre}node", alpha=p["alpha"])]
    elif op == "HardSigmoid":
        nodes = [helper.make_node("HardSigmoid", [x], [f"{pre}y"], name=f"{pre}node", alpha=p["alpha"], beta=p["beta"])]
    else:  # hard-swish written as x * HardSigmoid(x)
        nodes = [helper.make_node("HardSigmoid", [x], [f"{pre}h"], name=f"{pre}hsig", alpha=p["alpha"], beta=p["beta"]),
                 helper.make_node("Mul", [x, f"{pre}h"], [f"{pre}y"], name=f"{pre}node")]
    return nodes, [B.vi(x, [1, 4, 2, 2])], []


def _block_shuffle(p, pre, op):
    """PixelShuffle / PixelUnshuffle with ``block_size``; a DepthToSpace takes block 1 where the channels do not
    divide by its square (the reverse limit's failing case, 256 * cp + 1 channels, stays a valid model: only
    the channel count is judged).  The map is one block, so SpaceToDepth always divides it."""
    c, b = p["input_channel"], p["block_size"]
    if op == "DepthToSpace" and c % (b * b):
        b = 1
    attrs = {"mode": "CRD"} if op == "DepthToSpace" else {}
    node = helper.make_node(op, [f"{pre}x"], [f"{pre}y"], name=f"{pre}node", blocksize=b, **attrs)
    hw = b if op == "SpaceToDepth" else 2
    return [node], [B.vi(f"{pre}x", [1, c, hw, hw])], []


BUILDERS = {
    "conv2d": lambda p, pre: _conv(p, pre),
    "depthwise_conv2d": lambda p, pre: _conv(p, pre, depthwise=True),
    "transposed_conv2d": lambda p, pre: _conv(p, pre, transposed=True),
    "depthwise_transposed_conv2d": lambda p, pre: _conv(p, pre, transposed=True, depthwise=True),
    "max_pool": lambda p, pre: _pool(p, pre, "MaxPool"),
    "avg_pool": lambda p, pre: _pool(p, pre, "AveragePool"),
    "global_avg_pool": lambda p, pre: _global_pool(p, pre, "GlobalAveragePool"),
    "global_max_pool": lambda p, pre: _global_pool(p, pre, "GlobalMaxPool"),
    "eltwise_add": lambda p, pre: _eltwise(p, pre, "Add"),
    "eltwise_mul": lambda p, pre: _eltwise(p, pre, "Mul"),
    "max": lambda p, pre: _clamp(p, pre, "Max"),
    "min": lambda p, pre: _clamp(p, pre, "Min"),
    "fc": _fc, "resize": _resize, "pad": _pad, "strided_slice": _slice, "split": _split,
    "argmax": lambda p, pre: _axis(p, pre, "ArgMax"),
    "reduce_max": lambda p, pre: _axis(p, pre, "ReduceMax"),
    "leaky_relu": lambda p, pre: _act(p, pre, "LeakyRelu"),
    "hard_sigmoid": lambda p, pre: _act(p, pre, "HardSigmoid"),
    "hard_swish": lambda p, pre: _act(p, pre, "HardSwish"),
    "depth_to_space": lambda p, pre: _block_shuffle(p, pre, "DepthToSpace"),
    "space_to_depth": lambda p, pre: _block_shuffle(p, pre, "SpaceToDepth"),
}


def _params(op: str, over: dict) -> dict:
    p = {**DEFAULTS, **_OP_DEFAULTS.get(op, {}), **over}
    if op.startswith("global_") and ("kernel_h" in over or "kernel_w" in over):
        p["_kernel_set"] = True
    if op == "depthwise_conv2d" or op == "depthwise_transposed_conv2d":
        p.setdefault("output_channel", p["input_channel"])
        if "output_channel" not in over:
            p["output_channel"] = p["input_channel"]
    return p


# --- case generation ------------------------------------------------------------------------

def raw_limits(file: str) -> dict[str, dict]:
    """``{op: {"params": {...}, "constraints": [...]}}`` as written in one data file (unmerged)."""
    data = yaml.safe_load((DATA_DIR / file).read_text())
    return {op: r for op, r in (data.get("ops") or {}).items() if isinstance(r, dict)
            and (r.get("params") or r.get("constraints")) and r.get("supported", True)}


def limit_files() -> list[str]:
    """Every data file that states limits of its own."""
    return sorted(p.name for p in Path(DATA_DIR).glob("*.yaml") if raw_limits(p.name))


def _partner(rule: dict, pname: str, names: dict) -> dict:
    """For ``kernel_w`` etc.: the ``_h`` twin set to an allowed value, so only ``pname`` is judged."""
    stem, _, side = pname.rpartition("_")
    if stem not in ("kernel", "stride", "dilation") or side not in ("w", "h"):
        return {}
    twin = f"{stem}_{'h' if side == 'w' else 'w'}"
    lim = (rule.get("params") or {}).get(twin)
    if lim is None:
        return {}
    if lim.get("range") is not None:
        return {twin: int(evaluate(lim["range"][0], names))}
    return {twin: sorted(lim["values"])[0]}


def _param_cases(t: Target, op: str, pname: str, limit, rule: dict) -> tuple[list[dict], list[dict]]:
    base = _params(op, {})
    names = {**t.hardware_names(), **base}
    ok, bad = _param_values(op, pname, limit, names)
    twin = _partner(rule, pname, names)
    return [{**twin, **o} for o in ok], [{**twin, **b} for b in bad]


def _param_values(op: str, pname: str, limit, names: dict) -> tuple[list[dict], list[dict]]:
    if limit.get("range") is not None:
        lo, hi = (evaluate(b, names) for b in limit["range"])
        lo, hi = int(math.floor(lo)), int(math.floor(hi))
        ok = [{pname: hi}, {pname: lo}]
        bad = [{pname: hi + 1}]
        floor = 0 if pname.startswith("pad") else 1
        if lo - 1 >= floor:
            bad.append({pname: lo - 1})
        return ok, bad
    values = list(limit["values"])
    if all(isinstance(v, str) for v in values):
        others = [m for m in _MODES[op] if m not in values]
        return [{pname: v} for v in values], [{pname: others[0]}]
    nums = sorted(int(v) for v in values)
    gaps = [v for v in range(nums[0], nums[-1]) if v not in nums]
    bad = [{pname: nums[-1] + 1}] + ([{pname: gaps[0]}] if gaps else [])
    return [{pname: v} for v in nums], bad


def cases_for(file: str) -> list[Case]:
    t = load_target(FILE_TARGETS.get(file, file.removesuffix(".yaml")))
    out: list[Case] = []
    for op, rule in raw_limits(file).items():
        if op not in BUILDERS:
            raise KeyError(f"{file}: no test model builder for op {op!r}")
        for pname, limit in (rule.get("params") or {}).items():
            ok, bad = _param_cases(t, op, pname, limit, rule)
            for k, (sets, flag) in enumerate(((ok, True), (bad, False))):
                for j, over in enumerate(sets):
                    out.append(Case(f"{op}.{pname}.{'ok' if flag else 'bad'}{j}", file, op, f"param:{pname}", flag,
                                    _params(op, over)))
        for c in rule.get("constraints") or []:
            expr = c["expr"]
            if expr not in CONSTRAINT_CASES:
                raise KeyError(f"{file}: no boundary case for constraint {expr!r}")
            ok, bad = CONSTRAINT_CASES[expr](t)
            for sets, flag in ((ok, True), (bad, False)):
                for j, over in enumerate(sets):
                    if over.pop("only", op) != op:
                        continue  # e.g. a depthwise conv's input_channel / group is always 1
                    out.append(Case(f"{op}.c{len(out)}.{'ok' if flag else 'bad'}{j}", file, op, f"expr:{expr}", flag,
                                    _params(op, over), c.get("label", "")))
    return out


def build_model(cases: list[Case]):
    """All cases as independent branches of one model (names prefixed ``case<i>/``)."""
    nodes, inputs, outputs, inits = [], [], [], []
    for i, case in enumerate(cases):
        pre = f"case{i}/"
        n, ins, w = BUILDERS[case.op](case.params, pre)
        nodes += n
        inputs += ins
        inits += w
        produced = {o for node in n for o in node.output}
        consumed = {x for node in n for x in node.input}
        outputs += [onnx.ValueInfoProto(name=o) for o in sorted(produced - consumed)]
    return B.model(nodes, inputs, outputs, inits, name="limits")
