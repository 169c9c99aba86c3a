"""``npuflow check MODEL --target T``: where each node runs and why (hb_mapper checker / Inspector)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import onnx
import typer

from ..check import check
from ..errors import NpuflowError
from ..graph import is_dequantize, quantize_mode
from ..check.files import write_outputs
from ..check.render import console_tables, summary_lines
from ..targets.spec import Target
from ..model import freeze_inputs, parse_input_values, with_probe_values
from .app import app, console, err_console, examples, input_shape_option, input_shapes_arg, output_option, target_option, verbose_option


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
    _warn_unsupported_scales(source, report.target, shapes)


def _warn_unsupported_scales(source: str | onnx.ModelProto, target: Target, shapes: dict | None) -> None:
    """A model quantized by another tool whose scales the target cannot run: the placement above
    is where its nodes would run, but ``compile`` refuses the whole model (ONNX Runtime's
    ``quantize_static`` model on B4096: 42 of 63 nodes on the DPU, then
    NPF_COMPILE_SCALES_UNSUPPORTED), so check says so with compile's own test and message."""
    from ..compiler import foreign
    from ..model import load, read_proto

    raw = source if isinstance(source, onnx.ModelProto) else read_proto(source)
    if not any(quantize_mode(n) is not None or is_dequantize(n) for n in raw.graph.node):
        return
    model = load(raw, shapes)
    try:
        foreign.legalize(model, target)
        foreign.check_target_numerics(model, target)
    except NpuflowError as exc:
        if exc.code != "NPF_COMPILE_SCALES_UNSUPPORTED":
            raise
        err_console.print(f"WARNING [{exc.code}] npuflow compile will refuse this model: {exc.message}\n"
                          f"  hint: {exc.hint}", markup=False, highlight=False)
