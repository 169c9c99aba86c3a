"""``npuflow compile QUANTIZED.onnx --target T -o MODEL.npuf``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..compiler import compile_model
from .app import app, console


@app.command("compile")
def compile_command(
    model: Path = typer.Argument(..., help="quantized_model.onnx written by `npuflow quantize`."),
    target: str = typer.Option(..., "--target", "-t", help="Target name, fingerprint or arch.json."),
    output: Path = typer.Option(..., "--output", "-o", help="The .npuf file to write."),
) -> None:
    """Compile a quantized model into one .npuf file (accelerator integer programs + CPU ONNX)."""
    with console.status("compiling"):
        compiled = compile_model(model, target)
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
