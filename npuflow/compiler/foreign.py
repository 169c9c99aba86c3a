"""Legalisation of quantized models made by other tools, run at the start of ``compile``.

ONNX Runtime, NNCF and Brevitas write quantized models that mean the same as npuflow's QDQ form
(``docs/quantized-model-format.md``) but spell it differently, so the lowering would find no
``DQ -> op -> Q`` pattern and leave every convolution on the CPU.  Each rewrite here keeps the
model's arithmetic as ONNX Runtime runs it and returns a note saying what it changed:

* QOperator ops (``QLinearConv``, ``QLinearMatMul``, ``QGemm``, ``QLinearAdd``, ...) become
  ``DequantizeLinear -> float op -> QuantizeLinear``; ops run directly on integer tensors
  (QOperator's ``MaxPool``/``Reshape``) are wrapped in a DQ/Q pair of the same parameters.
* A ``QuantizeLinear`` of a float constant (NNCF, Brevitas weights) is folded into the integer
  weights it computes.
* Brevitas' ``QuantizeLinear -> Clip -> DequantizeLinear``: on a weight the clip is applied to the
  stored integers; on an activation it becomes a float ``Clip`` before the quantize step (exact:
  rounding is monotone and the bounds are integers), or disappears when it clips nothing.
* A grid-preserving op (``MaxPool``, ``Relu``, reshapes) that the target has, between a DQ and a
  Conv/Gemm/MatMul, gets a quantize step with its input's parameters: its outputs already lie on
  that grid, so the step is exact and the op and the layer after it can be lowered (NNCF;
  ``check.lowerable.grid_step``, which the checker asks too).
* NNCF's float bias of a layer whose input and weight are quantized and whose output reaches a
  quantize step becomes an int32 bias at ``sx * sw`` (what ONNX Runtime's quantizer writes; within
  one LSB of the float bias); ``check.lowerable.float_bias_limit`` decides it for both sides.
* On symmetric targets, uint8 tensors with zero point 128 (ORT's symmetric uint8) become int8 with
  zero point 0 (exact).

`check_target_numerics` then refuses what the target's ``numerics`` cannot run (float scales
on a power-of-two target, non-zero zero points on a symmetric one, per-channel scales where
weights are per tensor), naming the first tensor.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import numerics
from ..check.lowerable import float_bias_limit, folded_weight, grid_step
from ..errors import NpuflowError
from ..graph import attr, attr_values
from ..model import tensor_elem_types
from ..operators import VALUE_MOVING_OPS
from ..targets import Target
from .epilogue import collect_chain
from .qgraph import QGraph, QParams

_MS = "com.microsoft"
#: QOperator op -> (float op, positions of (x, scale, zp) triples, (scale, zp) of the output).
_QLINEAR: dict[str, tuple[str, list[tuple[int, int, int]], tuple[int, int] | None]] = {
    "QLinearConv": ("Conv", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearMatMul": ("MatMul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearAdd": ("Add", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearMul": ("Mul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearSigmoid": ("Sigmoid", [(0, 1, 2)], (3, 4)),
    "QLinearLeakyRelu": ("LeakyRelu", [(0, 1, 2)], (3, 4)),
    "QLinearSoftmax": ("Softmax", [(0, 1, 2)], (3, 4)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", [(0, 1, 2)], (3, 4)),
    "QLinearAveragePool": ("AveragePool", [(0, 1, 2)], (3, 4)),
    "QLinearReduceMean": ("ReduceMean", [(0, 1, 2)], (3, 4)),
}
#: Attributes of QOperator ops that their float op does not have.
_DROP_ATTRS = {"channels_last", "opset"}


class _Rewriter:
    """A node list being rebuilt, with fresh names and new initializers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.fresh = _NameSet(model).fresh

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def dq(self, x: str, scale: str, zp: str, axis: int | None = None, owner: str = "") -> str:
        out = self.fresh(f"{x}_dequantized")
        kw = {"axis": axis} if axis is not None else {}
        self.nodes.append(helper.make_node("DequantizeLinear", [x, scale, zp] if zp else [x, scale], [out],
                                           name=self.fresh(f"{owner or x}_DequantizeLinear"), **kw))
        return out

    def q(self, x: str, scale: str, zp: str, out: str, owner: str) -> None:
        self.nodes.append(helper.make_node("QuantizeLinear", [x, scale, zp] if zp else [x, scale], [out],
                                           name=self.fresh(f"{owner}_QuantizeLinear")))

    def commit(self) -> None:
        del self.model.graph.node[:]
        self.model.graph.node.extend(self.nodes)
        self.model.graph.initializer.extend(self.inits)


def legalize(model: onnx.ModelProto, target: Target) -> list[str]:
    """Rewrite ``model`` in place into the QDQ form the compiler lowers for ``target``; one note
    per change."""
    notes: list[str] = []
    notes += _qoperator_to_qdq(model)
    notes += _fold_weight_quantize(model, target)
    notes += _fold_qcdq_clips(model, target)
    notes += _propagate_through_grid_ops(model, target)
    notes += _quantize_float_biases(model, target)
    if target.numerics.symmetric:
        notes += _center_uint8(model, target)
    return notes


# --- QOperator -> QDQ ------------------------------------------------------------------------


def _is_qlinear(n: onnx.NodeProto) -> bool:
    return (n.op_type in _QLINEAR or n.op_type in ("QGemm", "QLinearConcat")) and n.domain in ("", "ai.onnx", _MS)


def _qoperator_to_qdq(model: onnx.ModelProto) -> list[str]:
    if not any(_is_qlinear(n) for n in model.graph.node):
        return []
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    types = tensor_elem_types(model)
    rw = _Rewriter(model)
    grid: dict[str, tuple[str, str]] = {}  # integer tensor -> (scale, zero point) names
    counts: dict[str, int] = {}
    wrapped: dict[str, int] = {}
    kept: Counter[str] = Counter()
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            grid[n.output[0]] = (n.input[1], n.input[2] if len(n.input) > 2 else "")
            rw.nodes.append(n)
        elif _is_qlinear(n):
            _expand_qlinear(rw, n, inits, grid)
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        elif _moves_integers(n) and any(i in grid for i in n.input):
            _wrap_integer_op(rw, n, grid, types)
            wrapped[n.op_type] = wrapped.get(n.op_type, 0) + 1
        else:
            kept.update([n.op_type] if any(i in grid for i in n.input) and n.op_type != "DequantizeLinear" else [])
            rw.nodes.append(n)
    rw.commit()
    done = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
    notes = [f"legalised ONNX Runtime QOperator ops to QDQ (DequantizeLinear -> float op -> QuantizeLinear): {done}"]
    if wrapped:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(wrapped.items()))
        notes.append(f"legalised ops run on integer tensors to DQ -> op -> Q with the same parameters: {ops}")
    if kept:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(kept.items()))
        notes.append(f"kept ops that read integer tensors as they are (not data movement; they run on the CPU "
                     f"as ONNX Runtime runs them): {ops}")
    return notes


def _moves_integers(n: onnx.NodeProto) -> bool:
    """Ops whose result on integer codes equals DQ -> op -> Q with the input's parameters."""
    if n.domain not in ("", "ai.onnx"):
        return False
    return n.op_type in VALUE_MOVING_OPS or (n.op_type == "Resize" and attr(n, "mode", "nearest") == "nearest")


def _weight_axis(n: onnx.NodeProto, scale: np.ndarray | None) -> int | None:
    """The channel axis of a per-channel weight operand (``None`` when per tensor)."""
    if scale is None or scale.size <= 1:
        return None
    if n.op_type == "QLinearConv":
        return 0
    return 0 if n.op_type == "QGemm" and attr(n, "transB", 0) else 1


def _expand_qlinear(rw: _Rewriter, n: onnx.NodeProto, inits: dict, grid: dict) -> None:
    """One QOperator node -> DQ per quantized input, the float op, Q of the output."""
    if attr(n, "channels_last", 0):
        raise NpuflowError("NPF_COMPILE_FOREIGN_UNSUPPORTED", node=n.name, op=n.op_type,
                           reason="channels_last=1 has no float ONNX equivalent")
    if n.op_type == "QLinearConcat":
        triples = [(i, i + 1, i + 2) for i in range(2, len(n.input), 3)]
        float_op, out_q, extra = "Concat", (0, 1), []
    elif n.op_type == "QGemm":
        triples, float_op = [(0, 1, 2), (3, 4, 5)], "Gemm"
        out_q = (7, 8) if len(n.input) > 7 and n.input[7] else None
        extra = [6] if len(n.input) > 6 and n.input[6] else []
    else:
        float_op, triples, out_q = _QLINEAR[n.op_type]
        extra = [8] if n.op_type == "QLinearConv" and len(n.input) > 8 and n.input[8] else []
    floats = []
    for x, s, z in triples:
        zp = n.input[z] if z < len(n.input) else ""
        axis = _weight_axis(n, inits.get(n.input[s])) if n.input[x] in inits else None
        floats.append(rw.dq(n.input[x], n.input[s], zp, axis, owner=f"{n.name}_in{len(floats)}"))
    for b in extra:  # int32 bias at alpha * sx * sw, zero point 0
        sx, sw = inits.get(n.input[1]), inits.get(n.input[4])
        if sx is None or sw is None:
            raise NpuflowError("NPF_COMPILE_FOREIGN_UNSUPPORTED", node=n.name, op=n.op_type,
                               reason="its input and weight scales are not constants")
        scale = (np.float32(attr(n, "alpha", 1.0)) * sx.astype(np.float32) * sw.astype(np.float32)).astype(np.float32)
        s_name = rw.const(f"{n.input[b]}_scale", scale.reshape(-1) if scale.size > 1 else scale.reshape(()))
        z_name = rw.const(f"{n.input[b]}_zero_point", np.zeros(scale.shape if scale.size > 1 else (), np.int32))
        floats.append(rw.dq(n.input[b], s_name, z_name, 0 if scale.size > 1 else None, owner=f"{n.name}_bias"))
    attrs = {k: v for k, v in attr_values(n).items() if k not in _DROP_ATTRS}
    y = n.output[0]
    mid = rw.fresh(f"{y}_float") if out_q else y
    rw.nodes.append(helper.make_node(float_op, floats, [mid], name=n.name, **attrs))
    if out_q:
        zp = n.input[out_q[1]] if out_q[1] < len(n.input) else ""
        rw.q(mid, n.input[out_q[0]], zp, y, n.name)
        grid[y] = (n.input[out_q[0]], zp)


def _wrap_integer_op(rw: _Rewriter, n: onnx.NodeProto, grid: dict, types: dict[str, int]) -> None:
    """An op QOperator runs on integer codes (MaxPool, Reshape, ...) -> DQ -> op -> Q, every
    integer input and output with the first one's parameters: the op only moves codes, so one
    common grid gives back exactly the codes it moved, whatever grid each input came from."""
    first = next(i for i in n.input if i in grid)
    params, int_type = grid[first], types.get(first)
    inputs = [rw.dq(i, *params, owner=f"{n.name}_in{k}") if i in grid else i for k, i in enumerate(n.input)]
    outputs, requant = [], []
    for o in n.output:
        if o and types.get(o) == int_type:
            outputs.append(rw.fresh(f"{o}_float"))
            requant.append((outputs[-1], o))
        else:
            outputs.append(o)
    rw.nodes.append(helper.make_node(n.op_type, inputs, outputs, name=n.name, domain=n.domain,
                                     **attr_values(n)))
    for mid, o in requant:
        rw.q(mid, *params, o, n.name)
        grid[o] = params


# --- weights quantized at run time (NNCF, Brevitas) -------------------------------------------


def _fold_weight_quantize(model: onnx.ModelProto, target: Target) -> list[str]:
    """``QuantizeLinear(float constant)`` -> the integer constant it computes (same tie rule and
    saturation as the step), so the layer reading its DQ finds a quantized initializer; which steps
    and what integers: ``check.lowerable.folded_weight``, which the checker reads them through too."""
    g = QGraph(model, target)
    folded = {n.name: w for n in model.graph.node if (w := folded_weight(n, g)) is not None}
    if not folded:
        return []
    outputs = {n.name: n.output[0] for n in model.graph.node if n.name in folded}
    keep = [n for n in model.graph.node if n.name not in folded]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    model.graph.initializer.extend(numpy_helper.from_array(v, outputs[k]) for k, v in folded.items())
    return [f"folded {len(folded)} quantize step(s) of constant weights into integer weights "
            f"(e.g. {next(iter(outputs.values()))!r})"]


# --- Brevitas QCDQ ---------------------------------------------------------------------------


def _fold_qcdq_clips(model: onnx.ModelProto, target: Target) -> list[str]:
    """``Q -> Clip(lo, hi) -> DQ`` with integer bounds: on an integer constant (a weight, its
    quantize step already folded) clip the stored integers; on an activation clip it in float
    before its quantize step."""
    g = QGraph(model, target)
    weights, acts, dropped = [], [], []
    new_inits: list[onnx.TensorProto] = []
    remove: set[str] = set()
    for clip in list(model.graph.node):
        found = _integer_clip(g, clip)
        if found is None:
            continue
        lo, hi, src, p = found
        qmin, qmax = numerics.qrange(p.bits, p.signed)
        lo, hi = max(lo, qmin), min(hi, qmax)
        values = g.const(clip.input[0]) if src is None else None
        if values is not None:  # a weight: store the clipped integers
            new_inits.append(numpy_helper.from_array(np.clip(values, lo, hi).astype(values.dtype), clip.output[0]))
            remove.add(clip.name)
            weights.append(clip.output[0])
            continue
        _reroute(model, clip.output[0], src.output[0])
        remove.add(clip.name)
        if (lo, hi) == (qmin, qmax):
            dropped.append(src.output[0])
            continue
        _clip_before(model, src.name, p, lo, hi)
        acts.append(src.output[0])
    if not (weights or acts or dropped):
        return []
    keep = [n for n in model.graph.node if n.name not in remove]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    model.graph.initializer.extend(new_inits)
    notes = []
    if weights:
        notes.append(f"legalised Clip -> DequantizeLinear on {len(weights)} integer weight(s) "
                     f"into clipped integer weights (e.g. {weights[0]!r})")
    if acts:
        notes.append(f"legalised QuantizeLinear -> Clip -> DequantizeLinear on {len(acts)} activation(s) into a "
                     f"narrowed integer range (float Clip before the quantize step, e.g. {acts[0]!r})")
    if dropped:
        notes.append(f"removed {len(dropped)} Clip(s) after a quantize step that clip nothing (full integer range)")
    return notes


def _integer_clip(g: QGraph, clip: onnx.NodeProto) -> tuple[int, int, onnx.NodeProto | None, QParams] | None:
    """``(lo, hi, quantize step or None, params)`` of a Clip on integers feeding only DQ steps."""
    if clip.op_type != "Clip" or clip.domain not in ("", "ai.onnx"):
        return None
    cons = g.consumer_nodes(clip.output[0])
    if not cons or not all(g.is_dequantize(c) for c in cons) or g.is_graph_output(clip.output[0]):
        return None
    bounds = [g.const(i) if i else None for i in (list(clip.input[1:3]) + ["", ""])[:2]]
    if any(i and b is None for i, b in zip(clip.input[1:3], bounds)):
        return None
    src = g.producer_node(clip.input[0])
    if src is not None and g.quantize_mode(src) is not None:
        p = g.quantize_params(src)
    elif g.const(clip.input[0]) is not None and g.const(clip.input[0]).dtype.kind in "iu":
        src, p = None, g.dequantize_params(cons[0])
    else:
        return None
    if p is None:
        return None
    qmin, qmax = numerics.qrange(p.bits, p.signed)
    lo = qmin if bounds[0] is None else int(np.asarray(bounds[0]).reshape(-1)[0])
    hi = qmax if bounds[1] is None else int(np.asarray(bounds[1]).reshape(-1)[0])
    return lo, hi, src, p


def _reroute(model: onnx.ModelProto, old: str, new: str) -> None:
    for n in model.graph.node:
        for k, i in enumerate(n.input):
            if i == old:
                n.input[k] = new
    for o in model.graph.output:
        if o.name == old:
            o.name = new


def _clip_before(model: onnx.ModelProto, q_name: str, p: QParams, lo: int, hi: int) -> None:
    """Insert ``Clip((lo - zp) * s, (hi - zp) * s)`` in float before the quantize step ``q_name``."""
    s, z = np.float32(p.scalar_scale()), p.scalar_zp()
    q = _node(model, q_name)
    bounds = [numpy_helper.from_array(np.float32((v - z) * s), f"{q_name}_clip_{tag}")
              for v, tag in ((lo, "min"), (hi, "max"))]
    model.graph.initializer.extend(bounds)
    clipped = f"{q.input[0]}_clipped_{q_name}"
    clip = helper.make_node("Clip", [q.input[0], bounds[0].name, bounds[1].name], [clipped], name=f"{q_name}_Clip")
    q.input[0] = clipped
    _insert_before(model, q_name, [clip])


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


# --- NNCF: float biases, grid-preserving ops --------------------------------------------------


def _quantize_float_biases(model: onnx.ModelProto, target: Target) -> list[str]:
    """A float bias of a Conv/Gemm whose input and weight are dequantized -> int32 at ``sx * sw``."""
    g = QGraph(model, target)
    plans = [(n, plan) for n in model.graph.node if (plan := _bias_plan(g, n)) is not None]
    names = _NameSet(model)
    for n, (bias, scale) in plans:
        per_channel = scale.size > 1
        q = numerics.quantize(bias.reshape(-1), scale if per_channel else scale[0], 0, bits=32,
                              round_mode=numerics.ONNX_ROUND_MODE, axis=0 if per_channel else None)
        base = names.fresh(f"{n.input[2]}_int32")
        shape = scale.shape if per_channel else ()
        model.graph.initializer.extend([
            numpy_helper.from_array(q.astype(np.int32), base),
            numpy_helper.from_array(scale.reshape(shape), f"{base}_scale"),
            numpy_helper.from_array(np.zeros(shape, np.int32), f"{base}_zero_point"),
        ])
        dq = helper.make_node("DequantizeLinear", [base, f"{base}_scale", f"{base}_zero_point"],
                              [f"{base}_dequantized"], name=names.fresh(f"{n.name}_bias_DequantizeLinear"),
                              **({"axis": 0} if per_channel else {}))
        _node(model, n.name).input[2] = dq.output[0]
        _insert_before(model, n.name, [dq])
    if not plans:
        return []
    return [f"legalised the float bias of {len(plans)} Conv/Gemm node(s) to int32 at scale sx*sw, as ONNX "
            f"Runtime's quantizer writes it (e.g. {plans[0][0].name!r})"]


def _bias_plan(g: QGraph, n: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    """``(float bias, int32 scale per channel)`` when ``n``'s float bias can be quantized."""
    if float_bias_limit(n, g.facts) is not None:  # the checker's predicate: both place the layer alike
        return None
    x, w = g.dq_source(n.input[0]), g.dq_source(n.input[1])
    if x is None or w is None or collect_chain(g, n.output[0], list(g.consumer_nodes(n.output[0]))) is None:
        return None  # steps of types the programs do not compute in: check refuses the layer too (_step_types)
    bias = g.const(n.input[2])
    scale = np.float32(x[1].scalar_scale()) * w[1].scale.astype(np.float32).reshape(-1)
    return bias, scale.astype(np.float32)


class _NameSet:
    """Node and tensor names of a model, to make new ones unique."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.taken = {n.name for n in g.node} | {o for n in g.node for o in n.output}
        self.taken |= {t.name for t in g.initializer} | {i.name for i in g.input}

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


def _insert_before(model: onnx.ModelProto, anchor: str, new: list[onnx.NodeProto], after: bool = False) -> None:
    nodes = list(model.graph.node)
    at = next(k for k, n in enumerate(nodes) if n.name == anchor) + int(after)
    nodes[at:at] = new
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _propagate_through_grid_ops(model: onnx.ModelProto, target: Target) -> list[str]:
    """``DQ -> MaxPool/Relu/reshape -> (no quantize step)``: add ``Q -> DQ`` of the input's grid."""
    changed: list[onnx.NodeProto] = []
    names = _NameSet(model)
    for _ in range(len(model.graph.node)):  # chains of grid ops: one link per round
        g = QGraph(model, target)
        facts = g.facts
        todo = [(n.name, src[2]) for n in model.graph.node
                if (src := g.dq_source(n.input[0]) if n.input else None) is not None and grid_step(n, facts)]
        if not todo:
            break
        for name, dq in todo:
            n = next(m for m in model.graph.node if m.name == name)
            out = n.output[0]
            n.output[0] = names.fresh(f"{out}_grid")
            params = list(dq.input[1:])
            q = helper.make_node("QuantizeLinear", [n.output[0], *params], [names.fresh(f"{out}_grid_quantized")],
                                 name=names.fresh(f"{name}_QuantizeLinear"))
            d = helper.make_node("DequantizeLinear", [q.output[0], *params], [out],
                                 name=names.fresh(f"{name}_DequantizeLinear"))
            _insert_before(model, name, [q, d], after=True)
            changed.append(n)
    if not changed:
        return []
    ops = sorted({n.op_type for n in changed})
    return [f"propagated quantization through {len(changed)} {'/'.join(ops)} node(s) that commute with it "
            f"(Q -> DQ of their input's parameters added after them, e.g. {changed[0].name!r})"]


def _center_uint8(model: onnx.ModelProto, target: Target) -> list[str]:
    """uint8 activations with zero point 128 -> int8 with zero point 0, for symmetric targets: the
    codes shift by 128 and ``(q - zp) * s`` is unchanged, so the rewrite is exact (ONNX Runtime's
    symmetric uint8 activations)."""
    g = QGraph(model, target)
    names = _NameSet(model)
    changed = []
    for n in model.graph.node:
        p = g.quantize_params(n)
        if p is None or p.dtype != "uint8" or not p.per_tensor or p.scalar_zp() != 128 or \
                g.const(n.input[0]) is not None or g.is_graph_output(n.output[0]):
            continue
        readers = g.consumer_nodes(n.output[0])
        if not all(g.is_dequantize(c) for c in readers):
            continue
        zp = names.fresh(f"{n.output[0]}_zero_point_int8")
        model.graph.initializer.append(numpy_helper.from_array(np.int8(0), zp))
        for step in (n, *readers):
            if len(step.input) < 3:
                step.input.append(zp)
            step.input[2] = zp
        changed.append(n.output[0])
    for n in model.graph.node:  # constant operands ORT quantizes like activations
        p = g.dequantize_params(n) if g.is_dequantize(n) else None
        codes = g.const(n.input[0])
        if p is None or codes is None or codes.dtype != np.uint8 or np.any(p.zero_point != 128):
            continue
        values = names.fresh(f"{n.input[0]}_int8")
        zp = names.fresh(f"{n.input[0]}_zero_point_int8")
        model.graph.initializer.extend([
            numpy_helper.from_array((codes.astype(np.int16) - 128).astype(np.int8), values),
            numpy_helper.from_array(np.zeros(p.zero_point.shape, np.int8), zp)])
        n.input[0] = values
        n.input[2] = zp
        changed.append(n.input[0])
    if not changed:
        return []
    stale = set(changed)
    kept = [v for v in model.graph.value_info if v.name not in stale]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    return [f"legalised {len(changed)} uint8 activation(s) with zero point 128 to int8 with zero point 0 "
            f"(exact: codes shift by 128; e.g. {changed[0]!r})"]


# --- target legality ---------------------------------------------------------------------------


def check_target_numerics(model: onnx.ModelProto, target: Target) -> list[str]:
    """Refuse quantization parameters the target's integer engine cannot run, naming the first
    tensor (in graph order) and counting the others; warn where only the tie rule differs."""
    num = target.numerics
    g = QGraph(model, target)
    bad, total, ties = [], 0, 0
    for n in model.graph.node:
        is_q = g.quantize_mode(n) is not None
        p = g.quantize_params(n) if is_q else (g.dequantize_params(n) if g.is_dequantize(n) else None)
        if p is None or p.dtype == "int32":  # biases: scale sx*sw follows from the others
            continue
        total += 1
        ties += is_q and g.const(n.input[0]) is None and p.round_mode != num.round_mode.activation
        problem = _scale_problem(p, num)
        if problem is not None:
            bad.append((n.output[0] if is_q else n.input[0], n.name, problem))
    if bad:
        tensor, node, problem = bad[0]
        raise NpuflowError("NPF_COMPILE_SCALES_UNSUPPORTED", tensor=tensor, node=node, problem=problem,
                           target=target.name, needs=_needs(num), count=len(bad), total=total)
    if not ties:
        return []
    return [f"WARNING: {ties} activation quantize step(s) of the model round ties differently from "
            f"{target.name} ({num.round_mode.activation.value}); the compiled program follows the model "
            f"(equal to ONNX Runtime), the hardware may differ by one LSB on exact ties"]


def _scale_problem(p: QParams, num) -> str | None:
    """What about ``p`` the target's arithmetic cannot run (``None``: nothing)."""
    problems = []
    if num.scale_type == "power_of_two" and p.fix_pos is None:
        problems.append(f"a float scale ({p.scale.reshape(-1)[0]:.6g})")
    if num.symmetric and np.any(p.zero_point != 0):
        zps = p.zero_point.reshape(-1)
        problems.append(f"an asymmetric zero point ({int(zps[np.argmax(zps != 0)])})")
    if not num.weight_per_channel and not p.per_tensor:
        problems.append(f"per-channel scales ({p.scale.size} channels)")
    return " and ".join(problems) or None


def _needs(num) -> str:
    parts = ["power-of-two scales" if num.scale_type == "power_of_two" else "float scales",
             "zero point 0" if num.symmetric else "any zero point",
             "per-channel weights" if num.weight_per_channel else "one scale per tensor"]
    return ", ".join(parts)
