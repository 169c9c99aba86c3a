"""``npuflow info MODEL.npuf [--json]``: what is in a compiled model (like ``hb_model_info``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ..compiler import CompiledModel
from .app import app, console


def describe(compiled: CompiledModel) -> dict:
    """The JSON document `npuflow info --json` prints."""
    m = compiled.manifest
    return {
        "npuflow_version": m["npuflow_version"],
        "target": m["target"],
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
                  f"(fingerprint {t['fingerprint']}, {t['scale_type']} scales)", highlight=False)
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
