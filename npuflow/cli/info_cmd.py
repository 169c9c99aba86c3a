"""``npuflow info MODEL.npuf [--json] [--op NAME]``: what is in a compiled model (like ``hb_model_info``),
or one op of it (inputs/outputs, shapes, quantization)."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import typer
from rich.table import Table

from ..compiler import CompiledModel
from ..compiler.compiled import shape_sets_text
from ..errors import NpuflowError
from .app import app, console, examples


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
        "input_shapes": compiled.input_shapes,
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


def _tensor(compiled: CompiledModel, name: str, graph: onnx.GraphProto | None = None) -> dict:
    """A tensor as the manifest records it (dtype, shape, quantization), or as the CPU subgraph's
    ONNX types it (tensors inside a CPU subgraph are not in the manifest)."""
    info = compiled.manifest["tensors"].get(name)
    if info is not None:
        return {"name": name, **info}
    if graph is not None:
        for t in graph.initializer:
            if t.name == name:
                return {"name": name, "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)),
                        "shape": list(t.dims), "initializer": True}
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            if vi.name == name and vi.type.tensor_type.elem_type:
                tt = vi.type.tensor_type
                return {"name": name, "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)),
                        "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]}
    return {"name": name}


def _accelerator_op(compiled: CompiledModel, sg: dict, op: dict) -> dict:
    weights = {}
    for role, blob in op["blobs"].items():
        arr = compiled.blob(blob)
        weights[role] = {"dtype": str(arr.dtype), "shape": list(arr.shape)}
    return {"name": op["name"], "subgraph": sg["name"], "device": sg["device"], "op": op["op"],
            "kind": op.get("kind", op["op"]), "nodes": op.get("nodes", [op["name"]]), "macs": op.get("macs", 0),
            "inputs": [_tensor(compiled, t) for t in op["inputs"]],
            "outputs": [_tensor(compiled, t) for t in op["outputs"]], "weights": weights, "attrs": op["attrs"]}


def _cpu_node(compiled: CompiledModel, sg: dict, name: str) -> dict:
    graph = onnx.shape_inference.infer_shapes(onnx.load_from_string(compiled.blob(sg["onnx"]))).graph
    node = next(n for n in graph.node if n.name == name)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute
             if a.type not in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)}
    return {"name": name, "subgraph": sg["name"], "device": sg["device"], "op": node.op_type, "kind": node.op_type,
            "nodes": [name], "macs": 0, "inputs": [_tensor(compiled, t, graph) for t in node.input if t],
            "outputs": [_tensor(compiled, t, graph) for t in node.output if t], "weights": {},
            "attrs": {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}}


def describe_op(compiled: CompiledModel, name: str, path: str = "the model") -> dict:
    """One op (``npuflow info --op``): an accelerator op found by its name or any ONNX node fused
    into it, or a node of a CPU subgraph; inputs/outputs with shapes and quantization."""
    names: list[str] = []
    for sg in compiled.manifest["subgraphs"]:
        if sg["engine"] == "integer":
            for op in sg["ops"]:
                if name == op["name"] or name in op.get("nodes", []):
                    return _accelerator_op(compiled, sg, op)
                names += [op["name"], *op.get("nodes", [])]
        else:
            if name in sg.get("nodes", []):
                return _cpu_node(compiled, sg, name)
            names += sg.get("nodes", [])
    close = difflib.get_close_matches(name, sorted(set(names)), n=5, cutoff=0.5)
    raise NpuflowError("NPF_COMPILE_UNKNOWN_OP", path=path, name=name, close=", ".join(close) or "none")


def _print_op(doc: dict) -> None:
    fused = f" (fuses {', '.join(doc['nodes'])})" if len(doc["nodes"]) > 1 else ""
    console.print(f"[bold]{doc['name']}[/]: {doc['op']} on {doc['device']}, {doc['subgraph']}{fused}"
                  + (f", {doc['macs']} MACs" if doc["macs"] else ""), highlight=False)
    table = Table(title="tensors")
    for col in ("kind", "name", "dtype", "shape", "scale", "zero point", "axis", "round"):
        table.add_column(col)
    for kind in ("inputs", "outputs"):
        for t in doc[kind]:
            q = t.get("quant") or {}
            table.add_row(kind[:-1], t["name"], t.get("dtype", "?"), "x".join(map(str, t.get("shape", []))),
                          str(q.get("scale", "")), str(q.get("zero_point", "")), str(q.get("axis", "")),
                          str(q.get("round_mode", "")))
    for role, w in doc["weights"].items():
        table.add_row("weight", role, w["dtype"], "x".join(map(str, w["shape"])), "", "", "", "")
    console.print(table)
    console.print(f"attributes: {json.dumps(doc['attrs'], default=str)}", highlight=False)


@app.command("info", epilog=examples(
    "npuflow info model.npuf",
    "npuflow info model.npuf --json",
    "npuflow info model.npuf --op /model.0/conv/Conv",
))
def info_command(
    model: Path = typer.Argument(..., metavar="MODEL.npuf", help="Compiled model (.npuf)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for programs."),
    op: Optional[str] = typer.Option(None, "--op", metavar="NAME", help="Show one op (by its name or an ONNX node "
                                     "fused into it): inputs/outputs, shapes and quantization."),
) -> None:
    """Show a compiled model: inputs/outputs, target, subgraphs, memory and build config."""
    compiled = CompiledModel.load(model)
    if op is not None:
        doc = describe_op(compiled, op, str(model))
        if as_json:
            console.print_json(json.dumps(doc, default=str))
        else:
            _print_op(doc)
        return
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
    if len(doc["input_shapes"]) > 1:
        console.print(f"compiled shapes ({len(doc['input_shapes'])} programs; run takes the smallest that fits, "
                      f"zero-padded; the tables show the first): {shape_sets_text(doc['input_shapes'])}",
                      highlight=False)
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
