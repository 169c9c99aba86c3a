"""``npuflow compile QUANTIZED.onnx --target T [--input-shape NAME DIMS]... -o MODEL.npuf``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..compiler import compile_model
from .app import app, console, input_shapes_arg


@app.command("compile")
def compile_command(
    model: Path = typer.Argument(..., help="Quantized ONNX model: npuflow's quantized_model.onnx, or a QDQ/QOperator "
                                           "model from ONNX Runtime, NNCF or Brevitas."),
    target: str = typer.Option(..., "--target", "-t", help="Target name, fingerprint or arch.json."),
    output: Path = typer.Option(..., "--output", "-o", help="The .npuf file to write."),
    input_shape: Optional[List[str]] = typer.Option(
        None, "--input-shape", metavar="NAME DIMS",
        help="Freeze a dynamic input's shape, e.g. --input-shape x 1x3x48x320 or x=1x3x48x320 (repeat for "
             "each input; --input_shape also works)."),
) -> None:
    """Compile a quantized model into one .npuf file (accelerator integer programs + CPU ONNX)."""
    shapes = input_shapes_arg(input_shape)
    with console.status("compiling"):
        compiled = compile_model(model, target, input_shapes=shapes)
        compiled.save(output)
    for note in compiled.notes:
        console.print(f"[yellow]note[/] {note}", highlight=False)
    subgraphs = compiled.subgraphs
    acc = [s for s in subgraphs if s.on_accelerator]
    console.print(
        f"wrote {output}: {len(subgraphs)} subgraph(s), {len(acc)} on {compiled.manifest['target']['device_label']}, "
        f"weights {compiled.weight_bytes} B, peak activations {compiled.peak_activation_bytes} B",
        highlight=False,
    )
