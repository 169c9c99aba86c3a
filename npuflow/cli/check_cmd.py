"""``npuflow check MODEL --target T``: where each node runs and why (hb_mapper checker / Inspector)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ..check import check
from ..check.files import write_outputs
from ..check.render import console_tables, summary_lines
from ..model import freeze_inputs, parse_input_values, with_probe_values
from .app import app, console, examples, input_shape_option, input_shapes_arg, output_option, target_option, verbose_option


class ImageFormat(str, Enum):
    svg = "svg"
    png = "png"


@app.command("check", epilog=examples(
    "npuflow check yolov8n.onnx -t DPUCZDX8G_ISA1_B4096",
    "npuflow check ocr_rec.onnx -t bernoulli2 --input-shape x 1x3x48x320 -o inspect_ocr --format svg",
    "npuflow check silero_vad.onnx -t cpu-int8 --freeze-input sr=16000 -v 2",
))
def check_command(
    model: Path = typer.Argument(..., metavar="MODEL", help="ONNX model file.", show_default=False),
    target: str = target_option(),
    input_shape: Optional[List[str]] = input_shape_option(),
    probe_value: Optional[List[str]] = typer.Option(
        None, "--probe-value", metavar="NAME=VALUE",
        help="Value the shape probe feeds an input when shape inference leaves shapes unknown, "
             "e.g. --probe-value sr=16000 (repeatable; the probe guesses otherwise)."),
    freeze_input: Optional[List[str]] = typer.Option(
        None, "--freeze-input", metavar="NAME=VALUE",
        help="Replace an input by a constant for this deployment, e.g. --freeze-input sr=16000: "
             "an If on it is inlined and its branch checked/quantized (repeatable)."),
    output: Path = output_option(Path("inspect"), "DIR", "Folder for the report files (.txt, .json, .gv)."),
    image_format: Optional[ImageFormat] = typer.Option(None, "--format", help="Also render the graph as svg or png."),
    verbose: int = verbose_option("nodes per op type x device and the CPU nodes grouped by reason"),
) -> None:
    """Check which nodes of MODEL run on the TARGET accelerator, and why the others do not."""
    shapes = input_shapes_arg(input_shape)
    with console.status("checking", spinner="dots"):
        source = freeze_inputs(str(model), parse_input_values(freeze_input, "--freeze-input"))
        report = check(with_probe_values(source, parse_input_values(probe_value)), target, shapes)
        paths = write_outputs(report, output, image_format.value if image_format else None)
    for table in console_tables(report, verbose):
        console.print(table)
    for line in summary_lines(report):
        console.print(line, markup=False, highlight=False)
    console.print("wrote " + ", ".join(str(p) for p in paths), markup=False, highlight=False)
