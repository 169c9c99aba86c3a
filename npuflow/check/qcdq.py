"""Weights quantized at run time and Brevitas' QCDQ clips, rewritten as the integers and float
steps they compute: one legalisation step that ``compile`` (``compiler/foreign.py``) runs and
``check`` runs before placing a model that holds such a clip (:func:`npuflow.check.place.prepare`),
so both judge the same graph.

* ``QuantizeLinear(float constant)`` (NNCF's and Brevitas' weights) becomes the integer constant it
  computes (:func:`npuflow.check.quant_facts.folded_weight`: same tie rule and saturation as the step).
* Brevitas' ``QuantizeLinear -> Clip(lo, hi) -> DequantizeLinear`` with integer bounds: on a weight
  the clip is applied to the stored integers; on an activation it becomes a float ``Clip`` before
  the quantize step (exact: rounding is monotone and the bounds are integers), or disappears when
  it clips nothing.

Before (2026-12-05) only compile rewrote the clips: check judged each ``Clip`` as an op on integers
and read a weight behind one as computed at run time, so on a one-Conv Brevitas model it put 0 of
9 nodes on the accelerator while compile lowered the Conv and its Relu.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import numerics
from ..graph import GraphView, insert_nodes, is_dequantize, quantize_mode
from ..numerics import RoundMode
from .quant_facts import QParams, folded_weight, step_params


def legalize_qcdq(model: onnx.ModelProto) -> list[str]:
    """Fold weight quantize steps, then QCDQ clips, in place; one note per kind of change."""
    return fold_weight_quantize(model) + fold_qcdq_clips(model)


def has_qcdq_clip(model: onnx.ModelProto) -> bool:
    """Whether ``model`` holds a ``Clip`` on integers between quantize steps (Brevitas' QCDQ),
    reading a weight's quantize step as the integers it folds into."""
    view = GraphView(model)
    return any(_integer_clip(view, n, fold=True) is not None for n in model.graph.node)


def fold_weight_quantize(model: onnx.ModelProto) -> list[str]:
    """``QuantizeLinear(float constant)`` -> the integer constant it computes, so the layer reading
    its DQ finds a quantized initializer; which steps and what integers: :func:`folded_weight`,
    which :class:`~npuflow.check.quant_facts.QuantFacts` reads an unfolded model through too."""
    view = GraphView(model)
    folded = {n.name: w for n in model.graph.node if (w := folded_weight(n, view)) is not None}
    if not folded:
        return []
    outputs = {n.name: n.output[0] for n in model.graph.node if n.name in folded}
    keep = [n for n in model.graph.node if n.name not in folded]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    model.graph.initializer.extend(numpy_helper.from_array(v, outputs[k]) for k, v in folded.items())
    return [f"folded {len(folded)} quantize step(s) of constant weights into integer weights "
            f"(e.g. {next(iter(outputs.values()))!r})"]


def fold_qcdq_clips(model: onnx.ModelProto) -> list[str]:
    """``Q -> Clip(lo, hi) -> DQ`` with integer bounds: on an integer constant (a weight, its
    quantize step already folded) clip the stored integers; on an activation clip it in float
    before its quantize step."""
    view = GraphView(model)
    weights, acts, dropped = [], [], []
    new_inits: list[onnx.TensorProto] = []
    remove: set[str] = set()
    for clip in list(model.graph.node):
        found = _integer_clip(view, clip)
        if found is None:
            continue
        lo, hi, src, p = found
        qmin, qmax = numerics.qrange(p.bits, p.signed)
        lo, hi = max(lo, qmin), min(hi, qmax)
        remove.add(clip.name)
        if src is None:  # a weight: store the clipped integers
            values = view.const(clip.input[0])
            new_inits.append(numpy_helper.from_array(np.clip(values, lo, hi).astype(values.dtype), clip.output[0]))
            weights.append(clip.output[0])
            continue
        _reroute(model, clip.output[0], src.output[0])
        if (lo, hi) == (qmin, qmax):
            dropped.append(src.output[0])
            continue
        _clip_before(model, src.name, p, lo, hi)
        acts.append(src.output[0])
    if not remove:
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


def _integer_clip(view: GraphView, clip: onnx.NodeProto,
                  fold: bool = False) -> tuple[int, int, onnx.NodeProto | None, QParams] | None:
    """``(lo, hi, quantize step or None, params)`` of a Clip on integers feeding only DQ steps;
    the step is ``None`` for a Clip of an integer constant (or, with ``fold``, of a quantize step
    of a float constant, which :func:`fold_weight_quantize` turns into one)."""
    if clip.op_type != "Clip" or clip.domain not in ("", "ai.onnx"):
        return None
    cons = view.consumer_nodes(clip.output[0])
    if not cons or not all(is_dequantize(c) for c in cons) or view.is_graph_output(clip.output[0]):
        return None
    bounds = [view.const(i) if i else None for i in (list(clip.input[1:3]) + ["", ""])[:2]]
    if any(i and b is None for i, b in zip(clip.input[1:3], bounds)):
        return None
    src = view.producer_node(clip.input[0])
    codes = view.const(clip.input[0])
    if fold and src is not None and (w := folded_weight(src, view)) is not None:
        src, codes = None, w
    if src is not None and (mode := quantize_mode(src)) is not None:
        p = step_params(view, src, *mode)
    elif src is None and codes is not None and codes.dtype.kind in "iu":
        p = step_params(view, cons[0], RoundMode.HALF_EVEN, str(codes.dtype))
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
    """Insert ``Clip((lo - zp) * s, (hi - zp) * s)`` in float before the quantize step ``q_name``
    (looked up by name: an earlier insertion rebuilt the node list, detaching the view's nodes)."""
    s, z = np.float32(p.scalar_scale()), p.scalar_zp()
    q = next(n for n in model.graph.node if n.name == q_name)
    bounds = [numpy_helper.from_array(np.float32((v - z) * s), f"{q.name}_clip_{tag}")
              for v, tag in ((lo, "min"), (hi, "max"))]
    model.graph.initializer.extend(bounds)
    clipped = f"{q.input[0]}_clipped_{q.name}"
    clip = helper.make_node("Clip", [q.input[0], bounds[0].name, bounds[1].name], [clipped], name=f"{q.name}_Clip")
    q.input[0] = clipped
    insert_nodes(model, q.name, [clip])
