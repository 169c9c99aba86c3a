"""Epilogues of the NPU executor's kernels: what turns an exact accumulator into output codes.

An op's ``epilogue`` (written by ``npuflow/compiler/epilogue.py``) is requantisation plus an
optional fused chain (ReLU/Clip, LeakyReLU, hard-sigmoid, hard-swish) evaluated exactly as ONNX
Runtime does; ``make_epilogue`` and ``make_float_finish`` turn it into a closure once per session.
Rounding and requantisation are :mod:`npuflow.numerics` only.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .. import numerics as nm


def per_channel(value, axis: int, ndim: int) -> np.ndarray | int | float:
    """A scalar as it is; one value per channel (a JSON list, or a loaded file's array) shaped to
    broadcast along ``axis``."""
    if np.ndim(value):
        shape = [1] * ndim
        shape[axis] = -1
        return np.asarray(value).reshape(shape)
    return value


def eval_chain(v: np.ndarray, steps: list[dict], result: str) -> np.ndarray:
    """Run a fused float chain (JSON form of :func:`epilogue.chain_program`) in float32."""
    env = {"$x": v}

    def get(ref):
        if ref is None:
            return None
        return env[ref["t"]] if "t" in ref else np.float32(ref["c"])

    for st in steps:
        args = [get(r) for r in st["in"]]
        op, a = st["op"], st["attrs"]
        x = args[0]
        if op == "Relu":
            y = np.maximum(x, np.float32(0))
        elif op == "Clip":
            lo = args[1] if len(args) > 1 and args[1] is not None else a.get("min")
            hi = args[2] if len(args) > 2 and args[2] is not None else a.get("max")
            y = x
            if lo is not None:
                y = np.maximum(y, np.float32(lo))
            if hi is not None:
                y = np.minimum(y, np.float32(hi))
        elif op == "LeakyRelu":
            y = np.where(x >= 0, x, x * np.float32(a.get("alpha", 0.01)))
        elif op == "Add":
            y = x + args[1]
        elif op == "Sub":
            y = x - args[1]
        elif op == "Mul":
            y = x * args[1]
        elif op == "Div":
            y = x / args[1]
        elif op == "HardSigmoid":
            y = np.clip(np.float32(a.get("alpha", 0.2)) * x + np.float32(a.get("beta", 0.5)), 0, 1)
        elif op == "HardSwish":
            y = x * np.clip(x * np.float32(1 / 6) + np.float32(0.5), 0, 1)
        else:
            raise ValueError(f"unsupported chain op {op}")
        env[st["out"]] = np.asarray(y, dtype=np.float32)
    return env[result]


def chain_bounds(steps: list[dict], result: str, lo: float, hi: float) -> tuple[np.float32, np.float32] | None:
    """Bounds of :func:`eval_chain`'s result over every float32 input in ``lo..hi``, or ``None``
    where an op's bounds are not known (a division by a range holding 0, a LeakyReLU with a
    negative slope).

    Each step's float32 result is bounded by the same float32 operations on its inputs' bounds:
    IEEE rounding to nearest is monotone, so a sum, a clamp or a product of non-negative values
    moves with its operands, and a product's or quotient's extremes are at the corners.  The
    bounds may be wider than the true range (an input used twice is bounded twice), never
    narrower, which is what a proof that a range of inputs gives one code needs.
    """
    f32 = np.float32
    env = {"$x": (f32(lo), f32(hi))}

    def get(ref):
        if ref is None:
            return None
        if "t" in ref:
            return env[ref["t"]]
        return (f32(ref["c"]), f32(ref["c"]))

    def corners(op, x, y):
        v = [op(a, b) for a in x for b in y]
        return min(v), max(v)

    for st in steps:
        args = [get(r) for r in st["in"]]
        op, a = st["op"], st["attrs"]
        x = args[0]
        if op == "Relu":
            y = (max(x[0], f32(0)), max(x[1], f32(0)))
        elif op == "Clip":
            lo_ = args[1] if len(args) > 1 and args[1] is not None else (
                None if a.get("min") is None else (f32(a["min"]),) * 2)
            hi_ = args[2] if len(args) > 2 and args[2] is not None else (
                None if a.get("max") is None else (f32(a["max"]),) * 2)
            y = x
            if lo_ is not None:
                y = (max(y[0], lo_[0]), max(y[1], lo_[1]))
            if hi_ is not None:
                y = (min(y[0], hi_[0]), min(y[1], hi_[1]))
        elif op == "LeakyRelu":
            alpha = f32(a.get("alpha", 0.01))
            if alpha < 0:
                return None
            y = tuple(v if v >= 0 else v * alpha for v in x)
        elif op == "Add":
            y = (x[0] + args[1][0], x[1] + args[1][1])
        elif op == "Sub":
            y = (x[0] - args[1][1], x[1] - args[1][0])
        elif op == "Mul":
            y = corners(lambda u, v: u * v, x, args[1])
        elif op == "Div":
            if args[1][0] <= 0 <= args[1][1]:
                return None
            y = corners(lambda u, v: u / v, x, args[1])
        elif op in ("HardSigmoid", "HardSwish"):
            alpha, beta = (f32(a.get("alpha", 0.2)), f32(a.get("beta", 0.5))) if op == "HardSigmoid" \
                else (f32(1 / 6), f32(0.5))
            ends = sorted(min(max(alpha * v + beta, f32(0)), f32(1)) for v in x)
            y = tuple(ends) if op == "HardSigmoid" else corners(lambda u, v: u * v, x, ends)
        else:
            raise ValueError(f"unsupported chain op {op}")
        env[st["out"]] = (f32(y[0]), f32(y[1]))
    return env[result]


def out_type(ep: dict) -> tuple[int, bool]:
    dt = np.dtype(ep["dtype"])
    return dt.itemsize * 8, dt.kind == "i"


def make_epilogue(ep: dict, axis: int, ndim: int) -> Callable[[np.ndarray], np.ndarray]:
    """Accumulator (int64, channels on ``axis``) -> output codes."""
    bits, signed = out_type(ep)
    qmin, qmax = nm.qrange(bits, signed)
    dtype = nm.storage_dtype(bits, signed)
    mode = ep["mode"]
    zp = ep["zp"]
    rnd = ep["round"]
    if mode in ("shift", "fixed", "scale"):
        shift = per_channel(ep.get("shift", 0), axis, ndim)
        mult = per_channel(ep.get("multiplier", 1), axis, ndim)
        lo, hi = qmin, qmax
        for a, b in ep.get("clamps", []):
            lo, hi = min(max(lo, a), hi), max(min(hi, b), lo)

        def run(acc: np.ndarray) -> np.ndarray:
            if mode == "shift":
                y = nm.shift_round(acc, shift, rnd)
            elif mode == "scale":
                y = nm.requantize_float(acc, mult, rnd)
            else:
                y = nm.requantize_fixed_point(acc, mult, shift, rnd)
            if zp:
                y += zp
            np.clip(y, lo, hi, out=y)
            return y.astype(dtype)

        return run
    acc_scale = np.float32(1) * per_channel(ep["acc_scale"], axis, ndim)
    acc_scale = np.asarray(acc_scale, dtype=np.float32)
    finish = make_float_finish(ep)

    def run_float(acc: np.ndarray) -> np.ndarray:
        return finish(acc.astype(np.float32) * acc_scale)

    return run_float


def make_float_finish(ep: dict) -> Callable[[np.ndarray], np.ndarray]:
    """Float32 value of an op -> fused chain -> the output's quantize step."""
    bits, signed = out_type(ep)
    steps, result = ep.get("chain", []), ep.get("result", "$x")

    def finish(v: np.ndarray) -> np.ndarray:
        if steps:
            v = eval_chain(v, steps, result)
        return nm.quantize(v, ep["scale"], ep["zp"], bits=bits, signed=signed, round_mode=ep["round"])

    return finish
