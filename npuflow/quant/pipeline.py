"""``npuflow.quantize``: the post-training quantization pipeline, one clear step after another.

1. load the model (static shapes for the saved models) and a *dynamic* twin that keeps the
   dimensions the source leaves dynamic (OCR widths, batch), so calibration samples may differ
   in shape;
2. float optimisation (:func:`npuflow.passes.optimize.optimize_float`) -> the optimised float
   model; the static one is ``optimized_float_model.onnx``;
3. pre-calibration float algorithms (CLE, ``include_cle``) on the float model
   (:mod:`.algorithms.apply`);
4. target legalisation (:func:`.legalize.legalize`), the checker's placement of the optimised
   float model and the quantization plan (:mod:`.plan`): on accelerator targets only the nodes
   placed on the accelerator are quantized (:mod:`.placement`);
5. one streaming calibration pass (:mod:`.calibrate`);
6. parameters and integer constants (:func:`.assign.assign`);
7. QDQ export (:mod:`.export`), then the per-layer weight algorithms on the QDQ model
   (AdaRound/AdaQuant ``fast_finetune``, bias correction ``include_bias_corr``:
   :func:`.algorithms.apply.after_export`), quant_info and the accuracy report (:mod:`.report`),
   with the checker's placement (``ON``/``Subgraph`` columns) of the optimised float model.

Tensor and node names are identical in the static and dynamic twins, so statistics gathered on
the dynamic one apply to the static one by name.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from .. import model as model_io
from ..check import check
from ..passes.fold_constants import fold_static_shapes
from ..passes.optimize import optimize_float
from ..targets import Target, load_target
from .algorithms import apply as algorithms
from .assign import assign
from .calibrate import Progress, collect
from .config import HISTOGRAM_METHODS, QuantConfig
from .data import CalibrationSource, InputSpec
from .export import export_qdq, to_plain_qdq
from .legalize import legalize
from . import percentile_search
from .params import TensorQuant
from .placement import accelerator_nodes
from .plan import build_plan
from .quant_info import quant_info
from .report import QuantReport, add_placement, build_report

log = logging.getLogger(__name__)


@dataclass
class QuantizedModel:
    """The result of :func:`quantize`: models, parameters and the accuracy report."""

    model: onnx.ModelProto  # quantized_model.onnx (static input shapes)
    dynamic_model: onnx.ModelProto  # same quantization, source-dynamic dims kept (varying input sizes)
    original_model: onnx.ModelProto
    float_model: onnx.ModelProto  # optimized_float_model.onnx
    quant_params: dict[str, TensorQuant]
    report: QuantReport
    target: Target
    config: QuantConfig
    info: dict = field(default_factory=dict)

    def save(self, out_dir: str | os.PathLike, *, plain_qdq: bool = False) -> dict[str, Path]:
        """Write every artifact atomically; returns name -> path."""
        d = Path(out_dir)
        qmodel = to_plain_qdq(self.model) if plain_qdq else self.model
        paths = {
            "original_float_model": model_io.save(self.original_model, d / "original_float_model.onnx"),
            "optimized_float_model": model_io.save(self.float_model, d / "optimized_float_model.onnx"),
            "quantized_model": model_io.save(qmodel, d / "quantized_model.onnx"),
            "quant_info": model_io.write_atomic(d / "quant_info.json", json.dumps(self.info, indent=1) + "\n"),
            "quant_report": model_io.write_atomic(d / "quant_report.json", json.dumps(self.report.to_json(), indent=1) + "\n"),
        }
        return paths


def quantize(model: model_io.ModelLike, calib_data: Any, target: str | Target, config: QuantConfig | Mapping | str | os.PathLike | None = None,
             input_shapes: Mapping[str, Sequence[int]] | None = None, *, progress: Progress | None = None) -> QuantizedModel:
    """Quantize ``model`` for ``target`` with calibration data ``calib_data``.

    ``calib_data``: a folder (``.npy`` or raw ``numpy.tofile`` files), an array, a dict, or an
    iterable of those.  ``config``: a :class:`QuantConfig`, a dict, or a JSON/YAML path.
    """
    tgt = target if isinstance(target, Target) else load_target(target)
    cfg = _config(config)
    cfg.validate_against(tgt)
    shapes = dict(input_shapes or {})

    source_proto = model if isinstance(model, onnx.ModelProto) else model_io.read_proto(model)
    loaded = model_io.load(source_proto, shapes, infer_shapes=False)
    original = model_io.infer_static_shapes(loaded)
    static_inputs = {i.name: model_io.tensor_shapes(original)[i.name] for i in model_io.graph_inputs(original)}
    dynamic = _dynamic_twin(source_proto, loaded)
    _step(progress, "optimize")
    d_opt = optimize_float(dynamic)
    d_opt = algorithms.pre_calibration(d_opt, cfg, lambda: CalibrationSource(
        calib_data, _input_specs(d_opt, static_inputs), shapes=cfg.calib_shapes, dtype=cfg.calib_dtype,
        limit=cfg.max_calib_samples))
    s_opt = _static_twin(d_opt, static_inputs)
    cfg.check_names([n.name for n in s_opt.graph.node if n.name] + [n.name for n in d_opt.graph.node if n.name])

    d_leg = onnx.shape_inference.infer_shapes(legalize(d_opt, tgt))
    s_leg = model_io.infer_static_shapes(legalize(s_opt, tgt))
    placement = check(s_opt, tgt)
    allowed = accelerator_nodes(placement, s_leg, tgt)
    plan_d, plan_s = build_plan(d_leg, tgt, cfg, allowed), build_plan(s_leg, tgt, cfg, allowed)

    inputs = _input_specs(d_leg, static_inputs)
    data = CalibrationSource(calib_data, inputs, shapes=cfg.calib_shapes, dtype=cfg.calib_dtype, limit=cfg.max_calib_samples)
    tensors = list(plan_d.points)
    hist = {t for t, p in plan_d.points.items() if p.settings.method in HISTOGRAM_METHODS}
    total = _length(data)
    search = percentile_search.applies(cfg, plan_d)
    guard = algorithms.FINETUNE_SAMPLES if cfg.include_bias_corr == "auto" or search else 0
    # steps after calibration read samples again; a one-shot iterator's first ones are kept for them
    keep = cfg.report_samples if data.reusable else max(cfg.report_samples, algorithms.FINETUNE_SAMPLES)
    stats, kept = collect(d_leg, tensors, hist, data, bins=cfg.histogram_bins, keep=keep, keep_outputs=guard,
                          progress=progress, total=total)
    again = data if data.reusable else kept

    searched: dict = {}
    if search:
        _step(progress, "percentile search")
        plan_d, plan_s, searched = percentile_search.apply(d_leg, plan_d, plan_s, stats, again, cfg.percentile_candidates,
                                                           target_name=tgt.name, scale_type=tgt.numerics.scale_type)
    asg_d, asg_s = assign(d_leg, plan_d, stats), assign(s_leg, plan_s, stats)

    _step(progress, "export")
    q_static = export_qdq(s_leg, plan_s, asg_s, target_name=tgt.name, scale_type=tgt.numerics.scale_type)
    q_dynamic = export_qdq(d_leg, plan_d, asg_d, target_name=tgt.name, scale_type=tgt.numerics.scale_type)
    q_static, q_dynamic, applied = algorithms.after_export(d_leg, q_dynamic, q_static, lambda: again, cfg,
                                                             reference=stats.outputs)
    applied = {**searched, **applied}
    _step(progress, "report")
    report = build_report(d_opt, q_dynamic, plan_d, asg_d.params, kept[:cfg.report_samples])
    add_placement(report, placement)
    info = quant_info(asg_s.params, target=tgt.name, scale_type=tgt.numerics.scale_type, cle=cfg.include_cle,
                      bias_corrected=applied.get("bias_correction", {}).get("kept", False),
                      fast_finetuned=cfg.fast_finetune is not None, algorithms=applied)
    return QuantizedModel(model=q_static, dynamic_model=q_dynamic, original_model=original, float_model=s_opt,
                          quant_params=asg_s.params, report=report, target=tgt, config=cfg, info=info)


def _config(config: QuantConfig | Mapping | str | os.PathLike | None) -> QuantConfig:
    if config is None:
        return QuantConfig()
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, Mapping):
        return QuantConfig.from_dict(dict(config))
    return QuantConfig.load(config)


def _step(progress: Progress | None, stage: str) -> None:
    if progress is not None:
        progress(stage, 0, None)


def _length(data: CalibrationSource) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


def _dynamic_twin(source: onnx.ModelProto, loaded: onnx.ModelProto) -> onnx.ModelProto:
    """The loaded model with the source's dynamic input dimensions left symbolic and no value_info."""
    src_dims = {i.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                         for d in i.type.tensor_type.shape.dim] for i in model_io.graph_inputs(source)}
    proto = onnx.ModelProto()
    proto.CopyFrom(loaded)
    for inp in model_io.graph_inputs(proto):
        dims = src_dims.get(inp.name, [])
        for k, d in enumerate(inp.type.tensor_type.shape.dim):
            if k < len(dims) and dims[k] is None:
                d.Clear()
                d.dim_param = f"{inp.name}_dim{k}"
    del proto.graph.value_info[:]
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")
    return proto


def _static_twin(d_model: onnx.ModelProto, static_inputs: dict[str, list[int]]) -> onnx.ModelProto:
    """Freeze the inputs of a dynamic twin, fold what became constant, infer static shapes."""
    proto = onnx.ModelProto()
    proto.CopyFrom(d_model)
    for inp in model_io.graph_inputs(proto):
        dims = inp.type.tensor_type.shape.dim
        for k, value in enumerate(static_inputs[inp.name]):
            dims[k].Clear()
            dims[k].dim_value = int(value)
    proto = model_io.infer_static_shapes(proto)
    return model_io.infer_static_shapes(fold_static_shapes(proto))


def _input_specs(model: onnx.ModelProto, static_inputs: dict[str, list[int]]) -> list[InputSpec]:
    specs = []
    for inp in model_io.graph_inputs(model):
        tt = inp.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        specs.append(InputSpec(inp.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims))
    return specs
