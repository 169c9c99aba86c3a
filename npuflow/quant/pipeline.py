"""``npuflow.quantize``: the post-training quantization pipeline, one clear step after another.

1. load the model with static input shapes (the ``input_shapes`` given; dimensions they leave
   dynamic take the first calibration sample's shape, :func:`.data.peek`): the quantizer works
   on this one graph, folded as ``check`` folds it, so the placement ``check`` reports is the
   one quantized.  A *dynamic* twin keeps the dimensions the source leaves dynamic (OCR widths,
   batch) for calibration samples that differ in shape, and is what ``save`` writes when no
   ``input_shapes`` were given (``calib_dynamic_dims`` unset: a twin exactly when dimensions are
   left open; true/false force it);
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
   with the checker's placement (``ON``/``Subgraph`` columns) of the optimised float model;
8. the accuracy check: the model outputs' cosine similarity to the float model on the first
   ``similarity_samples`` calibration samples must reach ``min_output_cosine``, or quantize
   warns (``strict``: raises ``NPF_QUANT_LOW_SIMILARITY``).  A collapsed model (PP-OCRv4 det
   on a DPU: text maps at 1e-5 where FP32 finds text) is never returned silently.

Calibration samples must have the shape the model is quantized at, unless twins let the source's
dynamic dimensions vary: a 640-pixel set for a model frozen at 320 gives ranges of another input
distribution.

With twins, tensor and node names are identical in both, so statistics gathered on the dynamic
one apply to the static one by name; what the static twin folds (a shape-dependent ``If``) the
dynamic one keeps, which is why such a model gets no twin unless ``calib_dynamic_dims`` is true.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from .. import model as model_io
from ..check import check
from ..errors import NpuflowError
from ..outputs import StagedOutputs
from ..passes.fold_constants import fold_static_shapes
from ..passes.optimize import optimize_float
from ..targets import Target, load_target
from .algorithms import apply as algorithms
from .assign import assign
from .calibrate import Progress, collect
from .config import HISTOGRAM_METHODS, QuantConfig
from .data import CalibrationSource, InputSpec, peek
from .export import export_qdq, to_plain_qdq
from .legalize import legalize
from . import percentile_search
from .params import TensorQuant
from .placement import accelerator_nodes
from .plan import build_plan
from .quant_info import quant_info
from .report import QuantReport, add_placement, build_report, low_similarity, output_similarity

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
    #: the accuracy check's finding (NPF_QUANT_LOW_SIMILARITY), None when the outputs held up
    problem: NpuflowError | None = None
    #: ``save`` writes ``dynamic_model`` as quantized_model.onnx: the source's dynamic dims were
    #: left open (no ``input_shapes``), so the saved model runs every size the source runs
    saves_dynamic: bool = False

    def require_similarity(self) -> None:
        """Raise the accuracy check's ``NPF_QUANT_LOW_SIMILARITY``, if it found one (``--strict``)."""
        if self.problem is not None:
            raise self.problem

    def save(self, out_dir: str | os.PathLike, *, plain_qdq: bool = False) -> dict[str, Path]:
        """Write every artifact into ``out_dir`` as one set; returns name -> path.

        The files are staged and swapped in together (:class:`~npuflow.outputs.StagedOutputs`):
        a failure or Ctrl-C leaves an earlier run's files in ``out_dir`` as they were, never a
        mix of two runs.
        """
        qmodel = self.dynamic_model if self.saves_dynamic else self.model
        qmodel = to_plain_qdq(qmodel) if plain_qdq else qmodel
        writers = {
            "original_float_model.onnx": lambda p: model_io.save(self.original_model, p),
            "optimized_float_model.onnx": lambda p: model_io.save(self.float_model, p),
            "quantized_model.onnx": lambda p: model_io.save(qmodel, p),
            "quant_info.json": lambda p: model_io.write_atomic(p, json.dumps(self.info, indent=1) + "\n"),
            "quant_report.json": lambda p: model_io.write_atomic(p, json.dumps(self.report.to_json(), indent=1) + "\n"),
        }
        with StagedOutputs(Path(out_dir), "quantize", list(writers)) as stage:
            for name, write in writers.items():
                write(stage.path(name))
            published = stage.publish()
        return {name.rsplit(".", 1)[0]: path for name, path in published.items()}


def quantize(model: model_io.ModelLike, calib_data: Any, target: str | Target, config: QuantConfig | Mapping | str | os.PathLike | None = None,
             input_shapes: Mapping[str, Sequence[int]] | None = None, *, progress: Progress | None = None,
             strict: bool = False, warn: bool = True) -> QuantizedModel:
    """Quantize ``model`` for ``target`` with calibration data ``calib_data``.

    ``calib_data``: a folder (``.npy`` or raw ``numpy.tofile`` files), an array, a dict, or an
    iterable of those.  ``config``: a :class:`QuantConfig`, a dict, or a JSON/YAML path.
    ``strict``: an output similarity below ``min_output_cosine`` raises instead of warning;
    ``warn=False``: no warning is logged, the caller reports ``result.problem`` itself (the CLI
    prints it after the per-node table).
    """
    tgt = target if isinstance(target, Target) else load_target(target)
    cfg = config_of(config)
    cfg.validate_against(tgt)
    shapes = dict(input_shapes or {})

    source_proto = model if isinstance(model, onnx.ModelProto) else model_io.read_proto(model)
    open_dims = {n: at for n, at in model_io.dynamic_dims(source_proto).items() if n not in shapes}
    if open_dims:  # what --input-shape leaves open is quantized at the first sample's shape
        first, calib_data = peek(calib_data, _input_specs(source_proto, {}, True), shapes=cfg.calib_shapes,
                                 dtype=cfg.calib_dtype)
        shapes.update({n: list(first[n].shape) for n in open_dims})
    loaded = model_io.load(source_proto, shapes, infer_shapes=False)
    original = model_io.infer_static_shapes(loaded)
    static_inputs = {i.name: model_io.tensor_shapes(original)[i.name] for i in model_io.graph_inputs(original)}
    twins = bool(open_dims) if cfg.calib_dynamic_dims is None else cfg.calib_dynamic_dims
    _step(progress, "optimize")
    d_opt = optimize_float(_dynamic_twin(source_proto, loaded) if twins else original)
    if twins and cfg.calib_dynamic_dims is None and _branches_on_shape(d_opt, static_inputs):
        log.info("the model branches on its dynamic input dimensions: quantized and saved at %s", static_inputs)
        twins = False
        d_opt = optimize_float(original)
    cfg = cfg.model_copy(update={"calib_dynamic_dims": twins})  # as resolved, for callers reading samples again
    d_opt = algorithms.pre_calibration(d_opt, cfg, lambda: CalibrationSource(
        calib_data, _input_specs(d_opt, static_inputs, cfg.calib_dynamic_dims), shapes=cfg.calib_shapes,
        dtype=cfg.calib_dtype, limit=cfg.max_calib_samples))
    s_opt = _static_twin(d_opt, static_inputs) if twins else model_io.infer_static_shapes(d_opt)
    cfg.check_names([n.name for n in s_opt.graph.node if n.name] + [n.name for n in d_opt.graph.node if n.name])

    s_leg = model_io.infer_static_shapes(legalize(s_opt, tgt))
    d_leg = onnx.shape_inference.infer_shapes(legalize(d_opt, tgt)) if twins else s_leg
    placement = check(s_opt, tgt)
    allowed = accelerator_nodes(placement, s_leg, tgt)
    plan_s = build_plan(s_leg, tgt, cfg, allowed)
    plan_d = build_plan(d_leg, tgt, cfg, allowed) if twins else plan_s
    if not plan_s.quantized and (holders := model_io.control_flow_nodes(s_leg)):
        raise NpuflowError("NPF_QUANT_CONTROL_FLOW_ONLY", nodes=", ".join(holders))

    inputs = _input_specs(d_leg, static_inputs, cfg.calib_dynamic_dims)
    data = CalibrationSource(calib_data, inputs, shapes=cfg.calib_shapes, dtype=cfg.calib_dtype, limit=cfg.max_calib_samples)
    tensors = list(plan_d.points)
    hist = {t for t, p in plan_d.points.items() if p.settings.method in HISTOGRAM_METHODS}
    total = _length(data)
    search = percentile_search.applies(cfg, plan_d)
    guard = algorithms.FINETUNE_SAMPLES if cfg.include_bias_corr == "auto" or search else 0
    # steps after calibration read samples again; a one-shot iterator's first ones are kept for them
    keep = cfg.report_samples if data.reusable else max(cfg.report_samples, algorithms.FINETUNE_SAMPLES)
    stats, kept = collect(d_leg, tensors, hist, data, bins=cfg.histogram_bins, keep=keep, keep_outputs=guard,
                          progress=progress, total=total, workers=cfg.calib_workers, ray_address=cfg.calib_ray_address)
    again = data if data.reusable else kept

    searched: dict = {}
    if search:
        _step(progress, percentile_search.STAGE)
        plan_d, plan_s, searched = percentile_search.apply(d_leg, plan_d, plan_s, stats, again, cfg.percentile_candidates,
                                                           target_name=tgt.name, scale_type=tgt.numerics.scale_type,
                                                           progress=progress, workers=cfg.calib_workers,
                                                           ray_address=cfg.calib_ray_address)
    asg_s = assign(s_leg, plan_s, stats)
    asg_d = assign(d_leg, plan_d, stats) if twins else asg_s

    _step(progress, "export")
    q_static = export_qdq(s_leg, plan_s, asg_s, target_name=tgt.name, scale_type=tgt.numerics.scale_type)
    q_dynamic = export_qdq(d_leg, plan_d, asg_d, target_name=tgt.name, scale_type=tgt.numerics.scale_type) \
        if twins else q_static
    q_static, q_dynamic, applied = algorithms.after_export(d_leg, q_dynamic, q_static, lambda: again, cfg, tgt,
                                                             reference=stats.outputs)
    applied = {**searched, **applied}
    _step(progress, "report")
    report = build_report(d_opt, q_dynamic, plan_d, asg_d.params, kept[:cfg.report_samples])
    add_placement(report, placement)
    problem = _accuracy_check(report, d_opt, q_dynamic, again, cfg, progress)
    if problem is not None and warn and not strict:
        log.warning("[%s] %s\n  hint: %s", problem.code, problem.message, problem.hint)
    info = quant_info(asg_s.params, target=tgt.name, scale_type=tgt.numerics.scale_type, cle=cfg.include_cle,
                      bias_corrected=applied.get("bias_correction", {}).get("kept", False),
                      fast_finetuned=cfg.fast_finetune is not None, algorithms=applied)
    result = QuantizedModel(model=q_static, dynamic_model=q_dynamic, original_model=original, float_model=s_opt,
                            quant_params=asg_s.params, report=report, target=tgt, config=cfg, info=info, problem=problem,
                            saves_dynamic=twins and not input_shapes)
    if strict:
        result.require_similarity()
    return result


def _accuracy_check(report: QuantReport, float_model: onnx.ModelProto, q_model: onnx.ModelProto, samples: Any,
                    cfg: QuantConfig, progress: Progress | None) -> NpuflowError | None:
    """Fill the report's calibration-sample output similarity; the problem when it is below
    ``min_output_cosine``."""
    if cfg.min_output_cosine <= 0.0:
        return None
    _step(progress, "accuracy check")
    feeds = list(itertools.islice(iter(samples), cfg.similarity_samples))
    report.calibration_outputs = output_similarity(float_model, q_model, feeds)
    report.similarity_samples = len(feeds)
    return low_similarity(report, cfg.min_output_cosine)


def config_of(config: QuantConfig | Mapping | str | os.PathLike | None) -> QuantConfig:
    """A config given as a QuantConfig, a dict, a JSON/YAML path or None (the defaults)."""
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
    """The loaded model with the source's dynamic input dimensions left symbolic and no value_info.

    A dimension keeps the source's name (a saved model shows what the exporter wrote) when that
    name is used once; a repeated one (paddle2onnx writes ``?`` for height and width) would tell
    shape inference the dimensions are equal, so those get their own names."""
    src_dims = {i.name: [None if d.HasField("dim_value") and d.dim_value > 0 else d.dim_param
                         for d in i.type.tensor_type.shape.dim] for i in model_io.graph_inputs(source)}
    uses = Counter(name for dims in src_dims.values() for name in dims if name)
    src_dims = {i: [d if d is None or uses[d] == 1 else "" for d in dims] for i, dims in src_dims.items()}
    proto = onnx.ModelProto()
    proto.CopyFrom(loaded)
    for inp in model_io.graph_inputs(proto):
        dims = src_dims.get(inp.name, [])
        for k, d in enumerate(inp.type.tensor_type.shape.dim):
            if k < len(dims) and dims[k] is not None:  # the source's name, so a saved model keeps it
                d.Clear()
                d.dim_param = dims[k] or f"{inp.name}_dim{k}"
    del proto.graph.value_info[:]
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")
    return proto


def _branches_on_shape(d_model: onnx.ModelProto, static_inputs: dict[str, list[int]]) -> bool:
    """Whether freezing the inputs folds control flow away (an ``If`` on the input length): then the
    dynamic twin's tensors are not the static one's and cannot calibrate it by name."""
    held = model_io.control_flow_nodes(d_model)
    return bool(held) and held != model_io.control_flow_nodes(_static_twin(d_model, static_inputs))


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


def _input_specs(model: onnx.ModelProto, static_inputs: dict[str, list[int]], dynamic_dims: bool) -> list[InputSpec]:
    """What each calibration sample must be: the input's dtype and the shape it is quantized at
    (``dynamic_dims``: the dimensions ``model`` leaves dynamic may vary)."""
    specs = []
    for inp in model_io.graph_inputs(model):
        tt = inp.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        if not dynamic_dims:
            dims = tuple(static_inputs[inp.name])
        specs.append(InputSpec(inp.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims))
    return specs
