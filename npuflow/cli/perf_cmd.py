"""``npuflow perf MODEL.npuf|MODEL.onnx --target T``: static performance estimate (like ``hb_perf``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..perf import PerfReport, write_report
from ..perf import perf
from ..perf.estimate import CPU_SOURCE
from ..perf.from_npuf import npuf_units
from ..perf.model_perf import perf_compiled
from .app import app, console, examples, input_shape_option, input_shapes_arg, output_option, target_option


@app.command("perf", epilog=examples(
    "npuflow perf model.npuf",
    "npuflow perf yolov8n.onnx -t DPUCZDX8G_ISA1_B4096 --input-shape images 1x3x320x320 -o reports",
    "npuflow perf all.npuf --model cls",
))
def perf_command(
    model: Path = typer.Argument(..., metavar="MODEL", help="Float/quantized .onnx model or compiled .npuf file."),
    target: Optional[str] = target_option(False, "Target name, fingerprint or arch.json (a .npuf names its own; "
                                                 "--march also works)."),
    input_shape: Optional[list[str]] = input_shape_option(),
    output: Path = output_option(Path("."), "DIR", "Folder that receives perf_result/NAME/ (HTML page, JSON, "
                                                   "structure picture)."),
    model_name: Optional[str] = typer.Option(None, "--model", metavar="NAME", help="One model of a packed .npuf "
                                             "(default: every model, and every compiled shape set of each)."),
) -> None:
    """Estimate latency, frame rate and DDR traffic from the target file; write an HTML/JSON report."""
    with console.status("estimating (CPU parts are timed on this host)..."):
        if model.suffix == ".npuf":  # every model of a packed file, every program of a multi-shape file
            units = [(title, perf_compiled(c, target, name=name)) for name, title, c in npuf_units(model, model_name)]
        else:
            units = [(None, perf(model, target, input_shapes_arg(input_shape)))]
        folders = [write_report(report, output) for _, report in units]
    for (title, report), folder in zip(units, folders):
        _show(report, title, folder)


def _show(report: PerfReport, title: str | None, folder: Path) -> None:
    t = Table(title=f"Model Performance Summary: {title or report.model_name} on {report.target}")
    t.add_column("item")
    t.add_column("value", justify="right")
    rows = [
        ("Model Latency (ms)", f"{report.latency_ms:.3f}"),
        ("  NPU estimated / CPU measured on host / transfers (ms)",
         f"{report.npu_ms:.3f} / {report.cpu_ms:.3f} / {report.transfer_ms:.3f}"),
        ("Model Frame Rate, 1 core (FPS)", f"{report.fps_single_core:.2f}"),
        # a one-core target (cpu-int8) has no second figure: it read "1 cores", the same number again
        *([(f"Model Frame Rate, {report.cores} cores (FPS)", f"{report.fps_all_cores:.2f}")] if report.cores > 1 else []),
        ("Model DDR Occupation (MB per frame)", f"{report.ddr_mb_per_frame:.3f}"),
        ("Loaded Bytes per Frame", str(report.loaded_bytes_per_frame)),
        ("Stored Bytes per Frame", str(report.stored_bytes_per_frame)),
        ("Workload (GOP per frame)", f"{report.ops_per_frame / 1e9:.3f}"),
    ]
    e2e = report.end_to_end
    if e2e is not None:  # the target file describes the board's CPU
        rows += [
            ("Board CPU (target file)", e2e.host),
            ("End-to-end latency, 1 thread (ms)", f"{e2e.latency_ms:.3f}"),
            ("  pre / post / per frame / CPU subgraphs on the board (ms)",
             f"{e2e.preprocess_ms:.3f} / {e2e.postprocess_ms:.3f} / {e2e.frame_ms:.3f} / {e2e.cpu_subgraphs_ms:.3f}"),
            ("End-to-end Frame Rate, 1 thread (FPS)", f"{e2e.fps_single_thread:.2f}"),
            (f"End-to-end Frame Rate, {e2e.threads} threads (FPS)", f"{e2e.fps_multi_thread:.2f} ({e2e.bound} bound)"),
        ]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    sub = Table(title="Subgraphs")
    for col in ("subgraph", "device", "OPs per frame", "DDR MB", "latency ms", "source"):
        sub.add_column(col)
    for s in report.subgraphs:
        sub.add_row(s.name, s.device, str(s.ops), f"{s.ddr_bytes / 1e6:.3f}", f"{s.latency_ms:.4f}",
                    "measured on host CPU" if s.source == CPU_SOURCE else "estimated")
    console.print(sub)
    for n in report.notes:
        console.print(f"note: {n}", markup=False)
    console.print(f"report: {folder / (report.model_name + '.html')}", markup=False, highlight=False)
