"""Precision overrides of a finished quantization: re-plan, re-assign, re-export, no re-calibration.

Sensitivity analysis and the mixed-precision search (:mod:`npuflow.analyze`) score many per-layer
precision assignments (a layer in float, or raised to int16).  Each is a set of plan overrides
(:func:`.plan.build_plan`'s ``overrides``, keyed by the plan's layer names): the plan is rebuilt
by the quantizer's own rules, parameters are assigned from the statistics calibration already
collected (:func:`.assign.assign`; a range search runs once per tensor and settings) and the QDQ
model is exported (:func:`.export.export_qdq`).  So a scored model is the model ``quantize``
builds with the same overrides in its config (``keep_float``, ``layers`` with 16 bits):
quantize steps, scales and the CPU -> accelerator boundaries included.

The weight algorithms (bias correction, AdaRound/AdaQuant: :func:`.algorithms.apply.after_export`)
ran once, on the model as quantized; they change integer weights and biases, and scales only where
fast finetune's ``learn_threshold`` moves a weight's fix position.  Their values are carried into
every override:

* a weight or constant whose parameters an override leaves unchanged keeps its final codes;
* a bias whose weight is unchanged keeps its final value; where its input's scale changed (the
  producing layer raised to int16) the corrected value is re-rounded on the new int32 grid;
* an int16 layer's weights and bias come from the float model: bias correction's shift cancels
  the int8 weights' error, which 16-bit weights no longer make (PP-OCRv4 rec on B4096 with every
  point raised: 0.7 % lines with the corrected biases, 92.3 % with the float ones).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from ..targets import Target
from .assign import Assignment, assign, requantize_bias
from .calibrate import Statistics
from .config import QuantConfig
from .export import export_qdq
from .params import TensorQuant
from .percentile_search import with_percentile
from .plan import Layer, QuantPlan, build_plan, checked_overrides


@dataclass
class Requantizer:
    """One quantization's graph, statistics and final values, to export it with overrides.

    Built by :func:`npuflow.quantize` (``QuantizedModel.requantizer``); it pickles, so sweep
    workers (:mod:`npuflow.scaleout`) receive it once."""

    model: onnx.ModelProto  # the legalised float graph that was quantized
    target: Target
    config: QuantConfig
    allowed: set[str] | None  # the accelerator's nodes (None: any node may be quantized)
    stats: Statistics
    plan: QuantPlan  # as quantized (no overrides)
    base: Assignment  # :func:`.assign.assign` of ``plan``
    final: Assignment  # ``base`` with the integer constants of ``quantized``
    quantized: onnx.ModelProto  # the QDQ model as quantize returned it
    percentile: float | None = None  # the percentile search's choice, applied to every plan
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def layers(self) -> dict[str, Layer]:
        """The layers overrides may name (weighted first, each group in graph order)."""
        return self.plan.layers

    def plan_for(self, overrides: Mapping[str, str]) -> QuantPlan:
        """The plan with ``overrides`` (layer -> ``float``/``int8``/``int16``)."""
        plan = build_plan(self.model, self.target, self.config, self.allowed, self._checked(overrides))
        return plan if self.percentile is None else with_percentile(plan, self.percentile)

    def export(self, overrides: Mapping[str, str]) -> onnx.ModelProto:
        """The QDQ model with ``overrides``; none (or all ``int8``) is the model as quantized."""
        if not self._checked(overrides):
            out = onnx.ModelProto()
            out.CopyFrom(self.quantized)
            return out
        plan = self.plan_for(overrides)
        asg = carry(assign(self.model, plan, self.stats, cache=self._cache), plan, self.base, self.final)
        return export_qdq(self.model, plan, asg, target_name=self.target.name,
                          scale_type=self.target.numerics.scale_type)

    def _checked(self, overrides: Mapping[str, str]) -> dict[str, str]:
        """The overrides that change something; names must be :attr:`layers`."""
        return checked_overrides(overrides, self.layers)


def final_assignment(qmodel: onnx.ModelProto, base: Assignment) -> Assignment:
    """``base`` with the integer constants ``qmodel`` holds (the weight algorithms' results; the
    exporter stores constant ``T`` as ``T_quantized``, docs/quantized-model-format.md) and their
    scales as ``qmodel`` reads them: fast finetune's ``learn_threshold`` moves a weight's fix
    position, and with it the int32 bias's scale."""
    inits = {t.name: t for t in qmodel.graph.initializer}
    scale_of = {n.input[0]: n.input[1] for n in qmodel.graph.node
                if n.op_type == "DequantizeLinear" and len(n.input) > 1}
    params, values = dict(base.params), dict(base.values)
    for name, old in base.values.items():
        t = inits.get(f"{name}_quantized")
        if t is None:
            continue
        v = numpy_helper.to_array(t)
        if v.shape == old.shape and v.dtype == old.dtype:
            values[name] = v
        s = inits.get(scale_of.get(f"{name}_quantized", ""))
        if s is not None and name in params:
            scale = numpy_helper.to_array(s).astype(np.float32)
            if scale.shape == params[name].scale.shape and not np.array_equal(scale, params[name].scale):
                params[name] = dataclasses.replace(params[name], scale=scale, fix_pos=None)
    return Assignment(params, values)


def carry(asg: Assignment, plan: QuantPlan, base: Assignment, final: Assignment) -> Assignment:
    """``asg`` (a re-assignment with overrides) with the integer constants the weight algorithms
    changed (``final`` against ``base``) wherever they still apply (module docstring), with the
    scales they were written at (a weight whose fix position fast finetune moved keeps the moved
    scale, and its bias the matching int32 scale); a constant no algorithm changed is ``asg``'s,
    rounded once from its float value."""
    out = Assignment(dict(asg.params), dict(asg.values))
    changed = {n for n, v in final.values.items()
               if not np.array_equal(v, base.values[n]) or not _same(final.params.get(n), base.params.get(n))}
    for name in changed & set(asg.values):
        use = plan.consts.get(name)
        if use is not None and use.role != "bias" and _same(asg.params[name], base.params.get(name)):
            out.values[name], out.params[name] = final.values[name], final.params[name]
    for name in changed & set(asg.values):
        use = plan.consts.get(name)
        if use is None or use.role != "bias" or use.weight is None:
            continue
        if not _same(asg.params.get(use.weight), base.params.get(use.weight)):
            continue  # a re-quantized (int16) weight: the bias from the float model, as assigned
        if _same(asg.params[name], base.params.get(name)):
            out.values[name], out.params[name] = final.values[name], final.params[name]
        else:  # the input's scale changed: the same real bias on the new s_in * s_w (s_w as carried)
            moved = final.params[use.weight].scale / base.params[use.weight].scale
            grid = dataclasses.replace(asg.params[name], scale=(asg.params[name].scale * moved).astype(np.float32),
                                       fix_pos=None)
            out.values[name] = requantize_bias(final.params[name].dequantize(final.values[name]), grid)
            out.params[name] = grid
    return out


def _same(a: TensorQuant | None, b: TensorQuant | None) -> bool:
    """Whether two parameter sets give the same integers for the same float values."""
    return (a is not None and b is not None and a.bits == b.bits and a.signed == b.signed
            and a.narrow_range == b.narrow_range and a.round_mode == b.round_mode and a.axis == b.axis
            and np.array_equal(a.scale, b.scale) and np.array_equal(a.zero_point, b.zero_point))
