"""``npuflow modify``: take boundary nodes out of a compiled model (Horizon's ``hb_model_modifier``).

A camera pipeline or a DMA engine often produces the accelerator's own input format -- int8 codes,
NCHW or NHWC -- and a host that reads int8 outputs needs no float.  Then the model's input-side
quantize, cast, transpose and preprocessing steps (and its output-side dequantize) are work done
twice; removing them lets the application feed and read the tensors beyond them directly.

A node is removable when it sits on the boundary: on the input side it reads one model input
that nothing else reads (other operands constants) and writes one tensor, which becomes the model
input; on the output side it writes one model output that nothing else reads from one tensor,
which becomes the model output.  Only steps whose work an application can do itself are taken:
integer ``quantize``/``transpose``/``reshape`` and CPU ``Cast``/``Transpose``/``Reshape``/quantize
on the input side, ``dequantize``/``transpose``/``reshape`` on the output side, and any node the
build's preprocessing inserted (``<input>_pre*``, named in the manifest's ``preprocessing``).
Removing outside in (a transpose after a removed quantize) is one call per node or several
``--remove`` in order.

Every program of a multi-shape file loses the same node.  The removed node's parameters (scale,
zero point, rounding, permutation, constants) are kept in the manifest's ``removed`` list
(format 1.2), which ``npuflow info`` prints: they are the contract the application now fulfils.
Memory plans, op counts, MACs and weight bytes are recomputed, so the result is a file the
compiler could have written and the reader's schema checks as any other.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import NpuflowError, did_you_mean
from ..graph import attr_values
from . import memory
from .compiled import REMOVED, VARIANT_FIELDS, VARIANTS, CompiledModel, referenced_blobs

#: Integer-program ops an application can do itself, by side.
INPUT_OPS = frozenset({"quantize", "transpose", "reshape"})
OUTPUT_OPS = frozenset({"dequantize", "transpose", "reshape"})
#: CPU-subgraph node types an application can do itself on the input side.
INPUT_NODE_TYPES = frozenset({"Cast", "Transpose", "Reshape", "QuantizeLinear"})
#: Largest constant operand of a removed CPU node kept in ``removed`` (scales, zero points, shapes).
MAX_KEPT_CONSTANT = 64


@dataclass(frozen=True)
class Candidate:
    """A node on the model's boundary that :func:`remove` can take out."""

    name: str
    side: str  # "input" or "output"
    engine: str  # "integer" or "onnx"
    subgraph: int  # index in the program's subgraphs
    kind: str  # integer op (quantize, ...) or ONNX op type
    source: str  # the model input (input side) or the tensor that becomes the output
    target: str  # the tensor that becomes the model input, or the model output it writes
    aliases: tuple[str, ...] = ()  # ONNX nodes fused into an integer op (found by these names too)


def candidates(manifest: dict, blob: Any) -> list[Candidate]:
    """The removable nodes of one program (``blob(name)`` reads the embedded ONNX of CPU subgraphs)."""
    found, _ = _scan(manifest, blob)
    return found


def removable_names(compiled: CompiledModel) -> list[str]:
    """Names ``npuflow modify --remove`` accepts now (the first program's boundary)."""
    return [c.name for c in candidates(compiled.manifest, compiled.blob)]


def remove(compiled: CompiledModel, names: list[str], path: str = "the model") -> CompiledModel:
    """``compiled`` without the nodes ``names`` (removed in order); the original is left untouched.

    ``NPF_MODIFY_NOT_REMOVABLE`` names the node and lists those removable at that point.
    """
    manifest = copy.deepcopy({k: v for k, v in compiled.manifest.items() if k != "blobs"})
    blobs = {n: compiled.blob(n) for n in compiled.blob_names()}
    for name in names:
        programs = [manifest, *manifest.get(VARIANTS, [])]
        base = {k: v for k, v in manifest.items() if k != VARIANTS}
        records = []
        for k, program in enumerate(programs):
            view = program if k == 0 else {**base, **program}
            found, known = _scan(view, blobs.__getitem__)
            match = next((c for c in found if name == c.name or name in c.aliases), None)
            if match is None:
                raise _not_removable(path, name, found, known, k, len(programs))
            records.append(_apply(view, match, blobs, k))
            if k:
                program.update({f: view[f] for f in VARIANT_FIELDS})
        manifest[REMOVED] = [*manifest.get(REMOVED, []), records[0]]
    for unused in set(blobs) - referenced_blobs(manifest):
        del blobs[unused]
    result = CompiledModel(manifest, blobs)
    result.name = compiled.name
    return result


# --- finding candidates ---------------------------------------------------------------------------

def _scan(m: dict, blob: Any) -> tuple[list[Candidate], dict[str, str]]:
    """(removable nodes, {every node name: what it is}) of one program."""
    model_inputs = [i["name"] for i in m["inputs"]]
    model_outputs = [o["name"] for o in m["outputs"]]
    readers = _readers(m, blob)
    prefixes = tuple(f"{name}_pre" for name in (m.get("preprocessing") or {}))
    found: list[Candidate] = []
    known: dict[str, str] = {}
    for k, sg in enumerate(m["subgraphs"]):
        if sg["engine"] == "integer":
            for op in sg["ops"]:
                label = f"{op['op']} op in {sg['name']}"
                for n in [op["name"], *op.get("nodes", [])]:
                    known.setdefault(n, label)
                pre = any(n.startswith(prefixes) for n in [op["name"], *op.get("nodes", [])]) if prefixes else False
                if len(op["inputs"]) == 1 and len(op["outputs"]) == 1:
                    (src,), (dst,) = op["inputs"], op["outputs"]
                    if ((op["op"] in INPUT_OPS or pre) and src in model_inputs and readers[src] == 1
                            and src not in model_outputs and dst not in model_inputs + model_outputs):
                        found.append(Candidate(op["name"], "input", "integer", k, op["op"], src, dst,
                                               tuple(op.get("nodes", []))))
                    elif (op["op"] in OUTPUT_OPS and dst in model_outputs and readers.get(dst, 0) == 0
                          and src not in model_inputs + model_outputs):
                        found.append(Candidate(op["name"], "output", "integer", k, op["op"], src, dst,
                                               tuple(op.get("nodes", []))))
        elif sg["engine"] == "onnx":  # a plugin's subgraph pairs its nodes with its own payload: left whole
            graph = onnx.load_from_string(blob(sg["onnx"])).graph
            inits = {t.name for t in graph.initializer}
            for node in graph.node:
                known.setdefault(node.name, f"{node.op_type} node in {sg['name']}")
                data = [i for i in node.input if i and i not in inits]
                quantize = node.domain == "ai.npuflow" and node.op_type.startswith("Quantize_")
                pre = bool(prefixes) and node.name.startswith(prefixes)
                kind_ok = node.op_type in INPUT_NODE_TYPES or quantize or pre
                if (kind_ok and len(data) == 1 and len(node.output) == 1 and data[0] in model_inputs
                        and readers[data[0]] == 1 and data[0] not in model_outputs
                        and node.output[0] not in model_inputs + model_outputs):
                    found.append(Candidate(node.name, "input", "onnx", k, node.op_type, data[0], node.output[0]))
    return found, known


def _readers(m: dict, blob: Any) -> dict[str, int]:
    """How many ops or nodes read each tensor (a subgraph input counts once per reader inside)."""
    count: dict[str, int] = {}
    for sg in m["subgraphs"]:
        if sg["engine"] == "integer":
            reads = [t for op in sg["ops"] for t in op["inputs"]]
        else:
            graph = onnx.load_from_string(blob(sg["onnx"])).graph
            reads = [t for n in graph.node for t in n.input if t]
        for t in reads:
            count[t] = count.get(t, 0) + 1
    return count


def _not_removable(path: str, name: str, found: list[Candidate], known: dict[str, str], program: int,
                   programs: int) -> NpuflowError:
    if name not in known:
        reason = "the model has no op or node of that name"
    elif program:
        reason = f"it is not on the boundary of program {program + 1} of {programs}"
    else:
        reason = (f"it is a {known[name]} that is not an input-side or output-side step an application can do "
                  "(or it reads or writes tensors other nodes use)")
    return NpuflowError("NPF_MODIFY_NOT_REMOVABLE", path=path, name=name, reason=reason,
                        removable=", ".join(c.name for c in found) or "none",
                        did_you_mean=did_you_mean(name, known) if name not in known else "")


# --- removing --------------------------------------------------------------------------------------

def _apply(m: dict, c: Candidate, blobs: dict, program: int) -> dict:
    """Remove candidate ``c`` from program ``m`` in place; returns its ``removed`` record."""
    sg = m["subgraphs"][c.subgraph]
    if c.engine == "integer":
        record = _remove_op(m, sg, c, blobs)
    else:
        record = _remove_node(m, sg, c, blobs, program)
    if c.side == "input":
        m["inputs"] = [_io(m, c.target, record["output"]) if i["name"] == c.source else i for i in m["inputs"]]
    else:
        m["outputs"] = [_io(m, c.source, record["input"]) if o["name"] == c.target else o for o in m["outputs"]]
    _drop_empty(m)
    _drop_unreferenced_tensors(m)
    _recount_memory(m)
    return record


def _io(m: dict, name: str, described: dict) -> dict:
    t = m["tensors"][name]
    io = {"name": name, "dtype": t["dtype"], "shape": list(t["shape"]), "layout": described.get("layout") or ""}
    quant = t.get("quant") or described.get("quant")
    if quant:
        io["quant"] = quant
    return io


def _described(m: dict, name: str, layout: str | None = None, quant: dict | None = None) -> dict:
    t = m["tensors"][name]
    out = {"name": name, "dtype": t["dtype"], "shape": list(t["shape"])}
    if t.get("quant") or quant:
        out["quant"] = t.get("quant") or quant
    if layout is not None:
        out["layout"] = layout
    return out


def _layout(m: dict, name: str) -> str:
    """The layout the application feeds ``name`` in: the build's runtime layout for a preprocessed
    input, else the manifest's."""
    pre = (m.get("preprocessing") or {}).get(name)
    if pre and pre.get("layout_rt") in ("NCHW", "NHWC"):
        return pre["layout_rt"]
    io = next((i for i in [*m["inputs"], *m["outputs"]] if i["name"] == name), {})
    return io.get("layout", "")


def _permuted(layout: str, perm: list[int] | None, rank: int) -> str:
    if perm is None:
        return layout if len(layout) == rank else ""
    if len(layout) != len(perm):
        return ""
    out = "".join(layout[p] for p in perm)
    return out if out in ("NCHW", "NHWC") else ""


def _axis_order(op: str, attrs: dict, src: list, dst: list) -> list[int] | None:
    """The order of ``src``'s axes that a removed layout step writes ``dst`` in: a transpose's
    ``perm``; for a reshape that only moves unit axes (the float passes write a Transpose of unit
    axes as one: a one-channel NHWC frame to NCHW) the larger axes in their order and the unit
    axes in theirs; ``None`` for any other step (the layout stays, where the rank does)."""
    if op.lower() == "transpose":
        return attrs.get("perm")
    if op.lower() != "reshape" or len(src) != len(dst) or [d for d in src if d != 1] != [d for d in dst if d != 1]:
        return None
    larger, unit = iter([k for k, d in enumerate(src) if d != 1]), iter([k for k, d in enumerate(src) if d == 1])
    return [next(unit) if d == 1 else next(larger) for d in dst]


def _remove_op(m: dict, sg: dict, c: Candidate, blobs: dict) -> dict:
    j = next(k for k, op in enumerate(sg["ops"]) if op["name"] == c.name)
    op = sg["ops"].pop(j)
    attrs = op["attrs"]
    quant = None
    if op["op"] in ("quantize", "dequantize"):
        quant = {"axis": attrs.get("axis"), "dtype": attrs.get("dtype") or m["tensors"][op["inputs"][0]]["dtype"],
                 "round_mode": attrs.get("round", "half_even"), "scale": attrs["scale"],
                 "zero_point": attrs.get("zp", 0)}
    rank = len(m["tensors"][op["outputs"][0]]["shape"])
    perm = _axis_order(op["op"], attrs, m["tensors"][op["inputs"][0]]["shape"], m["tensors"][op["outputs"][0]]["shape"])
    if c.side == "input":
        src_layout = _layout(m, c.source)
        record_in = _described(m, c.source, src_layout)
        record_out = _described(m, c.target, _permuted(src_layout, perm, rank),
                                quant if op["op"] == "quantize" else None)
    else:
        out_layout = _layout(m, c.target)
        inverse = None if perm is None else [perm.index(k) for k in range(len(perm))]
        record_in = _described(m, c.source, _permuted(out_layout, inverse, len(m["tensors"][c.source]["shape"])),
                               quant if op["op"] == "dequantize" else None)
        record_out = _described(m, c.target, out_layout)
    if sg["ops"]:
        reads = {t for o in sg["ops"] for t in o["inputs"]}
        made = {t for o in sg["ops"] for t in o["outputs"]}
        if c.side == "input":
            sg["inputs"] = _unique([c.target if t == c.source else t for t in sg["inputs"]
                                    if t != c.source or c.target in reads])
            sg["outputs"] = [t for t in sg["outputs"] if t != c.target]
        else:
            sg["outputs"] = _unique([c.source if t == c.target else t for t in sg["outputs"]
                                     if t != c.target or c.source in made])
        sg["op_counts"] = _decrement(sg["op_counts"], op["kind"])
        sg["macs"] = int(sg["macs"] - op.get("macs", 0))
        sg["weight_bytes"] = int(max(0, sg["weight_bytes"] - sum(_blob_nbytes(blobs[b]) for b in op["blobs"].values())))
        if not sg["outputs"]:
            sg["ops"] = []
    return {"name": c.name, "op": op["op"], "side": c.side, "engine": "integer", "subgraph": sg["name"],
            "input": record_in, "output": record_out, "attrs": attrs}


def _remove_node(m: dict, sg: dict, c: Candidate, blobs: dict, program: int) -> dict:
    model = onnx.load_from_string(blobs[sg["onnx"]])
    graph = model.graph
    node = next(n for n in graph.node if n.name == c.name)
    inits = {t.name: t for t in graph.initializer}
    constants = {}
    for name in node.input:
        if name in inits and math.prod(inits[name].dims) <= MAX_KEPT_CONSTANT:
            value = numpy_helper.to_array(inits[name])
            constants[name] = value.tolist() if value.ndim else value.item()
    attrs: dict = {k: _plain(v) for k, v in attr_values(node).items()}
    if constants:
        attrs["constants"] = constants
    typed = _types(model)
    if c.target not in m["tensors"]:
        elem, shape = typed[c.target]
        m["tensors"][c.target] = {"dtype": helper.tensor_dtype_to_np_dtype(elem).name, "shape": shape}
    quant = _node_quant(node, inits, m["tensors"][c.target]["dtype"])
    if quant and "quant" not in m["tensors"][c.target]:
        m["tensors"][c.target]["quant"] = quant
    src_layout = _layout(m, c.source)
    perm = _axis_order(node.op_type, attrs, m["tensors"][c.source]["shape"], m["tensors"][c.target]["shape"])
    record = {"name": c.name, "op": node.op_type if not node.domain else f"{node.domain}:{node.op_type}",
              "side": "input", "engine": "onnx", "subgraph": sg["name"],
              "input": _described(m, c.source, src_layout),
              "output": _described(m, c.target, _permuted(src_layout, perm, len(m["tensors"][c.target]["shape"]))),
              "attrs": attrs}
    graph.node.remove(node)
    still_read = {t for n in graph.node for t in n.input}
    for name in [i for i in node.input if i in inits and i not in still_read]:
        graph.initializer.remove(inits[name])
    for vi in [v for v in graph.input if v.name == c.source]:
        graph.input.remove(vi)
    for vi in [v for v in graph.output if v.name == c.target]:
        graph.output.remove(vi)
    for vi in [v for v in graph.value_info if v.name == c.target]:
        graph.value_info.remove(vi)
    sg["outputs"] = [t for t in sg["outputs"] if t != c.target]
    if c.target in still_read:
        elem, shape = typed[c.target]
        graph.input.append(helper.make_tensor_value_info(c.target, elem, shape))
    sg["inputs"] = _unique([c.target if t == c.source else t for t in sg["inputs"]
                            if t != c.source or c.target in still_read])
    sg["nodes"] = [n for n in sg["nodes"] if n != c.name]
    sg["op_counts"] = _decrement(sg["op_counts"], node.op_type)
    sg["weight_bytes"] = int(sum(numpy_helper.to_array(t).nbytes for t in graph.initializer))
    if graph.node and sg["outputs"]:
        name = f"{sg['onnx'][:-len('.onnx')]}.m{program}.onnx"
        while name in blobs:
            name = f"{name[:-len('.onnx')]}x.onnx"
        blobs[name] = model.SerializeToString()
        sg["onnx"] = name
    else:
        sg["nodes"] = []
    return record


def _types(model: onnx.ModelProto) -> dict[str, tuple[int, list[int]]]:
    """Element type and static shape of every typed tensor of an embedded model."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tt = vi.type.tensor_type
        if tt.elem_type:
            out[vi.name] = (tt.elem_type, [d.dim_value for d in tt.shape.dim])
    return out


def _node_quant(node: onnx.NodeProto, inits: dict, dtype: str) -> dict | None:
    """The quantization a CPU quantize node applies (scale and zero point constants)."""
    if not (node.op_type == "QuantizeLinear" or (node.domain == "ai.npuflow" and node.op_type.startswith("Quantize_"))):
        return None
    if len(node.input) < 2 or node.input[1] not in inits:
        return None
    scale = numpy_helper.to_array(inits[node.input[1]])
    zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else np.zeros(())
    if scale.size != 1:
        return None
    mode = node.op_type[len("Quantize_"):].rsplit("_", 1)[0] if node.domain == "ai.npuflow" else "half_even"
    return {"axis": None, "dtype": dtype, "round_mode": mode, "scale": float(scale.reshape(())),
            "zero_point": int(zp.reshape(()))}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value).tolist()
    return value


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _decrement(counts: dict[str, int], kind: str) -> dict[str, int]:
    out = dict(counts)
    out[kind] = out.get(kind, 0) - 1
    return {k: v for k, v in out.items() if v > 0}


def _blob_nbytes(value: np.ndarray | bytes) -> int:
    return len(value) if isinstance(value, (bytes, bytearray)) else int(np.asarray(value).nbytes)


def _drop_empty(m: dict) -> None:
    """Subgraphs left without ops or nodes go; the others are renumbered in order."""
    kept = [sg for sg in m["subgraphs"] if (sg.get("ops") if sg["engine"] == "integer" else sg.get("nodes"))]
    for k, sg in enumerate(kept):
        sg["id"] = k
    m["subgraphs"] = kept


def _drop_unreferenced_tensors(m: dict) -> None:
    used = {io["name"] for io in [*m["inputs"], *m["outputs"]]}
    for sg in m["subgraphs"]:
        used.update(sg["inputs"], sg["outputs"])
        for op in sg.get("ops", []):
            used.update(op["inputs"], op["outputs"])
    m["tensors"] = {k: v for k, v in m["tensors"].items() if k in used}


def _nbytes(info: dict) -> int:
    return int(np.prod(info["shape"])) * np.dtype(info["dtype"]).itemsize


def _recount_memory(m: dict) -> None:
    """Memory plans of the integer subgraphs and the totals, as the compiler computes them."""
    peak = 0
    for sg in m["subgraphs"]:
        if sg["engine"] == "integer":
            boundary = [*sg["inputs"], *sg["outputs"]]
            sg["memory"] = memory.plan(sg["ops"], m["tensors"], set(boundary))
            peak = max(peak, sg["memory"]["arena_bytes"] + sum(_nbytes(m["tensors"][t]) for t in boundary))
    m["memory"] = {"weight_bytes": int(sum(sg["weight_bytes"] for sg in m["subgraphs"])),
                   "peak_activation_bytes": int(peak)}
