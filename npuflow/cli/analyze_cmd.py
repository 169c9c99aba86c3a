"""``npuflow analyze sensitivity|error-split|mixed-precision MODEL --calib DIR --target T``.

Thin wrappers: quantize the model with the given calibration data and config, then rank the
layers by quantization sensitivity (:mod:`npuflow.analyze.sensitivity`), split the error into
each layer's weights and each activation quantize step (:mod:`npuflow.analyze.error_split`:
AIMET QuantAnalyzer's "weights vs activations" question), or search the fewest
layers to keep in float / raise to int16 (:mod:`npuflow.analyze.mixed_precision`).  The first
``--samples`` calibration samples are the evaluation set for the output similarity.

Progress shows as a bar on a terminal and as one line per stage with its count and time
otherwise (:mod:`npuflow.cli.progress`; a piped run of YOLOv8n used to print nothing for minutes).  Sensitivity scores the layers whose
similarity drops most in the quantizer's per-node report first and stops starting layers after
``--time-budget`` seconds, naming how many were left out.  Mixed precision's ``--time-budget`` bounds its
sensitivity analysis and search together; when it is spent the result is the best plan measured
to meet the target, marked as not minimised, with a warning.  ``--workers N`` scores layers (and
the search's candidates) in N local processes, ``--ray-address`` as Ray tasks on a cluster
(docs/scale-out.md); the results are the serial ones, and the bar counts finished layers.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import List, Optional

import typer
from ..model import write_atomic
from .progress import StageProgress
from .app import Typer, app, console, err_console, examples, input_shape_option, input_shapes_arg, output_option, target_option

WORKERS = typer.Option(1, "--workers", metavar="N", help="Score candidates in N local worker processes (1: this "
                       "process).")
RAY_ADDRESS = typer.Option(None, "--ray-address", metavar="ADDRESS", help="Score candidates as Ray tasks on this "
                           "cluster: 'auto' (the running one), 'local' or HOST:PORT.")
CALIB = typer.Option(..., "--calib", metavar="DIR", help="Calibration data: folder of .npy files (one sub-folder per input for several), of .npz files (one per sample, every input by name) or of raw numpy.tofile files.")
CONFIG = typer.Option(None, "--config", "-c", metavar="FILE", help="Quantization config (JSON or YAML).")
SAMPLES = typer.Option(8, "--samples", min=1, metavar="N", help="Calibration samples used to score each variant.")
#: ``-o/--output FILE`` (one JSON file; ``--json`` is its older name).
JSON_OUT = typer.Option(None, "--output", "-o", "--json", metavar="FILE", help="Write the result as JSON here.")

analyze_app = Typer(help="Accuracy analysis: per-layer sensitivity, weights-or-activations error split and mixed "
                         "precision.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


def _quantize_and_feeds(model: Path, calib: Path, target: str, config: Optional[Path], input_shape, samples: int,
                       progress: StageProgress):
    from ..quant import quantize
    from ..quant.data import CalibrationSource
    from ..quant.pipeline import _input_specs

    shapes = input_shapes_arg(input_shape)
    result = quantize(str(model), str(calib), target, config=str(config) if config else None,
                      input_shapes=shapes, progress=lambda stage, done, total: progress(f"quantize {stage}", done, total))
    static = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in result.float_model.graph.input}
    source = CalibrationSource(str(calib), _input_specs(result.float_model, static, result.config.calib_dynamic_dims),
                               shapes=result.config.calib_shapes, dtype=result.config.calib_dtype)
    feeds = list(itertools.islice(iter(source), samples))
    return result, feeds


def _write_json(path: Optional[Path], text: str) -> None:
    """The command's JSON report to ``path`` (written whole or not at all), when one was asked for."""
    if path is not None:
        write_atomic(path, text + "\n")
        console.print(f"wrote {path}")


def _quantize_then_score(model: Path, calib: Path, target: str, config: Optional[Path], input_shape, samples: int,
                         workers: int, stage: str, score):
    """Quantize, then ``score(result, feeds, progress)`` (the per-layer evaluations, shown as
    ``stage``), under one progress display; ``(quantized result, score)``."""
    from ..scaleout import check_workers

    check_workers(workers)
    with StageProgress("analyze", console, err_console) as progress:
        result, feeds = _quantize_and_feeds(model, calib, target, config, input_shape, samples, progress)
        return result, score(result, feeds, lambda name, done, total: progress(stage, done, total, detail=name))


@analyze_app.command("sensitivity", epilog=examples(
    "npuflow analyze sensitivity model.onnx -t cpu-int8 --calib calib/ --samples 4 --top 20",
    "npuflow analyze sensitivity model.onnx -t DPUCZDX8G_ISA1_B4096 --calib calib/ -o sensitivity.json --workers 2",
))
def sensitivity_command(
    model: Path = typer.Argument(..., metavar="MODEL", help="Float ONNX model."),
    target: str = target_option(),
    calib: Path = CALIB,
    config: Optional[Path] = CONFIG,
    input_shape: Optional[List[str]] = input_shape_option(),
    samples: int = SAMPLES,
    json_out: Optional[Path] = JSON_OUT,
    top: Optional[int] = typer.Option(None, "--top", min=1, metavar="N", help="Show only the N most sensitive layers."),
    time_budget: float = typer.Option(
        300.0, "--time-budget", min=1.0, metavar="S", help="Seconds after which no further layer is scored (the layers whose "
        "similarity drops most in the quantizer's report go first; those left out are listed)."),
    workers: int = WORKERS,
    ray_address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Rank layers by how much quantizing them costs (float-only and quantize-only variants)."""
    from ..analyze.sensitivity import analyze, report_order, rich_table

    def score(result, feeds, progress):
        return analyze(result, feeds, progress=progress, order=report_order(result),
                       time_budget=time_budget, workers=workers, ray_address=ray_address)

    _, report = _quantize_then_score(model, calib, target, config, input_shape, samples, workers, "sensitivity", score)
    console.print(rich_table(report, top))
    if report.skipped:
        shown = ", ".join(report.skipped[:10]) + (", ..." if len(report.skipped) > 10 else "")
        err_console.print(f"WARNING: the time budget ({time_budget:.0f} s) ran out: {len(report.skipped)} of "
                          f"{len(report.skipped) + len(report.layers)} layers not scored (the ones whose similarity "
                          f"dropped least in the quantizer's report): {shown}. Raise --time-budget, or lower "
                          f"--samples, to score them.", markup=False, highlight=False)
    _write_json(json_out, report.to_json())


@analyze_app.command("error-split", epilog=examples(
    "npuflow analyze error-split model.onnx -t DPUCZDX8G_ISA1_B4096 --calib calib/ --samples 4 --top 20",
    "npuflow analyze error-split model.onnx -t cpu-int8 --calib calib/ -c quant.yaml -o split.json",
))
def error_split_command(
    model: Path = typer.Argument(..., metavar="MODEL", help="Float ONNX model."),
    target: str = target_option(),
    calib: Path = CALIB,
    config: Optional[Path] = CONFIG,
    input_shape: Optional[List[str]] = input_shape_option(),
    samples: int = SAMPLES,
    json_out: Optional[Path] = JSON_OUT,
    top: Optional[int] = typer.Option(None, "--top", min=1, metavar="N", help="Show only the N rows with the largest "
                                      "gain (the JSON has every row)."),
) -> None:
    """Split the quantization error into weights and activations: each weighted layer's weights back in float, and
    each activation quantize step removed, in turn (one run of the model each)."""
    from ..analyze.error_split import rich_table, split, summary_lines

    def score(result, feeds, progress):
        return split(result, feeds, progress=progress)

    _, report = _quantize_then_score(model, calib, target, config, input_shape, samples, 1, "error split", score)
    console.print(rich_table(report, top))
    for line in summary_lines(report):
        console.print(line, markup=False, highlight=False)
    _write_json(json_out, json.dumps(report.to_dict(), indent=1))


@analyze_app.command("mixed-precision", epilog=examples(
    "npuflow analyze mixed-precision model.onnx -t cpu-int8 --calib calib/ --min-similarity 0.99",
    "npuflow analyze mixed-precision model.onnx -t DPUCZDX8G_ISA1_B4096 --calib calib/ --min-similarity 0.98 "
    "--precision int16 -o mp.json",
))
def mixed_precision_command(
    model: Path = typer.Argument(..., metavar="MODEL", help="Float ONNX model."),
    target: str = target_option(),
    calib: Path = CALIB,
    min_similarity: float = typer.Option(..., "--min-similarity", metavar="S", min=0.0, max=1.0,
                                         help="Required cosine similarity of the lowest model output to the float model's."),
    precision: str = typer.Option("float", "--precision", metavar="float|int16",
                                  help="What raised layers become."),
    config: Optional[Path] = CONFIG,
    input_shape: Optional[List[str]] = input_shape_option(),
    samples: int = SAMPLES,
    json_out: Optional[Path] = JSON_OUT,
    time_budget: float = typer.Option(
        600.0, "--time-budget", min=1.0, metavar="S", help="Seconds for the sensitivity analysis and the search "
        "(after quantizing): the analysis may start layers in the first 60 %, and when it is spent the search ends "
        "with the best plan it found that meets the target, and a warning."),
    workers: int = WORKERS,
    ray_address: Optional[str] = RAY_ADDRESS,
) -> None:
    """Keep the fewest, most sensitive layers out of int8 until the output similarity holds."""
    from ..analyze.mixed_precision import search
    from ..errors import NpuflowError

    if precision not in ("float", "int16"):
        raise NpuflowError("NPF_QUANT_BAD_PRECISION", value=precision)

    def score(result, feeds, progress):
        return search(result, feeds, min_similarity=min_similarity,
                      precision=precision, progress=progress, workers=workers, ray_address=ray_address,
                      time_budget=time_budget)

    result, mp = _quantize_then_score(model, calib, target, config, input_shape, samples, workers, "mixed precision",
                                      score)
    state = ("NOT met (the best plan measured)" if not mp.met else
             "met, not minimised (time budget spent)" if mp.budget_spent else "met")
    console.print(f"target similarity {mp.target:.5f} {state}: {mp.base_score:.5f} -> {mp.score:.5f} "
                  f"with {len(mp.changes)} layer(s) raised to {precision} ({mp.evaluations} evaluations)")
    for name in mp.changes:
        console.print(f"  {name}")
    console.print("config overrides: " + json.dumps(mp.config_overrides))
    summary = mp.summary()
    if mp.changes:
        from ..analyze.mixed_precision import perf_cost

        cost = perf_cost(result.float_model, result.target, mp.changes)
        summary["perf"] = cost
        console.print(f"estimated latency (npuflow perf): {cost['latency_ms']:.3f} ms -> "
                      f"{cost['mixed_latency_ms']:.3f} ms")
    _write_json(json_out, json.dumps(summary, indent=1))
