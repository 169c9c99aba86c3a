"""``npuflow build CONFIG.yaml`` (hb_mapper makertbin) and ``npuflow build --template``.

Progress per stage (:mod:`npuflow.cli.progress`), then the per-node similarity table and a
summary a user can judge the build by without opening the JSON report: the model outputs'
similarity to the float model, where the nodes run (accelerator / CPU, with the CPU op types),
the compiled subgraphs and the static latency estimate of the accelerator part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..build import TEMPLATE, build, load_config
from ..build.config import BuildConfig
from ..errors import NpuflowError
from ..build.pipeline import BuildResult
from .progress import StageProgress
from .app import app, console, err_console, examples, output_option, verbose_option
from .similarity import output_figure, similarity_tables


@app.command("build", epilog=examples(
    "npuflow build --template > build.yaml",
    "npuflow build build.yaml",
    "npuflow build -c build.yaml --model-type onnx -o build_out",
))
def build_command(
    config: Optional[str] = typer.Argument(None, metavar="CONFIG.yaml", help="YAML build config (see --template); "
                                           "its model_parameters.working_dir is where the files go."),
    config_option: Optional[str] = typer.Option(None, "--config", "-c", metavar="CONFIG.yaml",
                                                help="The config, hb_mapper style."),
    model_type: str = typer.Option("onnx", "--model-type", metavar="onnx", help="hb_mapper's flag; only onnx is read."),
    template: bool = typer.Option(False, "--template", help="Print a commented config template and exit."),
    output: Optional[Path] = output_option(None, "DIR", "Folder for the files, instead of the config's "
                                                        "model_parameters.working_dir."),
    verbose: int = verbose_option("the nodes whose similarity drops most"),
) -> None:
    """Convert a float ONNX model to a deployable .npuf in one go, from a YAML config."""
    if template:
        console.file.write(TEMPLATE)
        return
    if model_type != "onnx":
        raise NpuflowError("NPF_BUILD_BAD_ENUM", group="command line", key="--model-type", value=model_type,
                           allowed="onnx")
    config = config or config_option
    if config is None:
        raise typer.BadParameter("give a CONFIG.yaml, or --template to print one", param_hint="CONFIG")
    if output is not None:
        config = _with_working_dir(config, output)
    with StageProgress("build", console, err_console) as progress:
        result = build(config, progress=progress)
    sim = result.report["similarity"]
    for table in similarity_tables(sim["nodes"], sim["samples"], verbose):
        console.print(table)
    for line in summary_lines(result):
        console.print(line, markup=False, highlight=False)
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
    console.print(f"timings: {timings}")
    for kind, path in result.files.items():
        console.print(f"  {kind:<10} {path}")
    console.print(f"[bold green]Build succeeded[/]: {result.files['compiled']}")


def _with_working_dir(path: str, folder: Path) -> BuildConfig:
    """The config at ``path`` writing to ``folder`` (``-o``, relative to the current directory)."""
    cfg = load_config(path)
    return cfg.model_copy(update={"model_parameters": cfg.model_parameters.model_copy(
        update={"working_dir": str(folder.resolve())})})


def summary_lines(result: BuildResult) -> list[str]:
    """The build's outcome in a few lines: output similarity, placement, compiled subgraphs, estimate."""
    from ..perf.model_perf import perf_compiled

    sim = result.report["similarity"]
    lines = []
    for name in sim["outputs"]:
        lines.append(f"output {name}: {output_figure(sim, name, 'cosine similarity to the float model')}")
    check = result.check.summary
    label = result.check.target.device_label
    cpu_types = ", ".join(f"{op} x{n}" for op, n in check["cpu_op_types"].items())
    # the checker's placement is of the float model; run_on_cpu (and the accuracy ladder's CPU
    # fallback) keep further layers in float on the CPU, which it did not show (a Gemm named in
    # run_on_cpu read as one of "14 of 15 nodes on DPU")
    kept = list(result.quantized.config.keep_float or [])
    kept_note = f"; kept in float on the CPU after it: {len(kept)} ({', '.join(kept[:3])}{', ...' if len(kept) > 3 else ''})" \
        if kept else ""
    lines.append(f"placement: {check['npu_nodes']} of {check['nodes']} nodes on {label} in "
                 f"{check['npu_subgraphs']} subgraph(s), {check['cpu_nodes']} on CPU"
                 + (f" ({cpu_types})" if cpu_types else "") + kept_note)
    subgraphs = result.compiled.subgraphs
    acc = sum(1 for s in subgraphs if s.on_accelerator)
    lines.append(f"compiled: {len(subgraphs)} subgraph(s), {acc} on {label}, {len(subgraphs) - acc} on CPU; weights "
                 f"{result.compiled.weight_bytes} B, peak activations {result.compiled.peak_activation_bytes} B")
    if result.check.target.kind != "npu":  # nothing to estimate: the host runs it (perf, bench time it)
        lines.append(f"latency: {result.check.target.name} runs on this host's CPU; `npuflow perf` or "
                     "`npuflow bench` on the .npuf time it")
        return lines
    est = perf_compiled(result.compiled, measure_cpu=False)
    cpu = " (+ CPU parts, not timed here: npuflow perf times them)" if acc < len(subgraphs) else ""
    lines.append(f"estimate (npuflow perf): {label} {est.npu_ms:.3f} ms + transfers {est.transfer_ms:.3f} ms per frame"
                 f"{cpu}, DDR {est.ddr_mb_per_frame:.3f} MB per frame")
    return lines
