"""``npuflow check MODEL --target T``: where each node runs and why (hb_mapper checker / Inspector)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ..check import check
from ..check.files import write_outputs
from ..check.render import console_table, summary_lines
from ..model import freeze_inputs, parse_input_values, with_probe_values
from .app import app, console, input_shapes_arg


class ImageFormat(str, Enum):
    svg = "svg"
    png = "png"


@app.command("check")
def check_command(
    model: Path = typer.Argument(..., help="ONNX model file.", show_default=False),
    target: str = typer.Option(..., "--target", "--march", "-t",
                               help="Target name, fingerprint, arch.json or target YAML."),
    input_shape: Optional[List[str]] = typer.Option(
        None, "--input-shape", metavar="NAME DIMS",
        help="Freeze an input's shape, e.g. --input-shape images 1x3x320x320 (repeat for each input; "
             "--input_shape also works)."),
    probe_value: Optional[List[str]] = typer.Option(
        None, "--probe-value", metavar="NAME=VALUE",
        help="Value the shape probe feeds an input when shape inference leaves shapes unknown, "
             "e.g. --probe-value sr=16000 (repeatable; the probe guesses otherwise)."),
    freeze_input: Optional[List[str]] = typer.Option(
        None, "--freeze-input", metavar="NAME=VALUE",
        help="Replace an input by a constant for this deployment, e.g. --freeze-input sr=16000: "
             "an If on it is inlined and its branch checked/quantized (repeatable)."),
    output: Path = typer.Option(Path("inspect"), "--output", "-o", help="Folder for the report files."),
    image_format: Optional[ImageFormat] = typer.Option(None, "--format", help="Also render the graph as svg or png."),
    verbose: int = typer.Option(1, "--verbose", "-v", min=0, max=2,
                                help="0: summary, 1: CPU nodes with reasons, 2: all nodes."),
) -> None:
    """Check which nodes of MODEL run on the TARGET accelerator, and why the others do not."""
    shapes = input_shapes_arg(input_shape)
    with console.status("checking", spinner="dots"):
        source = freeze_inputs(str(model), parse_input_values(freeze_input, "--freeze-input"))
        report = check(with_probe_values(source, parse_input_values(probe_value)), target, shapes)
        paths = write_outputs(report, output, image_format.value if image_format else None)
    table = console_table(report, verbose)
    if table is not None:
        console.print(table)
    for line in summary_lines(report):
        console.print(line, markup=False, highlight=False)
    console.print("wrote " + ", ".join(str(p) for p in paths), markup=False, highlight=False)
