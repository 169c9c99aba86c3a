"""``npuflow.quantize``: the post-training quantization pipeline, one clear step after another.

1. load the model; dimensions ``input_shapes`` leave dynamic take the first calibration
   sample's shape (:func:`.data.peek`), the shape the model is *quantized at*;
2. float optimisation (:func:`npuflow.passes.optimize.optimize_float`) of **one graph**: the model
   with the source's dynamic dimensions (OCR widths, batch) where calibration samples may vary
   in them (``calib_dynamic_dims``, by default exactly when ``input_shapes`` leave dimensions
   open), else the model frozen at the quantized shape;
3. pre-calibration float algorithms (CLE, ``include_cle``) on it (:mod:`.algorithms.apply`);
4. target legalisation (:func:`.legalize.legalize`), the checker's placement and the
   quantization plan (:mod:`.plan`): on accelerator targets only the nodes placed on the
   accelerator are quantized (:mod:`.placement`);
5. one streaming calibration pass (:mod:`.calibrate`);
6. parameters and integer constants (:func:`.assign.assign`);
7. QDQ export (:mod:`.export`), then the per-layer weight algorithms on the QDQ model
   (AdaRound/AdaQuant ``fast_finetune``, bias correction ``include_bias_corr``:
   :func:`.algorithms.apply.after_export`), quant_info and the accuracy report (:mod:`.report`),
   with the checker's placement (``ON``/``Subgraph`` columns);
8. the accuracy check: the model outputs' cosine similarity to the float model must reach
   ``min_output_cosine``, or quantize warns (``strict``: raises ``NPF_QUANT_LOW_SIMILARITY``);
   measured on the first ``similarity_samples`` calibration samples, or with ``similarity_hold_out``
   on the last ones, held out of range setting (:func:`.report.hold_out_for_check`), or with ``eval_data`` on
   the user's evaluation samples, which calibration never reads; on unseen samples the figures on the
   calibration samples are recorded beside them (``report.fitted_*``).  A collapsed model (PP-OCRv4 det
   on a DPU: text maps at 1e-5 where FP32 finds text) is never returned silently.

Shapes are frozen only where a stage needs them, as views of the one graph (:func:`_frozen`):
``check`` places the float graph frozen at the quantized shape and folded as it folds it (an
``If`` on the input length decided), so the placement it reports is the one quantized and
compiled; ``QuantizedModel.model`` (what ``compile`` reads) and ``float_model``
(``optimized_float_model.onnx``) are the quantized and the float graph frozen the same way.  A model whose
control flow the frozen shape folds away is another graph at that shape, so by default it is
quantized frozen (``calib_dynamic_dims: true`` keeps it dynamic).

Calibration samples must have the quantized shape except in the dimensions the graph keeps
dynamic: a 640-pixel set for a model frozen at 320 gives ranges of another input distribution.

The result keeps what precision overrides need (:class:`.requantize.Requantizer`): the plan, the
statistics and the final integer constants, so sensitivity analysis and the mixed-precision
search re-export layers in float or int16 without calibrating again.
"""

from __future__ import annotations

import dataclasses
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
from ..check.nonfinite import sentinel_tensors
from ..errors import NpuflowError
from ..graph import GraphView, is_qdq, unique_name
from ..input_shapes import mark_frozen_inputs
from ..operators import is_integer_format_op
from ..outputs import StagedOutputs
from ..passes.fold_constants import frozen_view
from ..passes.optimize import optimize_float
from ..passes.zero_terms import zero_by_construction
from ..targets import Target, load_target
from .algorithms import apply as algorithms
from .algorithms.capture import HeldOutRuns
from .assign import assign
from .calib_stats import noise_like_inputs
from .calibrate import Progress, collect
from .config import HISTOGRAM_METHODS, QuantConfig
from .data import CalibrationSource, InputSpec, peek
from .divisors import keep_divisors_float
from .export import export_qdq, to_plain_qdq
from .legalize import legalize
from . import method_search, percentile_search
from .params import TensorQuant
from .placement import accelerator_nodes
from .plan import build_plan, node_key
from .quant_info import quant_info
from .requantize import Requantizer, final_assignment
from .shared_scale import shared_scale_warnings
from .report import (QuantReport, add_placement, build_report, fitted_figures, hold_out_for_check, judge_outputs,
                     low_similarity)

log = logging.getLogger(__name__)


@dataclass
class QuantizedModel:
    """The result of :func:`quantize`: models, parameters and the accuracy report."""

    model: onnx.ModelProto  # the quantized graph at the shape it is quantized at (``dynamic_model`` frozen)
    dynamic_model: onnx.ModelProto  # the quantized graph, with the dims the source and the samples leave dynamic
    original_model: onnx.ModelProto
    float_model: onnx.ModelProto  # optimized_float_model.onnx
    quant_params: dict[str, TensorQuant]
    report: QuantReport
    target: Target
    config: QuantConfig
    info: dict = field(default_factory=dict)
    #: the accuracy check's finding (NPF_QUANT_LOW_SIMILARITY), None when the outputs held up
    problem: NpuflowError | None = None
    #: what the calibration samples themselves look wrong by (NPF_QUANT_CALIB_LOOKS_RANDOM), and labels
    #: the accuracy check found near changing (NPF_QUANT_LABEL_MARGIN) and output channels it found lost
    #: (NPF_QUANT_OUTPUT_CHANNEL; both ``report.warnings``), logged by ``quantize`` unless ``warn=False``
    #: (the CLI and ``build`` print them)
    calibration_warnings: list[NpuflowError] = field(default_factory=list)
    #: ``save`` writes ``dynamic_model`` as quantized_model.onnx: the source's dynamic dims were
    #: left open (no ``input_shapes``), so the saved model runs every size the source runs
    saves_dynamic: bool = False
    #: re-exports this quantization with per-layer precision overrides (sensitivity, mixed
    #: precision); None once the model no longer comes from it (a QAT model)
    requantizer: Requantizer | None = None

    def __repr__(self) -> str:
        """A one-line summary: the generated dataclass repr printed every field (the requantizer's
        plan, quant_info, every tensor's parameters), 203 KB for the MNIST CNN, in a notebook cell."""
        graph = self.model.graph
        outputs = {k: float(f"{v:.6f}") if v is not None else None for k, v in self.report.outputs.items()}
        problem = self.problem.code if self.problem is not None else None
        return (f"QuantizedModel(target={self.target.name!r}, graph={graph.name!r}, nodes={len(graph.node)}, "
                f"quantized_tensors={len(self.quant_params)}, output_cosine={outputs}, problem={problem!r})")

    def with_precisions(self, overrides: Mapping[str, str]) -> "QuantizedModel":
        """This quantization with layers set to ``float``/``int16`` (:mod:`.requantize`): the
        plan re-built with the overrides, parameters from the same statistics, no calibration."""
        if self.requantizer is None:
            raise NpuflowError("NPF_QUANT_NO_PLAN", action="with_precisions")
        dynamic = self.requantizer.export(overrides)
        shapes = model_io.tensor_shapes(self.float_model)
        static = dynamic if not self.config.calib_dynamic_dims else _frozen(
            dynamic, {i.name: shapes[i.name] for i in model_io.graph_inputs(self.float_model)})
        return dataclasses.replace(self, model=static, dynamic_model=dynamic)

    def require_similarity(self) -> None:
        """Raise the accuracy check's ``NPF_QUANT_LOW_SIMILARITY``, if it found one (``--strict``)."""
        if self.problem is not None:
            raise self.problem

    def save(self, out_dir: str | os.PathLike, *, plain_qdq: bool = False) -> dict[str, Path]:
        """Write every artifact into the folder ``out_dir`` as one set; returns name -> path.  A path
        ending in ``.onnx`` is ``NPF_QUANT_SAVE_NEEDS_FOLDER``: it made a folder named ``x.onnx``.

        The files are staged and swapped in together (:class:`~npuflow.outputs.StagedOutputs`):
        a failure or Ctrl-C leaves an earlier run's files in ``out_dir`` as they were, never a
        mix of two runs.
        """
        folder = Path(out_dir)
        if folder.suffix.lower() == ".onnx" and not folder.is_dir():  # quantize_static(model_output=...)'s habit
            raise NpuflowError("NPF_QUANT_SAVE_NEEDS_FOLDER", path=str(folder))
        qmodel = self.dynamic_model if self.saves_dynamic else self.model
        qmodel = to_plain_qdq(qmodel) if plain_qdq else qmodel
        writers = {
            "original_float_model.onnx": lambda p: model_io.save(self.original_model, p),
            "optimized_float_model.onnx": lambda p: model_io.save(self.float_model, p),
            "quantized_model.onnx": lambda p: model_io.save(qmodel, p),
            "quant_info.json": lambda p: model_io.write_atomic(p, json.dumps(self.info, indent=1) + "\n"),
            "quant_report.json": lambda p: model_io.write_atomic(p, json.dumps(self.report.to_json(), indent=1) + "\n"),
        }
        with StagedOutputs(folder, "quantize", list(writers)) as stage:
            for name, write in writers.items():
                write(stage.path(name))
            published = stage.publish()
        return {name.rsplit(".", 1)[0]: path for name, path in published.items()}


def quantize(model: model_io.ModelLike, calib_data: Any, target: str | Target, config: QuantConfig | Mapping | str | os.PathLike | None = None,
             input_shapes: Mapping[str, Sequence[int]] | None = None, *, progress: Progress | None = None,
             strict: bool = False, warn: bool = True, eval_data: Any = None) -> QuantizedModel:
    """Quantize ``model`` for ``target`` with calibration data ``calib_data``.

    ``model``: an ``.onnx`` path, an ``onnx.ModelProto`` or its bytes (float).  ``target``: a
    name from :func:`npuflow.list_targets`, or a :class:`~npuflow.Target`.
    ``calib_data``: a folder (``.npy``, ``.npz`` or raw ``numpy.tofile`` files), an array, a dict
    ``{input name: array}``, an iterable of those or of tuples of arrays in input order (a
    generator, a torch ``DataLoader``), or an ONNX Runtime ``CalibrationDataReader``; each item
    is one sample at the model's input shape (``docs/quantization.md``).
    ``input_shapes``: ``{input name: dims}`` fixing dynamic dimensions.
    ``config``: a :class:`QuantConfig`, a dict, or a JSON/YAML path.  ``progress``: called
    as ``progress(stage, done, total or None)`` as each stage advances.
    ``eval_data``: samples in any form ``calib_data`` takes that the accuracy check reads instead of
    calibration samples (none of them sets a range): its warnings then speak for inputs the ranges
    were not fitted to, and the report gives the calibration samples' figures beside them.
    ``strict``: an output similarity below ``min_output_cosine`` raises instead of warning;
    ``warn=False``: no warning is logged, the caller reports ``result.problem`` itself (the CLI
    prints it after the per-node table).
    """
    if isinstance(calib_data, (str, os.PathLike)) and Path(calib_data).suffix.lower() == ".onnx":
        # ONNX Runtime's quantize_static(model_input, model_output, reader) order: it was "unknown target '<Reader>'"
        raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(calib_data),
                           reason="it is an .onnx path, and quantize takes no output path (ONNX Runtime's "
                                  "quantize_static(model_input, model_output, reader) order): "
                                  "quantized = npuflow.quantize(model, reader, target); quantized.save(folder)")
    tgt = target if isinstance(target, Target) else load_target(target)
    cfg = config_of(config)
    cfg.validate_against(tgt)
    shapes = model_io.checked_shapes(input_shapes)

    source_proto = model if isinstance(model, onnx.ModelProto) else model_io.read_proto(model)
    _refuse_non_tensor_outputs(source_proto)
    _refuse_quantized(source_proto)
    source_proto = _float32_compute(source_proto)
    open_dims = {n: at for n, at in model_io.dynamic_dims(source_proto).items() if n not in shapes}
    if open_dims:  # what --input-shape leaves open is quantized at the first sample's shape
        first, calib_data = peek(calib_data, _input_specs(source_proto, {}, True), shapes=cfg.calib_shapes,
                                 dtype=cfg.calib_dtype)
        shapes.update({n: list(first[n].shape) for n in open_dims})
    other_batch = False
    if not open_dims and cfg.calib_dynamic_dims is None:
        other_batch, calib_data = _samples_at_other_batch(source_proto, shapes, calib_data, cfg)
    loaded, original = model_io.load_both(source_proto, shapes)
    static_inputs = {i.name: model_io.tensor_shapes(original)[i.name] for i in model_io.graph_inputs(original)}
    dynamic = bool(open_dims) or other_batch if cfg.calib_dynamic_dims is None else cfg.calib_dynamic_dims
    _step(progress, "optimize")
    rewrites: list = []  # the target rewrites (passes/target_rewrites.py), reported in quant_info
    opt = optimize_float(_dynamic_graph(source_proto, loaded) if dynamic else original, tgt, rewrites,
                         static_inputs if dynamic else None)
    if dynamic and cfg.calib_dynamic_dims is None and _branches_on_shape(opt, static_inputs):
        log.info("the model branches on its dynamic input dimensions: quantized and saved at %s", static_inputs)
        dynamic = False
        rewrites = []
        opt = optimize_float(original, tgt, rewrites)
    cfg = cfg.model_copy(update={"calib_dynamic_dims": dynamic})  # as resolved, for callers reading samples again
    opt = algorithms.pre_calibration(opt, cfg, lambda: CalibrationSource(
        calib_data, _input_specs(opt, static_inputs, cfg.calib_dynamic_dims), shapes=cfg.calib_shapes,
        dtype=cfg.calib_dtype, limit=cfg.max_calib_samples))
    float_model = _frozen(opt, static_inputs) if dynamic else model_io.infer_static_shapes(opt)
    cfg.check_names([n.name for n in opt.graph.node if n.name])

    leg = legalize(opt, tgt)
    leg = onnx.shape_inference.infer_shapes(leg) if dynamic else model_io.infer_static_shapes(leg)
    placement = check(float_model, tgt)
    allowed = accelerator_nodes(placement, leg, tgt)
    plan = build_plan(leg, tgt, cfg, allowed)
    if not plan.quantized and (holders := model_io.control_flow_nodes(leg)):
        raise NpuflowError("NPF_QUANT_CONTROL_FLOW_ONLY", nodes=", ".join(holders))
    if not plan.quantized:  # else the only sign was compile's NPF_COMPILE_NOT_QUANTIZED on quantize's own output
        log.warning("no node of the model runs on %s's accelerator, so nothing is quantized: quantized_model.onnx "
                    "computes as the float model and `npuflow compile` refuses it (NPF_COMPILE_NOT_QUANTIZED); "
                    "`npuflow check` says why for each node", tgt.name)

    inputs = _input_specs(leg, static_inputs, cfg.calib_dynamic_dims)
    data = CalibrationSource(calib_data, inputs, shapes=cfg.calib_shapes, dtype=cfg.calib_dtype, limit=cfg.max_calib_samples)
    data, held_out = algorithms.hold_out(data, cfg)  # fast_finetune.select_on's samples
    # the float model runs on them once, for the restarts and the accuracy check
    held_runs = HeldOutRuns(held_out, opt) if held_out else None
    # the accuracy check's samples: the user's evaluation samples; else select_on's where it holds some
    # out (the ranges never saw them; one of the restarts was chosen on them), else its own
    # (report.hold_out_for_check)
    evaluation = _evaluation_samples(eval_data, inputs, cfg)
    if evaluation:
        check_feeds, check_runs = evaluation, None
    else:
        data, check_feeds = (data, held_out) if held_out else hold_out_for_check(data, cfg)
        check_runs = held_runs
    tensors = list(plan.points)
    hist = {t for t, p in plan.points.items() if p.settings.method in HISTOGRAM_METHODS}
    total = _length(data)
    search = percentile_search.applies(cfg, plan)
    positions = plan.quantized and method_search.applies(cfg, tgt.numerics.scale_type)
    if positions:  # the MSE candidate's histograms, collected in the same pass
        hist |= method_search.histogram_points(build_plan(leg, tgt, method_search.with_method(cfg, method_search.CANDIDATE), allowed))
    guard = cfg.finetune_samples if cfg.include_bias_corr == "auto" or search or positions else 0
    # steps after calibration read samples again; a one-shot iterator's first ones are kept for them
    keep = cfg.report_samples if data.reusable else max(cfg.report_samples, cfg.finetune_samples)
    stats, kept = collect(leg, tensors, hist, data, bins=cfg.histogram_bins, keep=keep, keep_outputs=guard,
                          progress=progress, total=total, workers=cfg.calib_workers, ray_address=cfg.calib_ray_address)
    again = data if data.reusable else kept
    calib_warnings = (noise_calibration(kept or list(itertools.islice(again, 1)))
                      + _all_zero(stats, total, zero_by_construction(leg.graph)))
    if warn:
        for warning in calib_warnings:
            log.warning("[%s] %s\n  hint: %s", warning.code, warning.message, warning.hint)
    plan, cfg = _keep_nonfinite_float(leg, tgt, cfg, allowed, plan, stats)
    plan, cfg = keep_divisors_float(leg, tgt, cfg, allowed, plan, stats)

    searched: dict = {}
    if search:
        _step(progress, percentile_search.STAGE)
        plan, searched = percentile_search.apply(leg, plan, stats, again, cfg.percentile_candidates,
                                                 target_name=tgt.name, scale_type=tgt.numerics.scale_type,
                                                 progress=progress, workers=cfg.calib_workers,
                                                 ray_address=cfg.calib_ray_address)
    if positions:
        _step(progress, method_search.STAGE)
        mse_cfg = method_search.with_method(cfg, method_search.CANDIDATE)
        mse_plan = build_plan(leg, tgt, mse_cfg, allowed)
        won, record = method_search.choose(leg, plan, mse_plan, stats, again, target_name=tgt.name,
                                           scale_type=tgt.numerics.scale_type, progress=progress)
        searched = {**searched, **record}
        if won:
            cfg, plan = mse_cfg, mse_plan
    if any(p.settings.method == "entropy" for p in plan.points.values()):
        # the KL search over every histogram's clipping candidates is a stage of its own: FlowNetC's 383 tensors
        # on bernoulli2 (build's calibration_type default) spent 86 s here under "calibrate 16/16 samples" (round 28a)
        _step(progress, ENTROPY_STAGE)
    asg = assign(leg, plan, stats)

    _step(progress, "export")
    exported = export_qdq(leg, plan, asg, target_name=tgt.name, scale_type=tgt.numerics.scale_type)
    if cfg.fast_finetune is not None or cfg.include_bias_corr:  # minutes on a large model: say which ran
        _step(progress, "fast finetune" if cfg.fast_finetune is not None else "bias correction")
    q_model, applied = algorithms.after_export(leg, exported, lambda: again, cfg, tgt, reference=stats.outputs,
                                               held_out=held_runs)
    applied = {**searched, **applied}
    if rewrites:
        applied["target_rewrites"] = [r.to_json() for r in rewrites]
    _step(progress, "report")
    final = final_assignment(q_model, asg)  # the parameters as written (fast finetune may move weight scales)
    report = build_report(opt, q_model, plan, final.params, kept[:cfg.report_samples])
    add_placement(report, placement, plan.kept_float)
    problem = _accuracy_check(report, opt, q_model, check_feeds or again, cfg, progress, held_out=bool(check_feeds),
                              evaluation=bool(evaluation), runs=check_runs)
    if check_feeds and cfg.min_output_cosine > 0.0:  # the calibration samples' figures beside the unseen ones
        fitted_figures(report, opt, q_model, list(itertools.islice(iter(again), cfg.similarity_samples)))
    report.warnings.extend(shared_scale_warnings(leg.graph, plan, stats.minmax))
    for found in [*([problem] if problem is not None and not strict else []), *report.warnings]:
        if warn:
            log.warning("[%s] %s\n  hint: %s", found.code, found.message, found.hint)
    info = quant_info(final.params, target=tgt.name, scale_type=tgt.numerics.scale_type, cle=cfg.include_cle,
                      bias_corrected=applied.get("bias_correction", {}).get("kept", False),
                      fast_finetuned=cfg.fast_finetune is not None, algorithms=applied)
    chosen = applied.get("percentile_search", {}).get("chosen")
    # the observers only: the float outputs kept for the checks above are no statistics to re-assign from
    observers = dataclasses.replace(stats, outputs=[])
    requantizer = Requantizer(leg, tgt, cfg, allowed, observers, plan, asg, final, q_model,
                              percentile=chosen)
    frozen = {n: at for n, at in model_io.dynamic_dims(source_proto).items() if n in (input_shapes or {})}
    if frozen:
        mark_frozen_inputs(q_model, frozen)
    result = QuantizedModel(model=_frozen(q_model, static_inputs) if dynamic else q_model, dynamic_model=q_model,
                            original_model=original, float_model=float_model, quant_params=final.params, report=report,
                            target=tgt, config=cfg, info=info, problem=problem,
                            calibration_warnings=calib_warnings + report.warnings,
                            saves_dynamic=dynamic and not input_shapes,
                            requantizer=requantizer)
    if strict:
        result.require_similarity()
    return result


def noise_calibration(samples: Sequence[dict[str, np.ndarray]]) -> list[NpuflowError]:
    """``NPF_QUANT_CALIB_LOOKS_RANDOM`` for each image input whose calibration samples look like
    random noise (:mod:`.calib_stats`): the accuracy check is measured on the same samples, so it
    cannot see that ranges from noise fit real inputs badly."""
    return [NpuflowError("NPF_QUANT_CALIB_LOOKS_RANDOM", input=found.name, correlation=f"{found.correlation:.2f}",
                         samples=found.samples) for found in noise_like_inputs(samples)]


def _all_zero(stats, samples: int | None, structural: set[str]) -> list[NpuflowError]:
    """``NPF_QUANT_CALIB_ALL_ZERO`` naming the quantized tensors that held only zeros on every
    calibration sample: scikit-learn's SVC calibrated on rows of one class never voted for the
    other class pairs, reported 1.0 on those rows and reached 0.886 mean cosine on rows of all
    three classes (1.0 calibrated on rows of every class).  Tensors zero by construction
    (``structural``: a broadcast ``x + zeros(shape)`` the float passes keep) are zero on every
    input, so no calibration set can change them and they are not named."""
    zero = sorted(t for t, mm in stats.minmax.items()
                  if mm.count and not mm.nonfinite and mm.max == mm.min == 0.0 and t not in structural)
    if not zero:
        return []
    shown = ", ".join(zero[:5]) + (f" and {len(zero) - 5} more" if len(zero) > 5 else "")
    return [NpuflowError("NPF_QUANT_CALIB_ALL_ZERO", count=len(zero), samples=samples if samples else "the",
                         tensors=shown)]


def _keep_nonfinite_float(leg: onnx.ModelProto, tgt: Target, cfg: QuantConfig, allowed: set[str] | None, plan,
                          stats) -> tuple[Any, QuantConfig]:
    """The plan and config with the nodes that write or read a tensor holding infinities or NaN on
    the calibration data kept float.  Such a tensor has no 8-bit grid: an attention mask's
    ``Where(mask, 0, -inf)`` and the ``Add`` of it to the scores (``F.scaled_dot_product_attention``
    with a mask, the default exporter's causal mask) made an infinite range, a traceback on
    float-scale targets and a scale of 0 on power-of-two ones (cosine 0.90, a file compile refused).
    Kept float, the scores before the mask are still quantized and the ``Softmax`` reads the exact
    ``-inf``.  A finite mask (``-1e4``, ``-1e9``: :data:`..check.nonfinite.MASK_FLOOR`) reaching a
    ``Softmax`` is kept float the same way, found in the graph as check finds it (one grid over it and
    the scores rounds every score to 0).  The statistics of the other tensors stay valid (keeping nodes float removes
    quantization points; non-finite calibration inputs were refused by the reader already)."""
    view = GraphView(leg)
    masks = sentinel_tensors(view)  # finite masks (-1e4, -1e9) too, as check places them
    kept: list[str] = []
    while bad := sorted(t for t in plan.points if t in masks or (t in stats.minmax and stats.minmax[t].nonfinite)):
        nodes = {node_key(n) for t in bad for n in [view.producer_node(t), *view.consumer_nodes(t)] if n is not None}
        new = sorted(nodes - set(cfg.keep_float))
        if not new:  # the plan still quantizes them: nothing more float keeping can do
            raise NpuflowError("NPF_QUANT_NONFINITE_TENSOR", tensors=", ".join(bad))
        kept += new
        cfg = cfg.model_copy(update={"keep_float": [*cfg.keep_float, *new]})
        plan = build_plan(leg, tgt, cfg, allowed)
    if kept:
        log.warning("kept in float (they write or read tensors that held infinities or NaN on the calibration "
                    "data, or carry an attention mask of -1e4 or below, which no 8-bit grid holds with the "
                    "scores): %s", ", ".join(kept))
    return plan, cfg


def _accuracy_check(report: QuantReport, float_model: onnx.ModelProto, q_model: onnx.ModelProto, samples: Any,
                    cfg: QuantConfig, progress: Progress | None, *, held_out: bool, evaluation: bool = False,
                    runs: HeldOutRuns | None = None) -> NpuflowError | None:
    """Fill the report's output similarity on ``samples`` (``held_out``: held out of range setting,
    all of them; else the first ``similarity_samples``) and its label and channel warnings
    (``max_label_change``, ``min_output_cosine``: ``report.warnings``); the problem when the
    similarity is below ``min_output_cosine``.
    ``runs``: select_on's samples (``samples`` then) with the outputs the restarts already ran on them."""
    if cfg.min_output_cosine <= 0.0:
        return None
    _step(progress, "accuracy check")
    feeds = list(samples) if held_out else list(itertools.islice(iter(samples), cfg.similarity_samples))
    judge_outputs(report, float_model, q_model, feeds, cfg.max_label_change, held_out=held_out, evaluation=evaluation,
                  outputs_of=runs.outputs if runs is not None else None,
                  min_output_cosine=cfg.min_output_cosine, min_output_snr_db=cfg.min_output_snr_db)
    return low_similarity(report, cfg.min_output_cosine)


def _evaluation_samples(eval_data: Any, inputs: list[InputSpec], cfg: QuantConfig) -> list:
    """The user's evaluation samples (``quantize(eval_data=...)``), read as calibration data is, all of them;
    [] without any or without a check (``min_output_cosine`` 0).  An empty set is refused as calibration
    data is: a check that read nothing would pass silently."""
    if eval_data is None or cfg.min_output_cosine <= 0.0:
        return []
    return list(CalibrationSource(eval_data, inputs, shapes=cfg.calib_shapes, dtype=cfg.calib_dtype))


def config_of(config: QuantConfig | Mapping | str | os.PathLike | None) -> QuantConfig:
    """A config given as a QuantConfig, a dict, a JSON/YAML path or None (the defaults)."""
    if config is None:
        return QuantConfig()
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, Mapping):
        return QuantConfig.from_dict(dict(config))
    return QuantConfig.load(config)


#: the progress stage of the entropy (KL) threshold search that :func:`.assign.assign` runs after calibration
ENTROPY_STAGE = "entropy thresholds"


def _step(progress: Progress | None, stage: str) -> None:
    if progress is not None:
        progress(stage, 0, None)


def _length(data: CalibrationSource) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


def _refuse_non_tensor_outputs(proto: onnx.ModelProto) -> None:
    """``NPF_QUANT_NON_TENSOR_OUTPUT`` for a sequence or map output (sklearn's ``ZipMap``): the
    calibration searches and the similarity report compare outputs as arrays (they failed on the
    list of dicts ONNX Runtime returns for one), and a valid sklearn model was refused as
    ``NPF_MODEL_INVALID`` ("Invalid tensor data type 0") before them."""
    view = GraphView(proto)
    for out in proto.graph.output:
        kind = out.type.WhichOneof("value")
        if kind not in (None, "tensor_type"):
            maker = view.producer_node(out.name)
            op = f"{maker.op_type} node {maker.name!r}" if maker is not None else "a graph input"
            raise NpuflowError("NPF_QUANT_NON_TENSOR_OUTPUT", output=out.name, kind=kind.removesuffix("_type"), op=op)


def _refuse_quantized(proto: onnx.ModelProto) -> None:
    """``NPF_QUANT_ALREADY_QUANTIZED`` for a model that already holds quantize/dequantize steps or
    integer ops (from ONNX Runtime, Quark, NNCF, or ``npuflow quantize`` itself).  Quantizing one
    again stacked npuflow's steps on the first set: a Quark A8W8 model gave a quantized_model.onnx
    that ``compile`` refused (``NPF_MODEL_DUPLICATE_NAME``, blaming the exporter), an ONNX Runtime
    ``quantize_dynamic`` model failed at export (``NPF_MODEL_INVALID``, duplicate ``..._scale``)."""
    found = [n for n in proto.graph.node if is_qdq(n) or is_integer_format_op(n.op_type)]
    if found:
        ops = ", ".join(f"{op} x{k}" for op, k in Counter(n.op_type for n in found).most_common())
        raise NpuflowError("NPF_QUANT_ALREADY_QUANTIZED", count=len(found), ops=ops,
                           node=found[0].name or found[0].output[0])


def _float32_compute(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 model (onnxconverter-common's ``convert_float_to_float16``) computing in float32.

    Why: the quantization plan takes float32 tensors only, while ``check`` places float16 work on
    the accelerator, so such a model was quantized to nothing ("no node of the model runs on the
    accelerator") under a table showing those nodes on it, and ``compile`` refused it.  Float16
    weights are exact in float32.  The interface stays: a float16 graph input is cast to float32
    where the model reads it, a float16 output is cast back.  Models with no float16 weight (a
    float32 model that casts one tensor to float16 on purpose) are returned as they are."""
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    if not any(i.data_type == f16 for i in proto.graph.initializer):
        return proto
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph

    def upcast(t: onnx.TensorProto) -> None:
        t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).astype(np.float32), t.name))

    for init in graph.initializer:
        if init.data_type == f16:
            upcast(init)
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == f16:
                attr.i = f32
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == f16:
                upcast(attr.t)
    for info in graph.value_info:
        if info.type.tensor_type.elem_type == f16:
            info.type.tensor_type.elem_type = f32
    inits = {i.name for i in graph.initializer}
    reserved: set[str] = set()
    head, tail = [], []
    for inp in graph.input:
        if inp.name not in inits and inp.type.tensor_type.elem_type == f16:
            inner = unique_name(graph, f"{inp.name}_float32", reserved)
            for node in graph.node:
                node.input[:] = [inner if i == inp.name else i for i in node.input]
            head.append(onnx.helper.make_node("Cast", [inp.name], [inner], f"{inp.name}_to_float32", to=f32))
    for out in graph.output:
        if out.type.tensor_type.elem_type == f16:
            inner = unique_name(graph, f"{out.name}_float32", reserved)
            for node in graph.node:
                node.input[:] = [inner if i == out.name else i for i in node.input]
                node.output[:] = [inner if o == out.name else o for o in node.output]
            tail.append(onnx.helper.make_node("Cast", [inner], [out.name], f"{out.name}_to_float16", to=f16))
    nodes = [*head, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)
    log.info("float16 model: computed in float32 (%d float16 input(s) and %d output(s) cast at the edges)",
             len(head), len(tail))
    return model


def _dynamic_graph(source: onnx.ModelProto, loaded: onnx.ModelProto) -> onnx.ModelProto:
    """The loaded model with the source's dynamic input dimensions left symbolic and no value_info.

    A dimension keeps the source's name (a saved model shows what the exporter wrote, and compile's
    ``NPF_MODEL_DYNAMIC_SHAPE`` names it so).  A name repeated within one input (paddle2onnx writes
    ``?`` for height and width) would tell shape inference the dimensions are equal, so those get
    their own names; one name at several inputs is the exporter saying they are equal and stays
    (a bi-GRU's ``src`` and ``src_mask``, both ``[batch, src_len]``, came out as ``src_dim0``..
    ``src_mask_dim1``, names the user's model never had; round 28b)."""
    src_dims = {i.name: [None if d.HasField("dim_value") and d.dim_value > 0 else d.dim_param
                         for d in i.type.tensor_type.shape.dim] for i in model_io.graph_inputs(source)}
    repeated = {name for dims in src_dims.values() for name, n in Counter(d for d in dims if d).items() if n > 1}
    src_dims = {i: [d if d is None or d not in repeated else "" for d in dims] for i, dims in src_dims.items()}
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


def _samples_at_other_batch(source: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], calib_data: Any,
                            cfg: QuantConfig) -> tuple[bool, Any]:
    """Whether the first calibration sample differs from ``input_shapes`` only in a batch
    dimension (the first) that the source leaves dynamic, and what to read samples from afterwards.

    Why: batch-1 samples for a model deployed at batch 4 (``--input-shape x 4x3x224x224``) is what
    rknn-toolkit2 and the Vitis AI quantizer accept; the batch does not change a tensor's value
    range, so such samples calibrate the graph with its batch left dynamic.  Another size of a
    spatial dimension (an OCR width) is another input distribution and is still refused.
    """
    batch_open = {n for n, at in model_io.dynamic_dims(source).items() if n in shapes and 0 in at}
    if not batch_open:
        return False, calib_data
    first, calib_data = peek(calib_data, _input_specs(source, {}, True), shapes=cfg.calib_shapes, dtype=cfg.calib_dtype)
    differs = False
    for name, want in shapes.items():
        got = first[name].shape
        if len(got) != len(want) or tuple(got[1:]) != tuple(want[1:]):
            return False, calib_data
        if got[0] != want[0]:
            if name not in batch_open:
                return False, calib_data
            differs = True
    if differs:
        log.info("calibration samples have another batch than --input-shape %s: calibrated with the batch dynamic",
                 dict(shapes))
    return differs, calib_data


def _branches_on_shape(model: onnx.ModelProto, static_inputs: dict[str, list[int]]) -> bool:
    """Whether freezing the inputs folds control flow away (an ``If`` on the input length): then
    the graph at the quantized shape is another graph, and only that one can be quantized."""
    held = model_io.control_flow_nodes(model)
    return bool(held) and held != model_io.control_flow_nodes(_frozen(model, static_inputs))


def _frozen(model: onnx.ModelProto, static_inputs: dict[str, list[int]]) -> onnx.ModelProto:
    """A view of ``model`` at the shape it is quantized at (:func:`~npuflow.passes.fold_constants.frozen_view`)."""
    return frozen_view(model, static_inputs)


def _input_specs(model: onnx.ModelProto, static_inputs: dict[str, list[int]], dynamic_dims: bool) -> list[InputSpec]:
    """What each calibration sample must be: the input's dtype and the shape it is quantized at
    (``dynamic_dims``: the dimensions ``model`` leaves dynamic may vary)."""
    specs = []
    for inp in model_io.graph_inputs(model):
        tt = inp.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
        if not dynamic_dims:
            dims = tuple(static_inputs[inp.name])
        specs.append(InputSpec(inp.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims))
    return specs
