"""``npuflow build CONFIG.yaml`` (hb_mapper makertbin) and ``npuflow build --template``."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from ..build import TEMPLATE, build
from ..errors import NpuflowError
from ..build.pipeline import SIMILARITY_COLUMNS, BuildResult, similarity_cells
from .app import app, console, examples


@app.command("build", epilog=examples(
    "npuflow build --template > build.yaml",
    "npuflow build build.yaml",
    "npuflow build -c build.yaml --model-type onnx",
))
def build_command(
    config: Optional[str] = typer.Argument(None, metavar="CONFIG.yaml", help="YAML build config (see --template); "
                                           "its model_parameters.working_dir is where the files go."),
    config_option: Optional[str] = typer.Option(None, "--config", "-c", metavar="CONFIG.yaml",
                                                help="The config, hb_mapper style."),
    model_type: str = typer.Option("onnx", "--model-type", metavar="onnx", help="hb_mapper's flag; only onnx is read."),
    template: bool = typer.Option(False, "--template", help="Print a commented config template and exit."),
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
    with console.status("building...") as status:
        result = build(config, on_stage=lambda stage: status.update(f"[bold]{stage}[/] ..."))
    _print_similarity(result)
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
    console.print(f"timings: {timings}")
    for kind, path in result.files.items():
        console.print(f"  {kind:<10} {path}")
    console.print(f"[bold green]Build succeeded[/]: {result.files['compiled']}")


def _print_similarity(result: BuildResult) -> None:
    table = Table(title="per-node similarity (float vs quantized)")
    for col in SIMILARITY_COLUMNS:
        table.add_column(col, justify="right" if col in ("Cosine Similarity", "Threshold") else "left")
    for cells in similarity_cells(result.report["similarity"]["nodes"]):
        table.add_row(*cells)
    console.print(table)
