"""``npuflow info MODEL.npuf [--json] [--op NAME] [--model NAME]``: what is in a compiled model (like
``hb_model_info``), or one op of it (inputs/outputs, shapes, quantization).

A packed file (``npuflow pack``) is described model by model (``hb_model_info -p``), a file
compiled for several input shapes program by program (each has its own subgraphs and memory), and
nodes ``npuflow modify`` removed are listed with the parameters the application now applies."""

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
from ..graph import attr
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
    """The JSON document `npuflow info --json` prints (``subgraphs``, ``inputs``, ``outputs`` and
    ``memory`` are the first program's; ``programs`` has every program's)."""
    m = compiled.manifest
    return {
        "name": compiled.name,
        "npuflow_version": m["npuflow_version"],
        "target": m["target"],
        "model_scales": model_scales(m),
        "inputs": m["inputs"],
        "outputs": m["outputs"],
        "input_shapes": compiled.input_shapes,
        "subgraphs": _program(compiled)["subgraphs"],
        "memory": m["memory"],
        "programs": [_program(compiled.program(k)) for k in range(len(compiled.programs))],
        "removed": compiled.removed,
        "build_config": m.get("build_config"),
        "preprocessing": m.get("preprocessing"),
        "notes": m.get("notes", []),
        "model": m.get("model", {}),
    }


def _program(compiled: CompiledModel) -> dict:
    """One compiled shape set: its interface, subgraphs and memory."""
    return {
        "input_shapes": compiled.input_shapes[0],
        "inputs": compiled.inputs,
        "outputs": compiled.outputs,
        "subgraphs": [
            {"id": s.id, "name": s.name, "device": s.device, "engine": s.engine, "op_counts": s.op_counts,
             "macs": s.macs, "weight_bytes": s.weight_bytes, "activation_bytes": s.activation_bytes,
             "inputs": s.inputs, "outputs": s.outputs}
            for s in compiled.subgraphs
        ],
        "memory": compiled.manifest["memory"],
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
    attrs = {a.name: attr(node, a.name) for a in node.attribute
             if a.type not in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)}
    return {"name": name, "subgraph": sg["name"], "device": sg["device"], "op": node.op_type, "kind": node.op_type,
            "nodes": [name], "macs": 0, "inputs": [_tensor(compiled, t, graph) for t in node.input if t],
            "outputs": [_tensor(compiled, t, graph) for t in node.output if t], "weights": {},
            "attrs": attrs}


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
    for r in compiled.removed:  # taken out by `npuflow modify`: what the application now applies
        if name == r["name"]:
            return {"name": name, "subgraph": r["subgraph"], "device": f"the application ({r['side']} side, removed)",
                    "op": r["op"], "kind": r["op"], "nodes": [name], "macs": 0, "inputs": [r["input"]],
                    "outputs": [r["output"]], "weights": {}, "attrs": r["attrs"], "removed": True}
        names.append(r["name"])
    # up to five suggestions, case ignored (errors.closest's rule, with a list: op names differ by a digit)
    options = {n.lower(): n for n in sorted(set(names))}
    close = [options[n] for n in difflib.get_close_matches(name.lower(), list(options), n=5, cutoff=0.5)]
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
    console.print(f"attributes: {json.dumps(doc['attrs'], default=_plain)}", highlight=False)


def _plain(value: object) -> object:
    """JSON of what a loaded manifest holds besides JSON: a per-channel epilogue array (a blob of
    a format 2.0 file) as its list of values, anything else as its text."""
    return value.tolist() if isinstance(value, np.ndarray) else str(value)


@app.command("info", epilog=examples(
    "npuflow info model.npuf",
    "npuflow info model.npuf --json",
    "npuflow info model.npuf --op /model.0/conv/Conv",
    "npuflow info all.npuf --model cls --op fc",
))
def info_command(
    model: Path = typer.Argument(..., metavar="MODEL.npuf", help="Compiled model (.npuf)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for programs."),
    op: Optional[str] = typer.Option(None, "--op", metavar="NAME", help="Show one op (by its name or an ONNX node "
                                     "fused into it): inputs/outputs, shapes and quantization."),
    model_name: Optional[str] = typer.Option(None, "--model", metavar="NAME", help="One model of a packed file "
                                             "(default: every model; --op needs it when there are several)."),
) -> None:
    """Show a compiled model: inputs/outputs, target, subgraphs per compiled shape, memory, build config and
    removed nodes (every model of a packed file)."""
    if op is not None:
        compiled = CompiledModel.load(model, model_name)
        doc = describe_op(compiled, op, str(model))
        if as_json:
            console.print_json(json.dumps(doc, default=_plain))
        else:
            _print_op(doc)
        return
    models = [CompiledModel.load(model, model_name)] if model_name else list(CompiledModel.load_all(model).values())
    docs = [describe(m) for m in models]
    if as_json:
        console.print_json(json.dumps({"packed": docs} if models[0].packed and not model_name else docs[0]))
        return
    if len(docs) > 1:
        console.print(f"[bold]{model}[/]: packed file, {len(docs)} models ({', '.join(d['name'] for d in docs)})",
                      highlight=False)
    for doc in docs:
        _print_model(f"{model}" if len(docs) == 1 else f"{model} model {doc['name']}", doc)


def _print_model(title: str, doc: dict) -> None:
    t = doc["target"]
    console.print(f"[bold]{title}[/]  npuflow {doc['npuflow_version']}  target {t['name']} "
                  f"(fingerprint {t['fingerprint']}, target arithmetic: {t['scale_type']} scales)", highlight=False)
    console.print(_scales_line(doc["model_scales"]), highlight=False)
    several = len(doc["programs"]) > 1
    if several:
        console.print(f"compiled shapes ({len(doc['programs'])} programs; run takes the smallest that fits, "
                      f"zero-padded): {shape_sets_text(doc['input_shapes'])}", highlight=False)
    for k, program in enumerate(doc["programs"]):
        label = f" (program {k + 1}: {shape_sets_text([program['input_shapes']])})" if several else ""
        _print_program(program, label)
    if doc["removed"]:
        _print_removed(doc["removed"])
    console.print(f"build config: {json.dumps(doc['build_config']) if doc['build_config'] else 'none stored'}",
                  highlight=False)
    if doc["preprocessing"]:
        console.print(f"preprocessing: {json.dumps(doc['preprocessing'])}", highlight=False)
    for note in doc["notes"]:
        console.print(f"note: {note}", highlight=False)


def _print_program(program: dict, label: str) -> None:
    io = Table(title=f"inputs and outputs{label}")
    for col in ("kind", "name", "dtype", "shape", "layout", "scale", "zero point"):
        io.add_column(col)
    for kind, items in (("input", program["inputs"]), ("output", program["outputs"])):
        for i in items:
            q = i.get("quant") or {}
            io.add_row(kind, i["name"], i["dtype"], "x".join(map(str, i["shape"])), i.get("layout", ""),
                       str(q.get("scale", "")), str(q.get("zero_point", "")))
    console.print(io)
    sg = Table(title=f"subgraphs{label}")
    for col in ("id", "name", "device", "ops", "MACs", "weights B", "activations B"):
        sg.add_column(col)
    for s in program["subgraphs"]:
        ops = ", ".join(f"{k} x{v}" for k, v in s["op_counts"].items())
        sg.add_row(str(s["id"]), s["name"], s["device"], ops, str(s["macs"]), str(s["weight_bytes"]),
                   str(s["activation_bytes"]))
    console.print(sg)
    mem = program["memory"]
    console.print(f"weights {mem['weight_bytes']} B, peak activation memory {mem['peak_activation_bytes']} B{label}",
                  highlight=False)


def _print_removed(removed: list[dict]) -> None:
    """What `npuflow modify` took out: the application now does this work before/after the model."""
    table = Table(title="removed nodes (the application applies them)")
    for col in ("node", "op", "side", "from", "to", "parameters"):
        table.add_column(col)
    for r in removed:
        ends = []
        for t in (r["input"], r["output"]):
            ends.append(f"{t['name']} {t['dtype']} {'x'.join(map(str, t['shape']))} {t.get('layout') or ''}".rstrip())
        params = {k: v for k, v in r["attrs"].items() if k not in ("out_shape", "qmin", "out_dtype")}
        table.add_row(r["name"], r["op"], r["side"], ends[0], ends[1], json.dumps(params, default=str))
    console.print(table)
