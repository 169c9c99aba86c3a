"""``npuflow info MODEL.npuf [--json]``: what is in a compiled model (like ``hb_model_info``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from ..compiler import CompiledModel
from .app import app, console


def model_scales(manifest: dict) -> dict:
    """What quantization the model's integer tensors really hold (which need not be what the
    target prefers: a model from another tool may carry float scales and zero points)."""
    quants = [t["quant"] for t in [*manifest["tensors"].values(), *manifest["inputs"], *manifest["outputs"]]
              if t.get("quant")]
    scales = np.concatenate([np.ravel(q["scale"]) for q in quants]) if quants else np.zeros(0)
    zps = np.concatenate([np.ravel(q["zero_point"]) for q in quants]) if quants else np.zeros(0, np.int64)
    pow2 = bool(scales.size) and bool(np.all(np.frexp(scales)[0] == 0.5))
    return {
        "tensors": len(quants),
        "scale_type": "power_of_two" if pow2 else ("float" if scales.size else "none"),
        "per_channel": any(np.size(q["scale"]) > 1 for q in quants),
        "zero_points": sorted({int(z) for z in zps}),
        "dtypes": sorted({q["dtype"] for q in quants}),
    }


def _scales_line(s: dict) -> str:
    if not s["tensors"]:
        return "model scales: no quantized tensors at subgraph boundaries"
    zps = s["zero_points"]
    zp = "zero point 0 (symmetric)" if zps == [0] else f"zero points {zps[0]}..{zps[-1]} (asymmetric)"
    return (f"model scales ({s['tensors']} quantized tensors): {s['scale_type'].replace('_', '-')}, "
            f"{'per-channel' if s['per_channel'] else 'per-tensor'}, {zp}, {'/'.join(s['dtypes'])}")


def describe(compiled: CompiledModel) -> dict:
    """The JSON document `npuflow info --json` prints."""
    m = compiled.manifest
    return {
        "npuflow_version": m["npuflow_version"],
        "target": m["target"],
        "model_scales": model_scales(m),
        "inputs": m["inputs"],
        "outputs": m["outputs"],
        "subgraphs": [
            {"id": s.id, "name": s.name, "device": s.device, "engine": s.engine, "op_counts": s.op_counts,
             "macs": s.macs, "weight_bytes": s.weight_bytes, "activation_bytes": s.activation_bytes,
             "inputs": s.inputs, "outputs": s.outputs}
            for s in compiled.subgraphs
        ],
        "memory": m["memory"],
        "build_config": m.get("build_config"),
        "preprocessing": m.get("preprocessing"),
        "notes": m.get("notes", []),
        "model": m.get("model", {}),
    }


@app.command("info")
def info_command(
    model: Path = typer.Argument(..., help="Compiled model (.npuf)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for programs."),
) -> None:
    """Show a compiled model: inputs/outputs, target, subgraphs, memory and build config."""
    compiled = CompiledModel.load(model)
    doc = describe(compiled)
    if as_json:
        console.print_json(json.dumps(doc))
        return
    t = doc["target"]
    console.print(f"[bold]{model}[/]  npuflow {doc['npuflow_version']}  target {t['name']} "
                  f"(fingerprint {t['fingerprint']}, target arithmetic: {t['scale_type']} scales)", highlight=False)
    console.print(_scales_line(doc["model_scales"]), highlight=False)
    io = Table(title="inputs and outputs")
    for col in ("kind", "name", "dtype", "shape", "layout", "scale", "zero point"):
        io.add_column(col)
    for kind, items in (("input", doc["inputs"]), ("output", doc["outputs"])):
        for i in items:
            q = i.get("quant") or {}
            io.add_row(kind, i["name"], i["dtype"], "x".join(map(str, i["shape"])), i.get("layout", ""),
                       str(q.get("scale", "")), str(q.get("zero_point", "")))
    console.print(io)
    sg = Table(title="subgraphs")
    for col in ("id", "name", "device", "ops", "MACs", "weights B", "activations B"):
        sg.add_column(col)
    for s in doc["subgraphs"]:
        ops = ", ".join(f"{k} x{v}" for k, v in s["op_counts"].items())
        sg.add_row(str(s["id"]), s["name"], s["device"], ops, str(s["macs"]), str(s["weight_bytes"]),
                   str(s["activation_bytes"]))
    console.print(sg)
    mem = doc["memory"]
    console.print(f"weights {mem['weight_bytes']} B, peak activation memory {mem['peak_activation_bytes']} B")
    console.print(f"build config: {json.dumps(doc['build_config']) if doc['build_config'] else 'none stored'}",
                  highlight=False)
    if doc["preprocessing"]:
        console.print(f"preprocessing: {json.dumps(doc['preprocessing'])}", highlight=False)
    for note in doc["notes"]:
        console.print(f"note: {note}", highlight=False)
