"""``npuflow.build(config)``: the whole conversion from one YAML file, like ``hb_mapper makertbin``.

Stages (seed 004 L1203-1257, spec A.5.3), each timed and logged:

1. *parse*: validate the config, load the model, cut it at ``output_nodes``, insert the input
   preprocessing -> ``{prefix}_original_float_model.onnx`` (input: the runtime format);
2. *check*: NPU/CPU placement and subgraphs for the target (``npuflow.check``);
3. *calibrate + quantize*: ``npuflow.quantize`` on the calibration folder ->
   ``{prefix}_optimized_float_model.onnx``, ``{prefix}_quantized_model.onnx``;
4. *compile*: ``npuflow.compile`` -> ``{prefix}.npuf``;
5. *report*: ``{prefix}_build_report.json`` with placement, subgraphs, per-node cosine
   similarity and threshold, and timings.  The log goes to ``working_dir/npuflow_build.log``.

All files are staged and swapped in together at the end (see :mod:`.artifacts`): a failed or
interrupted build leaves an earlier build's files as they were.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import onnx

from .. import model as model_io
from ..errors import NpuflowError
from ..graph import GraphView, slice_model
from ..passes.preprocess import insert_preprocessing
from ..targets import load_target
from .artifacts import LOG_NAME, Artifacts
from .calibration import CalibrationSet
from .config import BuildConfig, InputSpec, load_config, resolve_inputs, split_values

log = logging.getLogger(__name__)

_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}
#: hb_mapper's calibration_type -> the quantizer's calibration method (``default`` is its
#: automatic per-tensor search, ``kl`` the entropy method, ``max`` min/max or a percentile).
_METHODS = {"default": "auto", "kl": "entropy", "max": "minmax"}


@dataclass
class BuildResult:
    """What a successful build produced: file paths, the report dict and the stage objects."""

    config: BuildConfig
    inputs: list[InputSpec]
    files: dict[str, Path]
    report: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    check: Any = None
    quantized: Any = None
    compiled: Any = None


#: ``progress(stage, done, total)``, the protocol of :func:`npuflow.quantize` (``total`` None:
#: the stage has no count).
Progress = Callable[[str, int, "int | None"], None]


def build(config: str | os.PathLike | Mapping[str, Any] | BuildConfig, *,
          progress: Progress | None = None) -> BuildResult:
    """Run the whole conversion; raises :class:`NpuflowError` on any user-facing failure.

    ``config``: the build YAML (a path), its content as a mapping (the same keys:
    ``model_parameters``, ``input_parameters``, ``calibration_parameters``, ``compiler_parameters``;
    ``docs/build.md``), or a :class:`BuildConfig`; relative paths in a mapping are read from the
    current folder, in a file from the file's folder.  ``progress`` hears each stage (``parse``, ``check``, the quantizer's own stages as
    ``quantize calibrate`` etc. with their counts, ``compile``, ``save``)."""
    cfg = load_config(config)
    mp = cfg.model_parameters
    timings: dict[str, float] = {}
    with Artifacts(cfg.path(mp.working_dir), mp.output_model_file_prefix) as artifacts, \
            _build_log(artifacts.folder / LOG_NAME, _LOG_LEVELS[mp.log_level]):
        log.info("Start Model Convert: %s for %s", mp.onnx_model, mp.march)
        try:
            result = _run(cfg, artifacts, timings, progress or (lambda stage, done, total: None))
        except NpuflowError as exc:
            log.error("[%s] %s", exc.code, exc.message)
            log.error("build failed; the files of an earlier build, if any, are unchanged")
            raise
        except KeyboardInterrupt:
            log.error("build interrupted; the files of an earlier build, if any, are unchanged",
                      extra={_FILE_ONLY: True})  # the CLI prints its own one line
            raise
        except BaseException:
            log.exception("build failed with an internal error")
            raise
        log.info("Convert to runtime file %s successfully!", result.files["compiled"])
        log.info("End Model Convert")
    return result


@contextmanager
def _timed(name: str, timings: dict[str, float], progress: Progress | None) -> Iterator[None]:
    """Time stage ``name`` (reported to ``progress`` unless None: the stage reports its own steps)."""
    if progress is not None:
        progress(name, 0, None)
    log.info("stage %s: start", name)
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 4)
    log.info("stage %s: done in %.3f s", name, timings[name])


def _run(cfg: BuildConfig, artifacts: Artifacts, timings: dict[str, float], progress: Progress) -> BuildResult:
    import npuflow

    mp, cal = cfg.model_parameters, cfg.calibration_parameters
    with _timed("parse", timings, progress):
        target = load_target(mp.march)
        if cfg.custom_op is not None:  # the user's registrations, before the model (and its custom ops) load
            from ..custom_ops import load_register_files

            files = [f for f in split_values(cfg.custom_op.op_register_files) if f]
            for path in load_register_files(files, cfg.path(cfg.custom_op.custom_op_dir)):
                log.info("custom ops registered by %s", path)
        model_path = cfg.path(mp.onnx_model)
        raw = model_io.read_proto(model_path)
        if mp.freeze_input:  # before the inputs are matched: a frozen input is no longer one
            frozen = model_io.parse_input_values([v for v in split_values(mp.freeze_input) if v],
                                                 "model_parameters.freeze_input")
            raw = model_io.freeze_inputs(raw, frozen)
            log.info("frozen inputs: %s", ", ".join(f"{k}={v.tolist()}" for k, v in frozen.items()))
        inputs = resolve_inputs(cfg, _declared_input_shapes(raw))
        float_model = model_io.load(raw, {s.name: list(s.shape) for s in inputs})
        if mp.output_nodes:
            float_model = _cut_outputs(float_model, [n for n in split_values(mp.output_nodes) if n])
        original = insert_preprocessing(float_model, [s.preprocess() for s in inputs])
        for s in inputs:
            log.info("input %s: %s %s (runtime) -> %s %s (train), via %s, norm %s", s.name, s.type_rt,
                     s.layout_rt, s.type_train, s.layout_train, s.intermediate_type, s.norm_type)
        calib = CalibrationSet([(s.preprocess(), s.cal_data_dir) for s in inputs], images=cal.preprocess_on,
                               dtypes=_input_dtypes(original), raw_dtype=cal.cal_data_type)
        # the accuracy check's own samples, read and preprocessed as the calibration samples are
        evaluation = None if cal.eval_data_dir is None else CalibrationSet(
            [(s.preprocess(), s.eval_data_dir) for s in inputs], images=cal.preprocess_on,
            dtypes=_input_dtypes(original), raw_dtype=cal.cal_data_type)
        log.debug("config: %s", json.dumps(cfg.enabled_values()))
        model_io.save(original, artifacts.staged("original"))

    with _timed("check", timings, progress):
        check_report = npuflow.check(original, target)

    with _timed("quantize", timings, None):
        log.info("calibration: %d sample(s) from %s", len(calib), ", ".join(str(s.cal_data_dir) for s in inputs))
        quant_config = _quant_config(cfg, target)
        log.debug("quantizer config: %s", json.dumps(quant_config))
        _warn_recorded_only(cfg)
        auto_summary = None
        if cal.min_similarity is None:
            quantized = npuflow.quantize(original, calib, target=target, config=quant_config, warn=False,
                                         eval_data=evaluation,
                                         progress=lambda stage, done, total: progress(f"quantize {stage}", done, total))
        else:
            quantized, auto_summary = _auto_quantize(original, calib, target, quant_config, cal, progress)
        for warning in quantized.calibration_warnings:
            log.warning("[%s] %s\n  hint: %s", warning.code, warning.message, warning.hint)
        _require_similarity(quantized, check_report)

    qat_summary = None
    if cal.wants_qat and cal.min_similarity is None:
        with _timed("qat", timings, None):
            quantized, qat_summary = _qat(original, calib, quantized, cal, progress)

    with _timed("compile", timings, progress):
        compiled = npuflow.compile(
            quantized.model, target, build_config=cfg.enabled_values(),
            preprocessing={s.name: {**asdict(s.preprocess()), "intermediate_type": s.intermediate_type,
                                    "runtime_shape": list(s.preprocess().runtime_shape()),
                                    "runtime_dtype": str(s.preprocess().runtime_dtype())} for s in inputs},
        )

    with _timed("save", timings, progress):
        quantized.save(artifacts.staging / "quant")
        for kind, name in (("optimized", "optimized_float_model.onnx"), ("quantized", "quantized_model.onnx"),
                           ("quant_info", "quant_info.json")):
            os.replace(artifacts.staging / "quant" / name, artifacts.staged(kind))
        compiled.save(artifacts.staged("compiled"))

    similarity = _similarity(quantized, check_report)
    log.info("per-node similarity (float vs quantized):\n%s", similarity_text(similarity["nodes"]))
    report = _report(cfg, inputs, target.name, check_report, similarity, timings)
    if auto_summary is not None:
        report["auto"] = auto_summary
    if qat_summary is not None:
        report["qat"] = qat_summary
    model_io.write_atomic(artifacts.staged("report"), json.dumps(report, indent=2, default=str))
    files = artifacts.publish_all()
    return BuildResult(cfg, inputs, files, report, timings, check_report, quantized, compiled)


def _auto_quantize(original: onnx.ModelProto, calib: CalibrationSet, target: Any, quant_config: dict, cal: Any,
                   progress: Progress) -> tuple[Any, dict[str, Any]]:
    """The accuracy-targeted ladder (``min_similarity``, ``time_budget``, ``allow_cpu_fallback``) from
    the YAML's quantizer settings: its steps go to the log and the build report's ``auto`` entry, and
    a target not reached is a warning (the best model is built), as in ``quantize --min-similarity``."""
    from ..analyze.auto_quant import auto_quantize

    qat = None  # QAT (qat_epochs/qat_minutes) is the ladder's last step, run only when still short
    if cal.wants_qat:
        qat = onnx_qat_module().ladder_step(
            original, calib, epochs=cal.qat_epochs, minutes=cal.qat_minutes, nproc=cal.qat_nproc,
            device=cal.qat_device, ema_decay=cal.qat_ema, loss=cal.qat_loss,
            progress=lambda stage, done=0, total=None, *_: progress(f"qat {stage}", done, total))
    auto = auto_quantize(original, calib, target, min_similarity=cal.min_similarity, time_budget_s=cal.time_budget,
                         allow_cpu_fallback=cal.allow_cpu_fallback, config=quant_config, qat=qat,
                         progress=lambda stage, done=0, total=None: progress(f"quantize {stage}", done, total))
    for step in auto.steps:
        score = "not run" if step.score is None else auto.text(step.score)
        log.info("accuracy step %s: %s, %.1f s, %s", step.name, score, step.seconds,
                 "kept" if step.kept else step.note or "not kept")
    if not auto.met:
        log.warning("the accuracy target %g was not reached (best %s)%s", auto.target, auto.text(),
                    "" if cal.allow_cpu_fallback else "; allow_cpu_fallback: True moves the most sensitive layers to the CPU")
    summary = auto.summary()
    auto.quantized.info["auto"] = summary
    return auto.quantized, summary


def _qat(original: onnx.ModelProto, calib: CalibrationSet, quantized: Any, cal: Any,
         progress: Progress) -> tuple[Any, dict[str, Any]]:
    """QAT by distillation from the float model, started from this build's PTQ result
    (``qat_epochs``/``qat_minutes``): the QAT model replaces the PTQ one in what is compiled and
    saved; the per-node similarity report stays the PTQ one, the QAT summary goes beside it."""
    result = onnx_qat_module().qat_onnx(original, quantized.target, calib, epochs=cal.qat_epochs, minutes=cal.qat_minutes,
                      nproc=cal.qat_nproc, device=cal.qat_device, ema_decay=cal.qat_ema, loss=cal.qat_loss, ptq=quantized,
                      progress=lambda stage, done=0, total=None, *_: progress(f"qat {stage}", done, total))
    log.info("QAT: %s %.6f (PTQ start) -> %.6f after %d steps (output cosine %.6f -> %.6f); kept the %s",
             result.measure, result.start_score, result.trained_score, result.steps, result.start_cosine,
             result.trained_cosine, result.kept)
    summary = {k: v for k, v in result.report.items() if k != "losses"}
    return result.as_quantized(), summary


def onnx_qat_module() -> Any:
    """``npuflow.torch.onnx_qat``, imported when QAT is asked for (a build, ``npuflow qat``,
    ``quantize --qat-minutes``), or the coded error naming the optional dependency missing."""
    try:
        from ..torch import onnx_qat
    except ModuleNotFoundError as exc:
        raise NpuflowError("NPF_QAT_DEPENDENCY_MISSING", package=exc.name or "torch") from None
    return onnx_qat


def _require_similarity(quantized: Any, check_report: Any) -> None:
    """A build never publishes a collapsed model: an output similarity below the quantizer's
    ``min_output_cosine`` (default 0.95; the YAML's ``npuflow:`` section may lower it) fails the
    build with ``NPF_QUANT_LOW_SIMILARITY``, after the per-node table went to the build log."""
    if quantized.problem is None:
        return
    log.info("per-node similarity (float vs quantized):\n%s",
             similarity_text(_similarity(quantized, check_report)["nodes"]))
    quantized.require_similarity()


def _input_dtypes(proto: onnx.ModelProto) -> dict[str, np.dtype]:
    """The numpy dtype of each graph input (what the calibration samples are fed as)."""
    return {vi.name: model_io.numpy_dtype(vi) for vi in model_io.graph_inputs(proto)}


def _declared_input_shapes(proto: onnx.ModelProto) -> dict[str, list[int] | None]:
    shapes: dict[str, list[int] | None] = {}
    for vi in model_io.graph_inputs(proto):
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        if not dims and vi.type.tensor_type.HasField("shape"):  # a declared scalar (silero-vad's sr)
            shapes[vi.name] = []
            continue
        shapes[vi.name] = dims if dims and all(d > 0 for d in dims) else (
            [1, *dims[1:]] if dims and dims[0] <= 0 and all(d > 0 for d in dims[1:]) else None)
    return shapes


def _cut_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """``output_nodes``: the named nodes (or tensors) become the complete output set (what the
    If/Loop bodies on the way read from the outer scope is kept: :func:`npuflow.graph.slice_model`)."""
    view = GraphView(proto)
    first_output = {n.name: n.output[0] for n in view.nodes if n.name and n.output}
    outputs = []
    for name in names:
        if name in first_output:
            outputs.append(first_output[name])
        elif name in view.producer:
            outputs.append(name)
        else:
            raise NpuflowError("NPF_BUILD_OUTPUT_NODE_UNKNOWN", name=name)
    return model_io.infer_static_shapes(slice_model(proto, outputs))


def _quant_config(cfg: BuildConfig, target: Any = None) -> dict[str, Any]:
    """The quantizer config derived from ``calibration_parameters`` (method for inputs and
    activations, percentile, forced CPU nodes), with the ``npuflow`` section merged over it
    (its keys win, nested mappings are merged key by key).

    ``per_channel`` asks for per-channel *activation* ranges; the quantized format keeps
    activations per tensor, so it is recorded and logged but changes nothing.  So are
    ``qat_nproc``/``qat_device``/``qat_ema``/``qat_loss`` without a QAT budget (the template shows each on its own).
    ``target`` (when known): on one with asymmetric activations (cpu-int8's uint8 with a zero
    point) ``default`` is the target's own calibration, not the symmetric-only search.
    """
    return _merge(_from_calibration_parameters(cfg, target), cfg.npuflow or {})


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def _from_calibration_parameters(cfg: BuildConfig, target: Any = None) -> dict[str, Any]:
    cal = cfg.calibration_parameters
    spec: dict[str, Any] = {"method": _METHODS.get(cal.calibration_type, cal.calibration_type)}
    if cal.calibration_type == "default" and target is not None and not target.numerics.symmetric:
        # activations with a zero point: the target's own default (percentile ranges, the percentile
        # searched per model), which read above `auto` on cpu-int8 (docs/quantization.md, "Asymmetric
        # activations")
        spec = {}
    if cal.calibration_type == "max" and cal.max_percentile < 1.0:
        spec = {"method": "percentile", "percentile": cal.max_percentile * 100.0}
    elif cal.calibration_type == "percentile":
        spec["percentile"] = cal.max_percentile * 100.0
    if cal.per_channel:
        log.warning("per_channel: activations are quantized per tensor on every npuflow target; ignored")
    conf: dict[str, Any] = {"input": dict(spec), "activation": dict(spec)}
    keep_float = [n for n in split_values(cal.run_on_cpu) if n]
    if keep_float:
        conf["keep_float"] = keep_float
    if cal.run_on_npu:
        log.warning("run_on_npu: npuflow already places every node the target supports on the NPU; "
                    "the list (%s) changes nothing", cal.run_on_npu)
    for key, default in (("qat_nproc", 1), ("qat_device", "cpu"), ("qat_ema", None), ("qat_loss", "auto")):
        if getattr(cal, key) != default and not cal.wants_qat:
            log.warning("%s: %s applies to QAT, which runs only with qat_epochs or qat_minutes; ignored",
                        key, getattr(cal, key))
    return conf


#: hb_mapper keys npuflow only records in the ``.npuf`` build config, with their no-op values.
_RECORDED_ONLY = (("model_parameters", "layer_out_dump", False, "every .npuf can dump its layers: npuflow run --dump"),
                  ("compiler_parameters", "compile_mode", "latency", "npuflow compiles one program"),
                  ("compiler_parameters", "debug", False, "npuflow run --dump and npuflow info --op read any .npuf"),
                  ("compiler_parameters", "core_num", 1, "npuflow perf reports one core and all cores"),
                  ("compiler_parameters", "optimize_level", "O3", "npuflow compiles the same program at every level"))


def _warn_recorded_only(cfg: BuildConfig) -> None:
    """Say so when an hb_mapper key that changes nothing in npuflow is set to ask for something
    (``core_num: 2``, ``layer_out_dump: True``): the build used to accept it without a word."""
    for group, key, default, why in _RECORDED_ONLY:
        value = getattr(getattr(cfg, group), key)
        if value != default:
            log.warning("%s.%s: %s is recorded in the .npuf build config and changes nothing (%s)",
                        group, key, value, why)


def _report(cfg: BuildConfig, inputs: list[InputSpec], target: str, check_report: Any,
            similarity: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    return {
        "npuflow_build_report": 1,
        "target": target,
        "config": cfg.enabled_values(),
        "inputs": [
            {"name": s.name, "type_rt": s.type_rt, "layout_rt": s.layout_rt, "type_train": s.type_train,
             "layout_train": s.layout_train, "intermediate_type": s.intermediate_type,
             "runtime_shape": list(s.preprocess().runtime_shape()), "runtime_dtype": str(s.preprocess().runtime_dtype()),
             "norm_type": s.norm_type, "mean": s.mean, "scale": s.scale}
            for s in inputs
        ],
        "check": check_report.to_dict(),
        "similarity": similarity,
        "timings_s": timings,
    }


def _similarity(quantized: Any, check_report: Any) -> dict[str, Any]:
    """The quantizer's per-node report, with the ON/Subgraph columns taken from the checker."""
    data = quantized.report.to_json()
    placed = {n.name: n for n in check_report.nodes}
    for row in data["nodes"]:
        node = placed.get(row["node"])
        if node is not None and row.get("on") is None:
            row["on"] = check_report.device_name(node)
            row["subgraph"] = node.subgraph
    return data


SIMILARITY_COLUMNS = ("Node", "ON", "Subgraph", "Type", "Cosine Similarity", "Threshold")


def similarity_cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The per-node table's cells as text (hb_mapper's columns, seed 004 L1351-1373)."""
    def threshold(v: Any) -> str:
        if v is None:
            return ""
        return " ".join(f"{float(x):.6f}" for x in v) if isinstance(v, (list, tuple)) else f"{float(v):.6f}"

    return [[str(r["node"]), str(r.get("on") or ""), "" if r.get("subgraph") is None else str(r["subgraph"]),
             str(r.get("type", "")), "" if r.get("cosine") is None else f"{r['cosine']:.6f}",
             threshold(r.get("threshold"))] for r in rows]


def similarity_text(rows: list[dict[str, Any]]) -> str:
    """The per-node table as plain text, for the log."""
    cells = similarity_cells(rows)
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(SIMILARITY_COLUMNS)]
    line = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths))  # noqa: E731
    rule = "=" * len(line(SIMILARITY_COLUMNS))
    return "\n".join([rule, line(SIMILARITY_COLUMNS), "-" * len(rule), *map(line, cells), rule])


@contextmanager
def _build_log(path: Path, level: int) -> Iterator[None]:
    """``npuflow_build.log`` at the config's ``log_level``, in hb_mapper's line format.

    While the build runs, npuflow's records go to the file at that level; only warnings and
    errors travel on to the console handlers (the CLI shows progress and the summary itself).
    """
    try:
        handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    except OSError as exc:
        raise NpuflowError("NPF_IO_WRITE_FAILED", path=str(path), reason=exc.strerror or str(exc)) from None
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    forward = _ForwardWarnings()
    root = logging.getLogger("npuflow")
    saved = root.level, root.propagate
    root.addHandler(handler)
    root.addHandler(forward)
    root.setLevel(level)
    root.propagate = False
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.removeHandler(forward)
        root.level, root.propagate = saved
        handler.close()


#: A log record carrying this attribute goes to the build log only, not to the console.
_FILE_ONLY = "npuflow_file_only"


class _ForwardWarnings(logging.Handler):
    """Passes warnings and errors on to the root logger's handlers (the console)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, _FILE_ONLY, False):
            logging.getLogger().handle(record)
