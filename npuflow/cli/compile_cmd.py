"""``npuflow compile QUANTIZED.onnx --target T [--input-shape NAME DIMS]... -o MODEL.npuf``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..compiler import compile_model
from ..compiler.compiled import shape_sets_text
from ..model import input_shape_sets
from .app import app, console, examples, input_shape_option, input_shapes_arg, output_option, target_option


@app.command("compile", epilog=examples(
    "npuflow compile out/quantized_model.onnx -t DPUCZDX8G_ISA1_B4096 -o model.npuf",
    "npuflow compile ort_qdq.onnx -t cpu-int8 --input-shape x 1x3x48x320 -o ocr.npuf",
    "npuflow compile rec_q.onnx -t cpu-int8 --input-shape x=1x3x48x160 --input-shape x=1x3x48x320 -o ocr.npuf",
    "npuflow compile out/quantized_model.onnx -t DPUCZDX8G_ISA1_B4096 --plugin alu -o model.npuf",
))
def compile_command(
    model: Path = typer.Argument(..., metavar="QUANTIZED.onnx", help="Quantized ONNX model: npuflow's "
                                 "quantized_model.onnx, or a QDQ/QOperator model from ONNX Runtime, NNCF or Brevitas."),
    target: str = target_option(),
    output: Path = output_option(..., "FILE", "The .npuf file to write."),
    input_shape: Optional[List[str]] = input_shape_option(
        "Freeze a dynamic input's shape; repeat an input to compile one program per shape into the .npuf (the "
        "runtime runs the smallest that fits, zero-padded; the i-th shapes of repeated inputs form the i-th set, "
        "an input given once is in every set)"),
    plugin: Optional[List[str]] = typer.Option(
        None, "--plugin", metavar="NAME", help="Compiler plugin that takes its nodes first (a custom engine; "
        "installed packages provide them, docs/plugins.md); repeat for several, in order."),
) -> None:
    """Compile a quantized model into one .npuf file (accelerator integer programs + CPU ONNX)."""
    sets = input_shape_sets([pair for value in input_shape or [] for pair in input_shapes_arg([value]).items()])
    with console.status("compiling"):
        compiled = compile_model(model, target, input_shapes=sets, plugins=plugin)
        compiled.save(output)
    for note in compiled.notes:
        console.print(f"[yellow]note[/] {note}", highlight=False)
    subgraphs = compiled.subgraphs
    acc = [s for s in subgraphs if s.on_accelerator]
    shapes = "" if len(sets) < 2 else f"; {len(sets)} shape sets: {shape_sets_text(compiled.input_shapes)}"
    console.print(
        f"wrote {output}: {len(subgraphs)} subgraph(s), {len(acc)} on {compiled.manifest['target']['device_label']}, "
        f"weights {compiled.weight_bytes} B, peak activations {compiled.peak_activation_bytes} B{shapes}",
        highlight=False,
    )
