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

All files are staged and renamed into place at the end (see :mod:`.artifacts`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import onnx

from .. import model as model_io
from ..errors import NpuflowError
from ..passes.preprocess import insert_preprocessing
from ..targets import load_target
from .artifacts import LOG_NAME, Artifacts
from .calibration import CalibrationSet
from .config import BuildConfig, InputSpec, load_config, resolve_inputs, split_values

log = logging.getLogger(__name__)

_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}
#: hb_mapper's calibration_type -> the quantizer's calibration method.
_METHODS = {"default": "default", "kl": "entropy", "max": "percentile"}


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


StageHook = Callable[[str], None]


def build(config: str | os.PathLike | Mapping[str, Any] | BuildConfig, *,
          on_stage: StageHook | None = None) -> BuildResult:
    """Run the whole conversion; raises :class:`NpuflowError` on any user-facing failure."""
    cfg = load_config(config)
    mp = cfg.model_parameters
    artifacts = Artifacts(cfg.path(mp.working_dir), mp.output_model_file_prefix)
    artifacts.remove_stale()
    timings: dict[str, float] = {}
    with _build_log(artifacts.dir / LOG_NAME, _LOG_LEVELS[mp.log_level]):
        log.info("Start Model Convert: %s for %s", mp.onnx_model, mp.march)
        try:
            result = _run(cfg, artifacts, timings, on_stage or (lambda _: None))
        except NpuflowError as exc:
            log.error("[%s] %s", exc.code, exc.message)
            log.error("build failed; no artefact was written")
            artifacts.discard()
            raise
        except BaseException:
            log.exception("build failed with an internal error")
            artifacts.discard()
            raise
        log.info("Convert to runtime file %s successfully!", result.files["compiled"])
        log.info("End Model Convert")
    return result


@contextmanager
def _timed(name: str, timings: dict[str, float], on_stage: StageHook) -> Iterator[None]:
    on_stage(name)
    log.info("stage %s: start", name)
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 4)
    log.info("stage %s: done in %.3f s", name, timings[name])


def _run(cfg: BuildConfig, artifacts: Artifacts, timings: dict[str, float], on_stage: StageHook) -> BuildResult:
    import npuflow

    mp, cal, comp = cfg.model_parameters, cfg.calibration_parameters, cfg.compiler_parameters
    with _timed("parse", timings, on_stage):
        target = load_target(mp.march)
        model_path = cfg.path(mp.onnx_model)
        raw = model_io.read_proto(model_path)
        inputs = resolve_inputs(cfg, _declared_input_shapes(raw))
        float_model = model_io.load(raw, {s.name: list(s.shape) for s in inputs})
        if mp.output_nodes:
            float_model = _cut_outputs(float_model, [n for n in split_values(mp.output_nodes) if n])
        original = insert_preprocessing(float_model, [s.preprocess() for s in inputs])
        for s in inputs:
            log.info("input %s: %s %s (runtime) -> %s %s (train), via %s, norm %s", s.name, s.type_rt,
                     s.layout_rt, s.type_train, s.layout_train, s.intermediate_type, s.norm_type)
        calib = CalibrationSet([(s.preprocess(), s.cal_data_dir) for s in inputs], images=cal.preprocess_on)
        model_io.save(original, artifacts.staged("original"))

    with _timed("check", timings, on_stage):
        check_report = npuflow.check(original, target)

    with _timed("calibrate", timings, on_stage):
        log.info("calibration: %d sample(s) from %s", len(calib), ", ".join(str(s.cal_data_dir) for s in inputs))
        quantized = npuflow.quantize(original, calib, target=target, config=_quant_config(cfg))

    with _timed("compile", timings, on_stage):
        compiled = npuflow.compile(quantized, target)

    with _timed("save", timings, on_stage):
        quantized.save(artifacts.staging / "quant")
        for kind, name in (("optimized", "optimized_float_model.onnx"), ("quantized", "quantized_model.onnx"),
                           ("quant_info", "quant_info.json")):
            os.replace(artifacts.staging / "quant" / name, artifacts.staged(kind))
        compiled.save(artifacts.staged("compiled"))

    report = _report(cfg, inputs, target.name, check_report, quantized, timings)
    model_io.write_atomic(artifacts.staged("report"), json.dumps(report, indent=2, default=str))
    files = artifacts.publish(["original", "optimized", "quantized", "quant_info", "compiled", "report"])
    return BuildResult(cfg, inputs, files, report, timings, check_report, quantized, compiled)


def _declared_input_shapes(proto: onnx.ModelProto) -> dict[str, list[int] | None]:
    shapes: dict[str, list[int] | None] = {}
    for vi in model_io.graph_inputs(proto):
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims if dims and all(d > 0 for d in dims) else (
            [1, *dims[1:]] if dims and dims[0] <= 0 and all(d > 0 for d in dims[1:]) else None)
    return shapes


def _cut_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """``output_nodes``: the named nodes (or tensors) become the complete output set."""
    producers = {n.name: n.output[0] for n in proto.graph.node if n.name and n.output}
    tensors = {o for n in proto.graph.node for o in n.output}
    outputs = []
    for name in names:
        if name in producers:
            outputs.append(producers[name])
        elif name in tensors:
            outputs.append(name)
        else:
            raise NpuflowError("NPF_BUILD_OUTPUT_NODE_UNKNOWN", name=name)
    extractor = onnx.utils.Extractor(proto)
    cut = extractor.extract_model([i.name for i in model_io.graph_inputs(proto)], outputs)
    del cut.metadata_props[:]
    cut.metadata_props.extend(proto.metadata_props)
    return model_io.infer_static_shapes(cut)


def _quant_config(cfg: BuildConfig) -> dict[str, Any]:
    """The quantizer config: the ``npuflow`` section if given, else one derived from
    ``calibration_parameters`` (method, percentile, per-channel, forced placements)."""
    if cfg.npuflow:
        return dict(cfg.npuflow)
    cal = cfg.calibration_parameters
    method = _METHODS.get(cal.calibration_type, cal.calibration_type)
    conf: dict[str, Any] = {"calibration": {"method": method}}
    if cal.calibration_type == "max":
        conf["calibration"] = {"method": "percentile" if cal.max_percentile < 1.0 else "minmax",
                               "percentile": cal.max_percentile * 100.0}
    if cal.per_channel:
        conf["calibration"]["per_channel"] = True
    keep_float = [n for n in split_values(cal.run_on_cpu) if n]
    if keep_float:
        conf["keep_float"] = keep_float
    return conf


def _report(cfg: BuildConfig, inputs: list[InputSpec], target: str, check_report: Any, quantized: Any,
            timings: dict[str, float]) -> dict[str, Any]:
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
        "check": _as_data(check_report),
        "similarity": _as_data(getattr(quantized, "report", None)),
        "timings_s": timings,
    }


def _as_data(obj: Any) -> Any:
    """A stage's report as JSON-ready data, whatever its class offers."""
    for attr in ("to_dict", "model_dump", "as_dict"):
        fn = getattr(obj, attr, None)
        if callable(fn):
            return fn()
    return obj


@contextmanager
def _build_log(path: Path, level: int) -> Iterator[None]:
    """``npuflow_build.log`` at the config's ``log_level``, in hb_mapper's line format."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("npuflow")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, old_level or logging.WARNING))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
