"""``npuflow quantize MODEL --target T --calib DIR -o OUT``: post-training quantization.

A thin wrapper over :func:`npuflow.quantize`: progress per stage (:mod:`npuflow.cli.progress`), the
per-node accuracy table (Horizon's layout) and the model-output similarity, then the artifacts
written to ``OUT``.  When the output similarity on the calibration samples is below
``min_output_cosine`` the warning comes last, on stderr, where a long table cannot hide it (and
in piped output); ``--strict`` makes it the coded error ``NPF_QUANT_LOW_SIMILARITY`` and writes
nothing.  Labels the check finds near their decision boundary (``NPF_QUANT_LABEL_MARGIN``) are
warned there too, never fatal.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .progress import StageProgress
from .app import app, console, err_console, examples, input_shape_option, input_shapes_arg, output_option, target_option, verbose_option
from .similarity import output_figure, similarity_tables


@app.command("quantize", epilog=examples(
    "npuflow quantize yolov8n.onnx -t DPUCZDX8G_ISA1_B4096 --calib calib/ -o out",
    "npuflow quantize ocr_rec.onnx -t cpu-int8 --calib lines/ -c quant.yaml --input-shape x 1x3x48x320 -o out",
    "npuflow quantize silero_vad.onnx -t cpu-int8 --calib audio/ --freeze-input sr=16000 --strict -o out",
    "npuflow quantize effnet.onnx -t DPUCZDX8G_ISA1_B4096 --calib crops/ --min-similarity 0.99 --time-budget 600 -o out",
))
def quantize_command(
    model: Path = typer.Argument(..., metavar="MODEL", help="Float ONNX model."),
    target: str = target_option(),
    calib: Path = typer.Option(..., "--calib", metavar="DIR", help="Calibration data: folder of .npy files (one "
                               "sub-folder per input for several), of .npz files (one per sample, every input by "
                               "name) or of raw numpy.tofile files; or one .npy/.npz of stacked samples, or a "
                               ".txt list of .npy files (rknn-toolkit2's dataset.txt)."),
    output: Path = output_option(..., "DIR", "Output folder for the models, quant_info.json and the report."),
    eval_data: Optional[Path] = typer.Option(
        None, "--eval-data", metavar="DIR", help="Evaluation samples (any form --calib takes) that the accuracy check "
        "judges instead of calibration samples: none sets a range, so its warnings speak for unseen inputs; the "
        "summary gives both figures (docs/accuracy.md, \"Judging on unseen inputs\")."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", metavar="FILE", help="Quantization config (JSON "
                                          "or YAML)."),
    input_shape: Optional[List[str]] = input_shape_option(
        "Freeze an input's shape, and quantized_model.onnx with it (not needed for dynamic inputs: without it "
        "they take the first calibration sample's shape, samples may vary in the dynamic dims, and the saved "
        "model keeps them)"),
    probe_value: Optional[List[str]] = typer.Option(
        None, "--probe-value", metavar="NAME=VALUE",
        help="Value the shape probe feeds an input (e.g. sr=16000); kept in the quantized model."),
    freeze_input: Optional[List[str]] = typer.Option(
        None, "--freeze-input", metavar="NAME=VALUE",
        help="Replace an input by a constant for this deployment, e.g. --freeze-input sr=16000: "
             "an If on it is inlined and its branch checked/quantized (repeatable)."),
    plain_qdq: bool = typer.Option(False, "--plain-qdq", help="Write QuantizeLinear everywhere (other runtimes; differs on ties)."),
    verbose: int = verbose_option("the nodes whose similarity drops most"),
    show_nodes: Optional[bool] = typer.Option(None, "--nodes/--no-nodes", hidden=True,
                                              help="Old switch: --nodes is -v 2, --no-nodes -v 0."),
    strict: bool = typer.Option(False, "--strict", help="Fail (NPF_QUANT_LOW_SIMILARITY, nothing written) when the "
                                "output similarity is below min_output_cosine (default 0.95) instead of warning."),
    workers: Optional[int] = typer.Option(None, "--workers", metavar="N", help="Calibrate shards in N worker processes and merge "
                                          "them exactly (config calib_workers; default 1: this process)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", metavar="ADDRESS", help="Calibrate shards as Ray tasks on this "
                                              "cluster ('auto', 'local' or HOST:PORT; config calib_ray_address)."),
    min_similarity: Optional[float] = typer.Option(
        None, "--min-similarity", metavar="COS", min=0.0, max=1.0,
        help="Accuracy target: run the cheapest steps (percentile search, equalisation, GPTQ, AdaRound, "
             "block reconstruction) until the lowest output cosine on the calibration samples reaches COS, every "
             "layer kept on the accelerator."),
    time_budget: Optional[float] = typer.Option(
        None, "--time-budget", metavar="SECONDS", min=1.0,
        help="With --min-similarity: start no step once this much time is spent; the best model so far is kept."),
    qat_minutes: Optional[float] = typer.Option(
        None, "--qat-minutes", metavar="M", min=0.01,
        help="With --min-similarity: when the steps fall short, label-free QAT from the best model for M minutes "
             "before any CPU fallback (needs npuflow[torch]; docs/qat.md)."),
    allow_cpu_fallback: bool = typer.Option(
        False, "--allow-cpu-fallback",
        help="With --min-similarity: when the steps fall short, move the fewest layers to float on the CPU "
             "(the estimated latency cost is printed)."),
) -> None:
    """Quantize a float model for a target (writes quantized_model.onnx, quant_info.json and more)."""
    from ..quant import quantize  # heavy (onnxruntime, onnxscript): imported when the command runs
    from ..model import freeze_inputs, parse_input_values, with_probe_values

    shapes = input_shapes_arg(input_shape)
    if min_similarity is not None and eval_data is not None:
        raise typer.BadParameter("the accuracy target's steps are judged on the calibration samples; quantize "
                                 "with --min-similarity first, then judge the result on held-out data with "
                                 "`npuflow compare`", param_hint="--eval-data")
    if min_similarity is None and (time_budget is not None or allow_cpu_fallback or qat_minutes is not None):
        raise typer.BadParameter("needs --min-similarity (the accuracy target the steps aim for)",
                                 param_hint="--time-budget/--qat-minutes/--allow-cpu-fallback")
    with StageProgress("quantize", console, err_console) as progress:
        source = freeze_inputs(str(model), parse_input_values(freeze_input, "--freeze-input"))
        source = with_probe_values(source, parse_input_values(probe_value))
        cfg = _with_scaleout(config, workers, ray_address)
        if min_similarity is None:
            result = quantize(source, str(calib), target, config=cfg, input_shapes=shapes, progress=progress,
                              warn=False, eval_data=None if eval_data is None else str(eval_data))  # printed below, last
        else:
            from ..analyze.auto_quant import auto_quantize

            auto = auto_quantize(source, str(calib), target, min_similarity=min_similarity, time_budget_s=time_budget,
                                 allow_cpu_fallback=allow_cpu_fallback, config=cfg, input_shapes=shapes,
                                 qat=None if qat_minutes is None else _qat_step(source, calib, qat_minutes, shapes, progress),
                                 progress=progress)
            result = auto.quantized
            result.info["auto"] = auto.summary()  # quant_info.json records the steps
    if min_similarity is not None:
        _print_steps(auto, allow_cpu_fallback)
    report = result.report
    verbose = verbose if show_nodes is None else (2 if show_nodes else 0)
    for table in similarity_tables(report.to_json()["nodes"], report.samples, verbose):
        console.print(table)
    for name in report.outputs:
        console.print(f"output [bold]{name}[/]: {output_figure(report.to_json(), name)}")
    if strict:
        result.require_similarity()
    paths = result.save(output, plain_qdq=plain_qdq)
    for key, path in paths.items():
        console.print(f"wrote {key}: {path}")
    if plain_qdq or result.target.kind == "cpu":
        _note_saturation(result.model)
    if plain_qdq or result.target.numerics.scale_type != "power_of_two":  # standard QuantizeLinear steps
        _note_float_layers(result.model)
    for warning in [*result.calibration_warnings, *([result.problem] if result.problem is not None else [])]:
        err_console.print(f"WARNING [{warning.code}] {warning.message}\n  hint: {warning.hint}",
                          markup=False, highlight=False)


def _note_saturation(model) -> None:
    """Say so when plain ONNX Runtime on this CPU (x86-64 without VNNI) would add the model's int8
    weight products in saturating 16-bit lanes: a user deploying quantized_model.onnx there gets
    other numbers than the model defines (the MNIST CNN on cpu-int8: 87.2 % top-1 in npuflow and
    in ORT at its basic level, 73.8 % at ORT's default level), while npuflow's own sessions stay
    exact (``ort_kernels.exact_weights``)."""
    from ..ort_kernels import saturating_weights

    names = saturating_weights(model)
    if names:
        err_console.print(
            f"NOTE: on this CPU (no VNNI) plain ONNX Runtime adds the products of {len(names)} int8 weight tensor(s) "
            f"(e.g. {names[0]!r}) in saturating 16-bit lanes once it fuses quantized_model.onnx into QLinearConv/"
            "QLinearMatMul, so its outputs there are not what the model defines; npuflow.Session, "
            "npuflow.ort.InferenceSession and the compiled .npuf are exact.  To deploy this file in plain ONNX "
            "Runtime on such CPUs, quantize with 7-bit weights (-c with 'weight: {bit_width: 7}', ONNX Runtime's "
            "reduce_range; docs/quantization.md).", markup=False, highlight=False)


def _note_float_layers(model) -> None:
    """Say so when quantized_model.onnx keeps float Conv/Gemm layers between quantized ones (CPU
    layers, ``keep_float``): plain ONNX Runtime quantizes their weights to per-tensor int8 from its
    basic level on, which npuflow's sessions leave out (``ort_session.disabled``)."""
    from ..ort_session import WEIGHT_QUANTIZER, float_weight_layers

    names = float_weight_layers(model)
    if names:
        err_console.print(
            f"NOTE: quantized_model.onnx keeps {len(names)} float Conv/Gemm layer(s) between quantized ones (e.g. "
            f"{names[0]!r}: a CPU layer or keep_float); plain ONNX Runtime (basic level and above) quantizes their "
            f"weights to per-tensor int8 ({WEIGHT_QUANTIZER}), so its outputs there are not what the model defines; "
            "npuflow.Session, npuflow.ort.InferenceSession and the compiled .npuf run them in float.  In plain ONNX "
            f"Runtime pass disabled_optimizers=[{WEIGHT_QUANTIZER!r}] to InferenceSession (docs/quantized-model-format.md).",
            markup=False, highlight=False)


def _qat_step(source, calib: Path, minutes: float, shapes, progress):
    """The ladder's QAT step (``--qat-minutes``), or the coded error when torch is missing."""
    from ..build.pipeline import onnx_qat_module

    return onnx_qat_module().ladder_step(source, str(calib), minutes=minutes, input_shapes=shapes, progress=lambda
                                         stage, done=0, total=None, *_: progress(f"auto: QAT {stage}", done, total))


def _print_steps(auto, allow_cpu_fallback: bool) -> None:
    """The accuracy-targeted ladder's steps (:func:`npuflow.analyze.auto_quant.auto_quantize`): score,
    time, kept or why not; a warning when the target was not reached."""
    from rich.table import Table

    table = Table(title=f"Accuracy target: output cosine >= {auto.target:g} "
                        f"({'met' if auto.met else 'NOT met'}: {auto.text()})")
    for col in ("step", "what it does", "cosine", "seconds", "kept"):
        table.add_column(col)
    for step in auto.steps:
        table.add_row(step.name, step.description, "" if step.score is None else auto.text(step.score),
                      f"{step.seconds:.1f}", ("yes" + (f" ({step.note})" if step.note else "")) if step.kept
                      else (step.note or "no"))
    console.print(table)
    if not auto.met:
        hint = "" if allow_cpu_fallback else "; --allow-cpu-fallback moves the most sensitive layers to the CPU"
        err_console.print(f"WARNING the accuracy target {auto.target:g} was not reached (best {auto.text()}){hint}",
                          markup=False, highlight=False)


def _with_scaleout(config: Optional[Path], workers: Optional[int], ray_address: Optional[str]):
    """The config file (or path), with ``--workers``/``--ray-address`` overriding its calibration settings."""
    if workers is None and ray_address is None:
        return str(config) if config else None
    from ..quant.config import QuantConfig
    from ..scaleout import check_workers

    cfg = QuantConfig.load(config) if config else QuantConfig()
    update = {"calib_ray_address": ray_address} if ray_address else {}
    if workers is not None:
        update["calib_workers"] = check_workers(workers)
    return cfg.model_copy(update=update)
