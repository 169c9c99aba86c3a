"""``npuflow ort-export MODEL.npuf -o MODEL_ort.onnx``: a compiled model for plain ONNX Runtime.

A thin wrapper over :func:`npuflow.ort_export.export`; the printed lines are the one change an
ONNX Runtime application needs to run the exact integer simulation.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, console, examples, output_option


@app.command("ort-export", epilog=examples(
    "npuflow ort-export model.npuf -o model_ort.onnx",
))
def ort_export_command(
    model: Path = typer.Argument(..., metavar="MODEL.npuf", help="Compiled model (one input shape)."),
    output: Path = output_option(..., "FILE", "The ONNX model to write; it names MODEL.npuf by path and sha256, "
                                              "so keep the .npuf where it is."),
) -> None:
    """Write an ONNX model that onnxruntime.InferenceSession runs bit-exactly (accelerator subgraphs as
    onnxruntime-extensions Python ops; needs `pip install onnxruntime-extensions` to run)."""
    from ..ort_export import export, is_npuflow_op

    with console.status("exporting"):
        proto = export(model, output)
    ops = sum(1 for n in proto.graph.node if is_npuflow_op(n))
    console.print(f"wrote {output}: {len(proto.graph.node)} nodes, {ops} of them accelerator subgraphs run by npuflow",
                  markup=False, highlight=False)
    console.print("run it with:\n"
                  "  so = npuflow.ort_export.session_options(path)\n"
                  "  sess = onnxruntime.InferenceSession(path, so, providers=['CPUExecutionProvider'])",
                  markup=False, highlight=False)
