"""What happens between an op's wide accumulator and its quantized output.

The quantized model writes a fused activation as float nodes between the op and its quantize
step (``docs/quantized-model-format.md`` §1.4).  The compiler turns that chain into one of two
epilogues, both equal to ONNX Runtime's float execution of the chain:

* ``int``: only ``Relu``/``Clip`` with constant bounds.  Because quantization is monotone,
  ``Q(clip(x, a, b)) == clip(Q(x), Q(a), Q(b))``, so the epilogue is pure integer arithmetic:
  requantise the accumulator (``numerics.shift_round`` on power-of-two scales; on float scales
  what ONNX Runtime computes, see :func:`make_epilogue`), then clamp to the quantized bounds.
* ``float``: anything else that is elementwise (LeakyReLU 26/256, the DPU hard-sigmoid
  ``Add/Clip/Mul`` chain, hard-swish).  The accumulator's real value (exact in float32 on
  power-of-two targets while |acc| < 2^24) goes through the same float32 operations ONNX Runtime
  performs, then :func:`numerics.quantize` with the output's tie rule.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..check.lowerable import chain_to_quantize
from ..numerics import multipliers_with_float32_form, qrange, quantize_multiplier, requant_scale
from ..numerics import quantize as nq
from ..operators import CHAIN_OPS, clip_bounds as node_clip_bounds
from ..graph import attr
from .manifest_schema import MAX_LEFT_SHIFT
from .qgraph import QGraph, QParams


def collect_chain(
    g: QGraph, t0: str, start: list[onnx.NodeProto], allowed: frozenset[str] = CHAIN_OPS
) -> tuple[list[onnx.NodeProto], onnx.NodeProto, QParams] | None:
    """Float nodes from ``start`` (reading ``t0``) up to exactly one quantize step and its
    parameters, or ``None`` (the rule is :func:`~npuflow.check.lowerable.chain_to_quantize`,
    shared with the checker)."""
    found = chain_to_quantize(t0, start, g.facts, allowed)
    if found is None:
        return None
    params = g.quantize_params(found[1])
    if params is None or not params.per_tensor:
        return None
    return found[0], found[1], params


def _scalar_const(g: QGraph, name: str) -> bool:
    c = g.const(name)
    return c is not None and c.size == 1 and c.dtype.kind == "f"


def _const_value(g: QGraph, name: str) -> float:
    return float(np.asarray(g.const(name), dtype=np.float32).reshape(-1)[0])


def clip_bounds(g: QGraph, chain: list[onnx.NodeProto]) -> list[tuple[float, float]] | None:
    """Float bounds of a chain made only of ``Relu``/``Clip`` in sequence, else ``None``."""
    bounds = []
    prev = None
    for n in chain:
        if prev is not None and n.input[0] != prev:
            return None
        if n.op_type == "Relu":
            bounds.append((0.0, float("inf")))
        elif n.op_type == "Clip":
            lo, hi = node_clip_bounds(n, g.scalar)
            bounds.append((float("-inf") if lo is None else lo, float("inf") if hi is None else hi))
        else:
            return None
        prev = n.output[0]
    return bounds


def chain_program(g: QGraph, t0: str, chain: list[onnx.NodeProto]) -> list[dict]:
    """The chain as JSON steps for :func:`npuflow.runtime.epilogues.eval_chain`.

    References: ``{"t": name}`` (``t0`` is ``"$x"``) or ``{"c": float32 value}``.
    """
    steps = []
    for n in chain:
        refs = []
        for i in n.input:
            if not i:
                refs.append(None)
            elif i == t0:
                refs.append({"t": "$x"})
            elif _scalar_const(g, i):
                refs.append({"c": _const_value(g, i)})
            else:
                refs.append({"t": i})
        attrs = {}
        for key in ("alpha", "beta", "min", "max"):
            v = attr(n, key)
            if v is not None:
                attrs[key] = float(v)
        steps.append({"op": n.op_type, "in": refs, "out": n.output[0], "attrs": attrs})
    return steps


def out_spec(p: QParams) -> dict:
    """Output quantization of an op (per tensor)."""
    return {
        "scale": p.scalar_scale(),
        "zp": p.scalar_zp(),
        "dtype": p.dtype,
        "round": p.round_mode.value,
    }


def quantize_scalar(value: float, p: QParams) -> int:
    """The output code of a real ``value`` (for clamp bounds); infinities saturate."""
    qmin, qmax = qrange(p.bits, p.signed)
    if value == float("inf"):
        return qmax
    if value == float("-inf"):
        return qmin
    return int(nq(np.float32(value), p.scalar_scale(), p.scalar_zp(), bits=p.bits, signed=p.signed,
                  round_mode=p.round_mode))


def clamps_are_noop(g: QGraph, chain: list[onnx.NodeProto], out: QParams) -> bool:
    """Whether the chain is only Relu/Clip whose bounds the output's code range already applies
    (ONNX Runtime's Relu/Clip-into-quantize fusions then drop it and fuse the op itself)."""
    bounds = clip_bounds(g, chain)
    if bounds is None:
        return False
    qmin, qmax = qrange(out.bits, out.signed)
    return all(quantize_scalar(lo, out) <= qmin and quantize_scalar(hi, out) >= qmax for lo, hi in bounds)


def make_epilogue(
    g: QGraph, t0: str, chain: list[onnx.NodeProto], acc_scale: np.ndarray, out: QParams,
    pow2_shift: np.ndarray | None, force_float: bool = False, ort_kernel: bool = False,
    acc_range: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """Epilogue for an accumulator whose real value is ``acc * acc_scale`` (per channel).

    ``pow2_shift`` is ``fix(acc) - fix(out)`` when every scale is a power of two;
    ``force_float`` asks for the float form whatever the chain (average pooling divides first).
    On float scales, ``ort_kernel`` says that ONNX Runtime runs this group as an integer
    ``QLinear*`` kernel (when the chain is no more than a clamp the output range applies): the
    requantisation is then that kernel's float32 multiplier (``numerics.requantize_float``).
    Otherwise ORT computes the op in float32 and rounds the (almost exact) real value, which a
    31-bit fixed-point multiplier reproduces most closely (``numerics.requantize_fixed_point``).
    ``acc_range``: the accumulator's reachable range per channel (:func:`accumulator_range`), where
    known; a fixed-point channel then takes ``numerics.multipliers_with_float32_form``'s multiplier
    (a float32 multiplier computes it exactly: the runtime needs no fix channels for it).
    """
    spec = out_spec(out)
    bounds = None if force_float else clip_bounds(g, chain)
    if bounds is not None:
        spec["clamps"] = [[quantize_scalar(lo, out), quantize_scalar(hi, out)] for lo, hi in bounds]
        if pow2_shift is not None:
            spec["mode"] = "shift"
            # A left shift of 32 already saturates any non-zero accumulator into an 8/16-bit
            # output, so longer ones (degenerate scales) are clamped there, exactly.
            spec["shift"] = _compact(np.maximum(pow2_shift.astype(np.int64), -MAX_LEFT_SHIFT))
        elif ort_kernel and clamps_are_noop(g, chain, out):
            spec["mode"] = "scale"
            spec["multiplier"] = _compact(requant_scale(np.asarray(acc_scale).reshape(-1), out.scalar_scale()))
        else:
            ratios = np.asarray(acc_scale, np.float64).reshape(-1) / out.scalar_scale()
            if acc_range is None:
                pairs = [quantize_multiplier(float(r)) for r in ratios]
                mult, shift = np.array([m for m, _ in pairs], np.int64), np.array([s for _, s in pairs], np.int64)
            else:
                lo, hi = qrange(out.bits, out.signed)
                for a, b in spec["clamps"]:
                    lo, hi = min(max(lo, a), hi), max(min(hi, b), lo)
                zp = spec["zp"]
                mult, shift = multipliers_with_float32_form(ratios, *acc_range, lo - zp, hi - zp, out.round_mode)
            spec["mode"] = "fixed"
            spec["multiplier"] = _compact(mult)
            spec["shift"] = _compact(shift)
        return spec
    spec["mode"] = "float"
    spec["acc_scale"] = _compact(np.asarray(acc_scale, np.float32).reshape(-1))
    spec["chain"] = chain_program(g, t0, chain)
    spec["result"] = chain[-1].output[0] if chain else "$x"
    return spec


def accumulator_range(bias_acc: np.ndarray, w: np.ndarray, axis: int, reach: int) -> tuple[np.ndarray, np.ndarray]:
    """Each output channel's reachable accumulators of a convolution or fully connected layer:
    ``bias +- reach * sum|w|`` (``w`` integer weights, output channels along ``axis``; ``reach``
    the largest ``|q - zp|`` of the input's codes), a superset of what the runtime proves
    (``runtime/fused_fixed.FixedPoint.of_layer``, from the same weights and often tighter input
    codes), so a multiplier chosen exact over it is exact there too."""
    sums = np.abs(np.asarray(w, np.int64)).sum(axis=tuple(i for i in range(np.ndim(w)) if i != axis % np.ndim(w)))
    bias = np.asarray(bias_acc, np.int64).reshape(-1)
    return bias - reach * sums, bias + reach * sums


def _compact(values: np.ndarray) -> int | float | list:
    """A scalar when all channels agree (JSON stays small and kernels stay scalar)."""
    flat = np.asarray(values).reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return flat[0].item()
    return flat.tolist()
