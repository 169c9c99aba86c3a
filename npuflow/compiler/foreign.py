"""Legalisation of quantized models made by other tools, run at the start of ``compile``.

ONNX Runtime, NNCF and Brevitas write quantized models that mean the same as npuflow's QDQ form
(``docs/quantized-model-format.md``) but spell it differently, so the lowering would find no
``DQ -> op -> Q`` pattern and leave every convolution on the CPU.  Each rewrite here keeps the
model's arithmetic as ONNX Runtime runs it and returns a note saying what it changed:

* QOperator ops (``QLinearConv``, ``QLinearMatMul``, ``QGemm``, ``QLinearAdd``, ...) become
  ``DequantizeLinear -> float op -> QuantizeLinear``; ops run directly on integer tensors
  (QOperator's ``MaxPool``/``Reshape``) are wrapped in a DQ/Q pair of the same parameters
  (``check.qoperator``, which the checker runs first too).
* A ``QuantizeLinear`` of a float constant (NNCF, Brevitas weights) is folded into the integer
  weights it computes, and Brevitas' ``QuantizeLinear -> Clip -> DequantizeLinear`` becomes clipped
  integer weights or a float ``Clip`` before the quantize step (``check.qcdq``, which the checker
  runs first too on a model holding such a clip).
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

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import numerics
from ..check.lowerable import float_bias_limit, grid_step
from ..check.qcdq import legalize_qcdq
from ..check.qoperator import NameSet, qoperator_to_qdq
from ..errors import NpuflowError
from ..graph import insert_nodes
from ..targets import Target
from .epilogue import collect_chain
from .qgraph import QGraph, QParams

def legalize(model: onnx.ModelProto, target: Target) -> list[str]:
    """Rewrite ``model`` in place into the QDQ form the compiler lowers for ``target``; one note
    per change."""
    notes: list[str] = []
    notes += qoperator_to_qdq(model)
    notes += legalize_qcdq(model)
    notes += _propagate_through_grid_ops(model, target)
    notes += _quantize_float_biases(model, target)
    if target.numerics.symmetric:
        notes += _center_uint8(model, target)
    return notes


# --- NNCF: float biases, grid-preserving ops --------------------------------------------------


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _quantize_float_biases(model: onnx.ModelProto, target: Target) -> list[str]:
    """A float bias of a Conv/Gemm whose input and weight are dequantized -> int32 at ``sx * sw``."""
    g = QGraph(model, target)
    plans = [(n, plan) for n in model.graph.node if (plan := _bias_plan(g, n)) is not None]
    names = NameSet(model)
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
        insert_nodes(model, n.name, [dq])
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


def _propagate_through_grid_ops(model: onnx.ModelProto, target: Target) -> list[str]:
    """``DQ -> MaxPool/Relu/reshape -> (no quantize step)``: add ``Q -> DQ`` of the input's grid."""
    changed: list[onnx.NodeProto] = []
    names = NameSet(model)
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
            insert_nodes(model, name, [q, d], after=True)
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
    names = NameSet(model)
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
    if p.bits not in num.bits:  # Quark A16W8 on bernoulli2 (bits: [8]) compiled int16 activations before
        problems.append(f"a {p.bits}-bit type ({p.dtype}; the target computes in "
                        f"{'/'.join(str(b) for b in num.bits)}-bit integers)")
    return " and ".join(problems) or None


def _needs(num) -> str:
    parts = ["power-of-two scales" if num.scale_type == "power_of_two" else "float scales",
             f"{'/'.join(str(b) for b in num.bits)}-bit integers",
             "zero point 0" if num.symmetric else "any zero point",
             "per-channel weights" if num.weight_per_channel else "one scale per tensor"]
    return ", ".join(parts)
