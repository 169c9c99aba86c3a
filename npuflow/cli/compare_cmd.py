"""``npuflow compare``: where a quantized model loses accuracy, layer by layer, and whether two dumps agree.

``npuflow compare FLOAT.onnx QUANTIZED.onnx|MODEL.npuf --data DIR|FILE.npz [--samples N] [-o OUT]``
(rknn-toolkit2's ``accuracy_analysis``, Vitis AI's ``xdputil comp_float``) prints the layers with
the largest own error and the layer where the accumulated error jumps, and writes
``compare.json``, ``compare.csv`` and ``compare.html`` (:mod:`npuflow.analyze.compare`).

``npuflow compare --golden DIR --dump DIR [--atol A] [--rtol R]`` compares two ``npuflow run
--dump`` folders tensor by tensor and exits with status 1 on any mismatch (0 when all agree; 2,
as every command, for a coded error such as a missing or corrupt file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import NpuflowError
from ..model import write_atomic
from ..quant.config import QuantConfig
from .app import app, console, err_console, examples, output_option


def _fmt(value: float | None, digits: int = 6) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _layers_table(result, top: int) -> Table:
    jump = result.jump
    table = Table(title=f"{min(top, len(result.layers))} of {len(result.layers)} layers with the largest own error "
                        f"({result.samples} sample(s))")
    for col in ("#", "tensor", "op", "cosine acc.", "rel. err acc.", "cosine single", "rel. err single", "increase"):
        table.add_column(col, justify="left" if col in ("tensor", "op") else "right")
    order = {r.tensor: k for k, r in enumerate(result.layers)}
    shown = result.worst(top)
    if jump is not None and jump not in shown:
        shown.append(jump)
    for r in shown:
        mark = " [bold red]<- jump[/]" if r.jump else ""
        table.add_row(str(order[r.tensor]), r.tensor + mark, r.op_type, _fmt(r.cosine), _fmt(r.rel_error, 4),
                      _fmt(r.single_cosine), _fmt(r.single_rel_error, 4), _fmt(r.increase, 4))
    return table


def _data_error(exc: NpuflowError, float_model: Path) -> NpuflowError:
    """``--data``'s own error for one that quantize's sample reader (which compare reads samples
    with) raised in calibration words: "calibration sample 0 does not fit the model" sent a
    compare user to quantize's calibration set.  Other errors are returned as they are."""
    fields = exc.fields
    if exc.code in ("NPF_QUANT_CALIB_MISMATCH", "NPF_QUANT_CALIB_NONFINITE"):
        reason = fields.get("reason") or f"input {fields['input']!r} contains NaN or Inf"
        return NpuflowError("NPF_COMPARE_DATA_MISMATCH", sample=fields["sample"], float=str(float_model), reason=reason)
    if exc.code in ("NPF_QUANT_CALIB_SOURCE", "NPF_QUANT_CALIB_EMPTY"):
        return NpuflowError("NPF_COMPARE_DATA_SOURCE", source=fields["source"],
                            reason=fields.get("reason") or "it holds no samples")
    return exc


def _compare_models(float_model: Path, quantized: Path, data: Path, samples: int, out_dir: Path, top: int) -> None:
    from ..analyze.compare import compare

    try:
        result = compare(float_model, quantized, str(data), samples=samples)
    except NpuflowError as exc:
        raise _data_error(exc, float_model) from None
    console.print(_layers_table(result, top))
    jump = result.jump
    if jump is not None:
        console.print(f"the accumulated error jumps at [bold]{jump.tensor}[/] ({jump.op_type}, node {jump.node}): "
                      f"relative error +{jump.increase:.4f} over its inputs", highlight=False)
    floor = QuantConfig.model_fields["min_output_snr_db"].default
    for name, snr in result.signal_snr_db.items():
        ratio = "no error" if snr is None else f"signal-to-noise ratio {snr:.1f} dB"
        console.print(f"output [bold]{name}[/] (a signal): {ratio} to the float model over {result.samples} "
                      f"sample(s), energies pooled (quantize warns below min_output_snr_db, {floor:g} dB)", highlight=False)
    for warning in [cov.warning() for cov in result.saturated_inputs] + [result.saturation_warning()]:
        if warning is None:
            continue
        err_console.print(f"[bold yellow]WARNING[/] [{warning.code}] {warning.message}\n  hint: {warning.hint}",
                          highlight=False)
    if result.unmatched:
        console.print(f"[yellow]not compared[/] (no float tensor of that name): {len(result.unmatched)} tensor(s), "
                      f"e.g. {', '.join(result.unmatched[:5])}", highlight=False)
    files = result.write(out_dir)
    console.print(f"wrote {', '.join(str(p) for p in files.values())}", highlight=False)


def _compare_dumps(golden: Path, dump: Path, atol: float, rtol: float, out_dir: Optional[Path]) -> None:
    from ..analyze.dumps import compare_dumps

    result = compare_dumps(golden, dump, atol=atol, rtol=rtol)
    bad = result.mismatched()
    if bad:
        table = Table(title=f"{len(bad)} of {len(result.tensors)} tensors differ (atol {atol}, rtol {rtol})")
        for col in ("tensor", "max |diff|", "mismatches", "reason"):
            table.add_column(col)
        for t in bad:
            table.add_row(t.name, _fmt(t.max_abs_diff, 6), f"{t.mismatches}/{t.size}", t.reason)
        console.print(table)
    if out_dir is not None:
        write_atomic(out_dir / "compare_dumps.json", json.dumps(result.to_json(), indent=1) + "\n")
    if bad:
        raise typer.Exit(1)
    console.print(f"all {len(result.tensors)} tensors of {golden} match {dump} (atol {atol}, rtol {rtol})",
                  highlight=False)


@app.command("compare", epilog=examples(
    "npuflow compare out/optimized_float_model.onnx out/quantized_model.onnx --data calib/ --samples 4",
    "npuflow compare out/optimized_float_model.onnx model.npuf --data sample.npz -o compare_result",
    "npuflow compare --golden golden_dump --dump board_dump --atol 1",
))
def compare_command(
    float_model: Optional[Path] = typer.Argument(None, metavar="FLOAT.onnx",
                                                 help="Float model (optimized_float_model.onnx)."),
    quantized: Optional[Path] = typer.Argument(None, metavar="QUANTIZED.onnx|MODEL.npuf",
                                               help="Quantized QDQ model (.onnx) or compiled model (.npuf)."),
    data: Optional[Path] = typer.Option(None, "--data", metavar="DIR|FILE.npz",
                                        help="Samples: what quantize --calib takes (a folder, or one .npz/.npy of one or more stacked samples)."),
    samples: int = typer.Option(8, "--samples", min=1, metavar="N", help="Use at most this many samples."),
    output: Optional[Path] = output_option(None, "DIR", "Output folder (compare.json/.csv/.html, or "
                                                        "compare_dumps.json; default: compare_result)."),
    top: int = typer.Option(15, "--top", min=1, metavar="N", help="Layers shown in the table."),
    golden: Optional[Path] = typer.Option(None, "--golden", metavar="DIR", help="Reference dump folder (npuflow run "
                                          "--dump)."),
    dump: Optional[Path] = typer.Option(None, "--dump", metavar="DIR", help="Dump folder to check against --golden."),
    atol: float = typer.Option(0.0, "--atol", min=0.0, metavar="A", help="Absolute tolerance of the dump comparison."),
    rtol: float = typer.Option(0.0, "--rtol", min=0.0, metavar="R", help="Relative tolerance of the dump comparison."),
) -> None:
    """Per-layer accuracy of a quantized/compiled model against its float model, or two dump folders."""
    if golden is not None or dump is not None:
        if golden is None or dump is None or float_model is not None or quantized is not None or data is not None:
            raise NpuflowError("NPF_COMPARE_USAGE", reason="--golden and --dump go together, without models or --data")
        _compare_dumps(golden, dump, atol, rtol, output)
        return
    if float_model is None or quantized is None or data is None:
        raise NpuflowError("NPF_COMPARE_USAGE", reason="give FLOAT.onnx, QUANTIZED.onnx|MODEL.npuf and --data")
    _compare_models(float_model, quantized, data, samples, output or Path("compare_result"), top)
