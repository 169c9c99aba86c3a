"""From plan + statistics to the parameters and integer values of every quantized tensor.

Scale groups are resolved here: a group takes the settings of its first activation member, at
the widest bit width of any member, and a range covering every member (on power-of-two targets
the smallest fix position), so all members share one scale and zero point.  Why the widest: the
members of a group are one integer tensor on the chip (a MaxPool's output is its input's codes),
so a layer raised to 16 bits raises the tensors it shares a scale with.  Weights get parameters from their values; biases get
``s_in * s_w`` once input and weight scales are known.  The integer values of constants
(weights, biases, other constant operands) are computed here with :mod:`npuflow.numerics`; the
accuracy algorithms (bias correction, AdaRound, AdaQuant) change the integer constants of the
exported model; :mod:`.requantize` carries them into re-assignments with precision overrides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import numpy_helper

from .. import numerics, operators
from ..graph import GraphView
from .calibrate import Statistics
from .config import TensorSettings
from .params import TensorQuant, activation_params, bias_params, from_range, weight_params
from ..check.lowerable import MAX_ALIGN_SHIFT
from .plan import ConstUse, QuantPlan, node_key

log = logging.getLogger(__name__)

#: Smallest activation range used for a scale (an all-zero tensor still needs a finite scale).
MIN_RANGE = 1e-6


def fixed_interval(bounds: tuple[float, float], s: TensorSettings) -> tuple[float, float, int | None]:
    """The range (and power-of-two fix position) of an op's fixed output interval
    (``operators.FIXED_OUTPUT_RANGE``, a sigmoid's [0, 1]) under settings ``s``.

    Float scales take the interval as it is.  On a power-of-two grid the bound itself would cost a
    whole bit: 1.0 is just past the largest int8 code at scale 2**-7 (127/128), so covering it
    takes 2**-6 and doubles the step of every probability (PP-OCRv4 rec's seven swish sigmoids on
    B4096: 88.0 -> 87.0 % lines, docs/accuracy.md).  The grid's top need only be within one step
    of the bound, as TFLite's int8 sigmoid (scale 1/256, top 255/256) is: the position is the
    finest whose (largest code + 1) steps reach the bound, and outputs above the top saturate
    there, at most one step off."""
    lo, hi = float(bounds[0]), float(bounds[1])
    if s.scale_type != "power_of_two":
        return lo, hi, None
    qmax = numerics.qrange(s.bit_width, True)[1]  # power-of-two positions count signed codes (pow2_fix_pos)
    bound = max(abs(lo), abs(hi))
    fix = int(np.floor(np.log2((qmax + 1) / bound)))
    top = float(numerics.pow2_scale(fix)) * qmax
    return max(lo, -top), min(hi, top), fix


@dataclass
class Assignment:
    """Quantization parameters per tensor name and the integer values of constants."""

    params: dict[str, TensorQuant] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # constant name -> integers (storage dtype)


def assign(model: onnx.ModelProto, plan: QuantPlan, stats: Statistics, cache: dict | None = None) -> Assignment:
    """Parameters of every point and constant of ``plan``, integer values of the constants.

    ``cache``: a dict kept between calls on the same model and statistics (the precision
    overrides of :mod:`.requantize`): a tensor's range search (histogram methods, per-channel
    weight searches) runs once per settings, not once per call."""
    inits = {t.name: t for t in model.graph.initializer}
    memo = {} if cache is None else cache

    def searched(key: tuple, compute):
        if key not in memo:
            memo[key] = compute()
        return memo[key]

    def const_value(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).astype(np.float32)

    out = Assignment()
    members: dict[str, list[str]] = {}
    for t in [*plan.points, *plan.consts]:
        members.setdefault(plan.find(t), []).append(t)
    group_ids = {root: i for i, (root, ms) in enumerate(members.items()) if len(ms) > 1}
    view = GraphView(model)

    def saturating_readers(tensor: str) -> tuple[list[onnx.NodeProto], bool]:
        """The sigmoids reading ``tensor``, and whether nothing else reads it."""
        readers = view.consumer_nodes(tensor)
        sat = [c for c in readers if c.op_type in operators.SATURATION_INPUT]
        return sat, bool(sat) and len(sat) == len(readers) and not view.is_graph_output(tensor)

    for root, names in members.items():
        points = [plan.points[n] for n in names if n in plan.points]
        consts = [plan.consts[n] for n in names if n in plan.consts and plan.consts[n].role == "constant"]
        if not points:
            continue
        settings = points[0].settings
        widest = max(p.settings.bit_width for p in points)
        if widest != settings.bit_width:
            settings = settings.model_copy(update={"bit_width": widest})
        lo, hi, fixes = 0.0, 0.0, []
        for p in points:
            made_by = view.producer_node(p.name)
            fixed = operators.FIXED_OUTPUT_RANGE.get(made_by.op_type) if made_by is not None else None
            if fixed is not None:  # the op's own interval, whatever calibration saw
                flo, fhi, fix = fixed_interval(fixed, settings)
                lo, hi = min(lo, flo), max(hi, fhi)
                if fix is not None:
                    fixes.append(fix)
                continue
            mm = stats.minmax.get(p.name)
            if mm is None or mm.count == 0:
                log.warning("no calibration statistics for %s; it gets a unit range", p.name)
                continue
            plo, phi, fix = searched(("activation", p.name, p.kind, settings.model_dump_json()),
                                     lambda: activation_params(p.name, p.kind, settings, mm, stats.hist.get(p.name)))
            lo, hi = min(lo, plo), max(hi, phi)
            if fix is not None:
                fixes.append(fix)
        for c in consts:
            v = const_value(c.name)
            lo, hi = min(lo, float(v.min(initial=0.0))), max(hi, float(v.max(initial=0.0)))
            fixes = []  # the group range now includes constants: recompute the position from the range
        if max(abs(lo), abs(hi)) < MIN_RANGE:
            lo, hi = (-MIN_RANGE if settings.signed else 0.0), MIN_RANGE
        readers = [saturating_readers(p.name) for p in points]
        reach = max((operators.SATURATION_INPUT[c.op_type](settings.bit_width) for sat, _ in readers for c in sat),
                    default=0.0)
        if reach and not lo < 0.0 < hi:
            # the input of a sigmoid calibrated on one sign: both signs, so the output reaches both
            # of its halves; a range that crosses zero already does (a swish input keeps its steps)
            lo, hi, fixes = min(lo, -min(hi, reach)), max(hi, min(-lo, reach)), []
        if reach and all(only for _, only in readers) and (lo < -reach or hi > reach):
            # and no further than the sigmoid can tell apart: a DB text map's logits span -218..135
            # on photos, a step of 2.0 where the map's edges need a fraction of one
            lo, hi, fixes = max(lo, -reach), min(hi, reach), []
        fix = min(fixes) if fixes and settings.scale_type == "power_of_two" else None
        gid = group_ids.get(root)
        for p in points:
            q = from_range(p.name, p.kind, settings, lo, hi, fix_pos=fix)
            q.group = gid
            out.params[p.name] = q
        for c in consts:
            q = from_range(c.name, "constant", settings, lo, hi, fix_pos=fix)
            q.group, q.round_mode = gid, c.settings.round_mode
            out.params[c.name] = q
            out.values[c.name] = q.quantize(const_value(c.name))

    for name, use in plan.consts.items():
        if name in out.params or use.role == "bias":
            continue
        kind = "weight" if use.role == "weight" else "constant"

        def quantized(name: str = name, use=use, kind: str = kind) -> tuple[TensorQuant, np.ndarray]:
            q = weight_params(name, const_value(name), use.settings, use.axis, kind=kind)
            return q, q.quantize(const_value(name))

        out.params[name], out.values[name] = searched(("weight", name, kind, use.axis, use.settings.model_dump_json()),
                                                      quantized)

    nodes = {node_key(n): n for n in model.graph.node}
    for name, use in plan.consts.items():
        if use.role == "constant" and use.op_type in ("Add", "Sub") and use.node in nodes:
            _within_alignment(out, name, use, nodes[use.node], const_value(name))
    for name, use in plan.consts.items():
        if use.role != "bias":
            continue
        s_in = out.params.get(use.input_tensor) if use.input_tensor else None
        w = out.params.get(use.weight) if use.weight else None
        if s_in is None or w is None or s_in.scale.ndim != 0:
            continue
        if use.settings.scale_type != "power_of_two":  # float scales: keep the accumulator within int32
            w = _widened_for_bias(w, const_value(use.weight), const_value(name), s_in)
            if w is not out.params[use.weight]:
                out.params[use.weight], out.values[use.weight] = w, w.quantize(const_value(use.weight))
        q = bias_params(name, s_in.scale, w.scale, use.settings)
        out.params[name] = q
        out.values[name] = requantize_bias(const_value(name), q)
    return out


def _within_alignment(out: Assignment, name: str, use: ConstUse, node: onnx.NodeProto, values: np.ndarray) -> None:
    """A power-of-two constant operand of an ``Add``/``Sub`` whose own grid is more than
    :data:`~npuflow.check.lowerable.MAX_ALIGN_SHIFT` steps finer than the other operand's moves to the
    finest grid the integer program aligns (that many steps finer).  An epsilon such as DCCRN's
    ``sqrt(re*re + im*im + 1e-8)`` got a scale of ``2**-33`` beside a sum at ``2**3``: no int32 shift
    aligns them, so compile ran the Add on the CPU where check had placed it on the DPU (round 28b).
    Only values below ``2**-31`` of the other operand's step round differently, far under the output's
    own step; a constant that needs its fine grid for a value that matters keeps it."""
    q, other = out.params.get(name), next((out.params.get(t) for t in node.input[:2] if t and t != name), None)
    if q is None or other is None or q.scale.size != 1 or other.scale.size != 1 or np.any(q.zero_point):
        return
    fc, fo = numerics.fix_pos_of(q.scale), numerics.fix_pos_of(other.scale)
    if fc is None or fo is None or int(fc) - int(fo) <= MAX_ALIGN_SHIFT:
        return
    fix = int(fo) + MAX_ALIGN_SHIFT
    q = from_range(name, "constant", use.settings, float(values.min(initial=0.0)), float(values.max(initial=0.0)),
                   fix_pos=fix)
    out.params[name], out.values[name] = q, q.quantize(values)


def _widened_for_bias(w: TensorQuant, weights: np.ndarray, bias: np.ndarray, x: TensorQuant) -> TensorQuant:
    """``w`` with the scale of every output channel whose accumulator could leave int32 widened
    until it cannot.

    The bias is quantized with scale ``s_x * s_w``; a channel whose weights are all (nearly)
    zero gets a tiny per-channel ``s_w``, and its bias then a code beyond int32 (saturated), or
    one so close to the limit that the sum of products overflows the int32 accumulator of ONNX
    Runtime's integer kernels (MLAS), which wraps around where ``numerics`` keeps the exact sum.
    Widening such a channel's scale until ``|bias code| + max|x - zp| * sum|w code|`` fits
    int32 changes nothing else: its weights are too small to matter at the wider step (ONNX
    Runtime's quantizer widens the weight scale for the same reason).
    """
    scale = np.asarray(w.scale, np.float64)
    bias = np.asarray(bias, np.float64).reshape(-1)
    per_channel = scale.ndim == 1
    taps = np.asarray(weights).size // (len(scale) if per_channel else 1)
    lo, hi = numerics.qrange(x.bits, x.signed)
    zp = int(np.max(x.zero_point))
    reach = max(hi - zp, zp - lo)
    w_max = numerics.qrange(w.bits, True, w.narrow_range)[1]
    room = 2.0 ** 31 - 1 - reach * w_max * taps  # the largest bias code that cannot overflow
    if room <= 0:
        return w
    s_x = float(np.asarray(x.scale, np.float32))
    need = np.abs(bias) / (s_x * room)
    if not per_channel:
        need = np.max(need, initial=0.0)
    if np.all(need <= scale):
        return w
    widened = np.maximum(scale, need * (1 + 1e-6)).astype(np.float32)
    return replace(w, scale=widened if per_channel else widened.reshape(()))


def requantize_bias(values: np.ndarray, q: TensorQuant) -> np.ndarray:
    """int32 bias values (float64 division: int32 codes exceed float32's exact range)."""
    s = np.asarray(q.scale, dtype=np.float64)
    v = numerics.round_values(np.asarray(values, dtype=np.float64) / s, q.round_mode)
    lo, hi = numerics.qrange(32, True)
    return np.clip(v, lo, hi).astype(np.int32)
